//! `PushNotifier`: tells the application when a message is stored for a user with no
//! connection on this broker, so that it can send a mobile push (FCM/APNs).
//!
//! The router hands it the deliveries of a commit for each recipient that has no session
//! ([`PushOffline`]), and, with `push.ack_delay` set, for each recipient that has one
//! ([`AwaitDelivered`]): those are pushed if no device of the user has marked them
//! `delivered` once the delay has passed. It POSTs one small JSON event per message to
//! `push.webhook_url`:
//! `{"event": "message", "user_id", "message": <the delivery frame>}`. Off the delivery
//! path: the router only queues, and the queue is bounded (`push.queue`; a full queue drops
//! the newest event and counts it). A failed POST (no answer within `push.timeout`, or a
//! status other than 2xx) is retried after 0.5 s, 1 s, 2 s … up to `push.attempts` tries,
//! then dropped and logged. A restart loses the queued events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;

use crate::health::ActorHealth;
use crate::ids::UserId;
use crate::offline_queue::{DeliveredUpTo, OfflineQueue};
use crate::presence::{OnlineElsewhere, PresenceTracker};
use crate::session_handle::Delivery;

/// Events POSTed at once.
const IN_FLIGHT: usize = 4;

/// Where and how events go.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// The webhook.
    pub url: String,
    /// Events waiting at most.
    pub queue: usize,
    /// Tries per event.
    pub attempts: u32,
    /// Time a POST may take.
    pub timeout: Duration,
    /// Messages delivered to a connected user are pushed too when no device of theirs has
    /// marked them delivered after this long (zero: only users with no connection).
    pub ack_delay: Duration,
}

/// Counters shown by `/status`.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Events the webhook accepted.
    pub sent: AtomicU64,
    /// Events given up after every try.
    pub failed: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// One event on its way.
struct Event {
    body: String,
    attempt: u32,
}

/// The push-notifier actor.
pub struct PushNotifier {
    cfg: PushConfig,
    offline: Addr<OfflineQueue>,
    /// [`AwaitDelivered`]s whose delay runs (bounded by `cfg.queue`).
    awaiting: usize,
    client: Option<awc::Client>,
    queue: VecDeque<Event>,
    in_flight: usize,
    stats: Arc<PushStats>,
    /// In a cluster, who is online on other nodes.
    presence: Option<Addr<PresenceTracker>>,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl PushNotifier {
    /// A notifier posting to `cfg.url`.
    pub fn new(
        cfg: PushConfig,
        offline: Addr<OfflineQueue>,
        stats: Arc<PushStats>,
        health: Arc<ActorHealth>,
    ) -> Self {
        PushNotifier {
            cfg,
            offline,
            awaiting: 0,
            client: None,
            queue: VecDeque::new(),
            in_flight: 0,
            stats,
            presence: None,
            health,
        }
    }

    /// The same, in a cluster: a user connected only to other nodes (as `presence` knows)
    /// is not pushed as offline.
    pub fn in_cluster(mut self, presence: Option<Addr<PresenceTracker>>) -> Self {
        self.presence = presence;
        self
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        while self.in_flight < IN_FLIGHT {
            let Some(event) = self.queue.pop_front() else {
                return;
            };
            let client = self
                .client
                .get_or_insert_with(|| awc::Client::builder().timeout(self.cfg.timeout).finish());
            let req = client
                .post(&self.cfg.url)
                .insert_header(("content-type", "application/json"))
                .send_body(event.body.clone());
            self.in_flight += 1;
            ctx.spawn(
                async move { req.await.map(|r| r.status()) }
                    .into_actor(self)
                    .map(move |res, act, ctx| {
                        act.in_flight -= 1;
                        match res {
                            Ok(status) if status.is_success() => {
                                act.stats.sent.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                let why = match other {
                                    Ok(status) => format!("status {status}"),
                                    Err(e) => e.to_string(),
                                };
                                act.retry(event, why, ctx);
                            }
                        }
                        act.pump(ctx);
                    }),
            );
        }
    }

    fn retry(&mut self, mut event: Event, why: String, ctx: &mut Context<Self>) {
        event.attempt += 1;
        if event.attempt >= self.cfg.attempts {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            self.health.failed(format!("push webhook: {why}"));
            log::warn!("push webhook gave up after {} tries: {why}", event.attempt);
            return;
        }
        let wait = Duration::from_millis(500 << (event.attempt - 1).min(6));
        ctx.run_later(wait, move |act, ctx| {
            act.queue.push_front(event);
            act.pump(ctx);
        });
    }
}

impl Actor for PushNotifier {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.health.started();
        // The router's `try_send` finds room for bursts; the queue behind it is bounded.
        ctx.set_mailbox_capacity(1024);
    }
}

impl Supervised for PushNotifier {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
        self.queue.clear();
        self.in_flight = 0;
    }
}

crate::health_handlers!(PushNotifier);

/// Messages of one commit stored for `user`, who has no connection here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PushOffline {
    /// The recipient.
    pub user: UserId,
    /// Their channel.
    pub channel: Arc<str>,
    /// The messages (their delivery frames).
    pub items: Arc<[Delivery]>,
}

impl Handler<PushOffline> for PushNotifier {
    type Result = ();
    fn handle(&mut self, msg: PushOffline, ctx: &mut Context<Self>) {
        self.health.handled();
        let Some(presence) = &self.presence else {
            return self.enqueue(&msg.user, msg.items.iter(), ctx);
        };
        // In a cluster "no connection here" is not "offline": the user may be connected
        // to another node, and is then treated as online.
        let ask = presence.send(OnlineElsewhere {
            user: msg.user.clone(),
        });
        ctx.spawn(ask.into_actor(self).map(move |res, act, ctx| {
            if !matches!(res, Ok(true)) {
                return act.enqueue(&msg.user, msg.items.iter(), ctx);
            }
            if !act.cfg.ack_delay.is_zero() {
                let wait = AwaitDelivered {
                    user: msg.user,
                    channel: msg.channel,
                    items: msg.items,
                };
                <Self as Handler<AwaitDelivered>>::handle(act, wait, ctx);
            }
        }));
    }
}

impl PushNotifier {
    fn enqueue<'a>(
        &mut self,
        user: &UserId,
        items: impl Iterator<Item = &'a Delivery>,
        ctx: &mut Context<Self>,
    ) {
        let user = serde_json::to_string(user.as_str()).unwrap_or_default();
        for d in items {
            if self.queue.len() >= self.cfg.queue {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.queue.push_back(Event {
                body: event_body(&user, &d.frame),
                attempt: 0,
            });
        }
        self.pump(ctx);
    }
}

/// Messages of one commit delivered to `user`'s connections: pushed after `push.ack_delay`
/// unless a device of the user has marked them delivered by then.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AwaitDelivered {
    /// The recipient.
    pub user: UserId,
    /// Their channel.
    pub channel: Arc<str>,
    /// The messages.
    pub items: Arc<[Delivery]>,
}

impl Handler<AwaitDelivered> for PushNotifier {
    type Result = ();
    fn handle(&mut self, msg: AwaitDelivered, ctx: &mut Context<Self>) {
        self.health.handled();
        if self.awaiting >= self.cfg.queue {
            self.stats
                .dropped
                .fetch_add(msg.items.len() as u64, Ordering::Relaxed);
            return;
        }
        self.awaiting += 1;
        ctx.run_later(self.cfg.ack_delay, move |act, ctx| {
            let ask = act.offline.send(DeliveredUpTo {
                user: msg.user.clone(),
                channel: msg.channel.to_string(),
            });
            ctx.spawn(ask.into_actor(act).map(move |res, act, ctx| {
                act.awaiting -= 1;
                // Not knowing how far the devices got, push: a push too many beats a
                // message the user never hears of.
                let delivered = match res {
                    Ok(Ok(seq)) => seq,
                    _ => 0,
                };
                let items = msg.items.clone();
                let late = items.iter().filter(|d| d.seq.to_stored() > delivered);
                act.enqueue(&msg.user, late, ctx);
            }));
        });
    }
}

/// `{"event":"message","user_id":…,"message":<frame>}`; `user` is JSON already.
fn event_body(user: &str, frame: &ByteString) -> String {
    format!(r#"{{"event":"message","user_id":{user},"message":{frame}}}"#)
}
