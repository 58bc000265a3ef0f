-- A resend key names its message by id, so that a batch can take its keys before its
-- seqs are known; one function appends a batch of messages in one statement.

ALTER TABLE resend_keys ADD COLUMN message_id TEXT;
UPDATE resend_keys r SET message_id = m.id
    FROM messages m WHERE m.channel = r.channel AND m.seq = r.seq;
DELETE FROM resend_keys WHERE message_id IS NULL;
ALTER TABLE resend_keys ALTER COLUMN message_id SET NOT NULL;
ALTER TABLE resend_keys DROP COLUMN channel, DROP COLUMN seq;

-- Appends the messages given as one array per column (element i of every array is write
-- i, numbered from 1) and answers each write's number with the seq it got; a write whose
-- resend key (sender, frame id) a message took since `p_since` gets no row (a resend).
-- Writes with no frame id have no key. The keys go first, sorted, so a key another
-- transaction holds uncommitted makes this one wait and then find it taken; then each
-- channel's counter row (sorted by name) gives the channel's seqs, in write order.
CREATE FUNCTION switchboard_append(
    p_channels TEXT[], p_kinds TEXT[], p_senders TEXT[], p_targets TEXT[],
    p_clients TEXT[], p_frames TEXT[], p_payloads TEXT[], p_ids TEXT[],
    p_now BIGINT, p_since BIGINT)
RETURNS TABLE (write_no INT, given_seq BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    taken TEXT[];
BEGIN
    WITH k AS (
        INSERT INTO resend_keys AS r (sender_id, client_msg_id, message_id, created_at)
        SELECT u.s, u.f, u.i, p_now
        FROM unnest(p_senders, p_frames, p_ids) AS u(s, f, i)
        WHERE u.f IS NOT NULL
        ORDER BY u.s, u.f
        ON CONFLICT (sender_id, client_msg_id) DO UPDATE
            SET message_id = EXCLUDED.message_id, created_at = EXCLUDED.created_at
            WHERE r.created_at < p_since
        RETURNING r.message_id)
    SELECT array_agg(k.message_id) INTO taken FROM k;

    RETURN QUERY
    WITH input AS (
        SELECT u.c, u.k, u.s, u.t, u.d, u.f, u.p, u.i, u.o
        FROM unnest(p_channels, p_kinds, p_senders, p_targets, p_clients, p_frames,
                    p_payloads, p_ids) WITH ORDINALITY AS u(c, k, s, t, d, f, p, i, o)
        LEFT JOIN unnest(taken) AS kt(i) ON kt.i = u.i
        WHERE u.f IS NULL OR kt.i IS NOT NULL),
    counts AS (
        SELECT input.c, count(*) AS n FROM input GROUP BY input.c),
    seqs AS (
        INSERT INTO channels AS ch (name, last_seq, created_at)
        SELECT counts.c, counts.n, p_now FROM counts ORDER BY counts.c
        ON CONFLICT (name) DO UPDATE SET last_seq = ch.last_seq + EXCLUDED.last_seq
        RETURNING ch.name, ch.last_seq),
    numbered AS (
        SELECT input.*, seqs.last_seq - counts.n
                        + row_number() OVER (PARTITION BY input.c ORDER BY input.o) AS q
        FROM input JOIN counts ON counts.c = input.c JOIN seqs ON seqs.name = input.c),
    stored AS (
        INSERT INTO messages (channel, seq, id, kind, sender_id, target_id, client_id,
                              client_msg_id, payload, created_at)
        SELECT n.c, n.q, n.i, n.k, n.s, n.t, n.d, n.f, n.p, p_now FROM numbered n)
    SELECT numbered.o::INT, numbered.q FROM numbered;
END
$$;
