//! Every query, as a function of a connection. Transactions are the caller's.
//!
//! Queries on the write path avoid `LIMIT ?` (`.first()`): SQLite marks a statement whose
//! LIMIT is a bound parameter for re-preparing whenever that parameter is bound again, so
//! such a statement is parsed anew on every use despite the statement cache. They also
//! avoid what Diesel never caches (every `UPDATE`, `sql_query`, SQL literals, upserts):
//! a statement run every commit is a fragment of fixed shape instead ([`MultiInsert`]).

use diesel::connection::DefaultLoadingMode;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Binary, Nullable, Text};
use diesel::sqlite::Sqlite;

use super::positions::{decode_positions, Place, RUN_MAX};
use super::schema::{
    channel_index, channel_index_state, channels, dedupe_run_blocks, dedupe_runs, dedupe_state,
    devices, following, group_members, groups, messages,
};
use super::DbConn;
use crate::store::models::{
    ChannelIndexRow, GroupRow, KeyedMessage, Page, SearchQuery, StoredMessage,
};

/// The last seq given out in `channel` (0: none), and whether it has its `channels` row.
///
/// The counter is the larger of `channels.last_seq` (written when the channel got its first
/// message, a floor under the counter) and the highest seq stored: `newest_recent`, the
/// newest place the channel holds in memory (`store::channel_index`), or else the highest
/// in `channel_index`. The writer keeps counters in memory and does not rewrite the row on
/// every commit (`store::seqs`). Both are single index look-ups.
pub fn head_seq(
    c: &mut DbConn,
    channel: &str,
    newest_recent: Option<i64>,
) -> QueryResult<(i64, bool)> {
    let floor: Option<i64> = channels::table
        .find(channel)
        .select(channels::last_seq)
        .get_result(c)
        .optional()?;
    let stored = match newest_recent {
        Some(seq) => Some(seq),
        None => channel_index::table
            .filter(channel_index::channel.eq(channel))
            .order(channel_index::first_seq.desc())
            .select(channel_index::last_seq)
            .first(c)
            .optional()?,
    };
    Ok((floor.unwrap_or(0).max(stored.unwrap_or(0)), floor.is_some()))
}

/// Records a new channel whose seq counter stands at `last_seq`.
pub fn insert_channel(c: &mut DbConn, channel: &str, last_seq: i64, now: i64) -> QueryResult<()> {
    diesel::insert_into(channels::table)
        .values((
            channels::name.eq(channel),
            channels::last_seq.eq(last_seq),
            channels::created_at.eq(now),
        ))
        .execute(c)
        .map(drop)
}

/// The message stored at position `pos`, if any.
pub fn message_by_pos(c: &mut DbConn, pos: i64) -> QueryResult<Option<StoredMessage>> {
    // `load`, not `first`: see the module's note on `LIMIT ?`.
    let found: Vec<StoredMessage> = messages::table
        .find(pos)
        .select(StoredMessage::as_select())
        .load(c)?;
    Ok(found.into_iter().next())
}

/// A row of `dedupe_runs`: (id, state, keys, fences).
pub type DedupeRunRow = (i64, i32, i64, Vec<u8>);

/// Every run of resend keys, by id (read once, at start-up).
pub fn dedupe_runs(c: &mut DbConn) -> QueryResult<Vec<DedupeRunRow>> {
    dedupe_runs::table
        .select((
            dedupe_runs::id,
            dedupe_runs::state,
            dedupe_runs::keys,
            dedupe_runs::fences,
        ))
        .order(dedupe_runs::id.asc())
        .load(c)
}

/// Writes the row of run `id`, replacing what it held (a merge's output is written when it
/// begins and again, live, when it ends).
pub fn put_dedupe_run(
    c: &mut DbConn,
    id: i64,
    state: i32,
    keys: i64,
    fences: &[u8],
) -> QueryResult<()> {
    diesel::replace_into(dedupe_runs::table)
        .values((
            dedupe_runs::id.eq(id),
            dedupe_runs::state.eq(state),
            dedupe_runs::keys.eq(keys),
            dedupe_runs::fences.eq(fences),
        ))
        .execute(c)
        .map(drop)
}

/// Sets the state of run `id`.
pub fn set_dedupe_run_state(c: &mut DbConn, id: i64, state: i32) -> QueryResult<()> {
    diesel::update(dedupe_runs::table.find(id))
        .set(dedupe_runs::state.eq(state))
        .execute(c)
        .map(drop)
}

/// Removes the row of run `id`.
pub fn delete_dedupe_run(c: &mut DbConn, id: i64) -> QueryResult<()> {
    diesel::delete(dedupe_runs::table.find(id))
        .execute(c)
        .map(drop)
}

/// The pairs of block `id` of a run, if it is there.
pub fn dedupe_run_block(c: &mut DbConn, id: i64) -> QueryResult<Option<Vec<u8>>> {
    // `load`, not `first`: see the module's note on `LIMIT ?`.
    let found: Vec<Vec<u8>> = dedupe_run_blocks::table
        .find(id)
        .select(dedupe_run_blocks::pairs)
        .load(c)?;
    Ok(found.into_iter().next())
}

/// Every block of every run, streamed (read once, at start-up).
pub fn dedupe_run_blocks_iter(
    c: &mut DbConn,
) -> QueryResult<impl Iterator<Item = QueryResult<(i64, Vec<u8>)>> + '_> {
    dedupe_run_blocks::table
        .select((dedupe_run_blocks::id, dedupe_run_blocks::pairs))
        .load_iter::<(i64, Vec<u8>), DefaultLoadingMode>(c)
}

/// Adds blocks of runs: (id, pairs).
pub fn insert_run_blocks(c: &mut DbConn, rows: &[(i64, Vec<u8>)]) -> QueryResult<()> {
    insert_rows(c, rows)
}

impl InsertRow for (i64, Vec<u8>) {
    const HEAD: &'static str = "INSERT OR FAIL INTO dedupe_run_blocks (id, pairs) VALUES ";

    fn push_values<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>, _: bool) -> QueryResult<()> {
        out.push_bind_param::<BigInt, _>(&self.0)?;
        out.push_sql(", ");
        out.push_bind_param::<Binary, [u8]>(&self.1)
    }
}

/// Removes the blocks with ids from `from` to `to` (inclusive).
pub fn delete_run_blocks(c: &mut DbConn, from: i64, to: i64) -> QueryResult<()> {
    diesel::delete(
        dedupe_run_blocks::table
            .filter(dedupe_run_blocks::id.ge(from))
            .filter(dedupe_run_blocks::id.le(to)),
    )
    .execute(c)
    .map(drop)
}

/// Inserts rows of `channel_index`, in the order given.
pub fn insert_channel_index(c: &mut DbConn, rows: &[ChannelIndexRow]) -> QueryResult<()> {
    insert_rows(c, rows)
}

/// `INSERT OR FAIL` ([`StoredMessage`]'s impl says why).
impl InsertRow for ChannelIndexRow {
    const HEAD: &'static str =
        "INSERT OR FAIL INTO channel_index (channel, first_seq, last_seq, positions) VALUES ";

    fn push_values<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>, _: bool) -> QueryResult<()> {
        out.push_bind_param::<Text, str>(&self.channel)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.first_seq)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.last_seq)?;
        out.push_sql(", ");
        out.push_bind_param::<Binary, [u8]>(&self.positions)
    }
}

/// The position through which every message is in `channel_index`.
pub fn channel_index_moved_through(c: &mut DbConn) -> QueryResult<i64> {
    channel_index_state::table
        .find(1)
        .select(channel_index_state::moved_through)
        .get_result(c)
}

/// Records that every message up to position `pos` is in `channel_index`.
pub fn set_channel_index_moved_through(c: &mut DbConn, pos: i64) -> QueryResult<()> {
    diesel::update(channel_index_state::table.find(1))
        .set(channel_index_state::moved_through.eq(pos))
        .execute(c)
        .map(drop)
}

/// `(channel, seq, position)` of the messages stored after position `after` that are not in
/// `channel_index`, in the order they were stored (read once, at start-up). A channel's rows
/// there hold every seq up to the last row's `last_seq`.
pub fn unindexed_places_after(c: &mut DbConn, after: i64) -> QueryResult<Vec<(String, i64, i64)>> {
    #[derive(QueryableByName)]
    struct Unindexed {
        #[diesel(sql_type = Text)]
        channel: String,
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = BigInt)]
        pos: i64,
    }
    let rows: Vec<Unindexed> = diesel::sql_query(
        "SELECT m.channel, m.seq, m.pos FROM messages m \
         WHERE m.pos > ?1 AND m.seq > COALESCE((SELECT r.last_seq FROM channel_index r \
             WHERE r.channel = m.channel ORDER BY r.first_seq DESC LIMIT 1), 0) \
         ORDER BY m.pos",
    )
    .bind::<BigInt, _>(after)
    .load(c)?;
    Ok(rows
        .into_iter()
        .map(|r| (r.channel, r.seq, r.pos))
        .collect())
}

/// The position through which every message's dedupe key is in a run of `dedupe_runs`
/// (0: none).
pub fn dedupe_moved_through(c: &mut DbConn) -> QueryResult<i64> {
    dedupe_state::table
        .find(1)
        .select(dedupe_state::moved_through)
        .get_result(c)
}

/// Records that every message up to position `pos` has its dedupe key in a run.
pub fn set_dedupe_moved_through(c: &mut DbConn, pos: i64) -> QueryResult<()> {
    diesel::update(dedupe_state::table.find(1))
        .set(dedupe_state::moved_through.eq(pos))
        .execute(c)
        .map(drop)
}

/// The position of the newest message (0 when none is stored).
pub fn last_position(c: &mut DbConn) -> QueryResult<i64> {
    messages::table
        .select(diesel::dsl::max(messages::pos))
        .get_result::<Option<i64>>(c)
        .map(Option::unwrap_or_default)
}

/// Messages with a client frame id, stored after position `after` and since `since`, in
/// the order they were stored.
pub fn keyed_messages_after(
    c: &mut DbConn,
    after: i64,
    since: i64,
) -> QueryResult<Vec<KeyedMessage>> {
    messages::table
        .filter(messages::pos.gt(after))
        .filter(messages::created_at.ge(since))
        .filter(messages::client_msg_id.is_not_null())
        .order(messages::pos.asc())
        .select((
            messages::sender_id,
            messages::client_msg_id.assume_not_null(),
            messages::pos,
            messages::created_at,
        ))
        .load(c)
}

diesel::define_sql_function! {
    /// SQLite's `last_insert_rowid()`, as a function call Diesel prepares once per
    /// connection (an SQL literal it parses anew on every use).
    fn last_insert_rowid() -> BigInt;
}

/// Inserts messages in order ([`insert_rows`]) and answers the position given to the first
/// (`None` for no rows).
///
/// Positions are the rowids SQLite gives out: one above the largest in the table, so the
/// rows of one transaction (the writer is alone in it) get consecutive ones, in order.
pub fn insert_messages(c: &mut DbConn, rows: &[StoredMessage]) -> QueryResult<Option<i64>> {
    if rows.is_empty() {
        return Ok(None);
    }
    insert_rows(c, rows)?;
    let last: i64 = diesel::select(last_insert_rowid()).get_result(c)?;
    Ok(Some(last - rows.len() as i64 + 1))
}

/// `INSERT OR FAIL`: Diesel's own `insert_into` writes a plain `INSERT`, which may abort
/// halfway through its rows (a constraint), so SQLite keeps a statement journal for it: a
/// copy of every page the statement changes, about a tenth of the writer's time with large
/// batches. `OR FAIL` keeps the rows before a failing one instead, so no journal is needed;
/// a failure fails the whole transaction anyway (the writer then retries row by row).
///
/// The rows of a batch are stored at one time, and mostly of one kind, so a statement whose
/// rows share `created_at` and `kind` binds them once: the rows after its first name the
/// first row's parameters ([`CREATED_AT_OF_FIRST`], [`KIND_OF_FIRST`]) instead of binding
/// them again; rows that differ go in a statement that binds every value. Binding is most
/// of what Diesel costs per row (each value is collected, bound, and bound to NULL again
/// after the statement ran).
impl InsertRow for StoredMessage {
    const HEAD: &'static str = "INSERT OR FAIL INTO messages (id, channel, seq, kind, \
        sender_id, target_id, client_id, client_msg_id, payload, created_at) VALUES ";

    fn fits_with(&self, first: &Self) -> bool {
        self.created_at == first.created_at && self.kind == first.kind
    }

    fn push_values<'b>(
        &'b self,
        out: &mut AstPass<'_, 'b, Sqlite>,
        later: bool,
    ) -> QueryResult<()> {
        out.push_bind_param::<Text, str>(&self.id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, str>(&self.channel)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.seq)?;
        out.push_sql(", ");
        if later {
            out.push_sql(KIND_OF_FIRST);
        } else {
            out.push_bind_param::<Text, str>(&self.kind)?;
        }
        out.push_sql(", ");
        out.push_bind_param::<Text, str>(&self.sender_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, str>(&self.target_id)?;
        out.push_sql(", ");
        // A placeholder either way: the statement's text is cached by its type.
        match &self.client_id {
            Some(device) => out.push_bind_param::<Nullable<Text>, str>(device)?,
            None => out.push_bind_param::<Nullable<Text>, Option<String>>(&None)?,
        }
        out.push_sql(", ");
        out.push_bind_param::<Nullable<Text>, _>(&self.client_msg_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.payload)?;
        out.push_sql(", ");
        if later {
            out.push_sql(CREATED_AT_OF_FIRST);
            Ok(())
        } else {
            out.push_bind_param::<BigInt, _>(&self.created_at)
        }
    }
}

/// The parameters that hold the first row's `kind` and `created_at`: its fourth and tenth
/// values. A plain `?` is numbered one above the largest number given so far, so naming an
/// earlier parameter by its number leaves the numbering of the `?`s after it (and Diesel's
/// binding in order) as is.
const KIND_OF_FIRST: &str = "?4";
const CREATED_AT_OF_FIRST: &str = "?10";

/// A row written on the write path with multi-row `INSERT`s of fixed shapes.
trait InsertRow: Sized + 'static {
    /// The statement up to its rows: `INSERT … INTO table (columns) VALUES `.
    const HEAD: &'static str;

    /// Pushes this row's values, comma separated, without the parentheses. `later` is true
    /// for every row after a statement's first: such a row may name a value of the first
    /// row by its parameter number rather than bind it again, where [`InsertRow::fits_with`]
    /// promised the two are equal.
    fn push_values<'b>(&'b self, out: &mut AstPass<'_, 'b, Sqlite>, later: bool)
        -> QueryResult<()>;

    /// Whether this row may follow `first` in one statement (the values it would take from
    /// `first` are equal to its own).
    fn fits_with(&self, _first: &Self) -> bool {
        true
    }
}

/// Inserts rows with multi-row `INSERT`s of fixed sizes (32, 16, 4, 1 rows), in order. A
/// statement of fixed shape is prepared once and then served from the connection's
/// statement cache (by type, not by SQL text); one sized to each batch would be parsed anew
/// every time. 32 rows rather than 64: Diesel gathers a statement's values in a vector
/// that grows by doubling, and at 64 message rows (640 values) it outgrows jemalloc's small
/// size classes and is moved as a large allocation. Callgrind, broker in `pairs`: about
/// 1.5 % fewer instructions with 32 than with 64, and 16 costs more again.
fn insert_rows<R: InsertRow>(c: &mut DbConn, rows: &[R]) -> QueryResult<()> {
    let mut rest = rows;
    insert_chunks::<R, 32>(c, &mut rest)?;
    insert_chunks::<R, 16>(c, &mut rest)?;
    insert_chunks::<R, 4>(c, &mut rest)?;
    insert_chunks::<R, 1>(c, &mut rest)
}

/// Inserts `N` rows at a time from the front of `rest` while at least `N` are left.
fn insert_chunks<R: InsertRow, const N: usize>(c: &mut DbConn, rest: &mut &[R]) -> QueryResult<()> {
    while let Some((head, tail)) = rest.split_first_chunk::<N>() {
        if head.iter().all(|row| row.fits_with(&head[0])) {
            MultiInsert::<R, N, true>(head).execute(c)?;
        } else {
            MultiInsert::<R, N, false>(head).execute(c)?;
        }
        *rest = tail;
    }
    Ok(())
}

/// `R::HEAD (…), (…), …` for `N` rows of `R`. With `SHARED` (the rows fit with the first,
/// [`InsertRow::fits_with`]) later rows name the first row's shared values rather than
/// bind them; each shape is its own cached statement.
struct MultiInsert<'a, R, const N: usize, const SHARED: bool>(&'a [R; N]);

impl<R: InsertRow, const N: usize, const SHARED: bool> QueryId for MultiInsert<'_, R, N, SHARED> {
    type QueryId = MultiInsert<'static, R, N, SHARED>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl<R: InsertRow, const N: usize, const SHARED: bool> QueryFragment<Sqlite>
    for MultiInsert<'_, R, N, SHARED>
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(R::HEAD);
        for (i, row) in self.0.iter().enumerate() {
            out.push_sql(if i == 0 { "(" } else { ", (" });
            row.push_values(&mut out, SHARED && i > 0)?;
            out.push_sql(")");
        }
        Ok(())
    }
}

impl<R: InsertRow, const N: usize, const SHARED: bool> RunQueryDsl<DbConn>
    for MultiInsert<'_, R, N, SHARED>
{
}

/// Moves a user's read cursor forward (never back); returns the cursor after the write.
pub fn advance_read_cursor(
    c: &mut DbConn,
    user: &str,
    channel: &str,
    up_to_seq: i64,
    now: i64,
) -> QueryResult<i64> {
    diesel::sql_query(
        "INSERT INTO read_cursors (user_id, channel, up_to_seq, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, channel) DO UPDATE SET up_to_seq = excluded.up_to_seq, \
         updated_at = excluded.updated_at WHERE excluded.up_to_seq > read_cursors.up_to_seq",
    )
    .bind::<Text, _>(user)
    .bind::<Text, _>(channel)
    .bind::<BigInt, _>(up_to_seq)
    .bind::<BigInt, _>(now)
    .execute(c)?;
    super::schema::read_cursors::table
        .find((user, channel))
        .select(super::schema::read_cursors::up_to_seq)
        .first(c)
}

/// A page of history in ascending seq, and whether more lie beyond it.
///
/// With `after_seq` the page starts right after it; otherwise it is the newest messages
/// (below `before_seq` when given). `has_more` says whether messages beyond the page exist
/// in the direction read.
///
/// `recent` is the channel's places in memory, copied before this call
/// (`ChannelIndex::recent`): its newest messages, all above the seqs in `channel_index`
/// except those moved since the copy, which are then in both.
pub fn history(
    c: &mut DbConn,
    channel: &str,
    recent: &[Place],
    page: Page,
) -> QueryResult<(Vec<StoredMessage>, bool)> {
    let limit = usize::try_from(page.limit).unwrap_or(0);
    let want = limit.saturating_add(1);
    let in_page = |seq: i64| {
        page.after_seq.is_none_or(|a| seq > a) && page.before_seq.is_none_or(|b| seq < b)
    };
    let recent = recent.iter().copied().filter(|p| in_page(p.seq));
    // Places in the direction read: the table's come first going forward, memory's going
    // back from the newest.
    let mut places: Vec<Place> = Vec::with_capacity(want.min(1024));
    if let Some(after) = page.after_seq {
        // The row holding `after + 1` begins at most RUN_MAX seqs before it.
        let q = channel_index::table
            .filter(channel_index::channel.eq(channel))
            .filter(channel_index::first_seq.gt(after.saturating_sub(RUN_MAX as i64)))
            .filter(channel_index::last_seq.gt(after))
            .order(channel_index::first_seq.asc())
            .select((
                channel_index::first_seq,
                channel_index::last_seq,
                channel_index::positions,
            ));
        let q = match page.before_seq {
            Some(b) => q.filter(channel_index::first_seq.lt(b)).into_boxed(),
            None => q.into_boxed(),
        };
        for row in q.load_iter::<(i64, i64, Vec<u8>), DefaultLoadingMode>(c)? {
            let (first, last, positions) = row?;
            let run = decode_positions(first, last, &positions)?;
            places.extend(run.filter(|p| in_page(p.seq)).take(want - places.len()));
            if places.len() >= want {
                break;
            }
        }
        let last = places.last().map(|p| p.seq);
        places.extend(recent.filter(|p| last.is_none_or(|l| p.seq > l)));
    } else {
        places.extend(recent.rev().take(want));
        if places.len() < want {
            let below = match (places.last(), page.before_seq) {
                (Some(oldest), _) => Some(oldest.seq),
                (None, b) => b,
            };
            let q = channel_index::table
                .filter(channel_index::channel.eq(channel))
                .order(channel_index::first_seq.desc())
                .select((
                    channel_index::first_seq,
                    channel_index::last_seq,
                    channel_index::positions,
                ));
            let q = match below {
                Some(b) => q.filter(channel_index::first_seq.lt(b)).into_boxed(),
                None => q.into_boxed(),
            };
            for row in q.load_iter::<(i64, i64, Vec<u8>), DefaultLoadingMode>(c)? {
                let (first, last, positions) = row?;
                let run = decode_positions(first, last, &positions)?.rev();
                let older = run.filter(|p| below.is_none_or(|b| p.seq < b));
                places.extend(older.take(want - places.len()));
                if places.len() >= want {
                    break;
                }
            }
        }
    }
    let has_more = places.len() > limit;
    places.truncate(limit);
    let positions: Vec<i64> = places.iter().map(|p| p.pos).collect();
    let mut rows: Vec<StoredMessage> = messages::table
        .filter(messages::pos.eq_any(positions))
        .select(StoredMessage::as_select())
        .load(c)?;
    rows.sort_unstable_by_key(|m| m.seq);
    Ok((rows, has_more))
}

/// A group and its members (sorted), if it exists.
pub fn group(c: &mut DbConn, id: &str) -> QueryResult<Option<(GroupRow, Vec<String>)>> {
    let Some(g) = groups::table
        .find(id)
        .select(GroupRow::as_select())
        .first(c)
        .optional()?
    else {
        return Ok(None);
    };
    let members = group_members::table
        .filter(group_members::group_id.eq(id))
        .select(group_members::user_id)
        .order(group_members::user_id.asc())
        .load(c)?;
    Ok(Some((g, members)))
}

/// Creates a group with its members (the owner is always a member).
pub fn create_group(c: &mut DbConn, g: &GroupRow, members: &[String]) -> QueryResult<()> {
    diesel::insert_into(groups::table).values(g).execute(c)?;
    let rows: Vec<_> = members
        .iter()
        .map(|m| {
            (
                group_members::group_id.eq(&g.id),
                group_members::user_id.eq(m),
                group_members::added_at.eq(g.created_at),
            )
        })
        .collect();
    diesel::insert_into(group_members::table)
        .values(&rows)
        .execute(c)
        .map(drop)
}

/// Adds a member; true if they were not one already.
pub fn add_member(c: &mut DbConn, group: &str, user: &str, now: i64) -> QueryResult<bool> {
    let n = diesel::insert_into(group_members::table)
        .values((
            group_members::group_id.eq(group),
            group_members::user_id.eq(user),
            group_members::added_at.eq(now),
        ))
        .on_conflict_do_nothing()
        .execute(c)?;
    Ok(n > 0)
}

/// Removes a member; true if they were one.
pub fn remove_member(c: &mut DbConn, group: &str, user: &str) -> QueryResult<bool> {
    let n = diesel::delete(group_members::table.find((group, user))).execute(c)?;
    Ok(n > 0)
}

/// A trivial query: the connection works.
pub fn ping(c: &mut DbConn) -> QueryResult<()> {
    diesel::sql_query("SELECT 1").execute(c).map(|_| ())
}

/// Notes that device `client_id` of `user` connected now.
pub fn touch_device(
    c: &mut DbConn,
    user: &str,
    client_id: &str,
    device: Option<&str>,
    now: i64,
) -> QueryResult<()> {
    diesel::insert_into(devices::table)
        .values((
            devices::user_id.eq(user),
            devices::client_id.eq(client_id),
            devices::device.eq(device),
            devices::first_seen.eq(now),
            devices::last_seen.eq(now),
        ))
        .on_conflict((devices::user_id, devices::client_id))
        .do_update()
        .set((devices::last_seen.eq(now), devices::device.eq(device)))
        .execute(c)
        .map(drop)
}

/// Replaces the users `user` follows.
pub fn set_following(c: &mut DbConn, user: &str, follows: &[String]) -> QueryResult<()> {
    diesel::delete(following::table.filter(following::user_id.eq(user))).execute(c)?;
    for chunk in follows.chunks(256) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|f| (following::user_id.eq(user), following::follows_id.eq(f)))
            .collect();
        diesel::insert_into(following::table)
            .values(&rows)
            .execute(c)?;
    }
    Ok(())
}

/// The users `user` follows, sorted.
pub fn following_of(c: &mut DbConn, user: &str) -> QueryResult<Vec<String>> {
    following::table
        .filter(following::user_id.eq(user))
        .select(following::follows_id)
        .order(following::follows_id)
        .load(c)
}

pub use crate::store::state_sql::PutState;
crate::store::state_sql::state_queries!(DbConn);
crate::store::credentials_sql::credential_queries!(DbConn);

/// Messages indexed for search per step of [`search_catch_up`]: a step runs in the
/// writer's transaction, so it stays short (a few milliseconds).
pub const SEARCH_STEP: i64 = 5000;

#[derive(QueryableByName)]
struct Pos {
    #[diesel(sql_type = BigInt)]
    pos: i64,
}

/// Indexes for search up to `step` messages stored after `search_state.indexed_through`;
/// whether that reached the newest message.
pub fn search_catch_up(c: &mut DbConn, step: i64) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Through {
        #[diesel(sql_type = BigInt)]
        indexed_through: i64,
    }
    let from: Through =
        diesel::sql_query("SELECT indexed_through FROM search_state WHERE id = 1").get_result(c)?;
    let last: Vec<Pos> = diesel::sql_query(
        "SELECT pos FROM messages WHERE pos > ?1 ORDER BY pos LIMIT 1 OFFSET ?2 - 1",
    )
    .bind::<BigInt, _>(from.indexed_through)
    .bind::<BigInt, _>(step)
    .load(c)?;
    // The step's last position, or the newest message when fewer than a step remain.
    let (through, caught_up) = match last.first() {
        Some(p) => (p.pos, false),
        None => {
            let newest: Option<i64> = messages::table
                .select(diesel::dsl::max(messages::pos))
                .first(c)?;
            (newest.unwrap_or(0).max(from.indexed_through), true)
        }
    };
    if through > from.indexed_through {
        diesel::sql_query(
            "INSERT INTO message_search (rowid, body) \
             SELECT pos, coalesce(json_extract(payload, '$.content'), '') FROM messages \
             WHERE pos > ?1 AND pos <= ?2",
        )
        .bind::<BigInt, _>(from.indexed_through)
        .bind::<BigInt, _>(through)
        .execute(c)?;
        diesel::sql_query("UPDATE search_state SET indexed_through = ?1 WHERE id = 1")
            .bind::<BigInt, _>(through)
            .execute(c)?;
    }
    Ok(caught_up)
}

/// The messages matching `q`, newest first (`created_at`, then channel and seq, falling).
pub fn search(c: &mut DbConn, q: &SearchQuery) -> QueryResult<Vec<StoredMessage>> {
    // Each word quoted (a quote inside doubled): FTS5 reads them as words, all required.
    let matched = q
        .words
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ");
    let channels = serde_json::to_string(&q.channels).unwrap_or_else(|_| "[]".into());
    let (b_at, b_channel, b_seq) = q.before.clone().unwrap_or((i64::MAX, String::new(), 0));
    let found: Vec<Pos> = diesel::sql_query(
        "SELECT m.pos AS pos FROM message_search s JOIN messages m ON m.pos = s.rowid \
         WHERE message_search MATCH ?1 \
           AND m.channel IN (SELECT value FROM json_each(?2)) \
           AND m.created_at >= ?3 AND m.created_at <= ?4 \
           AND (?5 = 0 OR (m.created_at, m.channel, m.seq) < (?6, ?7, ?8)) \
         ORDER BY m.created_at DESC, m.channel DESC, m.seq DESC LIMIT ?9",
    )
    .bind::<Text, _>(matched)
    .bind::<Text, _>(channels)
    .bind::<BigInt, _>(q.from)
    .bind::<BigInt, _>(q.to)
    .bind::<BigInt, _>(i64::from(q.before.is_some()))
    .bind::<BigInt, _>(b_at)
    .bind::<Text, _>(b_channel)
    .bind::<BigInt, _>(b_seq)
    .bind::<BigInt, _>(q.limit)
    .load(c)?;
    let order: Vec<i64> = found.iter().map(|p| p.pos).collect();
    let mut rows: Vec<(i64, StoredMessage)> = messages::table
        .filter(messages::pos.eq_any(&order))
        .select((messages::pos, StoredMessage::as_select()))
        .load(c)?;
    rows.sort_by_key(|(pos, _)| order.iter().position(|p| p == pos));
    Ok(rows.into_iter().map(|(_, m)| m).collect())
}

crate::store::cursor_sql::cursor_queries!(DbConn);
