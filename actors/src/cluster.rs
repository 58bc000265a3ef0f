//! `ClusterLink`: this node's end of the Redis bus that joins brokers into one.
//!
//! Nodes share one PostgreSQL database, where every message is stored once with its seq,
//! and one Redis, over which they tell each other what they committed. The link owns the
//! node's two Redis connections: one it publishes on, one subscribed to the bus channel
//! (one subscription per node, whatever the number of channels or connections).
//!
//! Receives [`ToCluster`] envelopes (a channel's commits, frames for users, control
//! messages), batches them and publishes each batch as one pipeline; the subscription's
//! task decodes other nodes' envelopes and hands them to the router ([`FromCluster`]).
//! Heartbeats keep this node in the cluster's node list, which `/status` shows.
//!
//! Nothing a client can see depends on the bus alone. A node whose publishing connection
//! failed announces, once it is back, the last seq of every channel it committed to
//! meanwhile ([`Envelope::Heads`]); a node whose subscription dropped asks the others to do
//! the same ([`Envelope::Resync`]); a channel that sees a seq gap fills it from the
//! database (`channel::sequencer`). Frames that are not stored (typing, receipts' notices)
//! are lost with the bus, as they are with a dropped connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use deadpool_redis::redis::{self, aio::MultiplexedConnection};

mod ask;
mod bus;
mod config;
pub mod envelope;

use ask::Asked;
pub use ask::{Answers, AskCluster, ClusterAnswers};
use bus::BusReader;
pub use config::{ClusterConfig, ClusterStats, NodeInfo};
pub use envelope::{Audience, Envelope, Head, PresenceNote, Question};

use crate::fast_map::FastMap;
use crate::health::ActorHealth;
use crate::ids::{now_ms, UserId};
use crate::seq::Seq;

/// Most heads in one [`Envelope::Heads`].
const HEADS_PER_ENVELOPE: usize = 500;
/// How long one Redis command may take before the connection counts as lost.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between attempts to reach Redis again.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// How long a question to the other nodes waits for their answers.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A channel this node committed to lately.
struct Recent {
    audience: Audience,
    seq: Seq,
    at_ms: i64,
}

/// The link actor.
pub struct ClusterLink {
    cfg: Arc<ClusterConfig>,
    client: redis::Client,
    /// Where the bus's envelopes and the node list go on this node.
    local: Option<LocalEnds>,
    conn: Option<MultiplexedConnection>,
    connecting: bool,
    /// Encoded envelopes waiting for the next pipeline.
    outbox: Vec<Vec<u8>>,
    /// Requests to the other nodes made while the publishing connection was down, sent
    /// once it is up (at most one of each kind).
    asks: Vec<Envelope>,
    flushing: bool,
    recent: FastMap<Arc<str>, Recent>,
    /// Since when (ms) published envelopes may have been lost: heads from then are
    /// announced once the publishing connection works again.
    lost_since: Option<i64>,
    /// Since when (ms) the bus subscription is down.
    bus_down_since: Option<i64>,
    started_at: i64,
    /// Where other nodes' rate-limit spending and place counts go (the server's
    /// connection gate).
    limiter: Option<AttachLimiter>,
    /// Where other nodes' revocations go (the server's revocation watch).
    revocations: Option<Recipient<RevokedElsewhere>>,
    /// Questions to the other nodes waiting for answers, by number.
    asked: FastMap<u64, Asked>,
    next_ask: u64,
    /// This node left the node list (shutting down): no heartbeat may add it back.
    left: bool,
    /// Counters and the node list.
    pub stats: Arc<ClusterStats>,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

/// The `redis.url` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("redis.url: {0}")]
pub struct BadRedisUrl(String);

impl ClusterLink {
    /// A link to the Redis at `cfg.url` (connected once started).
    pub fn new(
        cfg: ClusterConfig,
        stats: Arc<ClusterStats>,
        health: Arc<ActorHealth>,
    ) -> Result<Self, BadRedisUrl> {
        let client =
            redis::Client::open(cfg.url.as_str()).map_err(|e| BadRedisUrl(e.to_string()))?;
        Ok(ClusterLink {
            cfg: Arc::new(cfg),
            client,
            local: None,
            conn: None,
            connecting: false,
            outbox: Vec::new(),
            asks: Vec::new(),
            flushing: false,
            recent: FastMap::default(),
            lost_since: None,
            bus_down_since: None,
            started_at: now_ms(),
            asked: FastMap::default(),
            next_ask: 0,
            limiter: None,
            revocations: None,
            left: false,
            stats,
            health,
        })
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        if self.connecting || self.conn.is_some() {
            return;
        }
        self.connecting = true;
        let client = self.client.clone();
        let fut = async move {
            let cfg = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT));
            client
                .get_multiplexed_async_connection_with_config(&cfg)
                .await
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            act.connecting = false;
            match res {
                Ok(conn) => {
                    log::info!("cluster: connected to redis as node {}", act.cfg.node_id);
                    act.conn = Some(conn);
                    act.stats.publisher_up.store(true, Ordering::Relaxed);
                    act.heartbeat(ctx);
                    if let Some(since) = act.lost_since.take() {
                        act.announce_heads(since);
                        act.share_presence();
                    }
                    for ask in std::mem::take(&mut act.asks) {
                        act.outbox.push(ask.encode(&act.cfg.node_id));
                    }
                    act.flush(ctx);
                }
                Err(e) => {
                    log::debug!("cluster: redis unreachable: {e}");
                    act.lost(ctx);
                }
            }
        }));
    }

    /// The publishing connection failed: what is published until it is back is lost, so
    /// its heads are announced then.
    fn lost(&mut self, ctx: &mut Context<Self>) {
        if self.conn.take().is_some() {
            log::warn!("cluster: lost the redis connection; this node serves its own clients alone until it is back");
        }
        self.stats.publisher_up.store(false, Ordering::Relaxed);
        self.lost_since.get_or_insert_with(now_ms);
        let dropped = std::mem::take(&mut self.outbox).len();
        self.stats
            .dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        ctx.run_later(RECONNECT_EVERY, |act, ctx| act.connect(ctx));
    }

    fn queue(&mut self, env: &Envelope, ctx: &mut Context<Self>) {
        if self.conn.is_none() {
            if matches!(env, Envelope::Resync { .. } | Envelope::PresenceAsk) {
                let kind = std::mem::discriminant(env);
                self.asks.retain(|a| std::mem::discriminant(a) != kind);
                self.asks.push(env.clone());
            } else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        if self.outbox.len() >= self.cfg.outbox {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.lost_since.get_or_insert_with(now_ms);
            return;
        }
        self.outbox.push(env.encode(&self.cfg.node_id));
        self.flush(ctx);
    }

    /// Publishes what waits as one pipeline, unless one is under way (what comes
    /// meanwhile goes in the next).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.outbox.is_empty() {
            return;
        }
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        self.flushing = true;
        let batch = std::mem::take(&mut self.outbox);
        let n = batch.len() as u64;
        let bus = self.cfg.bus();
        let fut = async move {
            let mut pipe = redis::pipe();
            for msg in batch {
                pipe.cmd("PUBLISH").arg(&bus).arg(msg).ignore();
            }
            pipe.query_async::<()>(&mut conn).await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.flushing = false;
            match res {
                Ok(()) => {
                    act.stats.published.fetch_add(n, Ordering::Relaxed);
                    // Announced after what failed to go out (if the connection did not
                    // fail, nothing overflowed: the heads close what the outbox dropped).
                    if act.conn.is_some() {
                        if let Some(since) = act.lost_since.take() {
                            act.announce_heads(since);
                            act.share_presence();
                        }
                    }
                    act.flush(ctx);
                }
                Err(e) => {
                    log::debug!("cluster: publish failed: {e}");
                    act.stats.dropped.fetch_add(n, Ordering::Relaxed);
                    act.lost(ctx);
                }
            }
        }));
    }

    /// Queues the heads of the channels committed to since `since_ms` (less the late
    /// window: what was published just before a failure may not have arrived).
    fn announce_heads(&mut self, since_ms: i64) {
        let from = since_ms - self.cfg.late_window.as_millis() as i64;
        let mut heads: Vec<Head> = self
            .recent
            .iter()
            .filter(|(_, r)| r.at_ms >= from)
            .map(|(channel, r)| Head {
                channel: channel.clone(),
                audience: r.audience.clone(),
                seq: r.seq,
            })
            .collect();
        if heads.is_empty() {
            return;
        }
        log::info!(
            "cluster: announcing the heads of {} channels committed since the gap",
            heads.len()
        );
        while !heads.is_empty() {
            let rest = heads.split_off(heads.len().min(HEADS_PER_ENVELOPE));
            let env = Envelope::Heads(std::mem::replace(&mut heads, rest));
            // Past the outbox bound: heads are what closes gaps, so they always go.
            self.outbox.push(env.encode(&self.cfg.node_id));
        }
    }

    /// Has the presence tracker give a full account: what it published may be lost.
    fn share_presence(&self) {
        if let Some(l) = &self.local {
            let _ = l.share_all.try_send(ShareAll);
        }
    }

    fn remember(&mut self, channel: &Arc<str>, audience: &Audience, seq: Seq) {
        let at_ms = now_ms();
        if let Some(r) = self.recent.get_mut(channel) {
            r.seq = r.seq.max(seq);
            r.at_ms = at_ms;
            return;
        }
        if self.recent.len() < self.cfg.replay_channels {
            self.recent.insert(
                channel.clone(),
                Recent {
                    audience: audience.clone(),
                    seq,
                    at_ms,
                },
            );
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.left {
            return;
        }
        let now = now_ms();
        let window = self.cfg.replay_window.as_millis() as i64;
        self.recent.retain(|_, r| now - r.at_ms < window);
        let Some(mut conn) = self.conn.clone() else {
            return;
        };
        let cfg = self.cfg.clone();
        let me = NodeInfo {
            id: cfg.node_id.to_string(),
            url: cfg.advertise_url.clone(),
            started_at: self.started_at,
            seen_at: now,
        };
        let fut = async move {
            let ttl = cfg.node_ttl.as_millis() as i64;
            let info = serde_json::to_string(&me).unwrap_or_default();
            let (_, _, _, ids): ((), (), (), Vec<String>) = redis::pipe()
                .cmd("SET")
                .arg(cfg.node_key(&me.id))
                .arg(info)
                .arg("PX")
                .arg(ttl.max(1))
                .cmd("ZADD")
                .arg(cfg.nodes_key())
                .arg(now)
                .arg(&me.id)
                .cmd("ZREMRANGEBYSCORE")
                .arg(cfg.nodes_key())
                .arg("-inf")
                .arg(now - ttl)
                .cmd("ZRANGE")
                .arg(cfg.nodes_key())
                .arg(0)
                .arg(-1)
                .query_async(&mut conn)
                .await?;
            let keys: Vec<String> = ids.iter().map(|id| cfg.node_key(id)).collect();
            let infos: Vec<Option<String>> = if keys.is_empty() {
                Vec::new()
            } else {
                redis::cmd("MGET").arg(keys).query_async(&mut conn).await?
            };
            Ok::<_, redis::RedisError>(
                infos
                    .into_iter()
                    .flatten()
                    .filter_map(|i| serde_json::from_str::<NodeInfo>(&i).ok())
                    .collect::<Vec<_>>(),
            )
        };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(nodes) => {
                let gone = act.gone_since(&nodes);
                if let Some(l) = &act.local {
                    let live = nodes.iter().map(|n| Arc::from(n.id.as_str())).collect();
                    let _ = l.live_nodes.try_send(LiveNodes(live));
                    if let Some(since_ms) = gone {
                        let _ = l.nodes_gone.try_send(NodesGone { since_ms });
                    }
                }
                if let Ok(mut n) = act.stats.nodes.lock() {
                    *n = nodes;
                }
            }
            Err(e) => {
                log::debug!("cluster: heartbeat failed: {e}");
                act.lost(ctx);
            }
        }));
    }

    /// If nodes of the last list are missing from `now`: since when what they committed
    /// may not have been published (their last heartbeat, less the late window and a
    /// heartbeat's margin). A node killed mid-load leaves acked messages unpublished.
    fn gone_since(&self, now: &[NodeInfo]) -> Option<i64> {
        let before = self.stats.nodes();
        let margin = (self.cfg.late_window + self.cfg.heartbeat).as_millis() as i64;
        before
            .iter()
            .filter(|b| *b.id != *self.cfg.node_id && !now.iter().any(|n| n.id == b.id))
            .map(|b| b.seen_at - margin)
            .min()
    }

    /// Subscribes to the bus in a task of its own, for as long as the system runs.
    fn subscribe(&mut self, router: Recipient<FromCluster>, ctx: &mut Context<Self>) {
        let bus = BusReader {
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            router,
            link: ctx.address(),
            stats: self.stats.clone(),
        };
        actix::spawn(bus.run());
    }
}

impl Actor for ClusterLink {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.health.started();
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        self.connect(ctx);
        ctx.run_interval(self.cfg.heartbeat, |act, ctx| {
            if act.conn.is_some() {
                act.heartbeat(ctx);
            }
        });
    }
}

impl Supervised for ClusterLink {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
        self.flushing = false;
        self.connecting = false;
    }
}

crate::health_handlers!(ClusterLink);

/// Most envelopes waiting in the link's mailbox; senders `try_send`, so a full mailbox drops
/// (and a later head announcement closes the gap).
pub const MAILBOX_CAPACITY: usize = 65_536;

/// Publish this to the other nodes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ToCluster(pub Envelope);

impl Handler<ToCluster> for ClusterLink {
    type Result = ();
    fn handle(&mut self, msg: ToCluster, ctx: &mut Context<Self>) {
        self.health.handled();
        if let Some(at) = self.stats.take_mailbox_full() {
            let since = self.lost_since.map_or(at, |l| l.min(at));
            self.lost_since = Some(since);
        }
        if let Envelope::Deliveries {
            channel,
            audience,
            items,
        } = &msg.0
        {
            if let Some((seq, _)) = items.last() {
                self.remember(channel, audience, *seq);
            }
        }
        self.queue(&msg.0, ctx);
    }
}

/// Frame-rate tokens users took on other nodes, for this node's per-user buckets.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SpentElsewhere(pub Vec<(UserId, u32)>);

/// How many places users hold on another node ([`Envelope::Places`]), for this node's
/// count of each user's connections across the cluster.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PlacesElsewhere {
    /// The node that said it.
    pub node: Arc<str>,
    /// Users and their places there (0: none left).
    pub places: Vec<(UserId, u32)>,
}

/// Something was revoked on another node (tokens or an API key): the store has it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RevokedElsewhere;

/// Where [`RevokedElsewhere`] goes (the server's revocation watch).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachRevocations(pub Recipient<RevokedElsewhere>);

impl Handler<AttachRevocations> for ClusterLink {
    type Result = ();
    fn handle(&mut self, msg: AttachRevocations, _: &mut Context<Self>) {
        self.revocations = Some(msg.0);
    }
}

/// Where [`SpentElsewhere`] and [`PlacesElsewhere`] go.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachLimiter {
    /// Other nodes' frame-rate spending.
    pub spent: Recipient<SpentElsewhere>,
    /// Other nodes' place counts.
    pub places: Recipient<PlacesElsewhere>,
}

impl Handler<AttachLimiter> for ClusterLink {
    type Result = ();
    fn handle(&mut self, msg: AttachLimiter, _: &mut Context<Self>) {
        self.limiter = Some(msg);
    }
}

/// Where the link hands what it hears on this node: other nodes' envelopes (the router)
/// and the node list and full-account requests (the presence tracker).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct LocalEnds {
    /// The router.
    pub router: Recipient<FromCluster>,
    /// The presence tracker's node list.
    pub live_nodes: Recipient<LiveNodes>,
    /// The presence tracker's full accounts.
    pub share_all: Recipient<ShareAll>,
    /// The router, told when nodes leave the list.
    pub nodes_gone: Recipient<NodesGone>,
}

impl Handler<LocalEnds> for ClusterLink {
    type Result = ();
    fn handle(&mut self, msg: LocalEnds, ctx: &mut Context<Self>) {
        if self.local.is_none() {
            self.subscribe(msg.router.clone(), ctx);
        }
        self.local = Some(msg);
    }
}

/// The nodes whose heartbeat is current (this node included), at each heartbeat.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LiveNodes(pub Vec<Arc<str>>);

/// Nodes left the node list (stopped, or their heartbeat expired): what they stored since
/// `since_ms` (their clock) may never have been published, so it is read from the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodesGone {
    /// Messages stored from this time on (ms) are looked for.
    pub since_ms: i64,
}

/// Give the other nodes a full account of who is online here (a node asked, or what this
/// node published may have been lost).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ShareAll;

/// This node leaves the node list (on shutdown), so that the others see it gone at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave;

impl Handler<Leave> for ClusterLink {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Leave, _: &mut Context<Self>) -> Self::Result {
        // The heartbeats go on until the process ends; one after this would list the node
        // again until its entry expired (`cluster.node_ttl`).
        self.left = true;
        let Some(mut conn) = self.conn.clone() else {
            return Box::pin(async {});
        };
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let res: redis::RedisResult<((), ())> = redis::pipe()
                .cmd("ZREM")
                .arg(cfg.nodes_key())
                .arg(&*cfg.node_id)
                .cmd("DEL")
                .arg(cfg.node_key(&cfg.node_id))
                .query_async(&mut conn)
                .await;
            if let Err(e) = res {
                log::debug!("cluster: leaving the node list failed: {e}");
            }
        })
    }
}

/// Another node's envelope, for the router.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FromCluster {
    /// The sending node's id.
    pub node: Arc<str>,
    /// What it sent.
    pub env: Envelope,
}
