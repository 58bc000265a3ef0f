//! The router's registry of connections as operators see it: counts for `/status`, the
//! list and the forced close of the admin API, closing on shutdown and on token
//! revocation.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use super::Router;
use crate::cluster::Envelope;
use crate::ids::{ConnId, UserId};
use crate::session_handle::{Outbound, SessionHandle};

/// Close every session with `code` (graceful shutdown uses 1012), spread evenly over
/// `over` so that the clients do not all reconnect elsewhere in the same second.
/// Connections still to authenticate close at once. Answers how many there are to close.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
    /// The time the closes are spread over (zero: all at once).
    pub over: Duration,
}

/// How often a spread close sends its next slice.
const CLOSE_TICK: Duration = Duration::from_millis(50);

impl Handler<CloseAll> for Router {
    type Result = usize;
    fn handle(&mut self, msg: CloseAll, ctx: &mut Context<Self>) -> usize {
        self.health.handled();
        for r in self.pending.values() {
            r.do_send(Outbound::Close {
                code: msg.code,
                reason: msg.reason,
            });
        }
        let all: Vec<SessionHandle> = self.sessions.values().flatten().cloned().collect();
        let n = all.len() + self.pending.len();
        let ticks = (msg.over.as_millis() / CLOSE_TICK.as_millis()).max(1) as usize;
        let per_tick = all.len().div_ceil(ticks).max(1);
        let (code, reason) = (msg.code, msg.reason);
        for (i, slice) in all.chunks(per_tick).enumerate() {
            let slice = slice.to_vec();
            let close = move || slice.iter().for_each(|h| h.close(code, reason));
            if i == 0 {
                close();
            } else {
                ctx.run_later(CLOSE_TICK * i as u32, move |_, _| close());
            }
        }
        n
    }
}

/// Connection and channel counts for `/status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RouterStats {
    /// Open, authenticated connections.
    pub connections: usize,
    /// Distinct users connected.
    pub users: usize,
    /// Connections by `device` (`unknown` when the client did not say).
    pub by_device: BTreeMap<String, usize>,
    /// Connections by transport (`websocket`, `sse`, `poll`).
    pub by_transport: BTreeMap<&'static str, usize>,
    /// Connections by transport and device together (`/metrics`).
    #[serde(skip)]
    pub by_transport_device: BTreeMap<(&'static str, String), usize>,
    /// Channels in the router's registry (their actors are running).
    pub active_channels: usize,
    /// Channel actors alive, in the registry or finishing an idle stop; more than
    /// `active_channels` for long would be actors no one can reach.
    pub live_channel_actors: usize,
}

/// Asks for [`RouterStats`].
#[derive(Message)]
#[rtype(result = "RouterStats")]
pub struct GetStats;

impl Handler<GetStats> for Router {
    type Result = MessageResult<GetStats>;
    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        let mut s = RouterStats {
            users: self.sessions.len(),
            active_channels: self.channels.len(),
            live_channel_actors: self.live_channels.load(Ordering::Relaxed),
            ..RouterStats::default()
        };
        for h in self.sessions.values().flatten() {
            s.connections += 1;
            let d = h.device.as_deref().unwrap_or("unknown").to_owned();
            *s.by_transport.entry(h.transport.as_str()).or_default() += 1;
            *s.by_transport_device
                .entry((h.transport.as_str(), d.clone()))
                .or_default() += 1;
            *s.by_device.entry(d).or_default() += 1;
        }
        MessageResult(s)
    }
}

/// Close the sessions authenticated with any of these token ids, with 4001 (a session
/// that re-authenticated with another token stays).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseRevoked {
    /// The revoked `jti`s.
    pub jtis: Arc<[Arc<str>]>,
    /// Tell the other nodes of a cluster too (a revocation made here, not one read back
    /// from the store, which every node reads by itself). Announced with no ids, it tells
    /// them only to read the store's revocations now (an API key was revoked).
    pub announce: bool,
}

impl Handler<CloseRevoked> for Router {
    type Result = ();
    fn handle(&mut self, msg: CloseRevoked, _: &mut Context<Self>) {
        self.health.handled();
        self.close_revoked_local(msg.jtis.clone());
        if let (true, Some(c)) = (msg.announce, &self.cfg.cluster) {
            let env = Envelope::Revoked(msg.jtis.to_vec());
            c.publish(env);
        }
    }
}

impl Router {
    /// Tells every session here which tokens were revoked.
    pub(super) fn close_revoked_local(&self, jtis: Arc<[Arc<str>]>) {
        for h in self.sessions.values().flatten() {
            h.revoked(jtis.clone());
        }
    }

    /// Closes connection `conn` if it is here, as an administrator's disconnect.
    pub(super) fn close_local(&self, conn: ConnId) -> Option<ConnectionInfo> {
        self.close_here(conn, ADMIN_CLOSE.0, ADMIN_CLOSE.1)
    }

    fn close_here(&self, conn: ConnId, code: u16, reason: &'static str) -> Option<ConnectionInfo> {
        let h = self.sessions.values().flatten().find(|h| h.conn == conn)?;
        h.close(code, reason);
        Some(ConnectionInfo::from(h))
    }
}

/// The close an administrator's disconnect sends: 1008, policy.
pub const ADMIN_CLOSE: (u16, &str) = (1008, "disconnected by an administrator");

/// One connection as the admin API lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectionInfo {
    /// Server-made connection id.
    pub conn_id: String,
    /// Its user.
    pub user_id: String,
    /// Its device/install id.
    pub client_id: String,
    /// Device kind, if the client said.
    pub device: Option<String>,
    /// `websocket`, `sse` or `poll`.
    pub transport: &'static str,
    /// When it authenticated, ms since epoch.
    pub connected_at: i64,
    /// In a cluster's listing: the node it is on (the admin API adds it; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
}

impl From<&SessionHandle> for ConnectionInfo {
    fn from(h: &SessionHandle) -> Self {
        ConnectionInfo {
            conn_id: h.conn.to_string(),
            user_id: h.user.to_string(),
            client_id: h.client_id.to_string(),
            device: h.device.as_deref().map(str::to_owned),
            transport: h.transport.as_str(),
            connected_at: h.connected_at,
            node_id: None,
        }
    }
}

/// Lists connections: `user`'s, or everyone's, oldest first, at most `limit`; and how many
/// there are in all.
#[derive(Message)]
#[rtype(result = "(Vec<ConnectionInfo>, usize)")]
pub struct ListConnections {
    /// Only this user's.
    pub user: Option<UserId>,
    /// Most to list.
    pub limit: usize,
}

impl Handler<ListConnections> for Router {
    type Result = MessageResult<ListConnections>;
    fn handle(&mut self, msg: ListConnections, _: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        MessageResult(self.list_connections(msg.user.as_ref(), msg.limit))
    }
}

impl Router {
    /// `user`'s connections here (everyone's without a user), oldest first, at most
    /// `limit`; and how many there are in all.
    pub(super) fn list_connections(
        &self,
        user: Option<&UserId>,
        limit: usize,
    ) -> (Vec<ConnectionInfo>, usize) {
        let mut all: Vec<&SessionHandle> = match user {
            Some(u) => self
                .sessions
                .get(u)
                .map(|l| l.iter().collect())
                .unwrap_or_default(),
            None => self.sessions.values().flatten().collect(),
        };
        let total = all.len();
        all.sort_unstable_by_key(|h| (h.connected_at, h.conn.0));
        let list = all
            .into_iter()
            .take(limit)
            .map(ConnectionInfo::from)
            .collect();
        (list, total)
    }
}

/// Closes one connection with `code`; what it was, if it was here.
#[derive(Message)]
#[rtype(result = "Option<ConnectionInfo>")]
pub struct CloseConnection {
    /// The connection.
    pub conn: ConnId,
    /// WebSocket close code.
    pub code: u16,
    /// Close reason.
    pub reason: &'static str,
}

impl Handler<CloseConnection> for Router {
    type Result = Option<ConnectionInfo>;
    fn handle(&mut self, msg: CloseConnection, _: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        self.close_here(msg.conn, msg.code, msg.reason)
    }
}
