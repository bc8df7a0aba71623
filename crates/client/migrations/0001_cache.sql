-- The app's offline cache: what a paired host last said, per host (by this device's id).
CREATE TABLE channels (
    host_id    TEXT NOT NULL,
    id         TEXT NOT NULL,
    body       TEXT NOT NULL,           -- the host's channel object, JSON
    last_seq   INTEGER NOT NULL DEFAULT 0, -- the highest seq this cache has applied
    muted      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (host_id, id)
);

CREATE TABLE messages (
    host_id    TEXT NOT NULL,
    id         TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    created_at INTEGER NOT NULL,        -- ms, for order
    body       TEXT NOT NULL,           -- the host's message object, JSON
    PRIMARY KEY (host_id, id)
);
CREATE INDEX messages_by_channel ON messages (host_id, channel_id, created_at, id);

CREATE TABLE agents (
    host_id TEXT NOT NULL,
    slug    TEXT NOT NULL,
    body    TEXT NOT NULL,
    PRIMARY KEY (host_id, slug)
);

-- Messages written while the host was out of reach, sent in order when it is back.
CREATE TABLE outbox (
    host_id    TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    position   INTEGER NOT NULL,
    channel_id TEXT NOT NULL,
    content    TEXT NOT NULL,
    thread_id  TEXT,
    state      TEXT NOT NULL DEFAULT 'queued', -- queued | sent | failed
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    message_id TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (host_id, client_id)
);
CREATE INDEX outbox_order ON outbox (host_id, state, position);

CREATE TABLE meta (
    host_id TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (host_id, key)
);
