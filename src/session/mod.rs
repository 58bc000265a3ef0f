//! `SessionActor`: one per client connection, whatever its transport (contract sections 2,
//! 5, 7 and 8).
//!
//! The core written once for every transport: authentication and re-authentication, rate
//! limits, frame dispatch, subscriptions and their replay, `sync`, the bounded outbound
//! queue, heartbeats and close reasons. A transport is a [`Wire`] the actor is generic over:
//! [`ws`] (the WebSocket, which also reads client frames), [`sse`] (Server-Sent Events) and
//! [`poll`] (one long-polling request), plus [`http`], which runs a single frame sent by
//! `POST /api/messages`.
//!
//! Receives client frames from its transport and [`Outbound`] from the engine (its mailbox
//! is bounded to `limits.outbound_queue`). Sends `Connect`/`Disconnect`,
//! `TellChannel<Publish>` and `AskChannel<…>` to the router. Not supervised: when it stops,
//! the client reconnects and resumes by `subscribe`/`sync` or its transport's cursor.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web::web;
use bytestring::ByteString;
use serde::Serialize;
use switchboard_actors::channel::Leave;
use switchboard_actors::ids::{now_ms, Channel, ConnId, UserId};
use switchboard_actors::metrics::metrics;
use switchboard_actors::protocol::{encode, error_frame, ErrorCode};
use switchboard_actors::router::{Arrived, Connect, Disconnect, TellChannelIfActive};
use switchboard_actors::seq::Seq;
use switchboard_actors::session_handle::{OutboundGauge, SessionHandle};

use crate::auth::{Claims, DEVICES};
use crate::gate::{NodeTicket, PendingTicket, TokenBucket, UserTicket};
use crate::state::AppState;

pub mod cursor;
mod dispatch;
pub mod http;
pub(crate) mod offline;
mod outbound;
pub mod poll;
pub mod sse;
mod subscriptions;
mod wire;
pub mod ws;

pub use wire::Wire;
pub use ws::{check_header, ReadCodec, ReadControl, ReadError};

/// Close codes used by sessions.
pub mod close {
    /// Heartbeat timeout.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// Invalid UTF-8 in a text frame.
    pub const INVALID_DATA: u16 = 1007;
    /// Too many rate-limited frames.
    pub const POLICY: u16 = 1008;
    /// Frame over `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Graceful shutdown.
    pub const RESTART: u16 = 1012;
    /// Outbound queue overflow.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Authentication missing or expired.
    pub const UNAUTHORIZED: u16 = 4001;
}

enum AuthState {
    /// Waiting for an `auth` frame, holding a place among the connections that wait (none
    /// when it authenticated on arrival and `started` has not run yet). The place is held
    /// only to be freed when this state ends.
    Pending { _place: Option<PendingTicket> },
    /// Authenticated and registered with the router.
    Ready {
        /// Shared with every publish in flight, which answers through it.
        handle: Arc<SessionHandle>,
        ticket: UserTicket,
    },
}

/// The session actor, over transport `W`.
pub struct SessionActor<W: Wire> {
    conn: ConnId,
    client_id: Arc<str>,
    device: Option<Arc<str>>,
    app: web::Data<AppState>,
    auth: AuthState,
    /// Authenticated on arrival; consumed in `started`.
    arrival_auth: Option<(Claims, UserTicket)>,
    _node: NodeTicket,
    /// The `jti` of the token the session holds: its revocation closes the session.
    jti: Option<Arc<str>>,
    /// When the token stops being valid (its `exp` plus leeway), ms since epoch.
    expires_at_ms: i64,
    /// The close at `expires_at_ms`, armed only once it is within one heartbeat interval, so
    /// an idle session carries no timer but its heartbeat.
    expiry_timer: Option<SpawnHandle>,
    /// Frames waiting in this session's mailbox, counted by every handle that pushes.
    gauge: Arc<OutboundGauge>,
    rejected: (Instant, u32),
    /// Rate limit before authentication (the user's shared bucket applies after).
    pending_bucket: TokenBucket,
    subscriptions: HashSet<Arc<str>>,
    muted: HashSet<Arc<str>>,
    replaying: HashMap<Arc<str>, Vec<(Seq, ByteString)>>,
    /// Channels replayed on this connection (`subscribe` with `since_seq`, or in a cluster
    /// `sync`), with the last seq sent that way: a live delivery at or below it is one the
    /// client has had, as when a channel actor starting on this node of a cluster delivers
    /// what was stored in the last `cluster.late_window`. Dropped, so none comes twice or
    /// out of order.
    replayed: HashMap<Arc<str>, Seq>,
    /// A `sync` in progress.
    sync_run: Option<Box<offline::SyncRun>>,
    /// Already taken out of the router (see `leave`).
    left: bool,
    /// The DM channel this session last wrote to: people write to the same person several
    /// times in a row, and its name need not be built again for each message.
    last_dm: Option<Channel>,
    /// The transport.
    wire: W,
}

/// What a connection established on arrival, before its session starts.
pub struct Admission {
    /// The device id (query `client_id`, the resume cursor's, or generated).
    pub client_id: Arc<str>,
    /// The device kind (query `device` or the token's claim).
    pub device: Option<Arc<str>>,
    /// Token checked on arrival, with the user's admission ticket.
    pub auth: Option<(Claims, UserTicket)>,
    /// Without a token: its place among the connections not yet authenticated.
    pub pending: Option<PendingTicket>,
    /// The node admission ticket.
    pub node: NodeTicket,
}

/// The `Ctx` of a session over `W`.
pub type Ctx<W> = Context<SessionActor<W>>;

/// The type of a frame the broker encoded (`{"type":"…",…}`): the SSE event name, what a
/// poll answer leaves out, the HTTP status of an answer sent over HTTP.
pub(crate) fn frame_type(frame: &str) -> &str {
    frame
        .strip_prefix("{\"type\":\"")
        .and_then(|rest| rest.split_once('"'))
        .map(|(kind, _)| kind)
        .unwrap_or("message")
}

#[derive(Serialize)]
struct Connected<'a> {
    conn_id: String,
    client_id: &'a str,
    user_id: &'a str,
    heartbeat_interval_s: u64,
    server_time: i64,
}

impl<W: Wire> SessionActor<W> {
    /// Starts a session on transport `wire` (made inside the actor's context, so that it
    /// can attach streams to it).
    pub fn start_on(
        app: web::Data<AppState>,
        adm: Admission,
        wire: impl FnOnce(&mut Ctx<W>) -> W,
    ) -> Addr<Self> {
        let limits = &app.settings.limits;
        let pending_bucket = TokenBucket::new(limits.frames_per_second, limits.frames_burst);
        let gauge = Arc::new(OutboundGauge::new(limits.outbound_queue));
        SessionActor::create(move |ctx| SessionActor {
            conn: ConnId::next(),
            client_id: adm.client_id,
            device: adm.device,
            auth: AuthState::Pending {
                _place: adm.pending,
            },
            arrival_auth: adm.auth,
            _node: adm.node,
            jti: None,
            expires_at_ms: i64::MAX,
            expiry_timer: None,
            gauge,
            rejected: (Instant::now(), 0),
            pending_bucket,
            subscriptions: HashSet::new(),
            muted: HashSet::new(),
            replaying: HashMap::new(),
            replayed: HashMap::new(),
            sync_run: None,
            left: false,
            last_dm: None,
            wire: wire(ctx),
            app,
        })
    }

    /// The connection's server-made id.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    fn user(&self) -> Option<&UserId> {
        match &self.auth {
            AuthState::Ready { handle, .. } => Some(&handle.user),
            AuthState::Pending { .. } => None,
        }
    }

    /// Queues a server frame on the transport.
    fn text(&mut self, frame: &str, ctx: &mut Ctx<W>) {
        metrics().frame_out(frame);
        W::text(self, frame, ctx)
    }

    /// Queues an `error` frame.
    fn error(&mut self, code: ErrorCode, message: &str, ref_id: Option<&str>, ctx: &mut Ctx<W>) {
        self.text(&error_frame(code, message, ref_id), ctx);
    }

    /// Closes the connection with `code`.
    fn close(&mut self, code: u16, reason: &str, ctx: &mut Ctx<W>) {
        W::close(self, code, reason, ctx)
    }

    fn authenticate(&mut self, claims: Claims, ticket: UserTicket, ctx: &mut Ctx<W>) {
        let user = UserId::new(&claims.sub);
        if self.device.is_none() {
            // A claim outside the known kinds is ignored rather than trusted.
            self.device = claims
                .device
                .as_deref()
                .filter(|d| DEVICES.contains(d))
                .map(Arc::from);
        }
        let handle = SessionHandle::new(
            self.conn,
            user.clone(),
            self.client_id.clone(),
            self.device.clone(),
            W::TRANSPORT,
            ctx.address().recipient(),
            self.gauge.clone(),
        );
        let handle = Arc::new(handle);
        self.hold_token(&claims, ctx);
        if !W::REGISTERS {
            self.auth = AuthState::Ready { handle, ticket };
            return W::ready(self, ctx);
        }
        self.app.tree.router.do_send(Connect {
            handle: SessionHandle::clone(&handle),
        });
        self.text(
            &encode(
                "connected",
                None,
                Connected {
                    conn_id: self.conn.to_string(),
                    client_id: &self.client_id,
                    user_id: user.as_str(),
                    heartbeat_interval_s: self.app.settings.session.heartbeat_interval.as_secs(),
                    server_time: now_ms(),
                },
            ),
            ctx,
        );
        // Its place among the connections waiting to authenticate is freed here.
        self.auth = AuthState::Ready { handle, ticket };
        W::ready(self, ctx);
    }

    /// Holds the token of `claims`: closes with 4001 once its `exp` (plus leeway) passes or
    /// its `jti` is revoked, unless a fresh `auth` replaces it.
    fn hold_token(&mut self, claims: &Claims, ctx: &mut Ctx<W>) {
        self.jti = claims.jti.as_deref().map(Arc::from);
        if let Some(h) = self.expiry_timer.take() {
            ctx.cancel_future(h);
        }
        self.expires_at_ms = (claims.exp as i64)
            .saturating_mul(1000)
            .saturating_add(self.app.settings.auth.leeway.as_millis() as i64);
        self.arm_expiry(ctx);
    }

    /// Arms the exact expiry close once it falls within the next heartbeat interval; the
    /// heartbeat tick calls this again until then.
    fn arm_expiry(&mut self, ctx: &mut Ctx<W>) {
        if self.expiry_timer.is_some() {
            return;
        }
        let left = self.expires_at_ms.saturating_sub(now_ms());
        let interval = self.app.settings.session.heartbeat_interval.as_millis() as i64;
        if left > interval {
            return;
        }
        let wait = std::time::Duration::from_millis(left.max(0) as u64);
        self.expiry_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.close(close::UNAUTHORIZED, "token expired", ctx);
        }));
    }

    /// Takes the connection out of the router and its channels (once): when it stops, or as
    /// soon as it starts closing, since it will not deliver anything more.
    fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) || !W::REGISTERS {
            return;
        }
        let router = &self.app.tree.router;
        let AuthState::Ready { handle, .. } = &self.auth else {
            router.do_send(Disconnect {
                user: None,
                conn: self.conn,
            });
            return;
        };
        for name in self.subscriptions.drain() {
            if let Some(channel) = Channel::parse(&name) {
                router.do_send(TellChannelIfActive {
                    channel,
                    msg: Leave { conn: self.conn },
                });
            }
        }
        router.do_send(Disconnect {
            user: Some(handle.user.clone()),
            conn: self.conn,
        });
    }
}

impl<W: Wire> Actor for SessionActor<W> {
    type Context = Ctx<W>;

    fn started(&mut self, ctx: &mut Ctx<W>) {
        ctx.set_mailbox_capacity(self.app.settings.limits.outbound_queue);
        ctx.run_interval(self.app.settings.session.heartbeat_interval, |act, ctx| {
            W::tick(act, ctx);
            if matches!(act.auth, AuthState::Ready { .. }) {
                act.arm_expiry(ctx);
            }
        });
        match self.arrival_auth.take() {
            Some((claims, ticket)) => self.authenticate(claims, ticket, ctx),
            None => {
                self.app.tree.router.do_send(Arrived {
                    conn: self.conn,
                    recipient: ctx.address().recipient(),
                });
                ctx.run_later(self.app.settings.auth.auth_timeout, |act, ctx| {
                    if matches!(act.auth, AuthState::Pending { .. }) {
                        act.close(
                            close::UNAUTHORIZED,
                            "no auth frame within auth_timeout",
                            ctx,
                        );
                    }
                });
            }
        }
    }

    fn stopped(&mut self, _: &mut Ctx<W>) {
        self.leave();
    }
}
