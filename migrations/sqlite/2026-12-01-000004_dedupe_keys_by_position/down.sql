CREATE TABLE dedupe_rows (
    key         BIGINT NOT NULL,
    channel     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
INSERT INTO dedupe_rows (key, channel, seq, created_at)
SELECT d.key, m.channel, m.seq, m.created_at
FROM dedupe_keys d JOIN messages m ON m.pos = d.pos
ORDER BY m.pos;
DROP TABLE dedupe_keys;
ALTER TABLE dedupe_rows RENAME TO dedupe_keys;
CREATE INDEX dedupe_keys_key ON dedupe_keys (key);
