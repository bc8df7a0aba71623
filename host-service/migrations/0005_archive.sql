-- Archived agents. The agent row stays (its usage and traces keep their owner) but gives up its
-- slug, which becomes free for a new agent; the archive remembers the slug and where the
-- container, snapshot and exported chat went.
CREATE TABLE archives (
    id          TEXT PRIMARY KEY,
    agent_id    TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    slug        TEXT NOT NULL,
    display_name TEXT NOT NULL,
    -- The container's name while archived (NULL for agents without one).
    container   TEXT,
    snapshot    TEXT,
    -- <data>/archive/<slug>-<ts>: chat.jsonl and the agent's trace folder.
    dir         TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX archives_agent ON archives(agent_id);
