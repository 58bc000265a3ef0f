//! `WriteBatcher`: groups writes that arrive together into one transaction (group commit).
//!
//! While a batch is being committed, new writes wait here; when it commits, everything that
//! waited goes out as the next batch. So an idle broker writes each message at once, and a
//! busy one commits hundreds per transaction, with no timer in between. At most one batch is
//! in flight, so batches commit in the order they were formed and every channel's seqs reach
//! the channel actor in order.
//!
//! Receives [`Persist`] (answered after commit) and [`Drain`] (answered once nothing is
//! pending). A restart drops what was pending and in flight: those writers get
//! `StoreError::WriterGone`, and the client's resend is deduplicated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::writer::{MessageWriter, WriteBatch, WriteOp, WriteOutcome};
use super::StoreError;
use crate::health::ActorHealth;

type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

/// Batching limits.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Most writes waiting; beyond it a write fails with `Overloaded` (bounded queue).
    pub max_pending: usize,
    /// Resend recognition window, ms.
    pub dedupe_window_ms: i64,
}

/// Counters of what the batcher committed, shown by `/status` (group commit at work: many
/// writes per batch under load).
#[derive(Debug, Default)]
pub struct BatchStats {
    batches: AtomicU64,
    writes: AtomicU64,
    largest: AtomicU64,
}

/// A copy of [`BatchStats`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BatchStatsSnapshot {
    /// Transactions sent to the writers.
    pub batches: u64,
    /// Writes in them.
    pub writes: u64,
    /// Most writes in one transaction so far.
    pub largest_batch: u64,
}

impl BatchStats {
    fn record(&self, n: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(n as u64, Ordering::Relaxed);
        self.largest.fetch_max(n as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> BatchStatsSnapshot {
        BatchStatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            largest_batch: self.largest.load(Ordering::Relaxed),
        }
    }
}

/// The batching actor in front of the writer threads.
pub struct WriteBatcher {
    writer: Addr<MessageWriter>,
    cfg: BatchConfig,
    pending: Vec<(WriteOp, Reply)>,
    in_flight: bool,
    drained: Vec<oneshot::Sender<()>>,
    stats: Arc<BatchStats>,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl WriteBatcher {
    /// A batcher in front of `writer`.
    pub fn new(
        writer: Addr<MessageWriter>,
        cfg: BatchConfig,
        stats: Arc<BatchStats>,
        health: Arc<ActorHealth>,
    ) -> Self {
        WriteBatcher {
            writer,
            cfg,
            pending: Vec::new(),
            in_flight: false,
            drained: Vec::new(),
            stats,
            health,
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight {
            return;
        }
        if self.pending.is_empty() {
            for d in self.drained.drain(..) {
                let _ = d.send(());
            }
            return;
        }
        let n = self.pending.len().min(self.cfg.max_batch);
        let (ops, replies): (Vec<WriteOp>, Vec<Reply>) = self.pending.drain(..n).unzip();
        self.in_flight = true;
        self.stats.record(ops.len());
        let req = self.writer.send(WriteBatch {
            ops,
            dedupe_window_ms: self.cfg.dedupe_window_ms,
        });
        ctx.spawn(req.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(results) => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        let _ = reply.send(r);
                    }
                }
                Err(_) => {
                    act.health.failed("writer thread gone");
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::WriterGone));
                    }
                }
            }
            act.in_flight = false;
            act.flush(ctx);
        }));
    }
}

impl Actor for WriteBatcher {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.health.started();
    }
}

impl Supervised for WriteBatcher {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
        // Dropping the replies tells every waiting writer `WriterGone`.
        self.pending.clear();
        self.in_flight = false;
    }
}

/// Store one write; answered after its transaction commits.
#[derive(Message)]
#[rtype(result = "Result<WriteOutcome, StoreError>")]
pub struct Persist(pub WriteOp);

impl Handler<Persist> for WriteBatcher {
    type Result = ResponseFuture<Result<WriteOutcome, StoreError>>;

    fn handle(&mut self, msg: Persist, ctx: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        if self.pending.len() >= self.cfg.max_pending {
            return Box::pin(async { Err(StoreError::Overloaded) });
        }
        let (tx, rx) = oneshot::channel();
        self.pending.push((msg.0, tx));
        self.flush(ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(StoreError::WriterGone)) })
    }
}

/// Answered once every write accepted so far is committed (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for WriteBatcher {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        self.flush(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

crate::health_handlers!(WriteBatcher);
