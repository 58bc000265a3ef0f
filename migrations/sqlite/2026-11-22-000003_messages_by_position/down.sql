DROP TABLE dedupe_state;
DROP TABLE dedupe_keys;
CREATE TABLE messages_by_id (
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
INSERT INTO messages_by_id
SELECT id, channel, seq, kind, sender_id, target_id, client_id, client_msg_id, payload, created_at
FROM messages ORDER BY pos;
DROP TABLE messages;
ALTER TABLE messages_by_id RENAME TO messages;
CREATE INDEX messages_dedupe ON messages (sender_id, client_msg_id);
