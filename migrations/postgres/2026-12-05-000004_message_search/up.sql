-- Full-text search over message contents: a tsvector per message with a GIN index. The
-- index is filled lazily, before a search runs, for the channels the searcher may read,
-- from the seqs after each channel's `search_progress.indexed_through` (a channel's seqs
-- commit in order, so nothing below it can appear later); storing a message does not pay
-- for indexing it.
CREATE TABLE message_search (
    channel     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    doc         TSVECTOR NOT NULL,
    PRIMARY KEY (channel, seq)
);
CREATE INDEX message_search_doc ON message_search USING GIN (doc);

CREATE TABLE search_progress (
    channel          TEXT PRIMARY KEY,
    indexed_through  BIGINT NOT NULL
);
