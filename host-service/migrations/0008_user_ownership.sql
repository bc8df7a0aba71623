-- Other users than the owner: who made a channel, and who a notification or host event is for.
--
-- A channel's creator (a chat member id, `user:<name>`) may rename, archive or delete it and
-- change its human members; NULL (DMs, and channels from before this migration) means only the
-- owner may.
ALTER TABLE channels ADD COLUMN created_by TEXT;

-- The user a notification is for; NULL means the owner (everything the host raises itself).
-- The owner sees every notification, another user only their own.
ALTER TABLE notifications ADD COLUMN user_id TEXT REFERENCES users(id) ON DELETE CASCADE;
CREATE INDEX notifications_user ON notifications(user_id, id);

-- The same for host events: NULL is the owner's stream (which carries every event), a user id
-- puts the event on that user's stream as well.
ALTER TABLE host_events ADD COLUMN user_id TEXT;
