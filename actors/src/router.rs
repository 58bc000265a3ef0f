//! `Router`: the session registry and the channel registry.
//!
//! Owns every connected session's handle (by user) and the address of every active channel
//! actor. Receives `Connect`/`Disconnect` from sessions, `AskChannel<M>` (a message for a channel
//! actor, started on first use) and `FanOut` (deliver to every connection of some users).
//! Sends connection events to a user's other connections and tells the presence tracker and
//! offline queue who came and went.
//!
//! A restart keeps the registries (they describe live connections, which a restart does not
//! end); channel actors it forgot are started again on next use.

use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

mod cluster;
mod connections;
pub use cluster::MembersChanged;
pub use connections::{
    CloseAll, CloseConnection, CloseRevoked, ConnectionInfo, GetStats, ListConnections, RouterStats,
};

use crate::channel::{ChannelActor, ChannelCluster, ChannelDeps, Resume, Stop};
use crate::fast_map::FastMap;
use crate::health::ActorHealth;
use crate::ids::{Channel, ConnId, UserId};
use crate::offline_queue::{DeviceSeen, OfflineQueue};
use crate::presence::{ConnClosed, ConnOpened, PresenceTracker};
use crate::protocol::encode;
use crate::push_notifier::{AwaitDelivered, PushOffline, PushStats};
use crate::seq::Seq;
pub use crate::session_handle::FanOut;
use crate::session_handle::{Delivery, Outbound, SessionHandle, Transport};
use crate::store::batcher::WriteBatcher;
use crate::store::reader::Reads;

struct ChannelEntry {
    addr: Addr<ChannelActor>,
    last_routed: Instant,
    /// Explicit subscribers, kept up to date by the channel actor.
    subscribers: Arc<AtomicUsize>,
    /// The last seq the actor delivered in order (cluster only).
    delivered: Arc<AtomicU64>,
}

/// Most messages waiting in the router's mailbox for senders that do not wait (sessions'
/// publishes); beyond it they are refused and their publishers told to retry.
pub const MAILBOX_CAPACITY: usize = 16_384;

/// Router settings.
#[derive(Clone)]
pub struct RouterConfig {
    /// A channel actor with no subscriber and no traffic for this long is stopped.
    pub channel_idle: Duration,
    /// Where messages for users go to be pushed (the push hook), if anywhere.
    pub push: Option<PushRoute>,
    /// The cluster, when this node is one of several.
    pub cluster: Option<ChannelCluster>,
}

/// The push hook as the router reaches it.
#[derive(Debug, Clone)]
pub struct PushRoute {
    /// Messages for users with no connection here.
    pub offline: Recipient<PushOffline>,
    /// Messages delivered to connected users, pushed unless marked delivered in time
    /// (`None`: `push.ack_delay` is zero).
    pub await_delivered: Option<Recipient<AwaitDelivered>>,
    /// Counts what the router could not hand over.
    pub stats: Arc<PushStats>,
}

/// The registry actor.
pub struct Router {
    sessions: FastMap<UserId, Vec<SessionHandle>>,
    /// Connections still waiting for their `auth` frame (closed on shutdown too).
    pending: FastMap<ConnId, Recipient<Outbound>>,
    channels: FastMap<Arc<str>, ChannelEntry>,
    /// In a cluster, where the next actor of a channel takes up delivery: what actors
    /// stopped lately had delivered (not delivered again), or where a dead node's unheard
    /// messages begin.
    resume: FastMap<Arc<str>, (Resume, Instant)>,
    /// Channel actors alive, shared with each of them (see [`ChannelDeps::live`]).
    live_channels: Arc<AtomicUsize>,
    batcher: Addr<WriteBatcher>,
    reads: Reads,
    presence: Addr<PresenceTracker>,
    offline: Addr<OfflineQueue>,
    cfg: RouterConfig,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl Router {
    /// A router over the given persistence and tracker actors.
    pub fn new(
        batcher: Addr<WriteBatcher>,
        reads: Reads,
        presence: Addr<PresenceTracker>,
        offline: Addr<OfflineQueue>,
        cfg: RouterConfig,
        health: Arc<ActorHealth>,
    ) -> Self {
        Router {
            sessions: FastMap::default(),
            pending: FastMap::default(),
            channels: FastMap::default(),
            resume: FastMap::default(),
            live_channels: Arc::new(AtomicUsize::new(0)),
            batcher,
            reads,
            presence,
            offline,
            cfg,
            health,
        }
    }

    /// The running actor of `channel`, started if there is none. Lent, not cloned: a
    /// cloned `Addr` allocates two `Arc`s (actix gives each sender its own task slot), once
    /// per routed message.
    fn channel(&mut self, channel: &Channel, ctx: &mut Context<Self>) -> &Addr<ChannelActor> {
        let now = Instant::now();
        let resume = self.resume.remove(&channel.name).map(|(r, _)| r);
        let start = || {
            let subscribers = Arc::new(AtomicUsize::new(0));
            let delivered = Arc::new(AtomicU64::new(0));
            let deps = ChannelDeps {
                fan_out: ctx.address().recipient(),
                batcher: self.batcher.clone(),
                reads: self.reads.clone(),
                subscribers: subscribers.clone(),
                live: self.live_channels.clone(),
                delivered: delivered.clone(),
                resume,
                cluster: self.cfg.cluster.clone(),
            };
            let ch = channel.clone();
            ChannelEntry {
                // The capacity is set before the address is out: the actor's own `started`
                // runs only once it is first polled, after this burst is forwarded to it.
                addr: Supervisor::start(move |ctx: &mut Context<ChannelActor>| {
                    ctx.set_mailbox_capacity(crate::channel::MAILBOX_CAPACITY);
                    ChannelActor::new(ch, deps)
                }),
                last_routed: now,
                subscribers,
                delivered,
            }
        };
        let entry = match self.channels.entry(channel.name.clone()) {
            Entry::Occupied(e) if e.get().addr.connected() => e.into_mut(),
            Entry::Occupied(mut e) => {
                e.insert(start());
                e.into_mut()
            }
            Entry::Vacant(e) => e.insert(start()),
        };
        entry.last_routed = now;
        &entry.addr
    }

    fn sweep_idle(&mut self) {
        let idle = self.cfg.channel_idle;
        let clustered = self.cfg.cluster.is_some();
        let resume = &mut self.resume;
        self.channels.retain(|name, e| {
            let keep = e.last_routed.elapsed() < idle || e.subscribers.load(Ordering::Relaxed) > 0;
            if !keep {
                e.addr.do_send(Stop);
                if clustered {
                    let seq = Seq::new(e.delivered.load(Ordering::Relaxed));
                    resume.insert(name.clone(), (Resume::Delivered(seq), Instant::now()));
                }
            }
            keep
        });
        if let Some(c) = &self.cfg.cluster {
            // Past the late window a new actor's own start point covers what they held.
            let keep = c.late_window * 2;
            self.resume.retain(|_, (_, at)| at.elapsed() < keep);
        }
    }

    /// Queues `item` to every connection of `user` but `skip`; whether `user` has any.
    fn send_to_user(&mut self, user: &UserId, skip: Option<ConnId>, item: &Outbound) -> bool {
        match self.sessions.get_mut(user) {
            Some(list) => {
                list.retain(|h| Some(h.conn) == skip || h.push(item.clone()));
                true
            }
            None => false,
        }
    }

    /// Stored messages for `user` to the push hook, if one is configured, without waiting
    /// (a full mailbox drops them, counted): at once when `user` has no connection here,
    /// else to be pushed unless marked delivered in time.
    fn push(&self, user: &UserId, online: bool, item: &Outbound) {
        let (Some(push), Outbound::Deliveries { channel, items }) = (&self.cfg.push, item) else {
            return;
        };
        // In a cluster the node that committed a message pushes it, no other.
        let filtered: Arc<[Delivery]>;
        let items = if items.iter().all(|d| d.from_here) {
            items
        } else {
            filtered = items.iter().filter(|d| d.from_here).cloned().collect();
            if filtered.is_empty() {
                return;
            }
            &filtered
        };
        let sent = match (online, &push.await_delivered) {
            (false, _) => push
                .offline
                .try_send(PushOffline {
                    user: user.clone(),
                    channel: channel.clone(),
                    items: items.clone(),
                })
                .is_ok(),
            (true, Some(to)) => {
                // What the user sent themselves is not pushed to them.
                let own = |d: &Delivery| {
                    d.skip_conn.is_some_and(|c| {
                        self.sessions
                            .get(user)
                            .is_some_and(|l| l.iter().any(|h| h.conn == c))
                    })
                };
                if items.iter().all(own) {
                    return;
                }
                let items: Arc<[Delivery]> = if items.iter().any(own) {
                    items.iter().filter(|d| !own(d)).cloned().collect()
                } else {
                    items.clone()
                };
                let n = items.len();
                let sent = to
                    .try_send(AwaitDelivered {
                        user: user.clone(),
                        channel: channel.clone(),
                        items,
                    })
                    .is_ok();
                if !sent {
                    push.stats
                        .dropped
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                return;
            }
            (true, None) => true,
        };
        if !sent {
            push.stats
                .dropped
                .fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Actor for Router {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.health.started();
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        let every = (self.cfg.channel_idle / 4).max(Duration::from_millis(250));
        ctx.run_interval(every, |act, _| act.sweep_idle());
    }
}

impl Supervised for Router {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
    }
}

crate::health_handlers!(Router);

#[derive(Serialize)]
struct ConnectionEvent<'a> {
    event: &'a str,
    user_id: &'a str,
    client_id: &'a str,
    conn_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
}

fn connection_event(event: &str, h: &SessionHandle) -> Outbound {
    Outbound::Frame(encode(
        "connection_event",
        None,
        ConnectionEvent {
            event,
            user_id: h.user.as_str(),
            client_id: &h.client_id,
            conn_id: h.conn.to_string(),
            device: h.device.as_deref(),
        },
    ))
}

/// A connection opened without a token; it has `auth_timeout` to send its `auth` frame.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Arrived {
    /// The connection.
    pub conn: ConnId,
    /// Where to send its close on shutdown.
    pub recipient: Recipient<Outbound>,
}

impl Handler<Arrived> for Router {
    type Result = ();
    fn handle(&mut self, msg: Arrived, _: &mut Context<Self>) {
        self.health.handled();
        self.pending.insert(msg.conn, msg.recipient);
    }
}

/// A session authenticated; it starts receiving its user's deliveries.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    /// The new session.
    pub handle: SessionHandle,
}

impl Handler<Connect> for Router {
    type Result = ();
    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) {
        self.health.handled();
        let h = msg.handle;
        self.pending.remove(&h.conn);
        // A long poll is one request: its coming and going is not news to other devices.
        if h.transport != Transport::Poll {
            let event = connection_event("connected", &h);
            self.send_to_user(&h.user, None, &event);
            if self.cfg.cluster.is_some() {
                self.frame_to_cluster(Arc::from([h.user.clone()]), None, None, &event);
            }
        }
        self.presence.do_send(ConnOpened {
            user: h.user.clone(),
            conn: h.conn,
        });
        self.offline.do_send(DeviceSeen {
            user: h.user.clone(),
            client_id: h.client_id.clone(),
            device: h.device.clone(),
        });
        self.sessions.entry(h.user.clone()).or_default().push(h);
    }
}

/// A session ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    /// Its user, if it had authenticated.
    pub user: Option<UserId>,
    /// Its connection.
    pub conn: ConnId,
}

impl Handler<Disconnect> for Router {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.health.handled();
        self.pending.remove(&msg.conn);
        let Some(user) = msg.user else {
            return;
        };
        let mut gone = None;
        if let Some(list) = self.sessions.get_mut(&user) {
            if let Some(i) = list.iter().position(|h| h.conn == msg.conn) {
                gone = Some(list.swap_remove(i));
            }
            if list.is_empty() {
                self.sessions.remove(&user);
            }
        }
        if let Some(h) = gone.filter(|h| h.transport != Transport::Poll) {
            let event = connection_event("disconnected", &h);
            self.send_to_user(&user, None, &event);
            if self.cfg.cluster.is_some() {
                self.frame_to_cluster(Arc::from([user.clone()]), None, None, &event);
            }
        }
        self.presence.do_send(ConnClosed {
            user,
            conn: msg.conn,
        });
    }
}

impl Handler<FanOut> for Router {
    type Result = ();
    fn handle(&mut self, msg: FanOut, _: &mut Context<Self>) {
        self.health.handled();
        for user in msg.users.iter() {
            if msg.skip_user.as_ref() == Some(user) {
                continue;
            }
            let online = self.send_to_user(user, msg.skip_conn, &msg.item);
            self.push(user, online, &msg.item);
        }
        // Frames reach the users' connections on other nodes too; deliveries are sent
        // there by their channel, in seq order.
        self.frame_to_cluster(msg.users, msg.skip_user, msg.skip_conn, &msg.item);
    }
}

/// A message for the presence tracker, sent through the router so that a session's
/// messages reach the tracker after its `Connect` and before its `Disconnect`.
pub struct ToPresence<M>(pub M);

impl<M: Message<Result = ()> + Send + 'static> Message for ToPresence<M> {
    type Result = ();
}

impl<M> Handler<ToPresence<M>> for Router
where
    M: Message<Result = ()> + Send + 'static,
    PresenceTracker: Handler<M>,
{
    type Result = ();
    fn handle(&mut self, m: ToPresence<M>, _: &mut Context<Self>) {
        self.health.handled();
        self.presence.do_send(m.0);
    }
}

/// A message for the actor of `channel` (started if it is not running), whose answer the
/// sender awaits.
pub struct AskChannel<M> {
    /// Target channel.
    pub channel: Channel,
    /// The message.
    pub msg: M,
}

impl<M> Message for AskChannel<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Result = Result<M::Result, MailboxError>;
}

impl<M> Handler<AskChannel<M>> for Router
where
    M: Message + Send + 'static,
    M::Result: Send,
    ChannelActor: Handler<M>,
{
    type Result = ResponseFuture<Result<M::Result, MailboxError>>;
    fn handle(&mut self, r: AskChannel<M>, ctx: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        let req = self.channel(&r.channel, ctx).send(r.msg);
        Box::pin(req)
    }
}

/// A message for the actor of `channel` (started if it is not running), queued without
/// waiting for an answer. Refused (dropped) when that actor's mailbox is full, so `M` must
/// answer its sender when dropped, as [`crate::channel::Publish`] does.
pub struct TellChannel<M> {
    /// Target channel.
    pub channel: Channel,
    /// The message.
    pub msg: M,
}

impl<M: Message + Send + 'static> Message for TellChannel<M> {
    type Result = ();
}

impl<M> Handler<TellChannel<M>> for Router
where
    M: Message<Result = ()> + Send + 'static,
    ChannelActor: Handler<M>,
{
    type Result = ();
    fn handle(&mut self, f: TellChannel<M>, ctx: &mut Context<Self>) {
        self.health.handled();
        let _ = self.channel(&f.channel, ctx).try_send(f.msg);
    }
}

/// A message for the actor of `channel` only if it is running (membership changes start
/// no actor); no answer.
pub struct TellChannelIfActive<M> {
    /// Target channel.
    pub channel: Channel,
    /// The message.
    pub msg: M,
}

impl<M> Message for TellChannelIfActive<M>
where
    M: Message + Send + 'static,
    M::Result: Send,
{
    type Result = ();
}

impl<M> Handler<TellChannelIfActive<M>> for Router
where
    M: Message + Send + 'static,
    M::Result: Send,
    ChannelActor: Handler<M>,
{
    type Result = ();
    fn handle(&mut self, r: TellChannelIfActive<M>, _: &mut Context<Self>) {
        self.health.handled();
        if let Some(e) = self.channels.get(&r.channel.name) {
            e.addr.do_send(r.msg);
        }
    }
}
