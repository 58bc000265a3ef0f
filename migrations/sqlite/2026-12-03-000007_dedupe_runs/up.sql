-- Resend keys in sorted runs (docs/BENCHMARKS.md, "resend keys at scale").
--
-- `dedupe_blocks` was one sorted B-tree of blocks that every move of keys merged into. Keys
-- are random, so once the table held a few million of them each moved key rewrote a block
-- (and a 16 KiB WAL frame) of its own: at 3.0 M stored messages durable throughput fell from
-- 107 k to 43 k acked/s. Keys now move as runs: a move writes the keys held in memory as
-- a new sorted run, appended; runs of about the same size are merged into one a few blocks
-- per commit, so each key is rewritten a handful of times, always sequentially
-- (actors/src/store/dedupe_runs.rs).
--
-- `dedupe_runs`: one row per run. `state` 0: being built by a merge (not consulted; thrown
-- away at start-up), 1: live, 2: merged away (its blocks are deleted a few per commit).
-- `fences` holds the first key of each block (8-byte big-endian signed integers, in order).
-- `dedupe_run_blocks`: block `i` of run `r` has id `r * 2^32 + i`; `pairs` is its sorted
-- (key, position) pairs, 16 bytes each, big-endian, as `dedupe_blocks` held them.

CREATE TABLE dedupe_runs (
    id      INTEGER PRIMARY KEY NOT NULL,
    state   INTEGER NOT NULL,
    keys    BIGINT NOT NULL,
    fences  BLOB NOT NULL
);
CREATE TABLE dedupe_run_blocks (
    id     INTEGER PRIMARY KEY NOT NULL,
    pairs  BLOB NOT NULL
);

-- The old blocks, in key order, become run 1.
INSERT INTO dedupe_run_blocks (id, pairs)
SELECT 4294967296 + ROW_NUMBER() OVER (ORDER BY first_key) - 1, pairs
FROM dedupe_blocks
WHERE length(pairs) >= 16;
INSERT INTO dedupe_runs (id, state, keys, fences)
SELECT 1, 1, SUM(length(pairs)) / 16,
       unhex(group_concat(hex(substr(pairs, 1, 8)), '' ORDER BY id))
FROM dedupe_run_blocks
HAVING COUNT(*) > 0;
DROP TABLE dedupe_blocks;
