-- Whether an agent's tool calls run at once (`auto`, what every agent did before), wait for a
-- person (`ask`) or never run (`off`), with per-tool overrides as a JSON object of the same
-- words ({"shell": "ask"}).
ALTER TABLE agents ADD COLUMN tool_policy TEXT NOT NULL DEFAULT 'auto'
    CHECK (tool_policy IN ('auto', 'ask', 'off'));
ALTER TABLE agents ADD COLUMN tool_overrides TEXT NOT NULL DEFAULT '{}';

-- A tool call under `ask`, waiting for (or given) a person's answer. The host holds it, not
-- the sidecar, so it outlives a restart of either; one row per (agent, trace, step, tool,
-- arguments), so a sidecar that runs the turn again finds the earlier answer.
CREATE TABLE tool_approvals (
    id          TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    trace_id    TEXT NOT NULL,
    channel_id  TEXT NOT NULL,
    -- The answer's chat message, where the call shows as a tool step.
    message_id  TEXT,
    call_id     TEXT NOT NULL,
    step        INTEGER NOT NULL,
    tool        TEXT NOT NULL,
    -- Canonical JSON (keys sorted), and its SHA-256 for the unique key.
    args        TEXT NOT NULL,
    args_hash   TEXT NOT NULL,
    state       TEXT NOT NULL
        CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'cancelled')),
    reason      TEXT,
    decided_by  TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    decided_at  INTEGER,
    UNIQUE (agent_id, trace_id, step, tool, args_hash)
);
CREATE INDEX tool_approvals_pending ON tool_approvals (state, expires_at);
