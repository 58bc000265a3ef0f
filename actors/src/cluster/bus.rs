//! The bus subscription: the task that reads it (one per node), and what it tells the link.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::prelude::*;
use deadpool_redis::redis;
use futures_util::StreamExt;

use super::{
    ClusterConfig, ClusterLink, ClusterStats, Envelope, FromCluster, PlacesElsewhere,
    RevokedElsewhere, SpentElsewhere, COMMAND_TIMEOUT, RECONNECT_EVERY,
};
use crate::ids::{now_ms, UserId};

/// The bus subscription's state changed.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) enum BusEvent {
    /// Subscribed; `again` after a drop.
    Up { again: bool },
    /// The subscription dropped.
    Down,
    /// Another node missed the bus since then (ms).
    ResyncAsked { since_ms: i64 },
    /// Frame-rate tokens users took on another node.
    Spent(Vec<(UserId, u32)>),
    /// Places users hold on another node.
    Places {
        node: Arc<str>,
        places: Vec<(UserId, u32)>,
    },
    /// Another node revoked something.
    Revoked,
    /// A node answered one of this node's questions.
    Answer {
        id: u64,
        node: Arc<str>,
        json: String,
    },
}

impl Handler<BusEvent> for ClusterLink {
    type Result = ();
    fn handle(&mut self, ev: BusEvent, ctx: &mut Context<Self>) {
        self.health.handled();
        match ev {
            BusEvent::Up { again } => {
                self.stats.bus_up.store(true, Ordering::Relaxed);
                // Who is online on the other nodes: they answer with full accounts.
                self.queue(&Envelope::PresenceAsk, ctx);
                let since = self.bus_down_since.take();
                if let (true, Some(since_ms)) = (again, since) {
                    // What the others published while this node was not listening is
                    // announced by them and read back from the database here.
                    log::info!(
                        "cluster: bus subscription back; asking the other nodes for their heads"
                    );
                    self.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    let since_ms = since_ms - self.cfg.late_window.as_millis() as i64;
                    self.queue(&Envelope::Resync { since_ms }, ctx);
                }
            }
            BusEvent::Down => {
                self.stats.bus_up.store(false, Ordering::Relaxed);
                self.bus_down_since.get_or_insert_with(now_ms);
            }
            BusEvent::ResyncAsked { since_ms } => {
                self.announce_heads(since_ms);
                self.flush(ctx);
            }
            BusEvent::Answer { id, node, json } => self.answered(id, Some((node, json))),
            BusEvent::Revoked => {
                if let Some(to) = &self.revocations {
                    let _ = to.try_send(RevokedElsewhere);
                }
            }
            BusEvent::Spent(spent) => {
                if let Some(to) = &self.limiter {
                    let _ = to.spent.try_send(SpentElsewhere(spent));
                }
            }
            BusEvent::Places { node, places } => {
                if let Some(to) = &self.limiter {
                    let _ = to.places.try_send(PlacesElsewhere { node, places });
                }
            }
        }
    }
}

/// The task reading the bus.
pub(super) struct BusReader {
    pub(super) client: redis::Client,
    pub(super) cfg: Arc<ClusterConfig>,
    pub(super) router: Recipient<FromCluster>,
    pub(super) link: Addr<ClusterLink>,
    pub(super) stats: Arc<ClusterStats>,
}

impl BusReader {
    pub(super) async fn run(self) {
        let mut again = false;
        loop {
            match self.subscribed().await {
                Ok(pubsub) => {
                    self.link.do_send(BusEvent::Up { again });
                    again = true;
                    self.read(pubsub).await;
                    self.link.do_send(BusEvent::Down);
                    log::warn!("cluster: bus subscription lost; resubscribing");
                }
                Err(e) => {
                    log::debug!("cluster: cannot subscribe to the bus: {e}");
                    self.link.do_send(BusEvent::Down);
                    again = true;
                }
            }
            tokio::time::sleep(RECONNECT_EVERY).await;
        }
    }

    async fn subscribed(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let connect = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(self.cfg.bus()).await?;
            Ok(pubsub)
        };
        match tokio::time::timeout(COMMAND_TIMEOUT, connect).await {
            Ok(res) => res,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "subscribing timed out",
            ))),
        }
    }

    /// Hands every envelope on until the subscription ends or stops answering pings.
    async fn read(&self, pubsub: redis::aio::PubSub) {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(self.cfg.heartbeat);
        ping.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return };
                    self.handle(msg.get_payload_bytes()).await;
                }
                _ = ping.tick() => {
                    let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return;
                    }
                }
            }
        }
    }

    async fn handle(&self, bytes: &[u8]) {
        let (node, env) = match Envelope::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                log::debug!("cluster: {e}");
                return;
            }
        };
        if node == &*self.cfg.node_id {
            return; // this node's own envelope, delivered here already
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        match env {
            Envelope::Resync { since_ms } => {
                self.link.do_send(BusEvent::ResyncAsked { since_ms });
                return;
            }
            Envelope::RateSpent(spent) => {
                self.link.do_send(BusEvent::Spent(spent));
                return;
            }
            Envelope::Places(places) => {
                let node = Arc::from(node);
                self.link.do_send(BusEvent::Places { node, places });
                return;
            }
            // The sessions holding the ids close at once (the router); the token ids and
            // API keys are refused from the store's rows, read now rather than at the
            // next poll.
            Envelope::Revoked(_) => self.link.do_send(BusEvent::Revoked),
            Envelope::Answer { id, to, json } => {
                if *to == *self.cfg.node_id {
                    let node = Arc::from(node);
                    self.link.do_send(BusEvent::Answer { id, node, json });
                }
                return;
            }
            _ => {}
        }
        // Waits for room in the router's mailbox: a busy node makes Redis hold the bus
        // traffic for it (and drop the subscription past Redis's own limit, after which
        // the resync fills the gap), not grow a queue here.
        let node = Arc::from(node);
        if self.router.send(FromCluster { node, env }).await.is_err() {
            log::debug!("cluster: router unavailable; envelope dropped");
        }
    }
}
