-- Switchboard schema on PostgreSQL: the tables of the SQLite schema, with the constraints
-- that let several broker processes share one database. SQLite's own machinery for one
-- writer process (message positions, the channel index, resend-key runs) has no twin
-- here: PostgreSQL's indexes do that work.

-- One row per channel that ever held a message. Seqs are taken from `last_seq` inside the
-- writing transaction (UPDATE ... RETURNING holds the row until commit), so writers on
-- different nodes never give out the same seq and a rolled-back batch leaves no gap.
CREATE TABLE channels (
    name        TEXT PRIMARY KEY,
    last_seq    BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

-- Every persisted message; the database enforces one message per (channel, seq).
CREATE TABLE messages (
    channel        TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    id             TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL,
    sender_id      TEXT NOT NULL,
    target_id      TEXT NOT NULL,
    client_id      TEXT,
    client_msg_id  TEXT,
    payload        TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (channel, seq)
);

-- The resend key of every message sent with a client frame id: a resend of (sender, id)
-- within the dedupe window finds its message here (INSERT ... ON CONFLICT), and the
-- database enforces one message per key. Rows older than the window may be replaced.
CREATE TABLE resend_keys (
    sender_id      TEXT NOT NULL,
    client_msg_id  TEXT NOT NULL,
    channel        TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (sender_id, client_msg_id)
);
CREATE INDEX resend_keys_created ON resend_keys (created_at);

CREATE TABLE groups (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    owner_id    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_id  TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL,
    added_at  BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);

-- What a user has read, per channel (read receipts).
CREATE TABLE read_cursors (
    user_id     TEXT NOT NULL,
    channel     TEXT NOT NULL,
    up_to_seq   BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, channel)
);

-- What one device (user, client_id) has marked delivered, per channel (offline sync).
CREATE TABLE delivery_cursors (
    user_id     TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    channel     TEXT NOT NULL,
    up_to_seq   BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id, channel)
);

-- Devices seen per user: a client_id never seen before gets the new-device backlog.
CREATE TABLE devices (
    user_id     TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    device      TEXT,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- API keys are stored as a SHA-256 hash of the key; scopes is a comma-separated list.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- Revoked token ids (jti) until the token would have expired anyway.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT NOT NULL
);

-- Small synced documents (settings, tasks), versioned per key.
CREATE TABLE state_documents (
    user_id     TEXT NOT NULL,
    collection  TEXT NOT NULL,
    doc_key     TEXT NOT NULL,
    value       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    updated_by  TEXT,
    PRIMARY KEY (user_id, collection, doc_key)
);

-- Who a user follows, for presence.
CREATE TABLE following (
    user_id     TEXT NOT NULL,
    follows_id  TEXT NOT NULL,
    PRIMARY KEY (user_id, follows_id)
);
