DROP TABLE search_state;
DROP TABLE message_search;
