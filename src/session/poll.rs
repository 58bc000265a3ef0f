//! The long-polling transport (`GET /poll?cursor=…&timeout_s=…`): one request is one
//! short session (contract section 2).
//!
//! It resumes from the request's cursor as an SSE stream does (the device positions it
//! names are stored as `delivered`, broadcast channels resubscribed from theirs), syncs,
//! and answers `{"frames": […], "cursor": "…"}` as soon as frames wait: at once when the
//! client missed something, else when the first live frame comes (with the frames that
//! arrive in the next few milliseconds), else an empty list after `timeout_s`. The answer
//! holds at most half of `limits.outbound_queue` frames; the returned cursor covers exactly
//! what it holds, so the next poll, on any node, gets what follows, and `has_more` says the
//! answer was cut there (poll again at once rather than after a pause). Session frames
//! (`connected`, `subscribed`, `sync_complete`) are not part of the answer. Ephemeral
//! frames (typing, presence) reach a poller only while one of its requests is open.
//!
//! A poll whose client goes away before its answer ends at once: the request's handler is
//! dropped with the connection (the server does not keep half-closed HTTP/1 connections,
//! see `startup`), which drops the answer's receiver, and the session watches for that.
//! Its user's place, its presence and its count in `/status` go with it.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::fut::ActorFutureExt;
use actix::prelude::*;
use actix_web::web;
use bytestring::ByteString;
use switchboard_actors::ids::Channel;
use switchboard_actors::seq::Seq;
use switchboard_actors::session_handle::Transport;
use tokio::sync::oneshot;

use super::cursor::ResumeCursor;
use super::{frame_type, Admission, Ctx, SessionActor, Wire};
use crate::state::AppState;

/// A session for one long poll.
pub type PollSession = SessionActor<PollWire>;

/// How long an answer waits, after its first live frame, for more to join it.
const GATHER: Duration = Duration::from_millis(10);

/// What one poll answers.
pub struct PollAnswer {
    /// The frames, in the order they came.
    pub frames: Vec<ByteString>,
    /// Where the next poll resumes.
    pub cursor: String,
    /// The answer stopped at its cap: more may wait, so poll again at once.
    pub has_more: bool,
}

/// One long poll as its session's transport.
pub struct PollWire {
    frames: Vec<ByteString>,
    cursor: ResumeCursor,
    resume: Option<ResumeCursor>,
    subscribe: Vec<Channel>,
    /// The first sync is over: frames may be answered.
    synced: bool,
    /// An answer is on its way (waiting `GATHER`).
    answering: bool,
    reply: Option<oneshot::Sender<PollAnswer>>,
    timeout: Duration,
}

/// How a poll starts.
pub struct PollStart {
    /// The client's position (`cursor`), if it has one.
    pub resume: Option<ResumeCursor>,
    /// Broadcast channels to subscribe to.
    pub subscribe: Vec<Channel>,
    /// Longest wait for a frame.
    pub timeout: Duration,
}

/// Starts a session for a poll request; its answer comes through the receiver (dropped
/// without an answer only if the session could not start).
pub fn start(
    app: web::Data<AppState>,
    adm: Admission,
    start: PollStart,
) -> oneshot::Receiver<PollAnswer> {
    let (tx, rx) = oneshot::channel();
    let cursor = match &start.resume {
        Some(r) => r.broadcasts_only(),
        None => ResumeCursor::new(adm.client_id.clone()),
    };
    let wire = PollWire {
        frames: Vec::new(),
        cursor,
        resume: start.resume,
        subscribe: start.subscribe,
        synced: false,
        answering: false,
        reply: Some(tx),
        timeout: start.timeout,
    };
    PollSession::start_on(app, adm, move |ctx| {
        ctx.spawn(RequestGone.map(|(), act, ctx| PollWire::abandoned(act, ctx)));
        wire
    });
    rx
}

/// Resolves once the poll has nobody to answer: the request's receiver was dropped (its
/// client disconnected), or the answer went.
struct RequestGone;

impl ActorFuture<PollSession> for RequestGone {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut PollSession,
        _: &mut Ctx<PollWire>,
        task: &mut TaskContext<'_>,
    ) -> Poll<()> {
        match act.wire.reply.as_mut() {
            Some(tx) => tx.poll_closed(task),
            None => Poll::Ready(()),
        }
    }
}

impl PollWire {
    fn full(act: &PollSession) -> bool {
        act.wire.frames.len() >= act.app.settings.limits.outbound_queue / 2
    }

    /// Answers with what was gathered and ends the session.
    fn answer(act: &mut PollSession, ctx: &mut Ctx<Self>) {
        if let Some(tx) = act.wire.reply.take() {
            let has_more = Self::full(act);
            let _ = tx.send(PollAnswer {
                has_more,
                frames: std::mem::take(&mut act.wire.frames),
                cursor: act.wire.cursor.text().to_owned(),
            });
        }
        act.leave();
        ctx.stop();
    }

    /// The client went before its answer: the session ends without one, and frames it
    /// had gathered stay unanswered (the cursor the client holds still precedes them).
    fn abandoned(act: &mut PollSession, ctx: &mut Ctx<Self>) {
        if act.wire.reply.take().is_some() {
            log::debug!(conn:% = act.conn; "poll abandoned by its client");
            act.leave();
            ctx.stop();
        }
    }

    /// Answers after `GATHER`, so that frames arriving together leave together.
    fn answer_soon(act: &mut PollSession, ctx: &mut Ctx<Self>) {
        if Self::full(act) {
            return Self::answer(act, ctx);
        }
        if act.wire.synced && !act.wire.answering {
            act.wire.answering = true;
            ctx.run_later(GATHER, Self::answer);
        }
    }
}

impl Wire for PollWire {
    const TRANSPORT: Transport = Transport::Poll;
    const RESUMABLE: bool = true;

    fn text(act: &mut PollSession, frame: &str, ctx: &mut Ctx<Self>) {
        if act.wire.closing() || Self::full(act) {
            return;
        }
        if matches!(
            frame_type(frame),
            "connected" | "subscribed" | "sync_complete"
        ) {
            return;
        }
        act.wire.frames.push(ByteString::from(frame));
        Self::answer_soon(act, ctx);
    }

    fn delivery(act: &mut PollSession, channel: &str, seq: Seq, frame: &str, ctx: &mut Ctx<Self>) {
        // A frame that does not fit is left for the next poll: the cursor stays before it.
        if act.wire.closing() || Self::full(act) {
            return;
        }
        act.wire.cursor.advance(channel, seq);
        Self::text(act, frame, ctx)
    }

    fn close(act: &mut PollSession, _code: u16, _reason: &str, ctx: &mut Ctx<Self>) {
        Self::answer(act, ctx)
    }

    fn closing(&self) -> bool {
        self.reply.is_none()
    }

    fn backlog(&self) -> usize {
        self.frames.len()
    }

    fn tick(_: &mut PollSession, _: &mut Ctx<Self>) {}

    fn ready(act: &mut PollSession, ctx: &mut Ctx<Self>) {
        ctx.run_later(act.wire.timeout, Self::answer);
        let resume = act.wire.resume.take();
        let subscribe = std::mem::take(&mut act.wire.subscribe);
        act.resume_from(resume.as_ref(), &subscribe, ctx);
    }

    fn synced(act: &mut PollSession, has_more: bool, ctx: &mut Ctx<Self>) {
        act.wire.synced = true;
        if has_more {
            Self::answer(act, ctx)
        } else if !act.wire.frames.is_empty() {
            Self::answer_soon(act, ctx)
        }
    }
}
