-- Backups (issue 18): agents' containers go into the snapshot; a run records how many, and
-- what it left out (JSON array of sentences) when it succeeded without some of them.
ALTER TABLE backup_runs ADD COLUMN containers INTEGER;
ALTER TABLE backup_runs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';
-- Days between automatic restore drills (0: only on request).
ALTER TABLE backup_settings ADD COLUMN drill_every_days INTEGER NOT NULL DEFAULT 7;

-- Restore drills: the newest snapshot restored into a throwaway place and checked. A host
-- that dies mid-drill finds it `running` at its next start and marks it failed.
CREATE TABLE backup_drills (
    id            TEXT PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ('running', 'passed', 'failed')),
    reason        TEXT NOT NULL CHECK (reason IN ('manual', 'scheduled')),
    snapshot_id   TEXT,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    -- JSON array of {name, ok, detail}.
    checks        TEXT NOT NULL DEFAULT '[]',
    error         TEXT
);
CREATE INDEX backup_drills_created ON backup_drills (created_at);
