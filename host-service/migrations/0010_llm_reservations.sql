-- Gateway calls in flight, each holding the worst-case cost it reserved at admission. A row
-- lives from admission until the call settles: its real cost goes to llm_usage in the same
-- transaction that deletes it. Rows found at start belong to a host that died and are settled
-- at their reserved amount (what the provider may have billed).
CREATE TABLE llm_reservations (
    id         TEXT PRIMARY KEY,
    agent_id   TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    model      TEXT NOT NULL,
    amount_usd REAL NOT NULL CHECK (amount_usd >= 0),
    created_at INTEGER NOT NULL
);
CREATE INDEX llm_reservations_agent ON llm_reservations(agent_id);
