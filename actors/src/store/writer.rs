//! `MessageWriter`: commits one batch per transaction on a SyncArbiter thread.
//!
//! Owns nothing but the pool; a restart loses nothing (an unanswered batch makes its
//! senders retry, and dedupe makes the retry safe). Seqs are given out here, inside the
//! transaction, so a rolled-back batch leaves no gap.

use std::collections::hash_map::Entry;
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
        match conn.immediate_transaction(|c| apply(c, &batch.ops, window)) {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) => {
                // One bad row must not fail its neighbours: retry each on its own.
                log::warn!(
                    "batch of {} failed ({e}); retrying row by row",
                    batch.ops.len()
                );
                self.health.failed(e.to_string());
                batch
                    .ops
                    .iter()
                    .map(|op| {
                        conn.immediate_transaction(|c| apply(c, std::slice::from_ref(op), window))
                            .map(|mut v| v.remove(0))
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

/// Where one op's outcome will come from once the batch's rows are inserted.
enum Slot {
    /// The next of the rows this batch inserts (rows are pushed in op order).
    New,
    /// A resend: the earlier copy.
    Duplicate(StoredMessage),
    /// A finished non-message write.
    Done(WriteOutcome),
}

/// Applies `ops` inside the caller's transaction.
///
/// Per batch, not per message: one dedupe query per sender, one seq read and one seq write
/// per channel, and one multi-row insert.
fn apply(
    c: &mut DbConn,
    ops: &[WriteOp],
    dedupe_window_ms: i64,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let now = now_ms();
    let mut earlier = find_resends(c, ops, now - dedupe_window_ms)?;
    // Seq counters touched by this batch: channel -> (last seq given, existed before).
    let mut seqs: HashMap<&str, (i64, bool)> = HashMap::new();
    // Frames of this batch by (sender, client id), to catch a resend inside one batch.
    let mut in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    let mut rows: Vec<StoredMessage> = Vec::with_capacity(ops.len());
    let mut slots = Vec::with_capacity(ops.len());

    for op in ops {
        let slot = match op {
            WriteOp::Message(m) => {
                if let Some(cmid) = m.client_msg_id.as_deref() {
                    let key = (m.sender_id.as_str(), cmid);
                    if let Some(&i) = in_batch.get(&key) {
                        slots.push(Slot::Duplicate(rows[i].clone()));
                        continue;
                    }
                    if let Some(old) = earlier.remove(&(key.0.to_owned(), key.1.to_owned())) {
                        slots.push(Slot::Duplicate(old));
                        continue;
                    }
                    in_batch.insert(key, rows.len());
                }
                let entry = match seqs.entry(m.channel.as_str()) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => {
                        let found = queries::last_seq(c, v.key())?;
                        v.insert((found.unwrap_or(0), found.is_some()))
                    }
                };
                entry.0 += 1;
                rows.push(StoredMessage {
                    id: uuid::Uuid::now_v7().to_string(),
                    channel: m.channel.clone(),
                    seq: entry.0,
                    kind: m.kind.clone(),
                    sender_id: m.sender_id.clone(),
                    target_id: m.target_id.clone(),
                    client_id: m.client_id.clone(),
                    client_msg_id: m.client_msg_id.clone(),
                    payload: m.payload.clone(),
                    created_at: now,
                });
                Slot::New
            }
            WriteOp::ReadCursor {
                user_id,
                channel,
                up_to_seq,
            } => {
                let up_to_seq = queries::advance_read_cursor(c, user_id, channel, *up_to_seq, now)?;
                Slot::Done(WriteOutcome::Cursor { up_to_seq })
            }
            WriteOp::TouchDevice {
                user_id,
                client_id,
                device,
            } => {
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
    queries::insert_messages(c, &rows)?;
    let mut rows = rows.into_iter();
    slots
        .into_iter()
        .map(|slot| match slot {
            Slot::New => rows
                .next()
                .map(|msg| WriteOutcome::Stored {
                    msg,
                    duplicate: false,
                })
                .ok_or(StoreError::Invariant("fewer rows than new messages")),
            Slot::Duplicate(msg) => Ok(WriteOutcome::Stored {
                msg,
                duplicate: true,
            }),
            Slot::Done(outcome) => Ok(outcome),
        })
        .collect()
}

/// Messages of this batch's senders already stored under the batch's client frame ids
/// since `since`, by (sender, client frame id): one query per sender.
fn find_resends(
    c: &mut DbConn,
    ops: &[WriteOp],
    since: i64,
) -> Result<HashMap<(String, String), StoredMessage>, StoreError> {
    let mut by_sender: HashMap<&str, Vec<&str>> = HashMap::new();
    for op in ops {
        if let WriteOp::Message(m) = op {
            if let Some(cmid) = m.client_msg_id.as_deref() {
                by_sender
                    .entry(m.sender_id.as_str())
                    .or_default()
                    .push(cmid);
            }
        }
    }
    let mut found = HashMap::new();
    for (sender, ids) in by_sender {
        for old in queries::find_duplicates(c, sender, &ids, since)? {
            let key = (
                old.sender_id.clone(),
                old.client_msg_id.clone().unwrap_or_default(),
            );
            found.insert(key, old);
        }
    }
    Ok(found)
}
