-- Backups (issue 18): where they go and how long they are kept (one row), and every run.
-- `destination` is JSON of the settings' destination (`{"kind": "local", "path": …}`; SFTP and
-- S3 are later variants of the same JSON); `passphrase` is sealed like a provider key (the
-- secret box, `<data>/secret.key`), never stored in the clear.
CREATE TABLE backup_settings (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    destination   TEXT NOT NULL,
    passphrase    TEXT NOT NULL,
    keep_daily    INTEGER NOT NULL,
    keep_weekly   INTEGER NOT NULL,
    keep_monthly  INTEGER NOT NULL,
    -- Set once a run opened (or made) the repository at this destination with this
    -- passphrase; a new destination clears it. While set, the passphrase can't change.
    repository_ready INTEGER NOT NULL DEFAULT 0,
    updated_at    INTEGER NOT NULL
);

-- One backup run, from the request to its end. A host that dies mid-run finds it `queued` or
-- `running` at its next start and marks it failed with the reason.
CREATE TABLE backup_runs (
    id            TEXT PRIMARY KEY,
    state         TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    -- Where it went, in words (the destination at the time of the run).
    destination   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    snapshot_id   TEXT,
    -- restic's summary: bytes added to the repository, and bytes and files looked at.
    data_added    INTEGER,
    total_bytes   INTEGER,
    total_files   INTEGER,
    error         TEXT
);
CREATE INDEX backup_runs_created ON backup_runs (created_at);
