-- Full-text search over message contents (FTS5, contentless: the text stays in `messages`).
-- A message's row id here is its position in `messages`. The index is filled lazily, before
-- a search runs, from the messages stored after `search_state.indexed_through`, so storing
-- a message does not pay for indexing it.
CREATE VIRTUAL TABLE message_search USING fts5(body, content = '');

CREATE TABLE search_state (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    indexed_through  BIGINT NOT NULL
);
INSERT INTO search_state (id, indexed_through) VALUES (1, 0);
