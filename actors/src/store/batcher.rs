//! `WriteBatcher`: groups writes that arrive together into one transaction (group commit).
//!
//! While a batch is being committed, new writes wait here; when it commits, everything that
//! waited goes out as the next batch. So an idle broker writes each message at once, and a
//! busy one commits hundreds per transaction, with no timer in between.
//!
//! Writes queue in lanes, one per writer thread the backend can use at once (SQLite: one;
//! PostgreSQL: `database.writer_threads`). A write's lane follows from what it writes to (a
//! message's channel, a group, a user's devices), and each lane has at most one batch in
//! flight, so a channel's batches commit in the order they were formed and its seqs reach
//! the channel actor in order, while other lanes commit beside it.
//!
//! Receives [`PersistAndNotify`] (the hot path: answered with one [`Committed`] message per channel
//! per batch, no future or oneshot per write), [`PersistAndReply`] (answered after commit, for the
//! occasional write that awaits its result) and [`Drain`] (answered once nothing is pending).
//! A restart answers what was pending and in flight with `StoreError::StoreGone`, and the
//! client's resend is deduplicated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::credentials_sql::ApiKeyRow;
use super::models::{GroupRow, StateOutcome};
use super::sqlite::checkpointer::{CheckpointWal, WalCheckpointer};
use super::write::{WriteBatch, WriteOp, WriteOutcome};
use super::StoreError;
use crate::fast_map::FastMap;
use crate::health::ActorHealth;

type WriteResult = Result<WriteOutcome, StoreError>;
type Tagged = (u64, WriteResult);

/// Who waits for a write.
enum Waiter {
    /// A caller awaiting [`PersistAndReply`].
    Reply(oneshot::Sender<WriteResult>),
    /// A channel actor, told with [`Committed`] under its own tag.
    Tagged {
        tag: u64,
        to: Arc<Recipient<Committed>>,
    },
}

/// Channels a batch's answer reserves room for at first.
const MAX_GROUPS_RESERVED: usize = 1024;
/// Results a channel's [`Committed`] reserves room for at first (a DM's share of a commit
/// under load is a few messages).
const GROUP_RESERVED: usize = 8;

/// Answers `waiters` with `results` (same order): oneshots one by one, channel actors with
/// one [`Committed`] each, holding their writes in the order they were sent.
fn answer(waiters: Vec<Waiter>, results: impl Iterator<Item = WriteResult>) {
    // Sized up front: a commit's results are large, and growing a vector copies them.
    let mut groups: Vec<(Arc<Recipient<Committed>>, Vec<Tagged>)> =
        Vec::with_capacity(waiters.len().min(MAX_GROUPS_RESERVED));
    // Batches usually hold writes of a few channels; a map keeps many channels linear too.
    let mut index: FastMap<usize, usize> = FastMap::default();
    for (w, r) in waiters.into_iter().zip(results) {
        match w {
            Waiter::Reply(tx) => {
                let _ = tx.send(r);
            }
            Waiter::Tagged { tag, to } => {
                let key = Arc::as_ptr(&to) as usize;
                let i = *index.entry(key).or_insert_with(|| {
                    groups.push((to, Vec::with_capacity(GROUP_RESERVED)));
                    groups.len() - 1
                });
                groups[i].1.push((tag, r));
            }
        }
    }
    for (to, results) in groups {
        to.do_send(Committed { results });
    }
}

/// Batching limits.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Most writes waiting; beyond it a write fails with `Overloaded` (bounded queue).
    pub max_pending: usize,
    /// Resend recognition window, ms.
    pub dedupe_window_ms: i64,
    /// Batches committed side by side (1 for SQLite, which has one writer at a time).
    pub lanes: usize,
}

/// Writes of one lane: those waiting and those being committed.
#[derive(Default)]
struct Lane {
    pending: Vec<(WriteOp, Waiter)>,
    /// When each pending write arrived, in `pending`'s order.
    arrived: Vec<Instant>,
    /// When the writes of the batch being committed arrived, and when it was sent.
    in_flight_arrived: Vec<Instant>,
    sent: Option<Instant>,
    /// Waiters of the batch being committed (kept here, not in the future, so that a
    /// restart can answer them).
    in_flight: Option<Vec<Waiter>>,
}

impl Lane {
    /// Records the batch in flight as committed (or failed) now: its size, how long the
    /// commit took, and each write's wait from arrival (`/metrics`).
    fn observe_commit(&mut self) {
        let now = Instant::now();
        let m = crate::metrics::metrics();
        if let Some(sent) = self.sent.take() {
            m.commit_seconds.observe((now - sent).as_secs_f64());
        }
        m.batch_size.observe(self.in_flight_arrived.len() as f64);
        let latency = m.ack_latency.local();
        for t in self.in_flight_arrived.drain(..) {
            latency.observe((now - t).as_secs_f64());
        }
        latency.flush();
    }
}

/// The lane of `op` among `lanes`: writes to one channel, group or user share a lane.
fn lane_of(op: &WriteOp, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let key: &str = match op {
        WriteOp::Message(m) => &m.channel,
        WriteOp::ReadCursor { channel, .. } => channel,
        WriteOp::CreateGroup { group, .. } => &group.id,
        WriteOp::AddMember { group, .. } | WriteOp::RemoveMember { group, .. } => group,
        WriteOp::IndexSearch { .. } => "",
        WriteOp::RevokeToken { jti: key, .. }
        | WriteOp::RevokeApiKey { id: key }
        | WriteOp::CreateApiKey(ApiKeyRow { id: key, .. }) => key,
        WriteOp::TouchDevice { user_id, .. }
        | WriteOp::SetFollowing { user_id, .. }
        | WriteOp::PutState { user_id, .. }
        | WriteOp::DeliveryCursors { user_id, .. } => user_id,
    };
    // A fixed seed: a key keeps its lane for the life of the process.
    let hash = std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::default(), key);
    (hash % lanes as u64) as usize
}

/// Who copies the WAL into the database file after commits, and how soon
/// (`store::checkpointer`).
#[derive(Clone)]
pub struct CheckpointPlan {
    /// The checkpointing thread.
    pub to: Addr<WalCheckpointer>,
    /// How long after a commit a pass runs; commits meanwhile wait for the same pass.
    pub after: Duration,
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
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
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
    /// The backend's writer threads.
    writer: Recipient<WriteBatch>,
    cfg: BatchConfig,
    lanes: Vec<Lane>,
    /// Writes waiting in all lanes (bounded by `max_pending`).
    waiting: usize,
    drained: Vec<oneshot::Sender<()>>,
    stats: Arc<BatchStats>,
    checkpoints: Option<CheckpointPlan>,
    /// A commit happened since the last checkpoint pass began.
    wal_written: bool,
    /// A pass is scheduled or running.
    checkpoint_due: bool,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl WriteBatcher {
    /// A batcher in front of `writer`; with `checkpoints`, WAL checkpoints follow its commits.
    pub fn new(
        writer: Recipient<WriteBatch>,
        cfg: BatchConfig,
        checkpoints: Option<CheckpointPlan>,
        stats: Arc<BatchStats>,
        health: Arc<ActorHealth>,
    ) -> Self {
        WriteBatcher {
            writer,
            lanes: (0..cfg.lanes.max(1)).map(|_| Lane::default()).collect(),
            cfg,
            waiting: 0,
            drained: Vec::new(),
            stats,
            checkpoints,
            wal_written: false,
            checkpoint_due: false,
            health,
        }
    }

    /// After a commit: a checkpoint pass follows unless one is already due, so there is at
    /// most one pass per `after` however often batches commit.
    fn schedule_checkpoint(&mut self, ctx: &mut Context<Self>) {
        self.wal_written = true;
        let Some(plan) = &self.checkpoints else {
            return;
        };
        if !self.checkpoint_due {
            self.checkpoint_due = true;
            ctx.run_later(plan.after, Self::checkpoint);
        }
    }

    fn checkpoint(&mut self, ctx: &mut Context<Self>) {
        let Some(plan) = &self.checkpoints else {
            return;
        };
        self.wal_written = false;
        let pass = plan.to.send(CheckpointWal);
        ctx.spawn(pass.into_actor(self).map(|res, act, ctx| {
            act.checkpoint_due = false;
            match res {
                Ok(Ok(_)) => {}
                // A failed pass leaves the frames in the WAL, where they are safe; the
                // next pass, or the writer's own threshold, copies them.
                Ok(Err(e)) => log::warn!("WAL checkpoint failed: {e}"),
                // Its thread ended: commits checkpoint by themselves from now on.
                Err(_) => {
                    log::error!("WAL checkpointer gone; commits checkpoint by themselves");
                    act.checkpoints = None;
                }
            }
            if act.wal_written {
                act.schedule_checkpoint(ctx);
            }
        }));
    }

    /// Sends lane `i`'s next batch unless one is in flight; answers drains once every lane
    /// is idle.
    fn flush(&mut self, i: usize, ctx: &mut Context<Self>) {
        let Some(lane) = self.lanes.get_mut(i) else {
            return;
        };
        if lane.in_flight.is_some() {
            return;
        }
        if lane.pending.is_empty() {
            if self.waiting == 0 && self.lanes.iter().all(|l| l.in_flight.is_none()) {
                for d in self.drained.drain(..) {
                    let _ = d.send(());
                }
            }
            return;
        }
        let n = lane.pending.len().min(self.cfg.max_batch);
        let (ops, waiters): (Vec<WriteOp>, Vec<Waiter>) = lane.pending.drain(..n).unzip();
        lane.in_flight = Some(waiters);
        lane.in_flight_arrived.clear();
        lane.in_flight_arrived
            .extend(lane.arrived.drain(..n.min(lane.arrived.len())));
        lane.sent = Some(Instant::now());
        self.waiting -= n;
        self.stats.record(ops.len());
        let req = self.writer.send(WriteBatch {
            ops,
            dedupe_window_ms: self.cfg.dedupe_window_ms,
        });
        ctx.spawn(req.into_actor(self).map(move |res, act, ctx| {
            let waiters = match act.lanes.get_mut(i) {
                Some(lane) => {
                    lane.observe_commit();
                    lane.in_flight.take().unwrap_or_default()
                }
                None => Vec::new(),
            };
            match res {
                Ok(results) => {
                    answer(waiters, results.into_iter());
                    act.schedule_checkpoint(ctx);
                }
                Err(_) => {
                    act.health.failed("writer thread gone");
                    answer(
                        waiters,
                        std::iter::repeat_with(|| Err(StoreError::StoreGone)),
                    );
                }
            }
            act.flush(i, ctx);
        }));
    }

    fn enqueue(&mut self, op: WriteOp, waiter: Waiter, ctx: &mut Context<Self>) {
        self.health.handled();
        if self.waiting >= self.cfg.max_pending {
            return answer(vec![waiter], std::iter::once(Err(StoreError::Overloaded)));
        }
        let i = lane_of(&op, self.lanes.len());
        if let Some(lane) = self.lanes.get_mut(i) {
            lane.pending.push((op, waiter));
            lane.arrived.push(Instant::now());
            self.waiting += 1;
        }
        self.flush(i, ctx);
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
        // The scheduled pass went with the old context.
        self.checkpoint_due = false;
        // The in-flight batch's future is gone with the old context; its writes may still
        // commit, and the resends they cause are deduplicated.
        let mut waiters: Vec<Waiter> = Vec::new();
        for lane in &mut self.lanes {
            waiters.extend(lane.in_flight.take().unwrap_or_default());
            waiters.extend(lane.pending.drain(..).map(|(_, w)| w));
            lane.arrived.clear();
            lane.in_flight_arrived.clear();
            lane.sent = None;
        }
        self.waiting = 0;
        answer(
            waiters,
            std::iter::repeat_with(|| Err(StoreError::StoreGone)),
        );
    }
}

/// A channel actor's writes of one batch, with their tags, in the order it sent them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    /// `(tag, outcome)` per write.
    pub results: Vec<Tagged>,
}

/// Store one write and tell `to` under `tag` once its transaction commits (or fails).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PersistAndNotify {
    /// The write.
    pub op: WriteOp,
    /// The sender's tag for it.
    pub tag: u64,
    /// Where the outcome goes (shared, so sending costs no allocation).
    pub to: Arc<Recipient<Committed>>,
}

impl Handler<PersistAndNotify> for WriteBatcher {
    type Result = ();
    fn handle(&mut self, msg: PersistAndNotify, ctx: &mut Context<Self>) {
        let waiter = Waiter::Tagged {
            tag: msg.tag,
            to: msg.to,
        };
        self.enqueue(msg.op, waiter, ctx);
    }
}

/// Store one write; answered after its transaction commits.
#[derive(Message)]
#[rtype(result = "Result<WriteOutcome, StoreError>")]
pub struct PersistAndReply(pub WriteOp);

impl Handler<PersistAndReply> for WriteBatcher {
    type Result = ResponseFuture<Result<WriteOutcome, StoreError>>;

    fn handle(&mut self, msg: PersistAndReply, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.enqueue(msg.0, Waiter::Reply(tx), ctx);
        Box::pin(async move { rx.await.unwrap_or(Err(StoreError::StoreGone)) })
    }
}

/// The store's write operations for the rest of the broker (REST, startup): each goes
/// through the write batcher into a transaction of its own batch, like messages do.
#[derive(Clone)]
pub struct Writes {
    batcher: Addr<WriteBatcher>,
}

impl Writes {
    /// Writes through `batcher`.
    pub fn new(batcher: Addr<WriteBatcher>) -> Self {
        Writes { batcher }
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        self.batcher
            .send(PersistAndReply(op))
            .await
            .map_err(|_| StoreError::StoreGone)?
    }

    /// Creates `group` with `members`; `false` if its id is taken.
    pub async fn create_group(
        &self,
        group: GroupRow,
        members: Vec<String>,
    ) -> Result<bool, StoreError> {
        match self.write(WriteOp::CreateGroup { group, members }).await? {
            WriteOutcome::GroupCreated(created) => Ok(created),
            _ => Err(StoreError::Invariant("create group answered otherwise")),
        }
    }

    /// Adds `user` to `group` (nothing if already a member).
    pub async fn add_member(&self, group: String, user: String) -> Result<(), StoreError> {
        self.write(WriteOp::AddMember { group, user })
            .await
            .map(|_| ())
    }

    /// Writes a synced document if `base_version` is its version.
    pub async fn put_state(&self, op: WriteOp) -> Result<StateOutcome, StoreError> {
        match self.write(op).await? {
            WriteOutcome::State(outcome) => Ok(outcome),
            _ => Err(StoreError::Invariant("a state write answered otherwise")),
        }
    }

    /// Brings the search index up to date for `channels`; `false` if more is left to do.
    pub async fn index_search(&self, channels: Vec<String>) -> Result<bool, StoreError> {
        match self.write(WriteOp::IndexSearch { channels }).await? {
            WriteOutcome::Indexed { caught_up } => Ok(caught_up),
            _ => Err(StoreError::Invariant(
                "a search index write answered otherwise",
            )),
        }
    }

    /// Replaces the list of users `user` follows.
    pub async fn set_following(
        &self,
        user: String,
        follows: Vec<String>,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::SetFollowing {
            user_id: user,
            follows,
        })
        .await
        .map(|_| ())
    }

    /// Revokes token id `jti` until `expires_at` (ms); `false` if it already was.
    pub async fn revoke_token(&self, jti: String, expires_at: i64) -> Result<bool, StoreError> {
        self.revoked(WriteOp::RevokeToken { jti, expires_at }).await
    }

    /// Stores a new API key.
    pub async fn create_api_key(&self, key: ApiKeyRow) -> Result<(), StoreError> {
        self.write(WriteOp::CreateApiKey(key)).await.map(|_| ())
    }

    /// Revokes API key `id`; `false` if there is none or it already was.
    pub async fn revoke_api_key(&self, id: String) -> Result<bool, StoreError> {
        self.revoked(WriteOp::RevokeApiKey { id }).await
    }

    async fn revoked(&self, op: WriteOp) -> Result<bool, StoreError> {
        match self.write(op).await? {
            WriteOutcome::Revoked(newly) => Ok(newly),
            _ => Err(StoreError::Invariant("a revocation answered otherwise")),
        }
    }

    /// Removes `user` from `group` (nothing if not a member).
    pub async fn remove_member(&self, group: String, user: String) -> Result<(), StoreError> {
        self.write(WriteOp::RemoveMember { group, user })
            .await
            .map(|_| ())
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
        self.flush(0, ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

crate::health_handlers!(WriteBatcher);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::models::NewMessage;

    fn message(channel: &str) -> WriteOp {
        WriteOp::Message(NewMessage {
            channel: channel.into(),
            kind: "chat_message".into(),
            sender_id: "a".into(),
            target_id: "b".into(),
            client_id: None,
            client_msg_id: None,
            payload: r#"{"content":"x"}"#.into(),
        })
    }

    #[test]
    fn a_channel_keeps_its_lane_and_channels_spread_over_the_lanes() {
        assert_eq!(
            lane_of(&message("dm:a:b"), 1),
            0,
            "one lane takes everything"
        );
        for lanes in [2, 4] {
            let mut used = vec![false; lanes];
            for i in 0..100 {
                let channel = format!("dm:u{i}:v{i}");
                let lane = lane_of(&message(&channel), lanes);
                assert_eq!(lane, lane_of(&message(&channel), lanes), "{channel}");
                used[lane] = true;
            }
            assert!(used.iter().all(|&u| u), "{lanes} lanes: {used:?}");
            // A read cursor commits in the lane of its channel's messages.
            let cursor = WriteOp::ReadCursor {
                user_id: "a".into(),
                channel: "dm:a:b".into(),
                up_to_seq: 1,
            };
            assert_eq!(lane_of(&cursor, lanes), lane_of(&message("dm:a:b"), lanes));
        }
    }
}
