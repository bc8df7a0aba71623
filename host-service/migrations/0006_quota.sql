-- Disk quota state per container agent, persisted so a restart doesn't alert again.
CREATE TABLE agent_disk (
    agent_id        TEXT PRIMARY KEY REFERENCES agents(id) ON DELETE CASCADE,
    quota_bytes     INTEGER NOT NULL,
    used_bytes      INTEGER,
    state           TEXT NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'warn', 'hard')),
    last_checked_at INTEGER,
    -- Paused by the monitor (not by the owner): resumed when the disk is fine again.
    paused_for_disk INTEGER NOT NULL DEFAULT 0 CHECK (paused_for_disk IN (0, 1))
);
