//! `ChannelActor`: one per active channel; checks who may write and read, persists, acks,
//! and fans out in seq order.
//!
//! Owns the channel's member list (loaded from the store when it starts), its highest
//! committed seq, and its explicit subscribers. Receives `Publish`, `Committed` (from the
//! write batcher), `Join`, `Leave`, `Typing`, `Receipt`, `ReloadMembers` and `Stop` (from the
//! router when idle). Sends `PersistAndNotify` to the write batcher, acks straight to the
//! publishing session, and deliveries either to the router's `FanOut` (channels addressed to
//! users: DMs, groups, `user:*`) or straight to its subscribers (`broadcast:*`).
//!
//! The publish path holds no future and no oneshot per message: a `Publish` carries where its
//! answer goes ([`Reply`]), the batcher answers with one `Committed` per batch.
//!
//! In a cluster the channel also publishes each commit to the other nodes (through the
//! [`ClusterLink`]), takes theirs ([`RemoteCommit`], [`RemoteHead`]), and delivers both in
//! seq order through its [`sequencer::Sequencer`], filling gaps from the store.
//!
//! A restart reloads members and head seq from the store; subscribers are kept.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::cluster::{ClusterLink, ClusterStats, Envelope, ToCluster};
use crate::fast_map::FastMap;
use crate::ids::{now_ms, Channel, ChannelKind, ConnId, UserId};
use crate::protocol::{ack_frame, delivery_frame, encode, error_frame, Ack, ErrorCode};
use crate::seq::Seq;
use crate::session_handle::{Delivery, FanOut, Outbound, SessionHandle};
use crate::store::batcher::{Committed, PersistAndNotify, PersistAndReply, WriteBatcher};
use crate::store::reader::{ChannelStart, Reads};
use crate::store::write::{WriteOp, WriteOutcome};
use crate::store::{NewMessage, StoreError, StoredMessage};

mod remote;
pub mod sequencer;

pub use remote::{RemoteCommit, RemoteHead};
use sequencer::{Ready, Sequencer};

/// Why a channel refused a request.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The requester may not do this here.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The channel's group does not exist.
    #[error("no such group")]
    NotFound,
    /// A bad value (e.g. a read receipt for a seq that does not exist yet).
    #[error("{0}")]
    BadRequest(&'static str),
    /// The store failed; the message is [`StoreError::public`]'s (no database text).
    #[error("{message}")]
    Store {
        /// `unavailable` or `internal`.
        code: ErrorCode,
        /// What the client is told.
        message: String,
    },
    /// The channel actor or the store is not available right now.
    #[error("channel unavailable, retry")]
    Unavailable,
}

impl ChannelError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ChannelError::Forbidden(_) => ErrorCode::Forbidden,
            ChannelError::NotFound => ErrorCode::NotFound,
            ChannelError::BadRequest(_) => ErrorCode::BadRequest,
            ChannelError::Store { code, .. } => *code,
            ChannelError::Unavailable => ErrorCode::Unavailable,
        }
    }
}

impl From<StoreError> for ChannelError {
    fn from(e: StoreError) -> Self {
        let (code, message) = e.public();
        ChannelError::Store { code, message }
    }
}

impl From<MailboxError> for ChannelError {
    fn from(_: MailboxError) -> Self {
        ChannelError::Unavailable
    }
}

/// What a channel actor needs from the rest of the tree.
#[derive(Clone)]
pub struct ChannelDeps {
    /// For fan-out to users' connections.
    pub fan_out: Recipient<FanOut>,
    /// Where writes go.
    pub batcher: Addr<WriteBatcher>,
    /// Where reads go.
    pub reads: Reads,
    /// Number of explicit subscribers, read by the router's idle sweep.
    pub subscribers: Arc<AtomicUsize>,
    /// Channel actors alive in this tree (counted up when one is made, down when it is
    /// dropped), reported by `/status` beside the router's registry.
    pub live: Arc<AtomicUsize>,
    /// The last seq delivered on this node in order (cluster only), read by the router
    /// when it retires the actor, so that the next actor of the channel goes on from it.
    pub delivered: Arc<AtomicU64>,
    /// Where delivery on this node took up before this actor (cluster only).
    pub resume: Option<Resume>,
    /// The cluster, when this node is one of several.
    pub cluster: Option<ChannelCluster>,
}

/// Where a channel actor starting on a cluster node takes up delivery, when the router
/// knows better than the store's late window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The previous actor of the channel here delivered through this seq.
    Delivered(Seq),
    /// What follows this seq was never heard here: a node that died stored it unpublished.
    Unheard(Seq),
}

/// What a channel needs of the cluster.
#[derive(Clone)]
pub struct ChannelCluster {
    /// Where commits are published.
    pub link: Addr<ClusterLink>,
    /// How long a seq gap may wait for the bus before it is read from the store.
    pub gap_wait: Duration,
    /// How late a message may come by the bus (see [`crate::cluster::ClusterConfig`]).
    pub late_window: Duration,
    /// Counters (gap fills).
    pub stats: Arc<ClusterStats>,
}

impl ChannelCluster {
    /// Queues `env` for the other nodes without waiting; a full link mailbox drops it and
    /// marks the time, from which the link announces heads later.
    pub fn publish(&self, env: Envelope) {
        if self.link.try_send(ToCluster(env)).is_err() {
            self.stats.mailbox_full();
        }
    }
}

/// Most messages read from the store in one gap fill.
const FILL_PAGE: i64 = 500;

/// Who receives the channel's messages by being who they are (not by subscribing).
enum Members {
    /// Not loaded yet (or the load failed).
    Unknown,
    /// DM pair or the one user of `user:*`.
    Fixed(Arc<[UserId]>),
    /// A group's members; `None` if the group does not exist.
    Group(Option<(HashSet<UserId>, Arc<[UserId]>)>),
    /// `broadcast:*`: subscribers only.
    Open,
}

/// Who is writing.
#[derive(Debug, Clone)]
pub enum Sender {
    /// An authenticated user, checked against the channel's rules.
    User(UserId),
    /// An admin token or an API key with `publish`: may write anywhere.
    Privileged,
}

/// Most messages waiting in a channel actor's mailbox; a publish beyond it is refused with
/// `unavailable` (retry) rather than queued without bound.
pub const MAILBOX_CAPACITY: usize = 4096;

/// Where the answer to a [`Publish`] goes. Dropped unanswered (its mailbox closed, the actor
/// restarted), it answers `unavailable`, so no publisher waits forever.
pub struct Reply {
    to: Option<ReplyTo>,
    /// The client frame id answered.
    ref_id: Option<String>,
}

enum ReplyTo {
    /// The publishing session gets an `ack` (or `error`) frame in its outbound queue.
    Session(Arc<SessionHandle>),
    /// A caller awaits the result (REST publish).
    Caller(oneshot::Sender<Result<Ack, ChannelError>>),
}

impl Reply {
    /// Answer the session with frames, for client frame `ref_id`.
    pub fn session(handle: Arc<SessionHandle>, ref_id: Option<String>) -> Self {
        Reply {
            to: Some(ReplyTo::Session(handle)),
            ref_id,
        }
    }

    /// Answer a caller, for idempotency key `ref_id`; the caller awaits the receiver.
    pub fn caller(ref_id: Option<String>) -> (Self, oneshot::Receiver<Result<Ack, ChannelError>>) {
        let (tx, rx) = oneshot::channel();
        let reply = Reply {
            to: Some(ReplyTo::Caller(tx)),
            ref_id,
        };
        (reply, rx)
    }

    /// The publishing connection, which gets the ack instead of the delivery.
    fn origin(&self) -> Option<ConnId> {
        match &self.to {
            Some(ReplyTo::Session(h)) => Some(h.conn),
            _ => None,
        }
    }

    /// The client frame id (the dedupe key with the sender).
    pub fn ref_id(&self) -> Option<&str> {
        self.ref_id.as_deref()
    }

    /// Sends the answer.
    pub fn answer(mut self, res: Result<Ack, ChannelError>) {
        self.send(res);
    }

    /// Answers with the ack of stored message `m`; a session's is encoded straight from the
    /// message (the publish path's common case) and waits in `acks` until the commit has
    /// been handled.
    fn acked(mut self, m: &StoredMessage, acks: &mut AckBatch) {
        match self.to.take() {
            Some(ReplyTo::Session(h)) => {
                let frame = ack_frame(m, self.ref_id.as_deref());
                acks.0.push((h, frame));
            }
            Some(ReplyTo::Caller(tx)) => {
                let _ = tx.send(Ok(Ack::of(m, self.ref_id.as_deref())));
            }
            None => {}
        }
    }

    fn send(&mut self, res: Result<Ack, ChannelError>) {
        match self.to.take() {
            Some(ReplyTo::Session(h)) => {
                let frame = match res {
                    Ok(ack) => encode("ack", None, ack),
                    Err(e) => error_frame(e.code(), &e.to_string(), self.ref_id.as_deref()),
                };
                h.push(Outbound::Frame(frame));
            }
            Some(ReplyTo::Caller(tx)) => {
                let _ = tx.send(res);
            }
            None => {}
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.send(Err(ChannelError::Unavailable));
    }
}

/// The acks of the commit being handled, in the order they were given.
///
/// Sent once the commit is handled, before its deliveries: each session gets its acks in one
/// mailbox slot ([`Outbound::Frames`]) rather than one slot, one envelope and one wake-up
/// per message.
#[derive(Default)]
struct AckBatch(Vec<(Arc<SessionHandle>, ByteString)>);

impl AckBatch {
    /// Pushes every session's acks, in order, and empties the batch.
    fn send(&mut self) {
        // A channel's publishers in one commit are few: a scan per session is cheap.
        while let Some(first) = self.0.first() {
            let (conn, handle) = (first.0.conn, first.0.clone());
            let frames = self
                .0
                .extract_if(.., |(h, _)| h.conn == conn)
                .map(|(_, f)| f)
                .collect();
            handle.push(Outbound::Frames(frames));
        }
    }
}

/// The channel actor.
pub struct ChannelActor {
    channel: Channel,
    deps: ChannelDeps,
    members: Members,
    head: Seq,
    /// Publishes waiting for their commit, in the order they were sent to the batcher.
    in_flight: VecDeque<InFlight>,
    /// Tag of the next publish; tags in `in_flight` are consecutive.
    next_tag: u64,
    /// Where the batcher answers this actor's writes (made once, shared by every write).
    committed_to: Option<Arc<Recipient<Committed>>>,
    /// Acks of the commit being handled, sent per session once it is.
    acks: AckBatch,
    /// Deliveries of the commit being handled, sent together once it is.
    outgoing: Vec<Delivery>,
    subs: FastMap<ConnId, SessionHandle>,
    /// The router forgot this channel ([`Stop`]): it stops for good once its writes in
    /// flight are answered.
    retiring: bool,
    /// Delivery order in a cluster (`None` on a node alone, or until loaded).
    order: Option<Sequencer>,
    /// The head when the actor loaded: a gap below it is in the store already.
    loaded_head: Seq,
    /// A gap fill waits for the bus, or reads the store.
    gap_timer: Option<SpawnHandle>,
    filling: bool,
}

type CommitResult = Result<WriteOutcome, StoreError>;

/// A publish between `PersistAndNotify` and its commit.
struct InFlight {
    tag: u64,
    /// Filled in when the batcher answers.
    commit: Option<CommitResult>,
    reply: Reply,
}

impl ChannelActor {
    /// A channel actor; it loads its members and head seq when started.
    pub fn new(channel: Channel, deps: ChannelDeps) -> Self {
        ChannelActor {
            channel,
            deps,
            members: Members::Unknown,
            head: Seq::ZERO,
            in_flight: VecDeque::new(),
            next_tag: 0,
            committed_to: None,
            acks: AckBatch::default(),
            outgoing: Vec::new(),
            subs: FastMap::default(),
            retiring: false,
            order: None,
            loaded_head: Seq::ZERO,
            gap_timer: None,
            filling: false,
        }
        .counted()
    }

    fn counted(self) -> Self {
        self.deps.live.fetch_add(1, Ordering::Relaxed);
        self
    }

    /// Stops for good: without its own address (which the batcher's answers use) and
    /// dropped by the router, nothing holds the mailbox open, so the supervisor ends
    /// instead of restarting it.
    fn retire(&mut self, ctx: &mut Context<Self>) {
        self.retiring = true;
        self.committed_to = None;
        if self.in_flight.is_empty() {
            ctx.stop();
        }
    }

    fn load(&mut self, ctx: &mut Context<Self>) {
        let name = self.channel.name.to_string();
        let group = match &self.channel.kind {
            ChannelKind::Group(g) => Some(g.to_string()),
            _ => None,
        };
        let settled_before = self
            .deps
            .cluster
            .as_ref()
            .map(|c| now_ms() - c.late_window.as_millis() as i64);
        let fut = self.deps.reads.channel_start(name, group, settled_before);
        // wait: nothing else is handled until the channel knows its members.
        ctx.wait(fut.into_actor(self).map(|res, act, _| match res {
            Ok(ChannelStart {
                head,
                members,
                settled,
            }) => {
                act.head = act.head.max(head);
                if act.deps.cluster.is_some() && act.order.is_none() {
                    // What was stored within the late window may not have reached this
                    // node yet, and no actor here delivered it (or the retired one says
                    // how far it did, or a dead node's messages were never heard):
                    // delivered from the store as a gap.
                    let from = match act.deps.resume {
                        None => settled,
                        Some(Resume::Delivered(r)) => r.max(settled),
                        Some(Resume::Unheard(r)) => r.min(settled),
                    };
                    act.order = Some(Sequencer::new(from));
                    act.loaded_head = head;
                }
                act.members = match (&act.channel.kind, members) {
                    (ChannelKind::Dm(a, b), _) => {
                        // A note to self has one recipient, not the same one twice.
                        let pair = if a == b {
                            vec![a.clone()]
                        } else {
                            vec![a.clone(), b.clone()]
                        };
                        Members::Fixed(Arc::from(pair))
                    }
                    (ChannelKind::User(u), _) => Members::Fixed(Arc::from(vec![u.clone()])),
                    (ChannelKind::Broadcast(_), _) => Members::Open,
                    (ChannelKind::Group(_), Some(Some(list))) => {
                        let list: Vec<UserId> = list.iter().map(|m| UserId::new(m)).collect();
                        Members::Group(Some((list.iter().cloned().collect(), Arc::from(list))))
                    }
                    (ChannelKind::Group(_), _) => Members::Group(None),
                };
            }
            Err(e) => {
                // Loaded again on the next request; a database outage is logged by the
                // store's health once, not per channel.
                if e.is_transient() {
                    log::debug!("channel {}: cannot load: {e}", act.channel.name);
                } else {
                    log::error!("channel {}: cannot load: {e}", act.channel.name);
                }
                act.members = Members::Unknown;
            }
        }));
    }

    /// Whether `user` may read; `Err` explains why not.
    fn check_read(&self, user: &UserId) -> Result<(), ChannelError> {
        match &self.members {
            Members::Unknown => Err(ChannelError::Unavailable),
            Members::Group(None) => Err(ChannelError::NotFound),
            Members::Group(Some((set, _))) if !set.contains(user) => {
                Err(ChannelError::Forbidden("not a member of this group"))
            }
            _ => match self.channel.readable_by(user) {
                Some(false) => Err(ChannelError::Forbidden("not allowed to read this channel")),
                _ => Ok(()),
            },
        }
    }

    fn check_write(&self, sender: &Sender) -> Result<(), ChannelError> {
        match (&self.members, sender) {
            (Members::Unknown, _) => Err(ChannelError::Unavailable),
            (Members::Group(None), _) => Err(ChannelError::NotFound),
            (_, Sender::Privileged) => Ok(()),
            (Members::Open, Sender::User(_)) => Err(ChannelError::Forbidden(
                "only admins may publish to broadcast channels",
            )),
            (_, Sender::User(u)) => match &self.channel.kind {
                ChannelKind::User(_) => Err(ChannelError::Forbidden(
                    "only admins may publish to user channels",
                )),
                _ => self.check_read(u),
            },
        }
    }

    fn recipients(&self) -> Option<Arc<[UserId]>> {
        match &self.members {
            Members::Fixed(l) => Some(l.clone()),
            Members::Group(Some((_, l))) => Some(l.clone()),
            _ => None,
        }
    }

    fn deliver(&mut self, item: Outbound, skip_conn: Option<ConnId>, skip_user: Option<UserId>) {
        if !self.subs.is_empty() {
            self.subs
                .retain(|c, h| Some(*c) == skip_conn || h.push(item.clone()));
            self.deps
                .subscribers
                .store(self.subs.len(), Ordering::Relaxed);
        }
        if let Some(users) = self.recipients() {
            self.deps.fan_out.do_send(FanOut {
                users,
                skip_conn,
                skip_user,
                item,
            });
        }
    }

    fn fan_out(&mut self, msg: &StoredMessage, origin: Option<ConnId>) {
        let seq = Seq::from_stored(msg.seq);
        // In a cluster other nodes' commits move the head too.
        if seq <= self.head && self.deps.cluster.is_none() {
            log::error!(
                "channel {}: seq {seq} committed after {}",
                self.channel.name,
                self.head
            );
        }
        self.head = self.head.max(seq);
        self.outgoing.push(Delivery {
            seq,
            frame: delivery_frame(msg),
            skip_conn: origin,
            from_here: true,
        });
    }

    /// Sends the deliveries gathered while handling one commit, as one item to every
    /// recipient (each skips what it published itself), and to the other nodes.
    fn send_outgoing(&mut self, ctx: &mut Context<Self>) {
        if self.outgoing.is_empty() {
            return;
        }
        let items: Arc<[Delivery]> = Arc::from(std::mem::take(&mut self.outgoing));
        if let Some(c) = &self.deps.cluster {
            let env = Envelope::Deliveries {
                channel: self.channel.name.clone(),
                audience: self.audience(),
                items: items.iter().map(|d| (d.seq, d.frame.clone())).collect(),
            };
            c.publish(env);
        }
        self.deliver_in_order(items, ctx);
    }

    /// Delivers committed messages, through the sequencer in a cluster.
    fn deliver_in_order(&mut self, items: Arc<[Delivery]>, ctx: &mut Context<Self>) {
        let ready = match &mut self.order {
            Some(order) => order.offer(&items),
            None => Ready::Offered(items),
        };
        self.deliver_ready(ready);
        self.watch_gap(ctx);
    }

    fn deliver_ready(&mut self, ready: Ready) {
        let items: Arc<[Delivery]> = match ready {
            Ready::Nothing => return,
            Ready::Offered(items) => items,
            Ready::Items(items) => Arc::from(items),
        };
        if let Some(last) = items.last() {
            self.head = self.head.max(last.seq);
            if self.order.is_some() {
                self.deps.delivered.store(last.seq.get(), Ordering::Relaxed);
            }
        }
        let item = Outbound::Deliveries {
            channel: self.channel.name.clone(),
            items,
        };
        self.deliver(item, None, None);
    }

    /// Records the batcher's answer for publish `tag`, then handles every answered publish
    /// at the front of the queue. Commits are thus handled strictly in the order they were
    /// sent, so fan-out follows seq order, whatever order actix runs ready futures in.
    fn answered(&mut self, tag: u64, res: CommitResult) {
        let Some(front) = self.in_flight.front().map(|f| f.tag) else {
            return;
        };
        let Some(slot) = tag
            .checked_sub(front)
            .and_then(|i| self.in_flight.get_mut(i as usize))
        else {
            return; // from before a restart
        };
        slot.commit = Some(res);
        while self.in_flight.front().is_some_and(|f| f.commit.is_some()) {
            if let Some(mut f) = self.in_flight.pop_front() {
                let res = f.commit.take().unwrap_or(Err(StoreError::StoreGone));
                self.committed(f, res);
            }
        }
    }

    /// One publish's commit (or failure): queue its delivery and its ack. Both go out once
    /// the whole commit is handled, acks first (`AckBatch::send`, then `send_outgoing`).
    fn committed(&mut self, f: InFlight, res: CommitResult) {
        match res {
            Ok(WriteOutcome::Stored { msg, duplicate }) => {
                if !duplicate {
                    self.fan_out(&msg, f.reply.origin());
                }
                f.reply.acked(&msg, &mut self.acks);
            }
            // Not the outcome of a message: a bug, answered as a retry.
            Ok(_) => f.reply.answer(Err(ChannelError::Unavailable)),
            Err(e) => f.reply.answer(Err(e.into())),
        }
    }
}

impl Actor for ChannelActor {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        self.committed_to = Some(Arc::new(ctx.address().recipient()));
        self.load(ctx);
    }
}

impl Supervised for ChannelActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        log::warn!("channel {}: restarting", self.channel.name);
        self.members = Members::Unknown;
        // Dropping the replies answers their publishers `unavailable`; a resend is deduped.
        // Later answers for their tags find no slot and are ignored.
        self.in_flight.clear();
        // The sequencer is kept; its gap is looked at again with the next message.
        self.gap_timer = None;
        self.filling = false;
    }
}

/// Store a message in this channel; `reply` gets its ack after commit (or the error).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish {
    /// The message.
    pub msg: NewMessage,
    /// Who writes it.
    pub sender: Sender,
    /// Where the answer goes; a session's connection gets the ack, not the delivery.
    pub reply: Reply,
}

impl Handler<Publish> for ChannelActor {
    type Result = ();

    fn handle(&mut self, p: Publish, ctx: &mut Context<Self>) {
        if let Err(e) = self.check_write(&p.sender) {
            if matches!(self.members, Members::Unknown) {
                self.load(ctx);
            }
            // In a cluster a member may have been added on another node a moment ago (its
            // notice still on the bus): the members are read again before a refusal.
            if let (ChannelError::Forbidden(_), Some(_), ChannelKind::Group(_)) =
                (&e, &self.deps.cluster, &self.channel.kind)
            {
                self.load(ctx);
                ctx.notify(Recheck(p));
                return;
            }
            return p.reply.answer(Err(e));
        }
        self.persist(p, ctx);
    }
}

/// A refused publish, tried once more after the members were read again.
#[derive(Message)]
#[rtype(result = "()")]
struct Recheck(Publish);

impl Handler<Recheck> for ChannelActor {
    type Result = ();
    fn handle(&mut self, Recheck(p): Recheck, ctx: &mut Context<Self>) {
        if let Err(e) = self.check_write(&p.sender) {
            return p.reply.answer(Err(e));
        }
        self.persist(p, ctx);
    }
}

impl ChannelActor {
    /// Sends an allowed publish to the write batcher.
    fn persist(&mut self, p: Publish, _: &mut Context<Self>) {
        let Some(to) = self.committed_to.clone() else {
            return p.reply.answer(Err(ChannelError::Unavailable));
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        self.in_flight.push_back(InFlight {
            tag,
            commit: None,
            reply: p.reply,
        });
        self.deps.batcher.do_send(PersistAndNotify {
            op: WriteOp::Message(p.msg),
            tag,
            to,
        });
    }
}

impl Handler<Committed> for ChannelActor {
    type Result = ();
    fn handle(&mut self, c: Committed, ctx: &mut Context<Self>) {
        // Deliveries are handed on as one shared slice per commit; sized once, not grown.
        self.outgoing.reserve(c.results.len());
        for (tag, res) in c.results {
            self.answered(tag, res);
        }
        self.acks.send();
        self.send_outgoing(ctx);
        if self.retiring && self.in_flight.is_empty() {
            ctx.stop();
        }
    }
}

/// Subscribe a connection; answered with the channel's head seq.
#[derive(Message)]
#[rtype(result = "Result<Seq, ChannelError>")]
pub struct Join {
    /// The subscribing session.
    pub handle: SessionHandle,
}

impl Handler<Join> for ChannelActor {
    type Result = Result<Seq, ChannelError>;
    fn handle(&mut self, j: Join, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_read(&j.handle.user) {
            if matches!(self.members, Members::Unknown) {
                self.load(ctx);
            }
            return Err(e);
        }
        // Members already receive DMs and group messages; only broadcast needs the list.
        if matches!(self.members, Members::Open) {
            self.subs.insert(j.handle.conn, j.handle);
            self.deps
                .subscribers
                .store(self.subs.len(), Ordering::Relaxed);
        }
        Ok(self.head)
    }
}

/// Unsubscribe a connection.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The connection.
    pub conn: ConnId,
}

impl Handler<Leave> for ChannelActor {
    type Result = ();
    fn handle(&mut self, l: Leave, _: &mut Context<Self>) {
        self.subs.remove(&l.conn);
        self.deps
            .subscribers
            .store(self.subs.len(), Ordering::Relaxed);
    }
}

#[derive(Serialize)]
struct TypingPayload {
    typing: bool,
}

#[derive(Serialize)]
struct EphemeralMeta<'a> {
    timestamp: i64,
    sender_id: &'a str,
    target_id: &'a str,
    channel: &'a str,
}

#[derive(Serialize)]
struct Ephemeral<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    payload: P,
    meta: EphemeralMeta<'a>,
}

/// Encodes a typing indicator as recipients see it.
pub fn typing_frame(from: &UserId, target: &str, channel: &str, typing: bool) -> Outbound {
    let frame = Ephemeral {
        kind: "typing_indicator",
        payload: TypingPayload { typing },
        meta: EphemeralMeta {
            timestamp: now_ms(),
            sender_id: from.as_str(),
            target_id: target,
            channel,
        },
    };
    Outbound::Frame(
        serde_json::to_string(&frame)
            .map(ByteString::from)
            .unwrap_or_default(),
    )
}

/// A member is (or stopped) typing in this group.
#[derive(Message)]
#[rtype(result = "Result<(), ChannelError>")]
pub struct Typing {
    /// The typist.
    pub from: UserId,
    /// Typing or stopped.
    pub typing: bool,
}

impl Handler<Typing> for ChannelActor {
    type Result = Result<(), ChannelError>;
    fn handle(&mut self, t: Typing, _: &mut Context<Self>) -> Self::Result {
        self.check_read(&t.from)?;
        let item = typing_frame(&t.from, &self.channel.name, &self.channel.name, t.typing);
        self.deliver(item, None, Some(t.from));
        Ok(())
    }
}

#[derive(Serialize)]
struct ReceiptPayload<'a> {
    channel: &'a str,
    up_to_seq: Seq,
    user_id: &'a str,
}

/// `user` has read this channel up to `up_to_seq`: store it and tell the other members.
#[derive(Message)]
#[rtype(result = "Result<Seq, ChannelError>")]
pub struct Receipt {
    /// The reader.
    pub user: UserId,
    /// The reading connection, which is not told (its user's other connections are); `None`
    /// for a receipt over REST, which every connection is told of.
    pub origin: Option<ConnId>,
    /// Highest seq read.
    pub up_to_seq: Seq,
}

impl Handler<Receipt> for ChannelActor {
    type Result = ResponseActFuture<Self, Result<Seq, ChannelError>>;
    fn handle(&mut self, r: Receipt, _: &mut Context<Self>) -> Self::Result {
        if let Err(e) = self.check_read(&r.user) {
            return Box::pin(fut::ready(Err(e)));
        }
        if r.up_to_seq > self.head {
            return Box::pin(fut::ready(Err(ChannelError::BadRequest(
                "up_to_seq is beyond the last message of the channel",
            ))));
        }
        let op = WriteOp::ReadCursor {
            user_id: r.user.to_string(),
            channel: self.channel.name.to_string(),
            up_to_seq: r.up_to_seq.to_stored(),
        };
        let req = self.deps.batcher.send(PersistAndReply(op));
        Box::pin(req.into_actor(self).map(move |res, act, _| match res {
            Ok(Ok(WriteOutcome::Cursor { up_to_seq })) => {
                let up_to_seq = Seq::from_stored(up_to_seq);
                let frame = encode(
                    "read_receipt",
                    None,
                    ReceiptPayload {
                        channel: &act.channel.name,
                        up_to_seq,
                        user_id: r.user.as_str(),
                    },
                );
                if !matches!(act.members, Members::Open) {
                    act.deliver(Outbound::Frame(frame), r.origin, None);
                }
                Ok(up_to_seq)
            }
            Ok(Ok(_)) => Err(ChannelError::Unavailable),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ChannelError::Unavailable),
        }))
    }
}

/// The group's members changed in the store: load them again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadMembers;

impl Handler<ReloadMembers> for ChannelActor {
    type Result = ();
    fn handle(&mut self, _: ReloadMembers, ctx: &mut Context<Self>) {
        self.load(ctx);
    }
}

/// The router forgot this idle channel: stop for good (not a failure, so no restart).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for ChannelActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        self.retire(ctx);
    }
}

impl Drop for ChannelActor {
    fn drop(&mut self) {
        self.deps.live.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
