//! `MessageWriter`: commits one batch per transaction on a SyncArbiter thread.
//!
//! Owns nothing but the pool and the shared [`WriterMemory`]; a restart loses nothing (an
//! unanswered batch makes its senders retry, and dedupe makes the retry safe). Seqs are given
//! out here, inside the transaction, from counters kept in memory ([`SeqCounters`]); memory
//! moves only once the transaction committed, so a rolled-back batch leaves no gap.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use actix::prelude::*;

use super::channel_index::{ChannelIndex, Place, PlacesMoved};
use super::dedupe::{key_of, DedupeKeys, KeyHasher, KeysMoved, ResendKeyStats};
use super::seqs::{Counter, SeqCounters};
use super::{queries, DbConn, DbPool};
use crate::fast_map::FastMap;
use crate::health::{ActorHealth, Probe};
use crate::ids::{now_ms, MessageId, MessageIds};
use crate::store::health::DatabaseHealth;
use crate::store::models::StoredMessage;
use crate::store::sealing::Sealer;
use crate::store::write::{WriteBatch, WriteOp, WriteOutcome};
use crate::store::StoreError;

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
    /// The places of recent messages by channel, shared with the readers.
    pub index: ChannelIndex,
    /// Seals payloads and state documents before they are stored (encryption at rest).
    pub sealer: Option<Arc<Sealer>>,
}

impl WriterMemory {
    /// Memory with the dedupe keys and channel places read back at start-up and no seq
    /// counter yet.
    pub fn new(keys: DedupeKeys, index: ChannelIndex) -> Self {
        WriterMemory {
            keys,
            seqs: SeqCounters::default(),
            ids: MessageIds::default(),
            index,
            sealer: None,
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
    /// Where the resend keys are, for `/status`.
    pub key_stats: Arc<ResendKeyStats>,
    /// Whether the database answers, shared with the readers.
    pub database: Arc<DatabaseHealth>,
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
                let e = StoreError::Pool(e);
                self.health.failed(e.to_string());
                self.database.failed(&e);
                let why = e.to_string();
                return batch
                    .ops
                    .iter()
                    .map(|_| Err(StoreError::Unavailable(why.clone())))
                    .collect();
            }
        };
        let mut memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        let out = commit(&mut conn, &mut memory, batch, &self.health, &self.database);
        self.key_stats.record(&memory.keys);
        out
    }
}

/// Commits `batch` in one transaction, with the dedupe keys and the channel
/// places that are due; if that fails, commits its writes one by one so that a bad row fails
/// alone. Answers each write in order.
fn commit(
    conn: &mut DbConn,
    memory: &mut WriterMemory,
    batch: WriteBatch,
    health: &ActorHealth,
    database: &DatabaseHealth,
) -> Vec<Result<WriteOutcome, StoreError>> {
    let window = batch.dedupe_window_ms;
    let mut staged = Staged::from(batch.ops);
    let done = conn.immediate_transaction(|c| {
        let applied = apply(c, memory, &mut staged, window)?;
        let moved = memory.keys.move_keys(c, applied.keys.len())?;
        let placed = memory.index.move_due(c)?;
        Ok::<_, StoreError>((applied, (Some(moved), Some(placed))))
    });
    match done {
        Ok((applied, moved)) => {
            database.ok();
            staged.committed(applied, moved, memory)
        }
        Err(e) => {
            log::warn!(
                "batch of {} failed ({e}); retrying row by row",
                staged.writes.len()
            );
            health.failed(e.to_string());
            database.failed(&e);
            // A counter may be what failed (the file was changed behind the writer's back,
            // which the database lock should rule out): read every counter again.
            memory.seqs.forget();
            staged
                .into_singles()
                .map(|mut one| {
                    conn.immediate_transaction(|c| apply(c, memory, &mut one, window))
                        .and_then(|applied| {
                            one.committed(applied, (None, None), memory)
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
    /// first hands the keys and places of the new rows (and the keys and the places
    /// the commit moved) and the seq counters it moved to `memory`.
    fn committed(
        mut self,
        applied: Applied,
        (moved, placed): (Option<KeysMoved>, Option<PlacesMoved>),
        memory: &mut WriterMemory,
    ) -> Vec<Result<WriteOutcome, StoreError>> {
        let rows = &self.rows;
        let first_pos = applied.first_pos.unwrap_or_default();
        // New rows were inserted in the order of their slots, at consecutive positions.
        let new_rows = applied.slots.iter().filter_map(|s| match s {
            Slot::New(i) => rows.get(*i),
            _ => None,
        });
        let places = new_rows.zip(first_pos..).map(|(row, pos)| {
            let place = Place { seq: row.seq, pos };
            (&row.channel, place)
        });
        memory.index.committed(placed, places);
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
        index,
        sealer,
    } = memory;
    // Seq counters touched by this batch, as they stand after it.
    let mut seqs: FastMap<Arc<str>, Counter> = FastMap::default();
    // Messages of this batch -> write position, to catch a resend inside one batch.
    let mut in_batch: HashMap<FrameRef, usize, BuildHasherDefault<KeyHasher>> = HashMap::default();
    let mut slots = Vec::with_capacity(b.writes.len());
    let mut fresh_keys = Vec::new();
    let mut new_rows = 0;
    // Each row's resend key, computed once; the filter's blocks for all of them are read
    // together before the look-ups one by one.
    let frame_keys: Vec<Option<u64>> = b
        .rows
        .iter()
        .map(|m| {
            m.client_msg_id
                .as_deref()
                .map(|id| key_of(&m.sender_id, id))
        })
        .collect();
    keys.warm(frame_keys.iter().flatten().copied());
    let mut rows = b.rows.iter_mut().enumerate();

    for write in &b.writes {
        let slot = match write {
            None => {
                let Some((i, m)) = rows.next() else {
                    return Err(StoreError::Invariant("fewer rows than messages"));
                };
                let mut key = None;
                if let Some(cmid) = m.client_msg_id.as_deref() {
                    let k = match frame_keys.get(i) {
                        Some(&Some(k)) => k,
                        _ => key_of(&m.sender_id, cmid),
                    };
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
                        let counter = counters.get(c, index, &m.channel)?;
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
            Some(WriteOp::CreateGroup { group, members }) => {
                let free = queries::group(c, &group.id)?.is_none();
                if free {
                    queries::create_group(c, group, members)?;
                }
                Slot::Done(WriteOutcome::GroupCreated(free))
            }
            Some(WriteOp::AddMember { group, user }) => {
                queries::add_member(c, group, user, now)?;
                Slot::Done(WriteOutcome::Done)
            }
            Some(WriteOp::RemoveMember { group, user }) => {
                queries::remove_member(c, group, user)?;
                Slot::Done(WriteOutcome::Done)
            }
            Some(WriteOp::PutState {
                user_id,
                collection,
                key,
                value,
                base_version,
                client_id,
            }) => {
                let sealed = sealer.as_ref().map(|s| s.seal(value));
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
                let outcome = match sealer {
                    Some(s) => s.open_outcome(outcome)?,
                    None => outcome,
                };
                Slot::Done(WriteOutcome::State(outcome))
            }
            Some(WriteOp::IndexSearch { .. }) => Slot::Done(WriteOutcome::Indexed {
                caught_up: queries::search_catch_up(c, queries::SEARCH_STEP)?,
            }),
            Some(WriteOp::DeliveryCursors {
                user_id,
                client_id,
                cursors,
            }) => {
                queries::advance_delivery_cursors(c, user_id, client_id, cursors, now)?;
                Slot::Done(WriteOutcome::Done)
            }
            Some(WriteOp::SetFollowing { user_id, follows }) => {
                queries::set_following(c, user_id, follows)?;
                Slot::Done(WriteOutcome::Done)
            }
            Some(
                op @ (WriteOp::RevokeToken { .. }
                | WriteOp::CreateApiKey(_)
                | WriteOp::RevokeApiKey { .. }),
            ) => Slot::Done(queries::apply_credential(c, op, now)?),
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
    let first_pos = match (&*sealer, new_rows == b.rows.len()) {
        (None, true) => queries::insert_messages(c, &b.rows)?,
        (sealer, all) => {
            // Resends are rare: copy just the new rows rather than the whole batch.
            let fresh: Vec<StoredMessage> = if all {
                b.rows.clone()
            } else {
                slots
                    .iter()
                    .filter_map(|s| match s {
                        Slot::New(i) => b.rows.get(*i).cloned(),
                        _ => None,
                    })
                    .collect()
            };
            match sealer {
                Some(s) => queries::insert_messages(c, &s.seal_rows(&fresh))?,
                None => queries::insert_messages(c, &fresh)?,
            }
        }
    };
    Ok(Applied {
        slots,
        keys: fresh_keys,
        first_pos,
        seqs,
    })
}

#[cfg(test)]
mod tests;
