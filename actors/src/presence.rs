//! `PresenceTracker`: who is online, and who watches whom (contract guarantee 5).
//!
//! A user is online while any of their connections is alive on this node. When the last one
//! closes (or is dropped for missing heartbeats), watchers see `offline` only after
//! `presence.offline_grace`, so a reconnect within the grace period shows no flap; a
//! second device of an online user changes nothing for watchers. A user's own status
//! (`online`, `away`, `busy`, `invisible`, with an optional text) holds while they are
//! online and starts over at `online` once they have gone offline; `invisible` users are
//! shown as `offline` and receive everything.
//!
//! Receives `ConnOpened`, `ConnClosed`, and sessions' `SetStatus` and `Watch` from the
//! router (so that a session's messages arrive between its opening and its closing), and
//! `GetPresence` and `GetPresences` (REST). Watchers get `status_update` frames
//! through their sessions' bounded queues, never waited for. A restart forgets who is
//! online and who watches until they reconnect or subscribe again. Offline users are
//! remembered (for `last_seen`) for a day.
//!
//! In a cluster each node's tracker tells the others, over the bus, when a user comes
//! online or goes offline on it or sets a status, and keeps what the others told it
//! ([`remote`]): a user is online while online on any live node, so first join and last
//! leave hold across nodes, and a node that dies takes its users offline when it leaves
//! the node list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::cluster::{ClusterLink, Envelope, PresenceNote, ToCluster};
use crate::fast_map::FastMap;
use crate::health::ActorHealth;
use crate::ids::{now_ms, ConnId, UserId};
use crate::protocol::{encode, error_frame, ErrorCode, PresenceStatus};
use crate::session_handle::{Outbound, SessionHandle};

mod remote;

use remote::Remote;
pub use remote::{OnlineElsewhere, RemoteNotes};

/// One user as the tracker knows them.
#[derive(Default)]
struct UserState {
    /// Connections alive on this node.
    conns: usize,
    /// What the user set; `None` is plain `online`.
    status: Option<PresenceStatus>,
    text: Option<Arc<str>>,
    /// When their last connection closed, ms since epoch.
    last_seen: Option<i64>,
    /// Running while the last connection here is closed and watchers still see them online.
    grace: Option<SpawnHandle>,
    /// What the cluster knows of the user (boxed: a node alone keeps none, and an entry
    /// per online user stays small).
    cluster: Option<Box<ClusterView>>,
}

/// One user's presence on the other nodes of a cluster.
#[derive(Default)]
struct ClusterView {
    /// When the status was set, ms since epoch (the latest setting wins across nodes).
    status_at: i64,
    /// The other nodes the user is online on.
    nodes: Vec<Remote>,
}

impl UserState {
    /// Online on this node: a connection is alive, or the grace period runs.
    fn online_here(&self) -> bool {
        self.conns > 0 || self.grace.is_some()
    }

    /// Online for the tracker: here or on another node.
    fn online(&self) -> bool {
        self.online_here() || !self.remote().is_empty()
    }

    /// The other nodes the user is online on.
    fn remote(&self) -> &[Remote] {
        self.cluster.as_deref().map_or(&[], |c| &c.nodes)
    }

    /// When the status was set (0: not in a cluster, or never).
    fn status_at(&self) -> i64 {
        self.cluster.as_ref().map_or(0, |c| c.status_at)
    }

    /// What the cluster knows of the user, made on first use.
    fn cluster_mut(&mut self) -> &mut ClusterView {
        self.cluster.get_or_insert_with(Box::default)
    }

    /// What this node tells the others of the user.
    fn note(&self, user: &UserId) -> PresenceNote {
        PresenceNote {
            user: user.clone(),
            online: self.online_here(),
            status: self.status,
            text: self.text.clone(),
            status_at: self.status_at(),
            last_seen: self.last_seen,
        }
    }

    /// What others see.
    fn shown(&self) -> Shown {
        match self.status {
            _ if !self.online() => Shown::Offline,
            Some(PresenceStatus::Invisible) => Shown::Offline,
            Some(PresenceStatus::Away) => Shown::Away,
            Some(PresenceStatus::Busy) => Shown::Busy,
            Some(PresenceStatus::Online) | None => Shown::Online,
        }
    }

    /// Whether this user is worth keeping in memory.
    fn idle(&self) -> bool {
        !self.online() && self.last_seen.is_none()
    }
}

/// A status as others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Shown {
    /// Connected and available.
    Online,
    /// Connected, away.
    Away,
    /// Connected, do not disturb.
    Busy,
    /// Not connected, or invisible.
    Offline,
}

/// A user's presence as others see it: the `status_update` payload and the REST reply.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Presence {
    /// The user.
    pub user_id: String,
    /// `online`, `away`, `busy` or `offline`.
    pub status: Shown,
    /// The user's status text, while it is shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// When their last connection closed, ms since epoch (not shown while they are online).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

/// How long an offline user's `last_seen` is remembered; older ones are dropped, so the
/// tracker holds the users seen within this window, not every user ever seen.
const REMEMBER_OFFLINE: Duration = Duration::from_secs(24 * 3600);

/// How often offline users past [`REMEMBER_OFFLINE`] are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The presence actor.
pub struct PresenceTracker {
    users: HashMap<UserId, UserState>,
    /// Watched user → the connections watching them.
    watchers: HashMap<UserId, FastMap<ConnId, SessionHandle>>,
    /// Watching connection → whom it watches (to forget it when it closes).
    watching: FastMap<ConnId, Vec<UserId>>,
    grace_period: Duration,
    max_watched: usize,
    /// The cluster's bus, when this node is one of several.
    cluster: Option<Addr<ClusterLink>>,
    /// How many full accounts this node has given the others.
    generation: u64,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl PresenceTracker {
    /// A tracker with the offline grace period; a connection watches at most `max_watched`
    /// users.
    pub fn new(grace_period: Duration, max_watched: usize, health: Arc<ActorHealth>) -> Self {
        PresenceTracker {
            users: HashMap::new(),
            watchers: HashMap::new(),
            watching: FastMap::default(),
            grace_period,
            max_watched,
            cluster: None,
            generation: 0,
            health,
        }
    }

    /// The same, telling the other nodes of a cluster through `link`.
    pub fn in_cluster(mut self, link: Option<Addr<ClusterLink>>) -> Self {
        self.cluster = link;
        self
    }

    fn presence(&self, user: &UserId) -> Presence {
        let state = self.users.get(user);
        let shown = state.map(UserState::shown).unwrap_or(Shown::Offline);
        Presence {
            user_id: user.to_string(),
            status: shown,
            text: state
                .filter(|_| shown != Shown::Offline)
                .and_then(|s| s.text.as_deref().map(str::to_owned)),
            last_seen: state
                .filter(|_| shown == Shown::Offline)
                .and_then(|s| s.last_seen),
        }
    }

    /// Runs `change` on `user`'s state and tells watchers if what they see changed, and
    /// the other nodes if what this node contributes changed.
    fn change(&mut self, user: &UserId, change: impl FnOnce(&mut UserState)) {
        self.update(user, true, change);
    }

    /// Runs `change` on `user`'s state; tells watchers what they see changed and, when
    /// `ours` (a change on this node), the other nodes what this node contributes.
    fn update(&mut self, user: &UserId, ours: bool, change: impl FnOnce(&mut UserState)) {
        let before = self.presence(user);
        let state = self.users.entry(user.clone()).or_default();
        let said = (state.online_here(), state.status, state.status_at());
        change(state);
        let changed_here = (state.online_here(), state.status, state.status_at()) != said;
        if !state.online() {
            // Offline everywhere: the status starts over at `online`.
            state.status = None;
            state.text = None;
        }
        if ours && changed_here && self.cluster.is_some() {
            let note = state.note(user);
            self.tell_cluster(self.generation, false, vec![note]);
        }
        if self.users.get(user).is_some_and(UserState::idle) {
            self.users.remove(user);
        }
        let after = self.presence(user);
        if after.status != before.status || after.text != before.text {
            self.tell_watchers(user, &after);
        }
    }

    fn tell_cluster(&self, generation: u64, complete: bool, notes: Vec<PresenceNote>) {
        if let Some(link) = &self.cluster {
            let env = Envelope::Presence {
                generation,
                complete,
                notes,
            };
            // A full mailbox loses the note; the next full account (after any resync)
            // carries it again.
            let _ = link.try_send(ToCluster(env));
        }
    }

    fn tell_watchers(&mut self, user: &UserId, presence: &Presence) {
        let Some(watchers) = self.watchers.get_mut(user) else {
            return;
        };
        let frame = encode("status_update", None, presence);
        // A watcher whose queue is full is closing (1013) and is dropped here.
        watchers.retain(|_, h| {
            h.push(Outbound::Frame(frame.clone()));
            h.alive()
        });
    }

    fn forget_watcher(&mut self, conn: ConnId) {
        for user in self.watching.remove(&conn).unwrap_or_default() {
            if let Some(w) = self.watchers.get_mut(&user) {
                w.remove(&conn);
                if w.is_empty() {
                    self.watchers.remove(&user);
                }
            }
        }
    }
}

impl Actor for PresenceTracker {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.health.started();
        ctx.run_interval(PRUNE_EVERY, |act, _| {
            let before = now_ms() - REMEMBER_OFFLINE.as_millis() as i64;
            act.users
                .retain(|_, s| s.online() || s.last_seen.is_some_and(|t| t >= before));
        });
    }
}

impl Supervised for PresenceTracker {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
        // The restart cancelled the grace timers: those users are offline now.
        for state in self.users.values_mut() {
            state.grace = None;
        }
        self.users.retain(|_, s| !s.idle());
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
        self.change(&msg.user, |s| {
            if let Some(timer) = s.grace.take() {
                ctx.cancel_future(timer);
            }
            s.conns += 1;
        });
    }
}

/// A connection of `user` closed: it watches no one any more, and the user's last one
/// starts the offline grace period.
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
        self.forget_watcher(msg.conn);
        let Some(state) = self.users.get_mut(&msg.user) else {
            return;
        };
        if state.conns == 0 {
            return;
        }
        state.conns -= 1;
        state.last_seen = Some(now_ms());
        if state.conns == 0 {
            let user = msg.user.clone();
            let timer = ctx.run_later(self.grace_period, move |act, _| {
                act.change(&user, |s| {
                    s.grace = None;
                });
            });
            state.grace = Some(timer);
        }
    }
}

/// `user` sets their own status.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetStatus {
    /// Whose.
    pub user: UserId,
    /// The status.
    pub status: PresenceStatus,
    /// Its text, if any.
    pub text: Option<String>,
}

impl Handler<SetStatus> for PresenceTracker {
    type Result = ();
    fn handle(&mut self, msg: SetStatus, _: &mut Context<Self>) {
        self.health.handled();
        if self.users.get(&msg.user).is_none_or(|s| s.conns == 0) {
            return;
        }
        let clustered = self.cluster.is_some();
        self.change(&msg.user, |s| {
            s.status = Some(msg.status);
            s.text = msg.text.map(Arc::from);
            if clustered {
                let at = now_ms().max(s.status_at() + 1);
                s.cluster_mut().status_at = at;
            }
        });
    }
}

/// A connection watches `users`: it gets a `status_update` for each now, then one on every
/// change of what others see of them. Beyond `presence.max_watched` users per connection
/// it gets an `error` `bad_request` (answering `ref_id`) and watches no one more.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Watch {
    /// The watching connection.
    pub handle: SessionHandle,
    /// Whom it watches.
    pub users: Vec<UserId>,
    /// The `presence_subscribe` frame's id.
    pub ref_id: Option<String>,
}

impl Handler<Watch> for PresenceTracker {
    type Result = ();
    fn handle(&mut self, msg: Watch, _: &mut Context<Self>) {
        self.health.handled();
        if !msg.handle.alive() {
            return;
        }
        let conn = msg.handle.conn;
        let watched = self.watching.entry(conn).or_default();
        let new: Vec<UserId> = {
            let mut seen = std::collections::HashSet::new();
            msg.users
                .into_iter()
                .filter(|u| !watched.contains(u) && seen.insert(u.clone()))
                .collect()
        };
        if watched.len() + new.len() > self.max_watched {
            if watched.is_empty() {
                self.watching.remove(&conn);
            }
            let message = format!("a connection watches at most {} users", self.max_watched);
            let frame = error_frame(ErrorCode::BadRequest, &message, msg.ref_id.as_deref());
            msg.handle.push(Outbound::Frame(frame));
            return;
        }
        watched.extend(new.iter().cloned());
        let frames: Vec<_> = new
            .iter()
            .map(|u| encode("status_update", None, self.presence(u)))
            .collect();
        for user in new {
            self.watchers
                .entry(user)
                .or_default()
                .insert(conn, msg.handle.clone());
        }
        if !frames.is_empty() {
            msg.handle.push(Outbound::Frames(frames));
        }
    }
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
        MessageResult(self.presence(&msg.user))
    }
}

/// Asks for several users' presence, in the order given.
#[derive(Message)]
#[rtype(result = "Vec<Presence>")]
pub struct GetPresences {
    /// The users.
    pub users: Vec<UserId>,
}

impl Handler<GetPresences> for PresenceTracker {
    type Result = MessageResult<GetPresences>;
    fn handle(&mut self, msg: GetPresences, _: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        MessageResult(msg.users.iter().map(|u| self.presence(u)).collect())
    }
}
