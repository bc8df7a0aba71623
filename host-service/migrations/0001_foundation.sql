-- Accounts, sessions, devices, notifications and the host event log.
-- Times are integer milliseconds since the Unix epoch (UTC). Ids are UUID text.
-- Secrets (session tokens, device tokens, pairing secrets) are stored only as SHA-256 hex hashes.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    is_owner      INTEGER NOT NULL DEFAULT 0 CHECK (is_owner IN (0, 1)),
    created_at    INTEGER NOT NULL,
    last_login_at INTEGER
);

CREATE TABLE sessions (
    token_hash   TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token   TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE pairing_tokens (
    secret_hash TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    created_by  TEXT NOT NULL
);

CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    platform     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER,
    revoked_at   INTEGER
);

CREATE TABLE device_tokens (
    token_hash TEXT PRIMARY KEY,
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    -- A refresh token is single use: set when it was exchanged. Presenting it again is reuse.
    used_at    INTEGER
);
CREATE INDEX device_tokens_device ON device_tokens(device_id);

CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    level      TEXT NOT NULL CHECK (level IN ('info', 'warning', 'error')),
    source     TEXT NOT NULL,
    title      TEXT NOT NULL,
    message    TEXT NOT NULL,
    read       INTEGER NOT NULL DEFAULT 0 CHECK (read IN (0, 1)),
    data       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX notifications_unread ON notifications(read, id);

-- The host event log behind GET /api/events. Bounded: old rows are pruned, and a client whose
-- Last-Event-ID is older than the oldest kept row is told to resync.
CREATE TABLE host_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL
);
