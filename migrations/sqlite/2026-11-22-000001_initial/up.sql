-- Switchboard schema, written for the whole wire contract.
-- Portable SQL: it runs unchanged on SQLite and PostgreSQL (TEXT ids, BIGINT
-- millisecond timestamps, no engine-specific types), so the PostgreSQL backend
-- reuses it.

-- One row per channel that ever held a message: the seq counter lives here so that
-- seq assignment is one row update inside the batch transaction (no gap, no reuse).
CREATE TABLE channels (
    name        TEXT PRIMARY KEY NOT NULL,
    last_seq    BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL
);

-- Every persisted message. `id` is a UUID v7 (time-ordered), `seq` is per channel.
CREATE TABLE messages (
    id             TEXT PRIMARY KEY NOT NULL,
    channel        TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    kind           TEXT NOT NULL,
    sender_id      TEXT NOT NULL,
    target_id      TEXT NOT NULL,
    client_id      TEXT,
    client_msg_id  TEXT,
    payload        TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (channel, seq)
);
-- Dedupe look-ups: (sender, client frame id) within the dedupe window.
CREATE INDEX messages_dedupe ON messages (sender_id, client_msg_id);
CREATE INDEX messages_created ON messages (created_at);

CREATE TABLE groups (
    id          TEXT PRIMARY KEY NOT NULL,
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
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- Revoked token ids (jti) until the token would have expired anyway.
CREATE TABLE revoked_tokens (
    jti         TEXT PRIMARY KEY NOT NULL,
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
