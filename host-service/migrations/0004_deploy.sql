-- Deploys are persisted state machines: a restart resumes or rolls back, never leaves an agent
-- "deploying" forever.
CREATE TABLE deploys (
    id         TEXT PRIMARY KEY,
    agent_id   TEXT,
    slug       TEXT NOT NULL,
    framework  TEXT NOT NULL,
    -- running | succeeded | rolled_back
    status     TEXT NOT NULL,
    -- [{"name", "state": pending|running|done|failed|skipped, "started_at", "finished_at", "detail"}]
    steps      TEXT NOT NULL,
    error      TEXT,
    request    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX deploys_slug ON deploys(slug, created_at);

ALTER TABLE agents ADD COLUMN framework TEXT;
ALTER TABLE agents ADD COLUMN container TEXT;
