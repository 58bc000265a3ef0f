DROP TABLE search_progress;
DROP TABLE message_search;
