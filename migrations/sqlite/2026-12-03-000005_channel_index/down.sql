CREATE TABLE messages_indexed (
    pos            INTEGER PRIMARY KEY NOT NULL,
    id             TEXT NOT NULL,
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
INSERT INTO messages_indexed
    (pos, id, channel, seq, kind, sender_id, target_id, client_id, client_msg_id, payload,
     created_at)
SELECT pos, id, channel, seq, kind, sender_id, target_id, client_id, client_msg_id, payload,
       created_at
FROM messages ORDER BY pos;
DROP TABLE messages;
ALTER TABLE messages_indexed RENAME TO messages;
DROP TABLE channel_index_state;
DROP TABLE channel_index;
