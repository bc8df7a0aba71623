-- Archive targets (issue 18 item 7): where archived agents' containers are kept. `pool`: on
-- the container runtime's storage pool (as before); `backup`: exported into the backup
-- repository and deleted from the pool, brought back by a restore from the archive.
ALTER TABLE backup_settings ADD COLUMN archive_target TEXT NOT NULL DEFAULT 'pool'
    CHECK (archive_target IN ('pool', 'backup'));

-- Where each archive's container is now, and the move in progress. A host that dies
-- mid-move finds `moving_out` or `moving_in` at its next start and settles it from what
-- exists (the container, the repository snapshot): the container is deleted from the pool
-- only after `backup_snapshot` is committed, so one of the two always holds it.
ALTER TABLE archives ADD COLUMN location TEXT NOT NULL DEFAULT 'pool'
    CHECK (location IN ('pool', 'moving_out', 'backup', 'moving_in'));
-- The restic snapshot holding the container while it is in (or moving to) the repository.
ALTER TABLE archives ADD COLUMN backup_snapshot TEXT;
