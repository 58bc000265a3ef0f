-- The (channel, seq) index out of the message insert (docs/BENCHMARKS.md, "channel index").
--
-- `messages` had UNIQUE (channel, seq): an index that every stored message updated, so a
-- commit rewrote one index leaf per channel it held, however few of that channel's messages
-- it carried (at 200 busy channels, about half of the pages a commit wrote). The index is
-- now a table of its own, `channel_index`, which the writer fills a channel at a time: it
-- keeps the positions of a channel's newest messages in memory and moves them as one row
-- once there are enough (actors/src/store/channel_index.rs). Readers look in both.
-- `messages` keeps its positions (dedupe_keys points at them).

CREATE TABLE messages_unindexed (
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
    created_at     BIGINT NOT NULL
);
INSERT INTO messages_unindexed
    (pos, id, channel, seq, kind, sender_id, target_id, client_id, client_msg_id, payload,
     created_at)
SELECT pos, id, channel, seq, kind, sender_id, target_id, client_id, client_msg_id, payload,
       created_at
FROM messages ORDER BY pos;
DROP TABLE messages;
ALTER TABLE messages_unindexed RENAME TO messages;

-- A row holds the positions of a run of consecutive seqs of one channel (at most 256, big-
-- endian 8-byte integers in seq order), so that moving a channel's places writes one row.
CREATE TABLE channel_index (
    channel    TEXT NOT NULL,
    first_seq  BIGINT NOT NULL,
    last_seq   BIGINT NOT NULL,
    positions  BLOB NOT NULL,
    UNIQUE (channel, first_seq)
);
-- Runs of up to 128 consecutive seqs ("island": seq minus its rank is constant along a run).
INSERT INTO channel_index (channel, first_seq, last_seq, positions)
SELECT channel, MIN(seq), MAX(seq), unhex(group_concat(printf('%016X', pos), '' ORDER BY seq))
FROM (
    SELECT channel, seq, pos,
           seq - ROW_NUMBER() OVER (PARTITION BY channel ORDER BY seq) AS island,
           (ROW_NUMBER() OVER (PARTITION BY channel ORDER BY seq) - 1) / 128 AS chunk
    FROM messages
)
GROUP BY channel, island, chunk
ORDER BY channel, MIN(seq);

-- One row: every message at or below position `moved_through` is in channel_index; at
-- start-up the writer reads back the later ones that are not.
CREATE TABLE channel_index_state (
    id             INTEGER PRIMARY KEY NOT NULL,
    moved_through  BIGINT NOT NULL
);
INSERT INTO channel_index_state (id, moved_through)
SELECT 1, COALESCE(MAX(pos), 0) FROM messages;
