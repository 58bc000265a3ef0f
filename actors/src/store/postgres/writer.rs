//! `PgWriter`: commits one batch per transaction on PostgreSQL, where writers of several
//! broker processes may share the database.
//!
//! Nothing about the store is kept in memory between batches. A batch's messages go to the
//! database in one statement (`switchboard_append`, migration 2), which takes their resend
//! keys, then their seqs from the channels' counter rows (locked until commit, so another
//! writer continues after them), then inserts them; the database enforces one message per
//! (channel, seq) and per resend key. A key another transaction holds uncommitted makes the
//! statement wait for it, so a resend through another node finds the message it repeats.
//! A batch of messages only is that one statement, committed on its own; a batch with other
//! writes runs in a transaction.

use std::collections::HashMap;

use actix::prelude::*;
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool};
use diesel::Connection;

use super::queries;
use crate::health::{ActorHealth, Probe};
use crate::ids::{now_ms, MessageIds};
use crate::store::health::DatabaseHealth;
use crate::store::models::StoredMessage;
use crate::store::sealing::Sealer;
use crate::store::write::{WriteBatch, WriteOp, WriteOutcome};
use crate::store::StoreError;

/// The PostgreSQL connection pool.
pub type PgPool = Pool<ConnectionManager<PgConnection>>;

/// A writer thread.
pub struct PgWriter {
    /// The shared pool.
    pub pool: PgPool,
    /// Where this thread's message ids come from.
    pub ids: MessageIds,
    /// Shared by every writer thread.
    pub health: std::sync::Arc<ActorHealth>,
    /// Whether the database answers, shared with the readers.
    pub database: std::sync::Arc<DatabaseHealth>,
    /// Seals payloads and state documents before they are stored (encryption at rest).
    pub sealer: Option<std::sync::Arc<Sealer>>,
}

impl Actor for PgWriter {
    type Context = SyncContext<Self>;
}

impl Handler<WriteBatch> for PgWriter {
    type Result = Vec<Result<WriteOutcome, StoreError>>;

    fn handle(&mut self, batch: WriteBatch, _: &mut SyncContext<Self>) -> Self::Result {
        self.health.handled();
        let window = batch.dedupe_window_ms;
        let mut c = match self.pool.get() {
            Ok(c) => c,
            Err(e) => return self.all_failed(&batch, StoreError::Pool(e)),
        };
        let ids = &mut self.ids;
        let sealer = self.sealer.as_deref();
        match write(&mut c, ids, &batch.ops, window, sealer) {
            Ok(outcomes) => {
                self.database.ok();
                outcomes.into_iter().map(Ok).collect()
            }
            // The database is unreachable, restarting or too slow: every write of the
            // batch would fail alike, so each is answered at once (retry).
            Err(e) if e.is_transient() => self.all_failed(&batch, e),
            Err(e) => {
                // A bad row: write by write, so that it fails alone.
                log::warn!(
                    "batch of {} failed ({e}); retrying row by row",
                    batch.ops.len()
                );
                self.health.failed(e.to_string());
                self.database.failed(&e);
                batch
                    .ops
                    .iter()
                    .map(|op| {
                        write(&mut c, ids, std::slice::from_ref(op), window, sealer).and_then(
                            |mut one| {
                                one.pop()
                                    .ok_or(StoreError::Invariant("a write without an outcome"))
                            },
                        )
                    })
                    .collect()
            }
        }
    }
}

/// Commits `ops`: messages alone in their one statement, anything else in a transaction.
fn write(
    c: &mut PgConnection,
    ids: &mut MessageIds,
    ops: &[WriteOp],
    window: i64,
    sealer: Option<&Sealer>,
) -> Result<Vec<WriteOutcome>, StoreError> {
    if ops.iter().all(|op| matches!(op, WriteOp::Message(_))) {
        apply(c, ids, ops, window, sealer)
    } else {
        c.transaction(|c| apply(c, ids, ops, window, sealer))
    }
}

impl PgWriter {
    /// Answers every write of `batch` with `unavailable`, recording why.
    fn all_failed(
        &self,
        batch: &WriteBatch,
        e: StoreError,
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        self.health.failed(e.to_string());
        self.database.failed(&e);
        let why = e.to_string();
        batch
            .ops
            .iter()
            .map(|_| Err(StoreError::Unavailable(why.clone())))
            .collect()
    }
}

impl Handler<Probe> for PgWriter {
    type Result = u64;
    fn handle(&mut self, _: Probe, _: &mut SyncContext<Self>) -> u64 {
        self.health.handled_count()
    }
}

/// What became of one message write while the batch is applied.
enum Slot {
    /// Stored, or a resend of a message stored earlier: index into the rows given.
    Row(usize),
    /// A resend of write `j` of this batch.
    SameAs(usize),
}

/// Applies `ops` (inside the caller's transaction where they are not all messages);
/// answers an outcome per write, in order.
pub fn apply(
    c: &mut PgConnection,
    ids: &mut MessageIds,
    ops: &[WriteOp],
    dedupe_window_ms: i64,
    sealer: Option<&Sealer>,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let now = now_ms();
    let since = now.saturating_sub(dedupe_window_ms);

    // One row per message write; a resend of an earlier write of the batch shares its row.
    let mut slots = Vec::with_capacity(ops.len());
    let mut rows: Vec<StoredMessage> = Vec::new();
    let mut in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let WriteOp::Message(m) = op else {
            slots.push(None);
            continue;
        };
        if let Some(frame) = m.client_msg_id.as_deref() {
            if let Some(&j) = in_batch.get(&(&*m.sender_id, frame)) {
                slots.push(Some(Slot::SameAs(j)));
                continue;
            }
            in_batch.insert((&m.sender_id, frame), i);
        }
        slots.push(Some(Slot::Row(rows.len())));
        rows.push(m.clone().stored(ids.next(now), 0, now));
    }

    // Rows not stored are resends of messages stored earlier: those replace them.
    let mut duplicate = vec![false; rows.len()];
    if !rows.is_empty() {
        let mut stored = vec![false; rows.len()];
        let sealed = sealer.map(|s| s.seal_rows(&rows));
        for given in queries::append(c, sealed.as_deref().unwrap_or(&rows), now, since)? {
            let r = usize::try_from(given.write_no - 1)
                .ok()
                .filter(|&r| r < rows.len())
                .ok_or(StoreError::Invariant("a seq for a row not given"))?;
            rows[r].seq = given.given_seq;
            stored[r] = true;
        }
        let resent: Vec<usize> = (0..rows.len()).filter(|&r| !stored[r]).collect();
        if !resent.is_empty() {
            let keys: Vec<(&str, &str)> = resent
                .iter()
                .filter_map(|&r| {
                    let m = &rows[r];
                    Some((&*m.sender_id, m.client_msg_id.as_deref()?))
                })
                .collect();
            let senders: Vec<&str> = keys.iter().map(|k| k.0).collect();
            let frames: Vec<&str> = keys.iter().map(|k| k.1).collect();
            let mut earlier: HashMap<(String, String), StoredMessage> = HashMap::new();
            for hit in queries::resend_hits(c, &senders, &frames)? {
                let mut m = hit.message.into_stored()?;
                if let Some(s) = sealer {
                    s.open_rows(std::slice::from_mut(&mut m))?;
                }
                earlier.insert((hit.key_sender, hit.key_id), m);
            }
            for r in resent {
                let m = &rows[r];
                let key = (
                    m.sender_id.to_string(),
                    m.client_msg_id.clone().unwrap_or_default(),
                );
                rows[r] = earlier
                    .remove(&key)
                    .ok_or(StoreError::Invariant("a resend without its message"))?;
                duplicate[r] = true;
            }
        }
    }

    // The other writes, in order, and every answer.
    let mut outcomes: Vec<WriteOutcome> = Vec::with_capacity(ops.len());
    for (op, slot) in ops.iter().zip(slots) {
        let outcome = match (slot, op) {
            (Some(Slot::Row(r)), _) => WriteOutcome::Stored {
                msg: rows
                    .get(r)
                    .cloned()
                    .ok_or(StoreError::Invariant("a message without its row"))?,
                duplicate: duplicate.get(r).copied().unwrap_or(false),
            },
            (Some(Slot::SameAs(j)), _) => match outcomes.get(j) {
                Some(WriteOutcome::Stored { msg, .. }) => WriteOutcome::Stored {
                    msg: msg.clone(),
                    duplicate: true,
                },
                _ => return Err(StoreError::Invariant("a resend of a write not stored")),
            },
            (None, op) => apply_other(c, op, now, sealer)?,
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// A write other than a message.
fn apply_other(
    c: &mut PgConnection,
    op: &WriteOp,
    now: i64,
    sealer: Option<&Sealer>,
) -> Result<WriteOutcome, StoreError> {
    Ok(match op {
        WriteOp::Message(_) => return Err(StoreError::Invariant("a message among the others")),
        WriteOp::ReadCursor {
            user_id,
            channel,
            up_to_seq,
        } => WriteOutcome::Cursor {
            up_to_seq: queries::advance_read_cursor(c, user_id, channel, *up_to_seq, now)?,
        },
        WriteOp::CreateGroup { group, members } => {
            WriteOutcome::GroupCreated(queries::create_group(c, group, members)?)
        }
        WriteOp::AddMember { group, user } => {
            queries::add_member(c, group, user, now)?;
            WriteOutcome::Done
        }
        WriteOp::RemoveMember { group, user } => {
            queries::remove_member(c, group, user)?;
            WriteOutcome::Done
        }
        WriteOp::PutState {
            user_id,
            collection,
            key,
            value,
            base_version,
            client_id,
        } => {
            let sealed = sealer.map(|s| s.seal(value));
            let put = queries::PutState {
                user: user_id,
                collection,
                key,
                value: sealed.as_deref().unwrap_or(value),
                base_version: *base_version,
                client_id: client_id.as_deref(),
                now,
            };
            let outcome = queries::put_state(c, &put)?;
            WriteOutcome::State(match sealer {
                Some(s) => s.open_outcome(outcome)?,
                None => outcome,
            })
        }
        WriteOp::IndexSearch { channels } => {
            queries::search_catch_up(c, channels)?;
            WriteOutcome::Indexed { caught_up: true }
        }
        WriteOp::DeliveryCursors {
            user_id,
            client_id,
            cursors,
        } => {
            queries::advance_delivery_cursors(c, user_id, client_id, cursors, now)?;
            WriteOutcome::Done
        }
        WriteOp::SetFollowing { user_id, follows } => {
            queries::set_following(c, user_id, follows)?;
            WriteOutcome::Done
        }
        WriteOp::TouchDevice {
            user_id,
            client_id,
            device,
        } => {
            queries::touch_device(c, user_id, client_id, device.as_deref(), now)?;
            WriteOutcome::Done
        }
        WriteOp::RevokeToken { .. } | WriteOp::CreateApiKey(_) | WriteOp::RevokeApiKey { .. } => {
            queries::apply_credential(c, op, now)?
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    use diesel::RunQueryDsl;

    use super::*;
    use crate::store::models::{NewMessage, Page};
    use crate::store::postgres::TestDatabase;

    const DAY_MS: i64 = 86_400_000;

    fn msg(channel: &str, sender: &str, frame: Option<&str>, text: &str) -> WriteOp {
        WriteOp::Message(NewMessage {
            channel: channel.into(),
            kind: "chat_message".into(),
            sender_id: sender.into(),
            target_id: "bob".into(),
            client_id: Some("phone".into()),
            client_msg_id: frame.map(str::to_owned),
            payload: format!(r#"{{"content":"{text}"}}"#),
        })
    }

    fn stored(o: &WriteOutcome) -> (&StoredMessage, bool) {
        match o {
            WriteOutcome::Stored { msg, duplicate } => (msg, *duplicate),
            other => panic!("not a message: {other:?}"),
        }
    }

    fn write(c: &mut PgConnection, ids: &mut MessageIds, ops: &[WriteOp]) -> Vec<WriteOutcome> {
        c.transaction(|c| apply(c, ids, ops, DAY_MS, None))
            .expect("batch")
    }

    #[test]
    fn a_batch_gets_gapless_seqs_per_channel_and_reads_back_in_order() {
        let db = TestDatabase::create();
        let pool = db.pool(2);
        let mut c = pool.get().expect("conn");
        let mut ids = MessageIds::default();
        let ops = [
            msg("dm:a:b", "a", Some("f1"), "one"),
            msg("group:g", "a", None, "x"),
            msg("dm:a:b", "b", Some("f1"), "two"),
            msg("dm:a:b", "a", None, "three"),
            msg("group:g", "b", Some("f9"), "y"),
        ];
        let out = write(&mut c, &mut ids, &ops);
        let seqs: Vec<(String, i64)> = out
            .iter()
            .map(|o| (stored(o).0.channel.to_string(), stored(o).0.seq))
            .collect();
        assert_eq!(
            seqs,
            [
                ("dm:a:b".into(), 1),
                ("group:g".into(), 1),
                ("dm:a:b".into(), 2),
                ("dm:a:b".into(), 3),
                ("group:g".into(), 2)
            ]
        );
        let out = write(&mut c, &mut ids, &[msg("dm:a:b", "a", None, "four")]);
        assert_eq!(stored(&out[0]).0.seq, 4);
        assert_eq!(queries::head_seq(&mut c, "dm:a:b").expect("head"), 4);
        let page = |after, before, limit| Page {
            after_seq: after,
            before_seq: before,
            limit,
        };
        let (rows, more) =
            queries::history(&mut c, "dm:a:b", page(Some(1), None, 2)).expect("history");
        assert_eq!(rows.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(more);
        let (rows, more) =
            queries::history(&mut c, "dm:a:b", page(None, Some(4), 10)).expect("history");
        assert_eq!(rows.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(!more);
        assert_eq!(rows[1].payload, r#"{"content":"two"}"#);
        assert_eq!(rows[1].client_id.as_deref(), Some("phone"));
    }

    #[test]
    fn a_resend_gets_the_message_it_repeats_within_the_window_only() {
        let db = TestDatabase::create();
        let pool = db.pool(2);
        let mut c = pool.get().expect("conn");
        let mut ids = MessageIds::default();
        let out = write(
            &mut c,
            &mut ids,
            &[
                msg("dm:a:b", "a", Some("f1"), "hi"),
                msg("dm:a:b", "a", Some("f1"), "hi"),
            ],
        );
        let (first, dup) = stored(&out[0]);
        assert!(!dup);
        assert_eq!(stored(&out[1]), (first, true), "a resend inside one batch");
        let again = write(&mut c, &mut ids, &[msg("dm:a:b", "a", Some("f1"), "hi")]);
        assert_eq!(
            stored(&again[0]),
            (first, true),
            "a resend in a later batch"
        );
        // Another sender's frame with the same id is its own message.
        let other = write(&mut c, &mut ids, &[msg("dm:a:b", "b", Some("f1"), "hi")]);
        assert_eq!(stored(&other[0]).0.seq, 2);
        // Past the window the key is free again.
        diesel::sql_query("UPDATE resend_keys SET created_at = 0")
            .execute(&mut c)
            .expect("age keys");
        let late = write(&mut c, &mut ids, &[msg("dm:a:b", "a", Some("f1"), "hi")]);
        let (m, dup) = stored(&late[0]);
        assert!(!dup);
        assert_eq!(m.seq, 3);
    }

    #[test]
    fn writers_on_two_connections_give_out_each_seq_once() {
        let db = TestDatabase::create();
        let pool = db.pool(4);
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut c = pool.get().expect("conn");
                    let mut ids = MessageIds::default();
                    let mut seqs = Vec::new();
                    for b in 0..100 {
                        let ops: Vec<WriteOp> = (0..5)
                            .map(|i| {
                                let frame = format!("w{w}-b{b}-{i}");
                                msg("group:g", &format!("u{w}"), Some(&frame), "x")
                            })
                            .collect();
                        let out = write(&mut c, &mut ids, &ops);
                        seqs.extend(out.iter().map(|o| stored(o).0.seq));
                    }
                    seqs
                })
            })
            .collect();
        let mut seqs: Vec<i64> = writers
            .into_iter()
            .flat_map(|w| w.join().expect("writer"))
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=1000).collect::<Vec<i64>>());
    }

    #[test]
    fn a_resend_stored_by_another_writer_meanwhile_waits_for_it_and_gets_its_message() {
        let db = TestDatabase::create();
        let pool = db.pool(4);
        let applied = Arc::new(Barrier::new(2));
        let first = {
            let (pool, applied) = (pool.clone(), applied.clone());
            std::thread::spawn(move || {
                let mut c = pool.get().expect("conn");
                let mut ids = MessageIds::default();
                c.transaction(|c| {
                    let out = apply(
                        c,
                        &mut ids,
                        &[msg("dm:a:b", "a", Some("k"), "hi")],
                        DAY_MS,
                        None,
                    );
                    applied.wait();
                    // The other writer tries the key now and waits on it until this
                    // commits.
                    std::thread::sleep(Duration::from_millis(300));
                    out
                })
                .expect("first writer")
            })
        };
        applied.wait();
        let mut c = pool.get().expect("conn");
        let mut ids = MessageIds::default();
        let ops = [msg("dm:a:b", "a", Some("k"), "hi")];
        let second = write(&mut c, &mut ids, &ops);
        let winner = first.join().expect("first");
        assert_eq!(stored(&second[0]), (stored(&winner[0]).0, true));
        assert_eq!(queries::head_seq(&mut c, "dm:a:b").expect("head"), 1);
    }

    #[test]
    fn a_bad_row_fails_its_batch_whole_and_alone_when_written_one_by_one() {
        let db = TestDatabase::create();
        let pool = db.pool(2);
        let mut c = pool.get().expect("conn");
        let mut ids = MessageIds::default();
        let ops = [
            msg("dm:a:b", "a", Some("f1"), "one"),
            msg("dm:a:b", "a", Some("f2"), "nul \u{0} is no PostgreSQL text"),
            msg("dm:a:b", "a", Some("f3"), "three"),
        ];
        let batch = super::write(&mut c, &mut ids, &ops, DAY_MS, None);
        assert!(batch.is_err(), "the bad row fails the statement: {batch:?}");
        assert_eq!(
            queries::head_seq(&mut c, "dm:a:b").expect("head"),
            0,
            "nothing kept"
        );
        let one_by_one: Vec<_> = ops
            .iter()
            .map(|op| super::write(&mut c, &mut ids, std::slice::from_ref(op), DAY_MS, None))
            .collect();
        assert_eq!(stored(&one_by_one[0].as_ref().expect("first")[0]).0.seq, 1);
        assert!(one_by_one[1].is_err());
        assert_eq!(stored(&one_by_one[2].as_ref().expect("third")[0]).0.seq, 2);
    }

    #[test]
    fn two_writers_on_one_base_version_apply_once_and_the_other_conflicts() {
        use crate::store::models::StateOutcome;
        let db = TestDatabase::create();
        let pool = db.pool(4);
        let ready = Arc::new(Barrier::new(2));
        let writers: Vec<_> = ["laptop", "phone"]
            .into_iter()
            .map(|device| {
                let (pool, ready) = (pool.clone(), ready.clone());
                std::thread::spawn(move || {
                    let mut c = pool.get().expect("conn");
                    let put = queries::PutState {
                        user: "alice",
                        collection: "settings",
                        key: "theme",
                        value: "\"dark\"",
                        base_version: 0,
                        client_id: Some(device),
                        now: 1,
                    };
                    c.transaction(|c| {
                        ready.wait();
                        let out = queries::put_state(c, &put);
                        // Hold the transaction so that the other writer meets it open.
                        std::thread::sleep(Duration::from_millis(200));
                        out
                    })
                    .expect("put")
                })
            })
            .collect();
        let outcomes: Vec<StateOutcome> = writers
            .into_iter()
            .map(|w| w.join().expect("writer"))
            .collect();
        let applied = outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    StateOutcome::Applied {
                        version: 1,
                        revision: 1
                    }
                )
            })
            .count();
        assert_eq!(applied, 1, "{outcomes:?}");
        assert!(outcomes.iter().any(|o| matches!(
            o,
            StateOutcome::Conflict { current: Some(d) } if d.version == 1
        )));
    }
}
