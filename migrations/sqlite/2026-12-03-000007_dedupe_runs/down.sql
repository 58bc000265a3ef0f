-- The runs are not unpacked: `moved_through = 0` makes the broker read the keys of the
-- dedupe window's messages back from `messages` at its next start, as after migration 3.
CREATE TABLE dedupe_blocks (
    first_key  INTEGER PRIMARY KEY NOT NULL,
    pairs      BLOB NOT NULL
);
DROP TABLE dedupe_run_blocks;
DROP TABLE dedupe_runs;
UPDATE dedupe_state SET moved_through = 0;
