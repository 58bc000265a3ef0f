-- Resend detection without an index on random client ids. An index on
-- (sender_id, client_msg_id) takes every insert to a random page, so each stored message
-- dirtied a page of its own, written to the WAL and back at the next checkpoint. The writer
-- now keeps the keys of new messages in memory and moves them here a slice of the key
-- space at a time, sorted, so that they land together on few pages (actors/src/store/dedupe.rs).

-- `key` is a 64-bit hash of (sender_id, client_msg_id); collisions are allowed (no UNIQUE):
-- a look-up confirms each candidate against the message row itself.
CREATE TABLE dedupe_keys (
    key         BIGINT NOT NULL,
    channel     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX dedupe_keys_key ON dedupe_keys (key);

-- One row: every message with an id at or below `moved_through` has its key in
-- dedupe_keys; later ones are found again in `messages` at start-up. '' (below every id):
-- none moved yet, which is where a database made before this migration starts.
CREATE TABLE dedupe_state (
    id             INTEGER PRIMARY KEY NOT NULL,
    moved_through  TEXT NOT NULL
);
INSERT INTO dedupe_state (id, moved_through) VALUES (1, '');

DROP INDEX messages_dedupe;
