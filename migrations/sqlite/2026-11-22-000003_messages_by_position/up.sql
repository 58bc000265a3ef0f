-- Fewer B-trees per stored message (docs/BENCHMARKS.md, "pages per commit").
--
-- 1. `messages` is rebuilt: `id` (UUID v7) stays a column but loses its unique index, which
--    nothing looks messages up by and which cost each commit three or four pages (SQLite
--    rebalances an index's last leaves on appends). `pos`, the rowid, numbers messages in
--    the order they were stored; (channel, seq) stays unique.
-- 2. Resend detection moves off the index on (sender_id, client_msg_id): client ids are
--    random, so that index took each insert to a random page. The writer keeps the keys of
--    new messages in memory and moves them to `dedupe_keys` a slice of the key space at a
--    time, sorted, so that they share pages (actors/src/store/dedupe.rs).

CREATE TABLE messages_by_position (
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
INSERT INTO messages_by_position
    (id, channel, seq, kind, sender_id, target_id, client_id, client_msg_id, payload, created_at)
SELECT id, channel, seq, kind, sender_id, target_id, client_id, client_msg_id, payload, created_at
FROM messages ORDER BY id;
DROP TABLE messages;
ALTER TABLE messages_by_position RENAME TO messages;

-- `key` is a 64-bit hash of (sender_id, client_msg_id); collisions are allowed (no UNIQUE):
-- a look-up confirms each candidate against the message row itself.
CREATE TABLE dedupe_keys (
    key         BIGINT NOT NULL,
    channel     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX dedupe_keys_key ON dedupe_keys (key);

-- One row: every message at or below position `moved_through` has its key in dedupe_keys;
-- the keys of later ones are read back from `messages` at start-up. 0: none moved yet, which
-- is where a database made before this migration starts.
CREATE TABLE dedupe_state (
    id             INTEGER PRIMARY KEY NOT NULL,
    moved_through  BIGINT NOT NULL
);
INSERT INTO dedupe_state (id, moved_through) VALUES (1, 0);
