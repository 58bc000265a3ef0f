-- The blocks are not unpacked: `moved_through = 0` makes the broker read the keys of the
-- dedupe window's messages back from `messages` at its next start, as after migration 3.
CREATE TABLE dedupe_keys (
    key  BIGINT NOT NULL,
    pos  BIGINT NOT NULL,
    PRIMARY KEY (key, pos)
) WITHOUT ROWID;
DROP TABLE dedupe_blocks;
UPDATE dedupe_state SET moved_through = 0;
