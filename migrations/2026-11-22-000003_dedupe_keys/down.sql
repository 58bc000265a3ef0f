CREATE INDEX messages_dedupe ON messages (sender_id, client_msg_id);
DROP TABLE dedupe_state;
DROP TABLE dedupe_keys;
