-- Scheduled backups (issue 18): when the host runs them by itself (JSON of the settings'
-- schedule: off, daily at HH:MM UTC, or every N hours), and why each run was made.
ALTER TABLE backup_settings ADD COLUMN schedule TEXT NOT NULL DEFAULT '{"kind":"off"}';
-- manual (asked for), scheduled (its time came), missed (its time passed while the host was
-- off, run once at the next start).
ALTER TABLE backup_runs ADD COLUMN reason TEXT NOT NULL DEFAULT 'manual'
    CHECK (reason IN ('manual', 'scheduled', 'missed'));
