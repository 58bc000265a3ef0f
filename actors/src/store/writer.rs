//! `MessageWriter`: commits one batch per transaction on a SyncArbiter thread.
//!
//! Owns nothing but the pool and the shared [`WriterMemory`]; a restart loses nothing (an
//! unanswered batch makes its senders retry, and dedupe makes the retry safe). Seqs are given
//! out here, inside the transaction, from counters kept in memory ([`SeqCounters`]); memory
//! moves only once the transaction committed, so a rolled-back batch leaves no gap.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actix::prelude::*;

use super::dedupe::{key_of, DedupeKeys, KeyHasher, SliceMoved};
use super::models::{NewMessage, StoredMessage};
use super::seqs::{Counter, SeqCounters};
use super::{queries, DbConn, DbPool, StoreError};
use crate::fast_map::FastMap;
use crate::health::{ActorHealth, Probe};
use crate::ids::{now_ms, MessageId, MessageIds};

/// One write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Store a message (or find its earlier copy).
    Message(NewMessage),
    /// Move a user's read cursor forward.
    ReadCursor {
        /// Reader.
        user_id: String,
        /// Channel read.
        channel: String,
        /// Highest seq read.
        up_to_seq: i64,
    },
    /// Note that a device connected (first and last seen).
    TouchDevice {
        /// Owner.
        user_id: String,
        /// Device/install id.
        client_id: String,
        /// Device kind.
        device: Option<String>,
    },
}

/// What one write did.
// `Stored` is the common case; boxing it would add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// The message as stored; `duplicate` when an earlier copy was found instead.
    Stored {
        /// The stored row.
        msg: StoredMessage,
        /// True if this was a resend of an already stored frame.
        duplicate: bool,
    },
    /// The read cursor after the write.
    Cursor {
        /// Effective cursor (never moves back).
        up_to_seq: i64,
    },
    /// A write with nothing to report.
    Done,
}

/// Writes committed together, answered in order.
#[derive(Message)]
#[rtype(result = "Vec<Result<WriteOutcome, StoreError>>")]
pub struct WriteBatch {
    /// The writes.
    pub ops: Vec<WriteOp>,
    /// How far back a resend is recognised, ms.
    pub dedupe_window_ms: i64,
}

/// What the writer threads keep between commits. One per database, behind one lock that a
/// thread holds for the whole of its transaction (SQLite has one writer at a time anyway).
#[derive(Debug)]
pub struct WriterMemory {
    /// Keys of recent messages, for resend detection.
    pub keys: DedupeKeys,
    /// The last seq given out in each recently written channel.
    pub seqs: SeqCounters,
    /// Where message ids come from.
    pub ids: MessageIds,
}

impl WriterMemory {
    /// Memory with the dedupe keys read back at start-up and no seq counter yet.
    pub fn new(keys: DedupeKeys) -> Self {
        WriterMemory {
            keys,
            seqs: SeqCounters::default(),
            ids: MessageIds::default(),
        }
    }
}

/// A writer thread.
pub struct MessageWriter {
    /// The shared pool.
    pub pool: DbPool,
    /// Shared by every writer thread.
    pub health: Arc<ActorHealth>,
    /// Dedupe keys and seq counters, shared by every writer thread.
    pub memory: Arc<Mutex<WriterMemory>>,
    /// How many of those keys are held in memory, for `/status`.
    pub keys_held: Arc<AtomicU64>,
}

impl Actor for MessageWriter {
    type Context = SyncContext<Self>;
}

impl Handler<WriteBatch> for MessageWriter {
    type Result = Vec<Result<WriteOutcome, StoreError>>;

    fn handle(&mut self, batch: WriteBatch, _: &mut SyncContext<Self>) -> Self::Result {
        self.health.handled();
        let mut conn = match self.pool.get() {
            Ok(c) => c,
            Err(e) => {
                let msg = e.to_string();
                self.health.failed(msg.clone());
                return batch
                    .ops
                    .iter()
                    .map(|_| Err(StoreError::Setup(msg.clone())))
                    .collect();
            }
        };
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        let out = commit(&mut conn, &mut memory, batch, &self.health);
        self.keys_held
            .store(memory.keys.pending() as u64, Ordering::Relaxed);
        out
    }
}

/// Commits `batch` in one transaction, with the next slice of dedupe keys; if that fails,
/// commits its writes one by one so that a bad row fails alone. Answers each write in order.
fn commit(
    conn: &mut DbConn,
    memory: &mut WriterMemory,
    batch: WriteBatch,
    health: &ActorHealth,
) -> Vec<Result<WriteOutcome, StoreError>> {
    let window = batch.dedupe_window_ms;
    let mut staged = Staged::from(batch.ops);
    let done = conn.immediate_transaction(|c| {
        let applied = apply(c, memory, &mut staged, window)?;
        let moved = memory.keys.move_slice(c)?;
        Ok::<_, StoreError>((applied, moved))
    });
    match done {
        Ok((applied, moved)) => staged.committed(applied, moved, memory),
        Err(e) => {
            log::warn!(
                "batch of {} failed ({e}); retrying row by row",
                staged.writes.len()
            );
            health.failed(e.to_string());
            // A counter may be what failed (another process wrote the same file): read
            // every counter from the store again.
            memory.seqs.forget();
            staged
                .into_singles()
                .map(|mut one| {
                    conn.immediate_transaction(|c| apply(c, memory, &mut one, window))
                        .and_then(|applied| {
                            one.committed(applied, None, memory)
                                .pop()
                                .unwrap_or(Err(StoreError::Invariant("a write without an outcome")))
                        })
                })
                .collect()
        }
    }
}

impl Handler<Probe> for MessageWriter {
    type Result = u64;
    fn handle(&mut self, _: Probe, _: &mut SyncContext<Self>) -> u64 {
        self.health.handled_count()
    }
}

/// A batch with its messages already in row form, so that rows are inserted and then
/// answered without copying their strings.
struct Staged {
    /// Every message of the batch, in order; `apply` sets their id, seq and time.
    rows: Vec<StoredMessage>,
    /// Per write, in order: `None` for a message (the next of `rows`), else the write.
    writes: Vec<Option<WriteOp>>,
}

impl From<Vec<WriteOp>> for Staged {
    fn from(ops: Vec<WriteOp>) -> Self {
        let mut rows = Vec::with_capacity(ops.len());
        let writes = ops
            .into_iter()
            .map(|op| match op {
                WriteOp::Message(m) => {
                    rows.push(m.stored(MessageId::default(), 0, 0));
                    None
                }
                other => Some(other),
            })
            .collect();
        Staged { rows, writes }
    }
}

impl Staged {
    /// The batch as batches of one write each, in order.
    fn into_singles(self) -> impl Iterator<Item = Staged> {
        let mut rows = self.rows.into_iter();
        self.writes.into_iter().map(move |w| match w {
            None => Staged {
                rows: rows.next().into_iter().collect(),
                writes: vec![None],
            },
            other => Staged {
                rows: Vec::new(),
                writes: vec![other],
            },
        })
    }

    /// The outcome of each write of a committed batch, in order, moving the rows into them;
    /// first hands the keys of the new rows (and the slice the commit moved) and the seq
    /// counters it moved to `memory`.
    fn committed(
        mut self,
        applied: Applied,
        moved: Option<SliceMoved>,
        memory: &mut WriterMemory,
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        let rows = &self.rows;
        let first_pos = applied.first_pos.unwrap_or_default();
        let stored = applied.keys.iter().filter_map(|&(key, i, nth)| {
            rows.get(i)
                .map(|row| (key, first_pos + nth as i64, row.created_at))
        });
        memory.keys.committed(moved, stored);
        memory.seqs.committed(
            applied
                .seqs
                .iter()
                .map(|(channel, counter)| (&**channel, counter.last)),
        );
        let mut out: Vec<Result<WriteOutcome, StoreError>> =
            Vec::with_capacity(applied.slots.len());
        for slot in applied.slots {
            let r = match slot {
                Slot::New(i) => match self.rows.get_mut(i) {
                    Some(row) => Ok(WriteOutcome::Stored {
                        msg: std::mem::take(row),
                        duplicate: false,
                    }),
                    None => Err(StoreError::Invariant("a new row out of range")),
                },
                Slot::SameAs(j) => match out.get(j) {
                    Some(Ok(WriteOutcome::Stored { msg, .. })) => Ok(WriteOutcome::Stored {
                        msg: msg.clone(),
                        duplicate: true,
                    }),
                    _ => Err(StoreError::Invariant(
                        "a resend of a write that was not stored",
                    )),
                },
                Slot::Duplicate(msg) => Ok(WriteOutcome::Stored {
                    msg,
                    duplicate: true,
                }),
                Slot::Done(outcome) => Ok(outcome),
            };
            out.push(r);
        }
        out
    }
}

/// What `apply` did to a batch.
struct Applied {
    /// Per write, in order: where its outcome comes from.
    slots: Vec<Slot>,
    /// (dedupe key, row, how many new rows were inserted before it) of each new row with a
    /// client frame id.
    keys: Vec<(u64, usize, usize)>,
    /// The position of the first new row (they are consecutive); `None` if none is new.
    first_pos: Option<i64>,
    /// The counters of the channels this batch gave seqs in, after it (`has_row` as it was
    /// before: the commit inserted the missing rows).
    seqs: FastMap<Arc<str>, Counter>,
}

/// A message of a batch as the in-batch resend check sees it: equal when sender and frame
/// id are, hashed by its dedupe key (computed anyway, and a function of both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameRef<'a> {
    key: u64,
    sender: &'a str,
    id: &'a str,
}

impl Hash for FrameRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.key);
    }
}

/// Where one write's outcome comes from once its batch has committed.
enum Slot {
    /// Inserted by this batch: row `i` of [`Staged::rows`].
    New(usize),
    /// A resend of an earlier write of the same batch (its position).
    SameAs(usize),
    /// A resend: the earlier copy.
    Duplicate(StoredMessage),
    /// A finished non-message write.
    Done(WriteOutcome),
}

/// Applies the batch inside the caller's transaction; answers a slot per write.
///
/// Seqs come from the counters in memory (read from the store on first use only), rows go in
/// with multi-row inserts; the dedupe look-ups are one cached statement per message.
fn apply(
    c: &mut DbConn,
    memory: &mut WriterMemory,
    b: &mut Staged,
    dedupe_window_ms: i64,
) -> Result<Applied, StoreError> {
    let now = now_ms();
    let since = now - dedupe_window_ms;
    let WriterMemory {
        keys,
        seqs: counters,
        ids,
    } = memory;
    // Seq counters touched by this batch, as they stand after it.
    let mut seqs: FastMap<Arc<str>, Counter> = FastMap::default();
    // Messages of this batch -> write position, to catch a resend inside one batch.
    let mut in_batch: HashMap<FrameRef, usize, BuildHasherDefault<KeyHasher>> = HashMap::default();
    let mut slots = Vec::with_capacity(b.writes.len());
    let mut fresh_keys = Vec::new();
    let mut new_rows = 0;
    let mut rows = b.rows.iter_mut().enumerate();

    for write in &b.writes {
        let slot = match write {
            None => {
                let Some((i, m)) = rows.next() else {
                    return Err(StoreError::Invariant("fewer rows than messages"));
                };
                let mut key = None;
                if let Some(cmid) = m.client_msg_id.as_deref() {
                    let k = key_of(&m.sender_id, cmid);
                    let frame = FrameRef {
                        key: k,
                        sender: &m.sender_id,
                        id: cmid,
                    };
                    if let Some(&j) = in_batch.get(&frame) {
                        slots.push(Slot::SameAs(j));
                        continue;
                    }
                    if let Some(old) = keys.find(c, k, &m.sender_id, cmid, since)? {
                        slots.push(Slot::Duplicate(old));
                        continue;
                    }
                    key = Some(k);
                }
                let counter = match seqs.get_mut(&*m.channel) {
                    Some(counter) => counter,
                    None => {
                        let counter = counters.get(c, &m.channel)?;
                        seqs.entry(m.channel.clone()).or_insert(counter)
                    }
                };
                counter.last += 1;
                m.id = ids.next(now);
                m.seq = counter.last;
                m.created_at = now;
                new_rows += 1;
                if let (Some(k), Some(cmid)) = (key, m.client_msg_id.as_deref()) {
                    let frame = FrameRef {
                        key: k,
                        sender: &m.sender_id,
                        id: cmid,
                    };
                    in_batch.insert(frame, slots.len());
                    fresh_keys.push((k, i, new_rows - 1));
                }
                Slot::New(i)
            }
            Some(WriteOp::Message(_)) => {
                return Err(StoreError::Invariant("a message outside the rows"));
            }
            Some(WriteOp::ReadCursor {
                user_id,
                channel,
                up_to_seq,
            }) => {
                let up_to_seq = queries::advance_read_cursor(c, user_id, channel, *up_to_seq, now)?;
                Slot::Done(WriteOutcome::Cursor { up_to_seq })
            }
            Some(WriteOp::TouchDevice {
                user_id,
                client_id,
                device,
            }) => {
                queries::touch_device(c, user_id, client_id, device.as_deref(), now)?;
                Slot::Done(WriteOutcome::Done)
            }
        };
        slots.push(slot);
    }
    for (channel, counter) in &seqs {
        if !counter.has_row {
            queries::insert_channel(c, channel, counter.last, now)?;
        }
    }
    let first_pos = if new_rows == b.rows.len() {
        queries::insert_messages(c, &b.rows)?
    } else {
        // Resends are rare: copy just the new rows rather than the whole batch.
        let fresh: Vec<StoredMessage> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::New(i) => b.rows.get(*i).cloned(),
                _ => None,
            })
            .collect();
        queries::insert_messages(c, &fresh)?
    };
    Ok(Applied {
        slots,
        keys: fresh_keys,
        first_pos,
        seqs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dedupe::DedupeSettings;
    use crate::store::models::DedupeKeyRow;
    use crate::store::{open_pool, run_migrations, StoreConfig, Synchronous};

    const WINDOW: i64 = 3_600_000;

    /// A database without migrations in a directory of its own (removed with the `TempDir`).
    fn empty() -> (tempfile::TempDir, DbPool) {
        let dir = tempfile::tempdir().expect("dir");
        let pool = open_pool(&StoreConfig {
            url: dir.path().join("t.db").display().to_string(),
            pool_size: 2,
            synchronous: Synchronous::Normal,
            wal_autocheckpoint: 1000,
        })
        .expect("pool");
        (dir, pool)
    }

    /// A migrated database.
    fn fresh() -> (tempfile::TempDir, DbPool) {
        let (dir, pool) = empty();
        run_migrations(&pool).expect("migrations");
        (dir, pool)
    }

    fn load_keys(pool: &DbPool, slices: u32) -> DedupeKeys {
        let mut c = pool.get().expect("conn");
        let settings = DedupeSettings {
            slices,
            window_ms: WINDOW,
            filter_bytes: 1 << 20,
        };
        DedupeKeys::load(&mut c, settings, now_ms()).expect("load")
    }

    /// Writer memory as at start-up.
    fn load(pool: &DbPool, slices: u32) -> WriterMemory {
        WriterMemory::new(load_keys(pool, slices))
    }

    /// Memory whose key slices move on every commit, however few keys they hold.
    fn load_eager(pool: &DbPool, slices: u32) -> WriterMemory {
        WriterMemory::new(load_keys(pool, slices).paced(1, 1))
    }

    fn dm(sender: &str, cmid: &str) -> WriteOp {
        WriteOp::Message(NewMessage {
            channel: format!("dm:{sender}:zed").into(),
            kind: "chat_message".into(),
            sender_id: sender.into(),
            target_id: "zed".into(),
            client_id: None,
            client_msg_id: Some(cmid.into()),
            payload: r#"{"content":"hi"}"#.into(),
        })
    }

    /// Commits `ops` as one batch; answers (message id, duplicate) per write.
    fn write(pool: &DbPool, mem: &mut WriterMemory, ops: Vec<WriteOp>) -> Vec<(MessageId, bool)> {
        let mut c = pool.get().expect("conn");
        let batch = WriteBatch {
            ops,
            dedupe_window_ms: WINDOW,
        };
        commit(&mut c, mem, batch, &ActorHealth::new("test"))
            .into_iter()
            .map(|r| match r {
                Ok(WriteOutcome::Stored { msg, duplicate }) => (msg.id, duplicate),
                other => panic!("not stored: {other:?}"),
            })
            .collect()
    }

    fn moved_keys(pool: &DbPool) -> i64 {
        use crate::store::schema::dedupe_keys;
        use diesel::{QueryDsl, RunQueryDsl};
        let mut c = pool.get().expect("conn");
        dedupe_keys::table
            .count()
            .get_result(&mut c)
            .expect("count")
    }

    /// Rows of every statement shape (32, 16, 4 and 1 rows), as `insert_messages` is
    /// given them: one time for all, or (never from the writer) times that differ.
    #[test]
    fn multi_row_inserts_store_each_rows_own_values() {
        use crate::store::schema::messages;
        use diesel::{QueryDsl, RunQueryDsl, SelectableHelper};
        let (_dir, pool) = fresh();
        let mut c = pool.get().expect("conn");
        let row = |n: i64, at: i64| {
            let WriteOp::Message(m) = dm(&format!("u{n}"), &format!("c{n}")) else {
                unreachable!()
            };
            m.stored(MessageId::of(uuid::Uuid::from_u128(n as u128)), n, at)
        };
        // 53 rows at one time: a statement of each shape.
        let same: Vec<StoredMessage> = (1..=53).map(|n| row(n, 1_000)).collect();
        // 32 rows whose times differ: they may not share the first row's.
        let differ: Vec<StoredMessage> = (54..=85).map(|n| row(n, 1_000 + n)).collect();
        let first = queries::insert_messages(&mut c, &same).expect("same time");
        let next = queries::insert_messages(&mut c, &differ).expect("times differ");
        assert_eq!(next, first.map(|p| p + 53));
        let stored: Vec<StoredMessage> = messages::table
            .order(messages::pos)
            .select(StoredMessage::as_select())
            .load(&mut c)
            .expect("read back");
        let written: Vec<StoredMessage> = same.into_iter().chain(differ).collect();
        assert_eq!(stored, written);
    }

    #[test]
    fn a_resend_is_found_while_its_key_waits_in_memory_after_it_moved_and_after_a_restart() {
        let (_dir, pool) = fresh();
        let mut mem = load_eager(&pool, 2);
        let first = write(&pool, &mut mem, vec![dm("alice", "m1")]);
        assert_eq!(mem.keys.pending(), 1);
        assert_eq!(moved_keys(&pool), 0);
        let again = write(&pool, &mut mem, vec![dm("alice", "m1")]);
        assert_eq!(again, vec![(first[0].0, true)]);

        // Two more commits finish the rotation after it (two slices): the key is in the table.
        write(&pool, &mut mem, vec![dm("bob", "b1")]);
        write(&pool, &mut mem, vec![dm("bob", "b2")]);
        assert_eq!(moved_keys(&pool) + mem.keys.pending() as i64, 3);
        assert!(mem.keys.pending() <= 2, "only bob's keys may wait");
        let again = write(&pool, &mut mem, vec![dm("alice", "m1")]);
        assert_eq!(again, vec![(first[0].0, true)]);

        // After a restart, from the table or from the messages stored after the marker.
        let mut mem = load_eager(&pool, 2);
        let again = write(&pool, &mut mem, vec![dm("alice", "m1"), dm("bob", "b2")]);
        assert!(again.iter().all(|(_, dup)| *dup), "{again:?}");
        assert_eq!(again[0].0, first[0].0);
        // Another sender's frame id is another key.
        let other = write(&pool, &mut mem, vec![dm("carol", "m1")]);
        assert!(!other[0].1);
    }

    #[test]
    fn every_key_reaches_the_table_within_one_rotation_and_is_not_read_back() {
        let (_dir, pool) = fresh();
        let mut mem = load_eager(&pool, 4);
        let ops = (0..200).map(|i| dm("alice", &format!("f{i}"))).collect();
        write(&pool, &mut mem, ops);
        assert_eq!(mem.keys.pending(), 200);
        assert_eq!(
            load_eager(&pool, 4).keys.pending(),
            200,
            "read back after a restart"
        );
        for i in 0..7 {
            write(&pool, &mut mem, vec![dm("bob", &format!("g{i}"))]);
        }
        // Four commits after the batch, every slice has been moved once.
        assert_eq!(moved_keys(&pool) + mem.keys.pending() as i64, 207);
        assert!(mem.keys.pending() <= 7, "only bob's keys may wait");
        // The eighth commit finished the rotation that began after g2: a restart reads back
        // the keys of g3..g6 only.
        assert_eq!(load_eager(&pool, 4).keys.pending(), 4);
    }

    #[test]
    fn keys_are_inserted_in_every_chunk_size_and_a_key_moved_twice_is_kept_once() {
        let (_dir, pool) = fresh();
        let mut c = pool.get().expect("conn");
        // 32 + 32 + 16 + 4 + 1 + 1 + 1: every statement shape is used.
        let rows: Vec<DedupeKeyRow> = (0..87).map(|i| DedupeKeyRow { key: i, pos: i }).collect();
        queries::insert_dedupe_keys(&mut c, &rows).expect("insert");
        assert_eq!(moved_keys(&pool), 87);
        // A restart moves some keys again, among new ones.
        let again: Vec<DedupeKeyRow> = (80..100).map(|i| DedupeKeyRow { key: i, pos: i }).collect();
        queries::insert_dedupe_keys(&mut c, &again).expect("insert again");
        assert_eq!(moved_keys(&pool), 100);
        assert_eq!(
            queries::dedupe_candidates(&mut c, 86).expect("look-up"),
            vec![86]
        );
    }

    #[test]
    fn a_slice_with_few_keys_waits_for_more_or_for_sixteen_commits() {
        let (_dir, pool) = fresh();
        let mut mem = load(&pool, 4);
        for i in 0..15 {
            write(&pool, &mut mem, vec![dm("bob", &format!("g{i}"))]);
        }
        assert_eq!(moved_keys(&pool), 0, "a few keys wait");
        // The sixteenth commit moves the slice it waited on.
        write(&pool, &mut mem, vec![dm("bob", "g15")]);
        assert!(mem.keys.pending() < 16);
        assert_eq!(moved_keys(&pool) + mem.keys.pending() as i64, 16);
        // A batch fills every slice past 32 keys: the next commit moves its slice.
        let ops = (0..200).map(|i| dm("alice", &format!("f{i}"))).collect();
        write(&pool, &mut mem, ops);
        let before = moved_keys(&pool);
        write(&pool, &mut mem, vec![dm("bob", "g16")]);
        assert!(moved_keys(&pool) >= before + 32);
    }

    #[test]
    fn a_database_from_before_migration_3_keeps_its_messages_and_their_resend_keys() {
        use crate::store::MIGRATIONS;
        use diesel::connection::SimpleConnection;
        use diesel_migrations::MigrationHarness;

        let (_dir, pool) = empty();
        let mut c = pool.get().expect("conn");
        for _ in 0..2 {
            c.run_next_migration(MIGRATIONS)
                .expect("migrations 1 and 2");
        }
        c.batch_execute(&format!(
            "INSERT INTO messages (id, channel, seq, kind, sender_id, target_id, client_id, \
             client_msg_id, payload, created_at) VALUES \
             ('01900000-0000-7000-8000-00000000000a', 'dm:alice:zed', 1, 'chat_message', 'alice', 'zed', NULL, 'm1', '{{}}', {0}), \
             ('01900000-0000-7000-8000-00000000000b', 'dm:alice:zed', 2, 'chat_message', 'alice', 'zed', NULL, 'm2', '{{}}', {0}); \
             INSERT INTO channels (name, last_seq, created_at) VALUES ('dm:alice:zed', 2, {0});",
            now_ms()
        ))
        .expect("rows of the old schema");
        drop(c);
        run_migrations(&pool).expect("the rest");

        let mut mem = load(&pool, 64);
        assert_eq!(mem.keys.pending(), 2, "keys read back from the old rows");
        let again = write(&pool, &mut mem, vec![dm("alice", "m2"), dm("alice", "m3")]);
        assert_eq!(
            again[0],
            (
                MessageId::parse("01900000-0000-7000-8000-00000000000b").expect("uuid"),
                true
            )
        );
        assert!(!again[1].1);
        // The new message continues the channel's seqs after the old rows.
        let stored = seqs_of(&pool, "dm:alice:zed");
        assert_eq!(stored.last(), Some(&(3, Some("m3".to_owned()))));
    }

    #[test]
    fn a_resend_inside_one_batch_gets_the_first_copy() {
        let (_dir, pool) = fresh();
        let mut mem = load(&pool, 4);
        let out = write(
            &pool,
            &mut mem,
            vec![dm("alice", "m1"), dm("bob", "m1"), dm("alice", "m1")],
        );
        assert_eq!(out[2], (out[0].0, true));
        assert!(!out[0].1 && !out[1].1);
        assert_ne!(out[0].0, out[1].0, "another sender's id is another frame");
        assert_eq!(seqs_of(&pool, "dm:alice:zed").len(), 1, "stored once");
    }

    #[test]
    fn a_key_shared_with_another_message_is_checked_against_the_message() {
        let (_dir, pool) = fresh();
        let mut mem = load(&pool, 1);
        let bobs = write(&pool, &mut mem, vec![dm("bob", "b1")]);
        // A row under alice's key pointing at bob's message: what a hash collision looks like.
        let mut c = pool.get().expect("conn");
        let row = DedupeKeyRow {
            key: key_of("alice", "m1") as i64,
            pos: 1,
        };
        queries::insert_dedupe_keys(&mut c, &[row]).expect("insert");
        drop(c);
        // Read back at start-up, so that the look-up does not skip the table.
        let mut mem = load(&pool, 1);
        let alices = write(&pool, &mut mem, vec![dm("alice", "m1")]);
        assert!(!alices[0].1, "not taken for bob's message");
        assert_ne!(alices[0].0, bobs[0].0);
    }

    #[test]
    fn keys_of_a_batch_with_resends_in_it_point_at_their_own_messages() {
        let (_dir, pool) = fresh();
        let mut mem = load_eager(&pool, 1);
        let first = write(&pool, &mut mem, vec![dm("alice", "m1")]);
        // A resend first, then two new messages: the new rows are not the batch's first.
        let mixed = write(
            &pool,
            &mut mem,
            vec![dm("alice", "m1"), dm("alice", "m2"), dm("bob", "b1")],
        );
        assert_eq!(mixed[0], (first[0].0, true));
        // One more commit moves every key; after a restart they come from the table alone.
        write(&pool, &mut mem, vec![dm("carol", "c1")]);
        assert!(moved_keys(&pool) >= 3);
        let mut mem = load_eager(&pool, 1);
        let again = write(&pool, &mut mem, vec![dm("bob", "b1"), dm("alice", "m2")]);
        assert_eq!(again, vec![(mixed[2].0, true), (mixed[1].0, true)]);
    }

    #[test]
    fn a_database_from_before_migration_4_keeps_its_moved_resend_keys() {
        use crate::store::MIGRATIONS;
        use diesel::connection::SimpleConnection;
        use diesel_migrations::MigrationHarness;

        let (_dir, pool) = empty();
        let mut c = pool.get().expect("conn");
        for _ in 0..3 {
            c.run_next_migration(MIGRATIONS).expect("migrations 1 to 3");
        }
        // A message whose key had moved (rows of the old shape), so that nothing reads it
        // back from `messages` at start-up.
        c.batch_execute(&format!(
            "INSERT INTO messages (pos, id, channel, seq, kind, sender_id, target_id, client_id, \
             client_msg_id, payload, created_at) VALUES \
             (7, '01900000-0000-7000-8000-00000000000a', 'dm:alice:zed', 1, 'chat_message', 'alice', 'zed', NULL, 'm1', '{{}}', {0}); \
             INSERT INTO channels (name, last_seq, created_at) VALUES ('dm:alice:zed', 1, {0}); \
             INSERT INTO dedupe_keys (key, channel, seq, created_at) VALUES ({1}, 'dm:alice:zed', 1, {0}); \
             UPDATE dedupe_state SET moved_through = 7;",
            now_ms(),
            key_of("alice", "m1") as i64
        ))
        .expect("rows of the old schema");
        drop(c);
        run_migrations(&pool).expect("migration 4");
        assert_eq!(moved_keys(&pool), 1);

        let mut mem = load(&pool, 64);
        assert_eq!(
            mem.keys.pending(),
            0,
            "nothing read back: the key is in the table"
        );
        let again = write(&pool, &mut mem, vec![dm("alice", "m1")]);
        assert_eq!(
            again,
            vec![(
                MessageId::parse("01900000-0000-7000-8000-00000000000a").expect("uuid"),
                true
            )]
        );
    }

    /// The seq each message of `channel` is stored as, in seq order.
    fn seqs_of(pool: &DbPool, channel: &str) -> Vec<(i64, Option<String>)> {
        use crate::store::schema::messages;
        use diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
        let mut c = pool.get().expect("conn");
        messages::table
            .filter(messages::channel.eq(channel))
            .order(messages::seq.asc())
            .select((messages::seq, messages::client_msg_id))
            .load(&mut c)
            .expect("read")
    }

    #[test]
    fn seqs_count_on_from_memory_and_from_the_store_after_a_restart() {
        let (_dir, pool) = fresh();
        let mut mem = load(&pool, 64);
        write(&pool, &mut mem, vec![dm("alice", "a1"), dm("alice", "a2")]);
        write(&pool, &mut mem, vec![dm("alice", "a3"), dm("bob", "b1")]);
        assert_eq!(mem.seqs.held(), 2);
        let mut c = pool.get().expect("conn");
        // The row is written once, when the channel is made; the counter is read past it.
        assert_eq!(
            queries::head_seq(&mut c, "dm:alice:zed").expect("head"),
            (3, true)
        );
        assert_eq!(
            queries::head_seq(&mut c, "dm:nobody:zed").expect("head"),
            (0, false)
        );
        drop(c);

        let mut mem = load(&pool, 64);
        write(&pool, &mut mem, vec![dm("alice", "a4")]);
        let got: Vec<i64> = seqs_of(&pool, "dm:alice:zed").iter().map(|r| r.0).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_counter_moved_behind_the_writers_back_is_read_again_and_nothing_is_lost() {
        let (_dir, pool) = fresh();
        let mut ours = load(&pool, 64);
        write(&pool, &mut ours, vec![dm("alice", "a1")]);
        // Another writer on the same file (a second process) gives out seqs 2 and 3.
        let mut theirs = load(&pool, 64);
        write(
            &pool,
            &mut theirs,
            vec![dm("alice", "t1"), dm("alice", "t2")],
        );
        // Our counter says 1: the batch collides with their rows, fails, and is retried row
        // by row from counters read again.
        let ours_now = write(&pool, &mut ours, vec![dm("alice", "a2"), dm("alice", "a3")]);
        assert!(ours_now.iter().all(|(_, dup)| !dup));
        let got = seqs_of(&pool, "dm:alice:zed");
        let want: Vec<(i64, Option<String>)> =
            [(1, "a1"), (2, "t1"), (3, "t2"), (4, "a2"), (5, "a3")]
                .into_iter()
                .map(|(seq, id)| (seq, Some(id.to_owned())))
                .collect();
        assert_eq!(got, want);
        // And the next batch goes in whole again.
        write(&pool, &mut ours, vec![dm("alice", "a4")]);
        assert_eq!(seqs_of(&pool, "dm:alice:zed").len(), 6);
    }

    #[test]
    fn the_counter_cache_is_bounded() {
        let mut seqs = SeqCounters::new(2);
        seqs.committed([("a", 1), ("b", 1)].into_iter());
        assert_eq!(seqs.held(), 2);
        seqs.committed([("a", 2)].into_iter());
        assert_eq!(seqs.held(), 2, "an update takes no room");
        seqs.committed([("c", 1)].into_iter());
        assert_eq!(seqs.held(), 1, "full: starts again with the newest");
    }
}
