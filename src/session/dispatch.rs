//! Client frames: rate limits, then one arm per frame type (contract section 5). Durable
//! publishes go to their channel through the router and are answered by the channel; the
//! rest are answered here once the actor they concern has.

use std::sync::Arc;
use std::thread::LocalKey;
use std::time::Instant;

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use switchboard_actors::channel::{typing_frame, Publish, Receipt, Reply, Sender, Typing};
use switchboard_actors::command_proxy::{answer_frame as command_answer, Call, CommandError};
use switchboard_actors::ids::{now_ms, Channel, UserId};
use switchboard_actors::metrics::{metrics, ErrorVia, INVALID_FRAME};
use switchboard_actors::presence::{PresenceTracker, SetStatus, Watch};
use switchboard_actors::protocol::{
    encode, parse_client_frame, ClientFrame, ErrorCode, ErrorPayload, ParsedFrame, TypingTarget,
};
use switchboard_actors::router::{AskChannel, FanOut, TellChannel, ToPresence};
use switchboard_actors::session_handle::SessionHandle;
use switchboard_actors::store::NewMessage;
use switchboard_actors::sync_engine::{state_result, PutDocument};

use super::{close, AuthState, Ctx, SessionActor, Wire};
use crate::gate::GateError;

/// Rate-limited frames are counted over this window for the 1008 close.
const REJECT_WINDOW_S: u64 = 10;

thread_local! {
    /// Frame types of client publishes, one `Arc` per thread shared by every message
    /// (a string each would be an allocation per message, freed on another thread).
    static CHAT_MESSAGE: Arc<str> = Arc::from("chat_message");
    static GROUP_MESSAGE: Arc<str> = Arc::from("group_message");
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

impl<W: Wire> SessionActor<W> {
    /// Takes a token for one client frame: the user's shared bucket once authenticated, the
    /// connection's own before that. On refusal answers `rate_limited` and counts it.
    pub(super) fn admit_frame(&mut self, text: Option<&str>, ctx: &mut Ctx<W>) -> bool {
        let taken = match &self.auth {
            AuthState::Ready { ticket, .. } => ticket.take(),
            AuthState::Pending { .. } => self.pending_bucket.take(),
        };
        let Err(retry_after_ms) = taken else {
            return true;
        };
        let m = metrics();
        m.rate_limited_frames.inc();
        m.error(ErrorCode::RateLimited, ErrorVia::Frame);
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

    /// A client text frame: rate limit, parse, dispatch.
    pub(super) fn on_text(&mut self, text: &str, ctx: &mut Ctx<W>) {
        if !self.admit_frame(Some(text), ctx) {
            return;
        }
        match parse_client_frame(text, self.app.settings.limits.max_json_depth) {
            Ok(frame) => {
                metrics().frame_in(frame.frame.type_index());
                self.dispatch(frame, ctx)
            }
            Err(e) => {
                metrics().frame_in(INVALID_FRAME);
                self.error(e.code(), &e.to_string(), e.ref_id(), ctx)
            }
        }
    }

    fn dispatch(&mut self, f: ParsedFrame, ctx: &mut Ctx<W>) {
        let ParsedFrame { id, frame } = f;
        let Some(user) = self.user().cloned() else {
            return self.dispatch_pending(id, frame, ctx);
        };
        match frame {
            ClientFrame::Auth { token } => match self.app.auth.verify(&token) {
                Ok(c) if c.sub == user.as_str() => {
                    self.hold_token(&c, ctx);
                    W::settled(self, ctx)
                }
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
                    Ok(Ok(Ok(_))) => W::settled(act, ctx),
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
            ClientFrame::Command { name, args } => self.command(user, name, args, id, ctx),
        }
    }

    /// Forwards a `command` to the backend; its `response` (or `error`) comes when the
    /// call ends, while the session goes on.
    fn command(
        &mut self,
        user: UserId,
        name: String,
        args: String,
        id: Option<String>,
        ctx: &mut Ctx<W>,
    ) {
        let Some((proxy, _)) = &self.app.tree.command else {
            let res = Err(CommandError::NotConfigured);
            return self.text(&command_answer(&res, id.as_deref()), ctx);
        };
        let call = Call {
            user,
            client_id: self.client_id.clone(),
            name,
            args,
            ref_id: id.clone(),
        };
        let req = proxy.send(call);
        ctx.spawn(req.into_actor(self).map(move |res, act, ctx| match res {
            Ok(res) => act.text(&command_answer(&res, id.as_deref()), ctx),
            Err(_) => act.error(ErrorCode::Unavailable, "retry", id.as_deref(), ctx),
        }));
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

    fn dispatch_pending(&mut self, id: Option<String>, frame: ClientFrame, ctx: &mut Ctx<W>) {
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
    fn tell_presence<M>(&mut self, msg: M, id: Option<String>, ctx: &mut Ctx<W>)
    where
        M: actix::Message<Result = ()> + Send + 'static,
        PresenceTracker: Handler<M>,
    {
        match self.app.tree.router.try_send(ToPresence(msg)) {
            Ok(()) => W::settled(self, ctx),
            Err(_) => self.error(ErrorCode::Unavailable, "retry", id.as_deref(), ctx),
        }
    }

    fn typing(
        &mut self,
        user: UserId,
        target: TypingTarget,
        typing: bool,
        id: Option<String>,
        ctx: &mut Ctx<W>,
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
                W::settled(self, ctx)
            }
            TypingTarget::Group(channel) => {
                let req = self.app.tree.router.send(AskChannel {
                    channel,
                    msg: Typing { from: user, typing },
                });
                ctx.spawn(req.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(Ok(Ok(()))) => W::settled(act, ctx),
                    Ok(Ok(Err(e))) => act.error(e.code(), &e.to_string(), id.as_deref(), ctx),
                    _ => act.error(ErrorCode::Unavailable, "retry", id.as_deref(), ctx),
                }));
            }
        }
    }
}
