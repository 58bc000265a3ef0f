-- Resend keys in one B-tree instead of two (docs/BENCHMARKS.md, "resend keys").
--
-- `dedupe_keys` was a rowid table (key, channel, seq, created_at) plus an index on `key`:
-- every moved key cost a row with its channel name and an index entry. A key now points at
-- its message's position (`messages.pos`), and (key, pos) is the table itself: a sorted
-- B-tree of two integers, WITHOUT ROWID. The dedupe window is checked on the message row.
-- (key, pos) is unique: a key moved again after a restart is ignored (INSERT OR IGNORE).

CREATE TABLE dedupe_positions (
    key  BIGINT NOT NULL,
    pos  BIGINT NOT NULL,
    PRIMARY KEY (key, pos)
) WITHOUT ROWID;
INSERT OR IGNORE INTO dedupe_positions (key, pos)
SELECT d.key, m.pos
FROM dedupe_keys d JOIN messages m ON m.channel = d.channel AND m.seq = d.seq;
DROP TABLE dedupe_keys;
ALTER TABLE dedupe_positions RENAME TO dedupe_keys;
