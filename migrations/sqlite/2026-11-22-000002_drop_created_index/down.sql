CREATE INDEX messages_created ON messages (created_at);
