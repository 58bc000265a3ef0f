DROP FUNCTION switchboard_append;
ALTER TABLE resend_keys ADD COLUMN channel TEXT, ADD COLUMN seq BIGINT;
UPDATE resend_keys r SET channel = m.channel, seq = m.seq
    FROM messages m WHERE m.id = r.message_id;
DELETE FROM resend_keys WHERE channel IS NULL;
ALTER TABLE resend_keys ALTER COLUMN channel SET NOT NULL, ALTER COLUMN seq SET NOT NULL;
ALTER TABLE resend_keys DROP COLUMN message_id;
