-- State documents get a revision: a per-(user, collection) counter taken by every applied
-- write, so that a device fetches what changed since the revision it last saw.
ALTER TABLE state_documents ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
CREATE INDEX state_documents_by_revision ON state_documents (user_id, collection, revision);

CREATE TABLE state_collections (
    user_id        TEXT NOT NULL,
    collection     TEXT NOT NULL,
    last_revision  BIGINT NOT NULL,
    PRIMARY KEY (user_id, collection)
);
