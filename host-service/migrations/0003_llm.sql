-- The LLM path: provider catalog, per-agent LLM keys, budgets, usage, budget alerts.

CREATE TABLE providers (
    name       TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    url        TEXT NOT NULL,
    -- Secret. Never returned by the API, never written to LiteLLM's config file: it reaches
    -- LiteLLM only as an environment variable of its process.
    api_key    TEXT,
    -- [{"id": "...", "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 1.5}]
    models     TEXT NOT NULL DEFAULT '[]',
    enabled    INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The key an agent's framework uses on the LLM gateway (taos_llm_…), separate from the bridge
-- token so a framework that only needs model access never holds the bridge credential.
ALTER TABLE agents ADD COLUMN llm_key_hash TEXT;
CREATE UNIQUE INDEX agents_llm_key ON agents(llm_key_hash) WHERE llm_key_hash IS NOT NULL;

CREATE TABLE agent_budgets (
    agent_id  TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
    limit_usd REAL NOT NULL CHECK (limit_usd >= 0),
    period    TEXT NOT NULL CHECK (period IN ('day', 'month'))
);

-- One row per agent, UTC day and model.
CREATE TABLE llm_usage (
    agent_id   TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    day        TEXT NOT NULL,
    model      TEXT NOT NULL,
    requests   INTEGER NOT NULL DEFAULT 0,
    failures   INTEGER NOT NULL DEFAULT 0,
    tokens_in  INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    cost_usd   REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (agent_id, day, model)
);

-- Which budget thresholds (50, 80, 100) were already announced in which period.
CREATE TABLE budget_alerts (
    agent_id  TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    period    TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    sent_at   INTEGER NOT NULL,
    PRIMARY KEY (agent_id, period, threshold)
);
