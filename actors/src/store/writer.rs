//! `MessageWriter`: commits one batch per transaction on a SyncArbiter thread.
//!
//! Owns nothing but the pool; a restart loses nothing (an unanswered batch makes its
//! senders retry, and dedupe makes the retry safe). Seqs are given out here, inside the
//! transaction, so a rolled-back batch leaves no gap.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use super::models::{NewMessage, StoredMessage};
use super::{queries, DbConn, DbPool, StoreError};
use crate::health::{ActorHealth, Probe};
use crate::ids::now_ms;

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

/// A writer thread.
pub struct MessageWriter {
    /// The shared pool.
    pub pool: DbPool,
    /// Shared by every writer thread.
    pub health: Arc<ActorHealth>,
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
        let window = batch.dedupe_window_ms;
        let mut staged = Staged::from(batch.ops);
        match conn.immediate_transaction(|c| apply(c, &mut staged, window)) {
            Ok(slots) => staged.outcomes(slots),
            Err(e) => {
                // One bad row must not fail its neighbours: retry each on its own.
                log::warn!(
                    "batch of {} failed ({e}); retrying row by row",
                    staged.writes.len()
                );
                self.health.failed(e.to_string());
                staged
                    .into_singles()
                    .map(|mut one| {
                        conn.immediate_transaction(|c| apply(c, &mut one, window))
                            .and_then(|slots| {
                                one.outcomes(slots)
                                    .pop()
                                    .unwrap_or(Err(StoreError::Invariant(
                                        "a write without an outcome",
                                    )))
                            })
                    })
                    .collect()
            }
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
                    rows.push(m.stored(String::new(), 0, 0));
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

    /// The outcome of each committed write, in order, moving the rows into them.
    fn outcomes(mut self, slots: Vec<Slot>) -> Vec<Result<WriteOutcome, StoreError>> {
        let mut out: Vec<Result<WriteOutcome, StoreError>> = Vec::with_capacity(slots.len());
        for slot in slots {
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
/// Per batch, not per message: one seq read and one seq write per channel, and multi-row
/// inserts; the dedupe look-ups are one cached statement per message.
fn apply(c: &mut DbConn, b: &mut Staged, dedupe_window_ms: i64) -> Result<Vec<Slot>, StoreError> {
    let now = now_ms();
    let since = now - dedupe_window_ms;
    // Seq counters touched by this batch: channel -> (last seq given, existed before).
    let mut seqs: HashMap<String, (i64, bool)> = HashMap::new();
    // Messages of this batch by (sender, client id) -> write position, to catch a resend
    // inside one batch.
    let mut in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    let mut slots = Vec::with_capacity(b.writes.len());
    let mut new_rows = 0;
    let mut rows = b.rows.iter_mut().enumerate();

    for write in &b.writes {
        let slot = match write {
            None => {
                let Some((i, m)) = rows.next() else {
                    return Err(StoreError::Invariant("fewer rows than messages"));
                };
                if let Some(cmid) = m.client_msg_id.as_deref() {
                    if let Some(&j) = in_batch.get(&(m.sender_id.as_str(), cmid)) {
                        slots.push(Slot::SameAs(j));
                        continue;
                    }
                    if let Some(old) = queries::find_duplicate(c, &m.sender_id, cmid, since)? {
                        slots.push(Slot::Duplicate(old));
                        continue;
                    }
                }
                let entry = match seqs.get_mut(m.channel.as_str()) {
                    Some(e) => e,
                    None => {
                        let found = queries::last_seq(c, &m.channel)?;
                        seqs.entry(m.channel.clone())
                            .or_insert((found.unwrap_or(0), found.is_some()))
                    }
                };
                entry.0 += 1;
                m.id = uuid::Uuid::now_v7().to_string();
                m.seq = entry.0;
                m.created_at = now;
                new_rows += 1;
                if let Some(cmid) = m.client_msg_id.as_deref() {
                    in_batch.insert((m.sender_id.as_str(), cmid), slots.len());
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
    for (channel, (last, existed)) in &seqs {
        if *existed {
            queries::set_last_seq(c, channel, *last)?;
        } else {
            queries::insert_channel(c, channel, *last, now)?;
        }
    }
    if new_rows == b.rows.len() {
        queries::insert_messages(c, &b.rows)?;
    } else {
        // Resends are rare: copy just the new rows rather than the whole batch.
        let fresh: Vec<StoredMessage> = slots
            .iter()
            .filter_map(|s| match s {
                Slot::New(i) => b.rows.get(*i).cloned(),
                _ => None,
            })
            .collect();
        queries::insert_messages(c, &fresh)?;
    }
    Ok(slots)
}
