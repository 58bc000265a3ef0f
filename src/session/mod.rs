//! `SessionActor`: one per WebSocket connection (contract sections 2, 5, 7 and 8).
//!
//! Owns the connection: its authentication state, heartbeat, rate-limit bookkeeping, explicit
//! subscriptions and any replay in progress. Receives client frames from the socket and
//! [`Outbound`] from the engine (its mailbox is bounded to `limits.outbound_queue`). Sends
//! `Connect`/`Disconnect`, `TellChannel<Publish>` and `AskChannel<…>` to the router.
//! Not supervised: when it stops, the client reconnects and resumes by `subscribe`/`sync`.
//!
//! The session owns its socket (handed over by the upgrade service, `routes::ws`): frames
//! are read with actix-http's WebSocket codec through a small read buffer, and written from
//! one outgoing buffer that is released when it empties. An idle connection thus holds no
//! large buffer. The outgoing buffer is bounded by `limits.outbound_queue` frames: a client
//! that does not read is closed with 1013 and never slows anyone else.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Cursor;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_http::ws::{CloseCode, CloseReason, Codec, Frame, Item, Message, OpCode, Parser};
use actix_web::web;
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use switchboard_actors::channel::{
    typing_frame, Join, Leave, Publish, Receipt, Reply, Sender, Typing,
};
use switchboard_actors::ids::{now_ms, Channel, ChannelKind, ConnId, UserId};
use switchboard_actors::presence::{PresenceTracker, SetStatus, Watch};
use switchboard_actors::protocol::{
    delivery_frame, encode, error_frame, parse_client_frame, ClientFrame, ErrorCode, ErrorPayload,
    ParsedFrame, TypingTarget,
};
use switchboard_actors::router::{
    Arrived, AskChannel, Connect, Disconnect, FanOut, TellChannel, TellChannelIfActive, ToPresence,
};
use switchboard_actors::seq::Seq;
use switchboard_actors::session_handle::{Outbound, OutboundGauge, SessionHandle};
use switchboard_actors::store::NewMessage;
use switchboard_actors::store::Page;
use switchboard_actors::sync_engine::{state_result, PutDocument};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;

use crate::auth::{Claims, DEVICES};
use crate::gate::{GateError, NodeTicket, PendingTicket, TokenBucket, UserTicket};
use crate::state::AppState;

pub(crate) mod offline;
mod outbound;
mod reader;
mod subscriptions;

use outbound::Outgoing;
use reader::FrameReader;
pub use reader::{check_header, ReadCodec, ReadControl, ReadError};

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

/// Rate-limited frames are counted over this window for the 1008 close.
const REJECT_WINDOW_S: u64 = 10;

enum AuthState {
    /// Waiting for an `auth` frame, holding a place among the connections that wait (none
    /// when it authenticated at upgrade and `started` has not run yet). The place is held
    /// only to be freed when this state ends.
    Pending { _place: Option<PendingTicket> },
    /// Authenticated and registered with the router.
    Ready {
        /// Shared with every publish in flight, which answers through it.
        handle: Arc<SessionHandle>,
        ticket: UserTicket,
    },
}

thread_local! {
    /// Frame types of client publishes, one `Arc` per thread shared by every message
    /// (a string each would be an allocation per message, freed on another thread).
    static CHAT_MESSAGE: Arc<str> = Arc::from("chat_message");
    static GROUP_MESSAGE: Arc<str> = Arc::from("group_message");
}

/// The WebSocket session actor.
pub struct SessionActor {
    conn: ConnId,
    client_id: Arc<str>,
    device: Option<Arc<str>>,
    app: web::Data<AppState>,
    auth: AuthState,
    /// Authenticated at upgrade; consumed in `started`.
    upgrade_auth: Option<(Claims, UserTicket)>,
    _node: NodeTicket,
    last_heard: Instant,
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
    /// A `sync` in progress.
    sync_run: Option<Box<offline::SyncRun>>,
    fragments: Option<(bool, BytesMut)>,
    /// Shared with the [`ReadCodec`]: asks it to release a grown read buffer, and holds
    /// reading while a frame whose effect is asynchronous (`subscribe`) takes effect and is
    /// answered, so that the frames sent after it come after it.
    read: Rc<ReadControl>,
    out: Outgoing,
    /// Already taken out of the router (see `leave`).
    left: bool,
    /// The DM channel this session last wrote to: people write to the same person several
    /// times in a row, and its name need not be built again for each message.
    last_dm: Option<Channel>,
}

/// How a connection arrived: what the upgrade request established.
pub struct Upgrade {
    /// The device id (query `client_id`, or generated).
    pub client_id: Arc<str>,
    /// The device kind (query `device` or the token's claim).
    pub device: Option<Arc<str>>,
    /// Token checked at upgrade, with the user's admission ticket.
    pub auth: Option<(Claims, UserTicket)>,
    /// Without a token: its place among the connections not yet authenticated.
    pub pending: Option<PendingTicket>,
    /// The node admission ticket.
    pub node: NodeTicket,
}

/// Starts a session on an upgraded connection; `early` holds bytes the client sent right
/// after its upgrade request (already read by the HTTP layer).
pub fn start(app: web::Data<AppState>, up: Upgrade, io: TcpStream, early: Bytes) {
    // Frames are small and latency matters more than packet count.
    let _ = io.set_nodelay(true);
    let limits = &app.settings.limits;
    let max = limits.max_frame_bytes;
    let pending_bucket = TokenBucket::new(limits.frames_per_second, limits.frames_burst);
    let gauge = Arc::new(OutboundGauge::new(limits.outbound_queue));
    let (reader, writer) = io.into_split();
    let reader = AsyncReadExt::chain(Cursor::new(early), reader);
    let read = Rc::new(ReadControl::default());
    let frame_timeout = limits.frame_timeout;
    SessionActor::create(move |ctx| {
        ctx.add_stream(FrameReader::new(
            reader,
            ReadCodec::new(max, read.clone()),
            frame_timeout,
        ));
        SessionActor {
            conn: ConnId::next(),
            client_id: up.client_id,
            device: up.device,
            app,
            auth: AuthState::Pending { _place: up.pending },
            upgrade_auth: up.auth,
            _node: up.node,
            last_heard: Instant::now(),
            expires_at_ms: i64::MAX,
            expiry_timer: None,
            gauge,
            rejected: (Instant::now(), 0),
            pending_bucket,
            subscriptions: HashSet::new(),
            muted: HashSet::new(),
            replaying: HashMap::new(),
            sync_run: None,
            fragments: None,
            read,
            out: Outgoing {
                writer,
                codec: Codec::new().max_size(max),
                buf: BytesMut::new(),
                written: 0,
                ends: VecDeque::new(),
                flushing: false,
                closing: false,
                read_done: false,
                wrote: false,
            },
            left: false,
            last_dm: None,
        }
    });
}

#[derive(Serialize)]
struct Connected<'a> {
    conn_id: String,
    client_id: &'a str,
    user_id: &'a str,
    heartbeat_interval_s: u64,
    server_time: i64,
}

#[derive(Serialize)]
struct ServerTime {
    server_time: i64,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<String>,
}

type Ctx = Context<SessionActor>;

impl SessionActor {
    fn user(&self) -> Option<&UserId> {
        match &self.auth {
            AuthState::Ready { handle, .. } => Some(&handle.user),
            AuthState::Pending { .. } => None,
        }
    }

    fn error(&mut self, code: ErrorCode, message: &str, ref_id: Option<&str>, ctx: &mut Ctx) {
        self.text(&error_frame(code, message, ref_id), ctx);
    }

    fn authenticate(&mut self, claims: Claims, ticket: UserTicket, ctx: &mut Ctx) {
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
            ctx.address().recipient(),
            self.gauge.clone(),
        );
        self.app.tree.router.do_send(Connect {
            handle: handle.clone(),
        });
        let handle = Arc::new(handle);
        self.schedule_expiry(claims.exp, ctx);
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
    }

    /// Closes with 4001 once `exp` (plus leeway) passes, unless a fresh `auth` moves it.
    fn schedule_expiry(&mut self, exp: u64, ctx: &mut Ctx) {
        if let Some(h) = self.expiry_timer.take() {
            ctx.cancel_future(h);
        }
        self.expires_at_ms = (exp as i64)
            .saturating_mul(1000)
            .saturating_add(self.app.settings.auth.leeway.as_millis() as i64);
        self.arm_expiry(ctx);
    }

    /// Arms the exact expiry close once it falls within the next heartbeat interval; the
    /// heartbeat tick calls this again until then.
    fn arm_expiry(&mut self, ctx: &mut Ctx) {
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

    /// Takes a token for one client frame: the user's shared bucket once authenticated, the
    /// connection's own before that. On refusal answers `rate_limited` and counts it.
    fn admit_frame(&mut self, text: Option<&str>, ctx: &mut Ctx) -> bool {
        let taken = match &self.auth {
            AuthState::Ready { ticket, .. } => ticket.take(),
            AuthState::Pending { .. } => self.pending_bucket.take(),
        };
        let Err(retry_after_ms) = taken else {
            return true;
        };
        let ref_id = text
            .and_then(|t| serde_json::from_str::<IdOnly>(t).ok())
            .and_then(|f| f.id);
        self.text(
            &encode(
                "error",
                None,
                ErrorPayload {
                    code: ErrorCode::RateLimited,
                    message: "rate limit exceeded".into(),
                    ref_id,
                    retry_after_ms: Some(retry_after_ms),
                },
            ),
            ctx,
        );
        let (since, n) = &mut self.rejected;
        if since.elapsed().as_secs() >= REJECT_WINDOW_S {
            *since = Instant::now();
            *n = 0;
        }
        *n += 1;
        if *n > self.app.settings.limits.max_rejected_frames {
            self.close(close::POLICY, "too many rate-limited frames", ctx);
        }
        false
    }

    fn on_text(&mut self, text: &str, ctx: &mut Ctx) {
        if !self.admit_frame(Some(text), ctx) {
            return;
        }
        match parse_client_frame(text, self.app.settings.limits.max_json_depth) {
            Ok(frame) => self.dispatch(frame, ctx),
            Err(e) => self.error(e.code(), &e.to_string(), e.ref_id(), ctx),
        }
    }

    fn dispatch(&mut self, f: ParsedFrame, ctx: &mut Ctx) {
        let ParsedFrame { id, frame } = f;
        let Some(user) = self.user().cloned() else {
            return self.dispatch_pending(id, frame, ctx);
        };
        match frame {
            ClientFrame::Auth { token } => match self.app.auth.verify(&token) {
                Ok(c) if c.sub == user.as_str() => self.schedule_expiry(c.exp, ctx),
                Ok(_) => self.error(
                    ErrorCode::Forbidden,
                    "token is for another user",
                    id.as_deref(),
                    ctx,
                ),
                Err(e) => self.error(ErrorCode::Unauthorized, &e.to_string(), id.as_deref(), ctx),
            },
            ClientFrame::Heartbeat => self.text(
                &encode(
                    "heartbeat",
                    id.as_deref(),
                    ServerTime {
                        server_time: now_ms(),
                    },
                ),
                ctx,
            ),
            ClientFrame::Chat { target, payload } => {
                let channel = self.dm_channel(&user, &target);
                self.publish(channel, &CHAT_MESSAGE, target.0, payload, id)
            }
            ClientFrame::Group { channel, payload } => {
                let target = channel.name.clone();
                self.publish(channel, &GROUP_MESSAGE, target, payload, id)
            }
            ClientFrame::Typing { target, typing } => self.typing(user, target, typing, id, ctx),
            ClientFrame::ReadReceipt { channel, up_to_seq } => {
                let msg = Receipt {
                    user,
                    origin: Some(self.conn),
                    up_to_seq,
                };
                let req = self.app.tree.router.send(AskChannel { channel, msg });
                ctx.spawn(req.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(Ok(Ok(_))) => {}
                    Ok(Ok(Err(e))) => act.error(e.code(), &e.to_string(), id.as_deref(), ctx),
                    _ => act.error(ErrorCode::Unavailable, "retry", id.as_deref(), ctx),
                }));
            }
            ClientFrame::Subscribe { channel, since_seq } => {
                self.subscribe(channel, since_seq, id, ctx)
            }
            ClientFrame::Unsubscribe { channel } => self.unsubscribe(channel, id, ctx),
            ClientFrame::StatusUpdate { status, text } => {
                self.tell_presence(SetStatus { user, status, text }, id, ctx)
            }
            ClientFrame::StateSync {
                collection,
                key,
                value,
                base_version,
            } => {
                let client_id = match &self.auth {
                    AuthState::Ready { handle, .. } => Some(handle.client_id.clone()),
                    AuthState::Pending { .. } => None,
                };
                let put = PutDocument {
                    user,
                    collection,
                    key,
                    value,
                    base_version,
                    client_id,
                    origin: Some(self.conn),
                };
                let req = self.app.tree.sync.send(put.clone());
                ctx.spawn(req.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(Ok(outcome)) => {
                        let payload =
                            state_result(id.as_deref(), &put.collection, &put.key, &outcome);
                        act.text(&encode("state_sync_result", None, payload), ctx);
                    }
                    Ok(Err(e)) => {
                        let (code, message) = e.public();
                        act.error(code, &message, id.as_deref(), ctx)
                    }
                    Err(_) => act.error(ErrorCode::Unavailable, "retry", id.as_deref(), ctx),
                }));
            }
            ClientFrame::Sync { cursors } => self.sync(cursors, id, ctx),
            ClientFrame::Delivered { channel, up_to_seq } => {
                self.delivered(channel, up_to_seq, id, ctx)
            }
            ClientFrame::PresenceSubscribe { users } => {
                if let AuthState::Ready { handle, .. } = &self.auth {
                    let watch = Watch {
                        handle: SessionHandle::clone(handle),
                        users,
                        ref_id: id.clone(),
                    };
                    self.tell_presence(watch, id, ctx)
                }
            }
            ClientFrame::NotYetServed { kind } => self.error(
                ErrorCode::UnknownType,
                &format!("`{kind}` is not served by this version of the broker"),
                id.as_deref(),
                ctx,
            ),
        }
    }

    /// The DM channel between this session's `user` and `to`.
    fn dm_channel(&mut self, user: &UserId, to: &UserId) -> Channel {
        match &self.last_dm {
            Some(c) if c.is_dm_of(user, to) => c.clone(),
            _ => {
                let c = Channel::dm(user, to);
                self.last_dm = Some(c.clone());
                c
            }
        }
    }

    fn dispatch_pending(&mut self, id: Option<String>, frame: ClientFrame, ctx: &mut Ctx) {
        let ClientFrame::Auth { token } = frame else {
            return self.error(
                ErrorCode::Unauthorized,
                "authenticate first with an `auth` frame",
                id.as_deref(),
                ctx,
            );
        };
        let claims = match self.app.auth.verify(&token) {
            Ok(c) => c,
            Err(e) => {
                return self.error(ErrorCode::Unauthorized, &e.to_string(), id.as_deref(), ctx)
            }
        };
        match self.app.gate.admit_user(&UserId::new(&claims.sub)) {
            Ok(ticket) => self.authenticate(claims, ticket, ctx),
            Err(e) => {
                let e: GateError = e;
                self.error(ErrorCode::RateLimited, &e.to_string(), id.as_deref(), ctx);
                self.close(close::POLICY, "too many connections for this user", ctx);
            }
        }
    }

    fn publish(
        &mut self,
        channel: Channel,
        kind: &'static LocalKey<Arc<str>>,
        target_id: Arc<str>,
        payload: String,
        id: Option<String>,
    ) {
        let AuthState::Ready { handle, .. } = &self.auth else {
            return;
        };
        let user = handle.user.clone();
        let msg = NewMessage {
            channel: channel.name.clone(),
            kind: kind.with(Arc::clone),
            sender_id: user.0.clone(),
            target_id,
            client_id: Some(self.client_id.clone()),
            client_msg_id: id.clone(),
            payload,
        };
        let publish = Publish {
            msg,
            sender: Sender::User(user),
            reply: Reply::session(handle.clone(), id),
        };
        // The ack (or error) comes back through the outbound queue; no future waits here.
        // Refused when the router's queue is full: dropping the publish answers it
        // `unavailable`, and the client retries.
        let _ = self.app.tree.router.try_send(TellChannel {
            channel,
            msg: publish,
        });
    }

    /// Sends `msg` to the presence tracker through the router (after this session's
    /// `Connect`); a full router mailbox answers `unavailable`.
    fn tell_presence<M>(&mut self, msg: M, id: Option<String>, ctx: &mut Ctx)
    where
        M: actix::Message<Result = ()> + Send + 'static,
        PresenceTracker: Handler<M>,
    {
        if self.app.tree.router.try_send(ToPresence(msg)).is_err() {
            self.error(ErrorCode::Unavailable, "retry", id.as_deref(), ctx);
        }
    }

    fn typing(
        &mut self,
        user: UserId,
        target: TypingTarget,
        typing: bool,
        id: Option<String>,
        ctx: &mut Ctx,
    ) {
        match target {
            TypingTarget::User(to) => {
                let channel = Channel::dm(&user, &to);
                let item = typing_frame(&user, to.as_str(), &channel.name, typing);
                self.app.tree.router.do_send(FanOut {
                    users: Arc::from(vec![to]),
                    skip_conn: None,
                    skip_user: None,
                    item,
                });
            }
            TypingTarget::Group(channel) => {
                let req = self.app.tree.router.send(AskChannel {
                    channel,
                    msg: Typing { from: user, typing },
                });
                ctx.spawn(req.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => act.error(e.code(), &e.to_string(), id.as_deref(), ctx),
                    _ => act.error(ErrorCode::Unavailable, "retry", id.as_deref(), ctx),
                }));
            }
        }
    }

    fn on_binary(&mut self, ctx: &mut Ctx) {
        if self.admit_frame(None, ctx) {
            self.error(
                ErrorCode::BadRequest,
                "binary frames are not supported; send JSON text frames",
                None,
                ctx,
            );
        }
    }

    fn on_fragment(&mut self, item: Item, ctx: &mut Ctx) {
        let max = self.app.settings.limits.max_frame_bytes;
        let (first, chunk, last) = match item {
            Item::FirstText(b) => (Some(true), b, false),
            Item::FirstBinary(b) => (Some(false), b, false),
            Item::Continue(b) => (None, b, false),
            Item::Last(b) => (None, b, true),
        };
        match (first, self.fragments.as_mut()) {
            (Some(is_text), None) => self.fragments = Some((is_text, BytesMut::from(&chunk[..]))),
            (None, Some((_, buf))) => buf.extend_from_slice(&chunk),
            _ => return self.close(close::PROTOCOL, "unexpected continuation frame", ctx),
        }
        if self.fragments.as_ref().map(|(_, b)| b.len()).unwrap_or(0) > max {
            return self.close(close::TOO_BIG, "message too large", ctx);
        }
        if !last {
            return;
        }
        let Some((is_text, buf)) = self.fragments.take() else {
            return;
        };
        if !is_text {
            return self.error(
                ErrorCode::BadRequest,
                "binary frames are not supported",
                None,
                ctx,
            );
        }
        match std::str::from_utf8(&buf) {
            Ok(text) => self.on_text(text, ctx),
            Err(_) => self.close(close::INVALID_DATA, "invalid UTF-8 in text frame", ctx),
        }
    }
}

impl Actor for SessionActor {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Ctx) {
        let limits = &self.app.settings.limits;
        ctx.set_mailbox_capacity(limits.outbound_queue);
        let session = &self.app.settings.session;
        let (interval, timeout) = (session.heartbeat_interval, session.heartbeat_timeout);
        ctx.run_interval(interval, move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                act.close(close::GOING_AWAY, "heartbeat timeout", ctx);
            } else {
                act.out.shed_if_idle();
                act.read.shed_buffer();
                act.send(Message::Ping(Bytes::new()), ctx);
                if matches!(act.auth, AuthState::Ready { .. }) {
                    act.arm_expiry(ctx);
                }
            }
        });
        match self.upgrade_auth.take() {
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

    fn stopped(&mut self, _: &mut Ctx) {
        self.leave();
    }
}

impl SessionActor {
    /// Takes the connection out of the router and its channels (once): when it stops, or as
    /// soon as it starts closing, since it will not deliver anything more.
    fn leave(&mut self) {
        if std::mem::replace(&mut self.left, true) {
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

impl StreamHandler<Result<Frame, ReadError>> for SessionActor {
    fn handle(&mut self, msg: Result<Frame, ReadError>, ctx: &mut Ctx) {
        if self.out.closing {
            return;
        }
        self.last_heard = Instant::now();
        match msg {
            Ok(Frame::Text(bytes)) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => self.close(close::INVALID_DATA, "invalid UTF-8 in text frame", ctx),
            },
            Ok(Frame::Binary(_)) => self.on_binary(ctx),
            Ok(Frame::Ping(p)) => self.send(Message::Pong(p), ctx),
            Ok(Frame::Pong(_)) => {}
            Ok(Frame::Close(reason)) => self.close_with(reason, ctx),
            Ok(Frame::Continuation(item)) => self.on_fragment(item, ctx),
            Err(e) => {
                // A client's mistake, not the broker's: logged for whoever debugs that client.
                log::debug!("conn {}: {e}", self.conn);
                match e {
                    ReadError::TooLarge(why) => self.close(close::TOO_BIG, why, ctx),
                    ReadError::Protocol(why) => self.close(close::PROTOCOL, &why, ctx),
                    ReadError::Stalled => self.close(close::POLICY, &e.to_string(), ctx),
                    ReadError::Io(_) => ctx.stop(),
                }
            }
        }
    }

    /// The client's side ended (or a frame error ended the stream): stop, unless a close
    /// frame is still being written, which stops the session when done.
    fn finished(&mut self, ctx: &mut Ctx) {
        self.out.read_done = true;
        if !(self.out.closing && self.out.flushing) {
            ctx.stop();
        }
    }
}
