-- Resend keys in blocks (docs/BENCHMARKS.md, "resend keys in blocks").
--
-- `dedupe_keys` held one (key, pos) row per moved key: moving a key cost two bound values,
-- a statement step and a B-tree insert. `dedupe_blocks` holds the same pairs in sorted
-- blocks, one row each: a block covers the keys from `first_key` up to the next block's,
-- and `pairs` is its (key, pos) pairs, 16 bytes each (two big-endian 64-bit integers),
-- sorted as SQLite sorts integers. The writer merges moved keys into the blocks they fall
-- in and writes each block back whole (actors/src/store/dedupe_blocks.rs).

CREATE TABLE dedupe_blocks (
    first_key  INTEGER PRIMARY KEY NOT NULL,
    pairs      BLOB NOT NULL
);
-- Blocks of up to 128 keys (every pair of one key in one block).
INSERT INTO dedupe_blocks (first_key, pairs)
SELECT MIN(key), unhex(group_concat(printf('%016X%016X', key, pos), '' ORDER BY key, pos))
FROM (
    SELECT key, pos, (DENSE_RANK() OVER (ORDER BY key) - 1) / 128 AS chunk
    FROM dedupe_keys
)
GROUP BY chunk;
DROP TABLE dedupe_keys;
