DROP TABLE state_collections;
DROP INDEX state_documents_by_revision;
ALTER TABLE state_documents DROP COLUMN revision;
