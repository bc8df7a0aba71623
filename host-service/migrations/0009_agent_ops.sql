-- Archive, restore and purge each touch the container runtime, the file system and the
-- database, which no single transaction spans. Before its first change an operation writes
-- what it is about to do here (one at a time per agent); the row goes in the same transaction
-- that makes the result visible. A row found at start-up is an operation a crash interrupted:
-- the host undoes it (archive, restore before its commit) or finishes it (restore after its
-- commit, purge), so nothing is left half-done.
CREATE TABLE agent_ops (
    agent_id   TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('archive', 'restore', 'purge')),
    -- The last step that finished.
    step       TEXT NOT NULL,
    -- The names the operation uses (JSON), so it can be undone or finished without guessing.
    plan       TEXT NOT NULL,
    started_at INTEGER NOT NULL
);
