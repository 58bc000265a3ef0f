-- Message ids are UUID v7, ordered by time, so the primary key already serves look-ups by
-- time (retention, "since"); a second index on created_at only cost every insert a B-tree
-- write.
DROP INDEX messages_created;
