-- Agents as principals, chat channels and messages with per-channel sequence numbers, and
-- the durable per-agent bridge outbox.

CREATE TABLE agents (
    id              TEXT PRIMARY KEY,
    slug            TEXT NOT NULL UNIQUE,
    display_name    TEXT NOT NULL,
    emoji           TEXT NOT NULL DEFAULT '',
    color           TEXT NOT NULL DEFAULT '',
    kind            TEXT NOT NULL CHECK (kind IN ('external', 'container')),
    status          TEXT NOT NULL,
    model           TEXT,
    fallback_models TEXT NOT NULL DEFAULT '[]',
    created_at      INTEGER NOT NULL,
    paused          INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    -- SHA-256 of the agent token; the token itself is shown once.
    token_hash      TEXT NOT NULL UNIQUE,
    -- The last delivery sequence number given to this agent.
    delivery_seq    INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE channels (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    type       TEXT NOT NULL CHECK (type IN ('dm', 'group', 'topic')),
    settings   TEXT NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    -- Every change a client can see takes last_seq + 1.
    last_seq   INTEGER NOT NULL DEFAULT 0,
    archived   INTEGER NOT NULL DEFAULT 0 CHECK (archived IN (0, 1)),
    -- For DMs: the agent the DM is with.
    dm_agent_id TEXT REFERENCES agents(id) ON DELETE SET NULL
);

CREATE TABLE channel_members (
    channel_id TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    member     TEXT NOT NULL,
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (channel_id, member)
);
CREATE INDEX channel_members_member ON channel_members(member);

CREATE TABLE messages (
    id           TEXT PRIMARY KEY,
    channel_id   TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    -- Sequence number of the latest visible change; created_seq orders history.
    seq          INTEGER NOT NULL,
    created_seq  INTEGER NOT NULL,
    author_id    TEXT NOT NULL,
    author_type  TEXT NOT NULL CHECK (author_type IN ('user', 'agent', 'system')),
    content      TEXT NOT NULL,
    content_type TEXT NOT NULL DEFAULT 'text',
    thread_id    TEXT,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'streaming', 'complete', 'error')),
    client_id    TEXT,
    metadata     TEXT NOT NULL DEFAULT '{}',
    created_at   INTEGER NOT NULL,
    edited_at    INTEGER,
    deleted_at   INTEGER
);
CREATE INDEX messages_channel_seq ON messages(channel_id, seq);
CREATE INDEX messages_channel_created ON messages(channel_id, created_seq);
CREATE UNIQUE INDEX messages_client_id ON messages(channel_id, author_id, client_id)
    WHERE client_id IS NOT NULL;

-- The bridge outbox: stored before it is sent, resent after Last-Event-ID.
CREATE TABLE deliveries (
    agent_id         TEXT NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    trace_id         TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    channel_id       TEXT NOT NULL,
    thread_id        TEXT,
    hops_since_user  INTEGER NOT NULL,
    payload          TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    -- The placeholder message a streaming reply writes into.
    reply_message_id TEXT,
    -- Set by a final or error reply.
    answered_at      INTEGER,
    PRIMARY KEY (agent_id, seq)
);
CREATE UNIQUE INDEX deliveries_trace ON deliveries(agent_id, trace_id);
