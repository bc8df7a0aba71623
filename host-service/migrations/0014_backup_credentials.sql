-- Backups to SFTP and S3-compatible storage (issue 18): the destination's secrets (an SSH
-- private key, or an S3 access key and secret) as JSON sealed like a provider key under
-- `<data>/secret.key`. NULL for a local folder.
ALTER TABLE backup_settings ADD COLUMN credentials TEXT;
