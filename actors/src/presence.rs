//! `PresenceTracker`: who is online.
//!
//! Owns a connection count per user and a grace timer per user whose last connection went
//! away (contract guarantee 5: watchers see `offline` only after the grace period).
//! Receives `ConnOpened`, `ConnClosed` (from the router) and `GetPresence`.
//! This scope: online/offline and last-seen; status texts and watcher fan-out come
//! with the presence issue. A restart forgets who is online until they reconnect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::health::ActorHealth;
use crate::ids::{now_ms, ConnId, UserId};

/// The presence actor.
pub struct PresenceTracker {
    online: HashMap<UserId, usize>,
    grace: HashMap<UserId, SpawnHandle>,
    last_seen: HashMap<UserId, i64>,
    grace_period: Duration,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl PresenceTracker {
    /// A tracker with the given offline grace period.
    pub fn new(grace_period: Duration, health: Arc<ActorHealth>) -> Self {
        PresenceTracker {
            online: HashMap::new(),
            grace: HashMap::new(),
            last_seen: HashMap::new(),
            grace_period,
            health,
        }
    }
}

impl Actor for PresenceTracker {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.health.started();
    }
}

impl Supervised for PresenceTracker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
        // The restart cancelled the timers; their users count as offline now.
        for (user, _) in self.grace.drain() {
            self.online.remove(&user);
        }
    }
}

crate::health_handlers!(PresenceTracker);

/// A connection of `user` opened.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnOpened {
    /// Whose.
    pub user: UserId,
    /// Which.
    pub conn: ConnId,
}

impl Handler<ConnOpened> for PresenceTracker {
    type Result = ();
    fn handle(&mut self, msg: ConnOpened, ctx: &mut Context<Self>) {
        self.health.handled();
        if let Some(timer) = self.grace.remove(&msg.user) {
            ctx.cancel_future(timer);
        }
        *self.online.entry(msg.user).or_default() += 1;
    }
}

/// A connection of `user` closed; the last one starts the offline grace timer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ConnClosed {
    /// Whose.
    pub user: UserId,
    /// Which.
    pub conn: ConnId,
}

impl Handler<ConnClosed> for PresenceTracker {
    type Result = ();
    fn handle(&mut self, msg: ConnClosed, ctx: &mut Context<Self>) {
        self.health.handled();
        let Some(n) = self.online.get_mut(&msg.user) else {
            return;
        };
        *n = n.saturating_sub(1);
        self.last_seen.insert(msg.user.clone(), now_ms());
        if *n == 0 {
            let user = msg.user.clone();
            let timer = ctx.run_later(self.grace_period, move |act, _| {
                act.grace.remove(&user);
                if act.online.get(&user) == Some(&0) {
                    act.online.remove(&user);
                }
            });
            self.grace.insert(msg.user, timer);
        }
    }
}

/// A user's presence.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Presence {
    /// The user.
    pub user_id: String,
    /// `online` or `offline`.
    pub status: &'static str,
    /// When their last connection closed, ms since epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

/// Asks for one user's presence (a user never seen is `offline`).
#[derive(Message)]
#[rtype(result = "Presence")]
pub struct GetPresence {
    /// The user.
    pub user: UserId,
}

impl Handler<GetPresence> for PresenceTracker {
    type Result = MessageResult<GetPresence>;
    fn handle(&mut self, msg: GetPresence, _: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        let online = self.online.contains_key(&msg.user);
        MessageResult(Presence {
            user_id: msg.user.to_string(),
            status: if online { "online" } else { "offline" },
            last_seen: self.last_seen.get(&msg.user).copied(),
        })
    }
}
