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

/// Applies `ops` inside the caller's transaction.
fn apply(
    c: &mut DbConn,
    ops: &[WriteOp],
    dedupe_window_ms: i64,
) -> Result<Vec<WriteOutcome>, StoreError> {
    let now = now_ms();
    let since = now - dedupe_window_ms;
    // Seq counters touched by this batch: channel -> (last seq given, existed before).
    let mut seqs: HashMap<&str, (i64, bool)> = HashMap::new();
    // Frames of this batch by (sender, client id), to catch a resend inside one batch.
    let mut in_batch: HashMap<(&str, &str), usize> = HashMap::new();
    let mut rows: Vec<StoredMessage> = Vec::new();
    let mut out = Vec::with_capacity(ops.len());

    for op in ops {
        match op {
            WriteOp::Message(m) => {
                if let Some(cmid) = m.client_msg_id.as_deref() {
                    if let Some(&i) = in_batch.get(&(m.sender_id.as_str(), cmid)) {
                        out.push(WriteOutcome::Stored {
                            msg: rows[i].clone(),
                            duplicate: true,
                        });
                        continue;
                    }
                    if let Some(old) = queries::find_duplicate(c, &m.sender_id, cmid, since)? {
                        out.push(WriteOutcome::Stored {
                            msg: old,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let entry = match seqs.entry(m.channel.as_str()) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => {
                        let found = queries::last_seq(c, v.key())?;
                        v.insert((found.unwrap_or(0), found.is_some()))
                    }
                };
                entry.0 += 1;
                let row = StoredMessage {
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
                };
                if let Some(cmid) = m.client_msg_id.as_deref() {
                    in_batch.insert((m.sender_id.as_str(), cmid), rows.len());
                }
                out.push(WriteOutcome::Stored {
                    msg: row.clone(),
                    duplicate: false,
                });
                rows.push(row);
            }
            WriteOp::ReadCursor {
                user_id,
                channel,
                up_to_seq,
            } => {
                let up_to_seq = queries::advance_read_cursor(c, user_id, channel, *up_to_seq, now)?;
                out.push(WriteOutcome::Cursor { up_to_seq });
            }
            WriteOp::TouchDevice {
                user_id,
                client_id,
                device,
            } => {
                queries::touch_device(c, user_id, client_id, device.as_deref(), now)?;
                out.push(WriteOutcome::Done);
            }
        }
    }
    for (channel, (last, existed)) in &seqs {
        if *existed {
            queries::set_last_seq(c, channel, *last)?;
        } else {
            queries::insert_channel(c, channel, now)?;
            queries::set_last_seq(c, channel, *last)?;
        }
    }
    queries::insert_messages(c, &rows)?;
    Ok(out)
}
