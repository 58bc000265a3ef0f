//! Queries of the PostgreSQL backend. Statements that take many rows bind one array per
//! column and `unnest` them, so a batch of any size is one round trip per statement.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};

use crate::ids::MessageId;
use crate::store::models::{GroupRow, Page, SearchQuery, StoredMessage};
use crate::store::StoreError;

/// The columns of a `messages` row, in the order [`MessageRow`] reads them.
const MESSAGE_COLUMNS: &str = "m.channel, m.seq, m.id, m.kind, m.sender_id, m.target_id, \
     m.client_id, m.client_msg_id, m.payload, m.created_at";

/// A `messages` row as read by name.
#[derive(Debug, QueryableByName)]
pub struct MessageRow {
    #[diesel(sql_type = Text)]
    channel: String,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Text)]
    sender_id: String,
    #[diesel(sql_type = Text)]
    target_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    client_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    client_msg_id: Option<String>,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
}

impl MessageRow {
    /// The stored message; a row whose id is not a UUID is an error (the broker writes no
    /// other).
    pub fn into_stored(self) -> Result<StoredMessage, StoreError> {
        let id = MessageId::parse(&self.id)
            .ok_or(StoreError::Invariant("a stored message id is not a UUID"))?;
        Ok(StoredMessage {
            id,
            channel: self.channel.into(),
            seq: self.seq,
            kind: self.kind.into(),
            sender_id: self.sender_id.into(),
            target_id: self.target_id.into(),
            client_id: self.client_id.map(Into::into),
            client_msg_id: self.client_msg_id,
            payload: self.payload,
            created_at: self.created_at,
        })
    }
}

/// A resend key found within the window, with the message it names.
#[derive(Debug, QueryableByName)]
pub struct ResendHit {
    /// The key's sender.
    #[diesel(sql_type = Text)]
    pub key_sender: String,
    /// The key's client frame id.
    #[diesel(sql_type = Text)]
    pub key_id: String,
    /// The message stored under it.
    #[diesel(embed)]
    pub message: MessageRow,
}

/// The messages stored under the resend keys `(senders[i], ids[i])`.
pub fn resend_hits(
    c: &mut PgConnection,
    senders: &[&str],
    ids: &[&str],
) -> QueryResult<Vec<ResendHit>> {
    diesel::sql_query(format!(
        "SELECT r.sender_id AS key_sender, r.client_msg_id AS key_id, {MESSAGE_COLUMNS} \
         FROM resend_keys r JOIN messages m ON m.id = r.message_id \
         WHERE (r.sender_id, r.client_msg_id) IN \
               (SELECT * FROM unnest($1::text[], $2::text[]))"
    ))
    .bind::<Array<Text>, _>(senders)
    .bind::<Array<Text>, _>(ids)
    .load(c)
}

/// A seq given to one appended message (`write_no` counts from 1 in the rows given).
#[derive(QueryableByName)]
pub struct Given {
    /// The row's place in the rows given, from 1.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub write_no: i32,
    /// Its seq in its channel.
    #[diesel(sql_type = BigInt)]
    pub given_seq: i64,
}

/// Appends `rows` (all stored at `now`, their seqs unset, no two with one resend key) in
/// one statement, `switchboard_append` (migration 2): their resend keys, their channels'
/// counters and the messages. Answers the rows that were stored, with their seqs; a row
/// left out is a resend of a message whose key is newer than `expired_before`.
pub fn append(
    c: &mut PgConnection,
    rows: &[StoredMessage],
    now: i64,
    expired_before: i64,
) -> QueryResult<Vec<Given>> {
    let col = |f: fn(&StoredMessage) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
    let opt = |f: fn(&StoredMessage) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
    diesel::sql_query(
        "SELECT write_no, given_seq FROM switchboard_append($1, $2, $3, $4, $5, $6, $7, $8, \
                                                           $9, $10)",
    )
    .bind::<Array<Text>, _>(col(|m| &m.channel))
    .bind::<Array<Text>, _>(col(|m| &m.kind))
    .bind::<Array<Text>, _>(col(|m| &m.sender_id))
    .bind::<Array<Text>, _>(col(|m| &m.target_id))
    .bind::<Array<Nullable<Text>>, _>(opt(|m| m.client_id.as_deref()))
    .bind::<Array<Nullable<Text>>, _>(opt(|m| m.client_msg_id.as_deref()))
    .bind::<Array<Text>, _>(col(|m| &m.payload))
    .bind::<Array<Text>, _>(col(|m| m.id.as_str()))
    .bind::<BigInt, _>(now)
    .bind::<BigInt, _>(expired_before)
    .load(c)
}

#[derive(QueryableByName)]
struct Seq {
    #[diesel(sql_type = BigInt)]
    up_to_seq: i64,
}

/// Moves a user's read cursor forward (never back); answers where it stands.
pub fn advance_read_cursor(
    c: &mut PgConnection,
    user: &str,
    channel: &str,
    up_to_seq: i64,
    now: i64,
) -> QueryResult<i64> {
    let row: Seq = diesel::sql_query(
        "INSERT INTO read_cursors (user_id, channel, up_to_seq, updated_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, channel) DO UPDATE \
            SET up_to_seq = GREATEST(read_cursors.up_to_seq, EXCLUDED.up_to_seq), \
                updated_at = EXCLUDED.updated_at \
         RETURNING up_to_seq",
    )
    .bind::<Text, _>(user)
    .bind::<Text, _>(channel)
    .bind::<BigInt, _>(up_to_seq)
    .bind::<BigInt, _>(now)
    .get_result(c)?;
    Ok(row.up_to_seq)
}

/// Notes that a device connected (first and last seen).
pub fn touch_device(
    c: &mut PgConnection,
    user: &str,
    client_id: &str,
    device: Option<&str>,
    now: i64,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO devices (user_id, client_id, device, first_seen, last_seen) \
         VALUES ($1, $2, $3, $4, $4) \
         ON CONFLICT (user_id, client_id) DO UPDATE \
            SET last_seen = EXCLUDED.last_seen, device = EXCLUDED.device",
    )
    .bind::<Text, _>(user)
    .bind::<Text, _>(client_id)
    .bind::<Nullable<Text>, _>(device)
    .bind::<BigInt, _>(now)
    .execute(c)
    .map(drop)
}

/// Creates a group with its members unless its id is taken; whether it did.
pub fn create_group(c: &mut PgConnection, g: &GroupRow, members: &[String]) -> QueryResult<bool> {
    let made = diesel::sql_query(
        "INSERT INTO groups (id, name, owner_id, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind::<Text, _>(&g.id)
    .bind::<Text, _>(&g.name)
    .bind::<Text, _>(&g.owner_id)
    .bind::<BigInt, _>(g.created_at)
    .execute(c)?;
    if made == 0 {
        return Ok(false);
    }
    diesel::sql_query(
        "INSERT INTO group_members (group_id, user_id, added_at) \
         SELECT $1, u, $3 FROM unnest($2::text[]) AS t(u) ON CONFLICT DO NOTHING",
    )
    .bind::<Text, _>(&g.id)
    .bind::<Array<Text>, _>(members)
    .bind::<BigInt, _>(g.created_at)
    .execute(c)?;
    Ok(true)
}

/// Adds a member (nothing if already one).
pub fn add_member(c: &mut PgConnection, group: &str, user: &str, now: i64) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO group_members (group_id, user_id, added_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Text, _>(group)
    .bind::<Text, _>(user)
    .bind::<BigInt, _>(now)
    .execute(c)
    .map(drop)
}

/// Removes a member (nothing if not one).
pub fn remove_member(c: &mut PgConnection, group: &str, user: &str) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
        .bind::<Text, _>(group)
        .bind::<Text, _>(user)
        .execute(c)
        .map(drop)
}

#[derive(QueryableByName)]
struct GroupWithMember {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    owner_id: String,
    #[diesel(sql_type = BigInt)]
    created_at: i64,
    #[diesel(sql_type = Nullable<Text>)]
    member: Option<String>,
}

/// A group and its members (sorted), or `None`.
pub fn group(c: &mut PgConnection, id: &str) -> QueryResult<Option<(GroupRow, Vec<String>)>> {
    let rows: Vec<GroupWithMember> = diesel::sql_query(
        "SELECT g.id, g.name, g.owner_id, g.created_at, m.user_id AS member \
         FROM groups g LEFT JOIN group_members m ON m.group_id = g.id \
         WHERE g.id = $1 ORDER BY m.user_id",
    )
    .bind::<Text, _>(id)
    .load(c)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let group = GroupRow {
        id: first.id.clone(),
        name: first.name.clone(),
        owner_id: first.owner_id.clone(),
        created_at: first.created_at,
    };
    let members = rows.into_iter().filter_map(|r| r.member).collect();
    Ok(Some((group, members)))
}

/// The last seq given out in `channel` (0: none). Seqs are taken in the transaction that
/// stores their messages, so the counter is also the newest stored seq.
pub fn head_seq(c: &mut PgConnection, channel: &str) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Head {
        #[diesel(sql_type = BigInt)]
        last_seq: i64,
    }
    let head: Option<Head> = diesel::sql_query("SELECT last_seq FROM channels WHERE name = $1")
        .bind::<Text, _>(channel)
        .get_result(c)
        .optional()?;
    Ok(head.map(|h| h.last_seq).unwrap_or(0))
}

/// Channels with messages whose id is at or above `floor` (ids begin with their
/// millisecond, so this is a range of the id index), at most `limit`: each with its first
/// and last such seq.
pub fn stored_since(
    c: &mut PgConnection,
    floor: &str,
    limit: i64,
) -> QueryResult<Vec<(String, i64, i64)>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        channel: String,
        #[diesel(sql_type = BigInt)]
        first: i64,
        #[diesel(sql_type = BigInt)]
        last: i64,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT channel, MIN(seq) AS first, MAX(seq) AS last FROM messages \
         WHERE id >= $1 GROUP BY channel LIMIT $2",
    )
    .bind::<Text, _>(floor)
    .bind::<BigInt, _>(limit)
    .load(c)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.channel, r.first, r.last))
        .collect())
}

/// The last seq of `channel` stored before `before_ms` (0 if none): scans back from the
/// newest by the primary key, so it reads only the messages stored since then.
pub fn last_seq_before(c: &mut PgConnection, channel: &str, before_ms: i64) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Last {
        #[diesel(sql_type = BigInt)]
        seq: i64,
    }
    let last: Option<Last> = diesel::sql_query(
        "SELECT seq FROM messages WHERE channel = $1 AND created_at < $2 \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind::<Text, _>(channel)
    .bind::<BigInt, _>(before_ms)
    .get_result(c)
    .optional()?;
    Ok(last.map(|l| l.seq).unwrap_or(0))
}

/// A page of `channel`'s history in ascending seq, and whether more lie beyond it: after
/// `after_seq` going forward, else the newest (below `before_seq`) going back.
pub fn history(
    c: &mut PgConnection,
    channel: &str,
    page: Page,
) -> Result<(Vec<StoredMessage>, bool), StoreError> {
    let limit = page.limit.max(0);
    let order = if page.after_seq.is_some() {
        "ASC"
    } else {
        "DESC"
    };
    let rows: Vec<MessageRow> = diesel::sql_query(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m \
         WHERE m.channel = $1 AND ($2::bigint IS NULL OR m.seq > $2) \
           AND ($3::bigint IS NULL OR m.seq < $3) \
         ORDER BY m.seq {order} LIMIT $4"
    ))
    .bind::<Text, _>(channel)
    .bind::<Nullable<BigInt>, _>(page.after_seq)
    .bind::<Nullable<BigInt>, _>(page.before_seq)
    .bind::<BigInt, _>(limit.saturating_add(1))
    .load(c)?;
    let has_more = rows.len() as i64 > limit;
    let mut page_rows = rows
        .into_iter()
        .take(limit as usize)
        .map(MessageRow::into_stored)
        .collect::<Result<Vec<_>, _>>()?;
    if page.after_seq.is_none() {
        page_rows.reverse();
    }
    Ok((page_rows, has_more))
}

/// A trivial query: the connection works.
pub fn ping(c: &mut PgConnection) -> QueryResult<()> {
    diesel::sql_query("SELECT 1").execute(c).map(drop)
}

/// Replaces the users `user` follows.
pub fn set_following(c: &mut PgConnection, user: &str, follows: &[String]) -> QueryResult<()> {
    diesel::sql_query("DELETE FROM following WHERE user_id = $1")
        .bind::<Text, _>(user)
        .execute(c)?;
    diesel::sql_query(
        "INSERT INTO following (user_id, follows_id) SELECT $1, f FROM unnest($2::text[]) AS f \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Text, _>(user)
    .bind::<Array<Text>, _>(follows)
    .execute(c)
    .map(drop)
}

#[derive(QueryableByName)]
struct Followed {
    #[diesel(sql_type = Text)]
    follows_id: String,
}

/// The users `user` follows, sorted.
pub fn following_of(c: &mut PgConnection, user: &str) -> QueryResult<Vec<String>> {
    let rows: Vec<Followed> = diesel::sql_query(
        "SELECT follows_id FROM following WHERE user_id = $1 ORDER BY follows_id",
    )
    .bind::<Text, _>(user)
    .load(c)?;
    Ok(rows.into_iter().map(|r| r.follows_id).collect())
}

pub use crate::store::state_sql::PutState;
crate::store::state_sql::state_queries!(PgConnection);
crate::store::credentials_sql::credential_queries!(PgConnection);

/// Indexes for search the messages of `channels` stored after each one's
/// `search_progress.indexed_through` (a channel's seqs commit in order, so none can appear
/// below it later).
pub fn search_catch_up(c: &mut PgConnection, channels: &[String]) -> QueryResult<()> {
    diesel::sql_query(
        "WITH indexed AS ( \
             INSERT INTO message_search (channel, seq, created_at, doc) \
             SELECT m.channel, m.seq, m.created_at, \
                    to_tsvector('simple', coalesce(m.payload::jsonb ->> 'content', '')) \
             FROM unnest($1::text[]) AS ch(name) \
             LEFT JOIN search_progress p ON p.channel = ch.name \
             JOIN messages m ON m.channel = ch.name AND m.seq > coalesce(p.indexed_through, 0) \
             ON CONFLICT DO NOTHING \
             RETURNING channel, seq) \
         INSERT INTO search_progress (channel, indexed_through) \
         SELECT channel, max(seq) FROM indexed GROUP BY channel \
         ON CONFLICT (channel) DO UPDATE \
            SET indexed_through = GREATEST(search_progress.indexed_through, \
                                           EXCLUDED.indexed_through)",
    )
    .bind::<Array<Text>, _>(channels)
    .execute(c)
    .map(drop)
}

/// The messages matching `q`, newest first (`created_at`, then channel and seq, falling).
pub fn search(c: &mut PgConnection, q: &SearchQuery) -> QueryResult<Vec<MessageRow>> {
    let (b_at, b_channel, b_seq) = q.before.clone().unwrap_or((i64::MAX, String::new(), 0));
    diesel::sql_query(format!(
        "SELECT {MESSAGE_COLUMNS} FROM message_search s \
         JOIN messages m ON m.channel = s.channel AND m.seq = s.seq \
         WHERE s.doc @@ plainto_tsquery('simple', $1) \
           AND s.channel = ANY($2) \
           AND s.created_at >= $3 AND s.created_at <= $4 \
           AND ($5 = 0 OR (s.created_at, s.channel, s.seq) < ($6, $7, $8)) \
         ORDER BY s.created_at DESC, s.channel DESC, s.seq DESC LIMIT $9"
    ))
    .bind::<Text, _>(q.words.join(" "))
    .bind::<Array<Text>, _>(&q.channels)
    .bind::<BigInt, _>(q.from)
    .bind::<BigInt, _>(q.to)
    .bind::<BigInt, _>(i64::from(q.before.is_some()))
    .bind::<BigInt, _>(b_at)
    .bind::<Text, _>(b_channel)
    .bind::<BigInt, _>(b_seq)
    .bind::<BigInt, _>(q.limit)
    .load(c)
}

crate::store::cursor_sql::cursor_queries!(PgConnection);
