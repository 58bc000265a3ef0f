//! The Server-Sent Events transport (`GET /sse`): one event per server frame, `event:` its
//! type, `id:` the resume cursor after it, `data:` the frame (contract section 2).
//!
//! The session writes events into a buffer it shares with the HTTP response body; the body
//! takes everything there each time the connection can take more. A client that stops
//! reading leaves events in the buffer: past `limits.outbound_queue` of them the stream
//! ends with a `close` event (1013), as a WebSocket would be closed. When the client goes,
//! the body is dropped and the session stops.
//!
//! On arrival the session applies the cursor of `Last-Event-ID` (its device channels are
//! stored as `delivered`, its broadcast positions resubscribed from), then syncs: the
//! client gets exactly what it missed, then live frames. A `close` event means the broker
//! ended the stream; EventSource then reconnects with `Last-Event-ID` by itself.

use std::cell::RefCell;
use std::convert::Infallible;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use actix::prelude::*;
use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use serde::Serialize;
use switchboard_actors::ids::Channel;
use switchboard_actors::seq::Seq;
use switchboard_actors::session_handle::Transport;

use super::cursor::ResumeCursor;
use super::{frame_type, Admission, Ctx, SessionActor, Wire};
use crate::state::AppState;

/// A session over Server-Sent Events.
pub type SseSession = SessionActor<SseWire>;

/// Sent first: how long EventSource waits before it reconnects, ms.
const RETRY_MS: u64 = 1000;

/// What the session and the response body share (both live on the worker's thread).
#[derive(Default)]
struct Shared {
    /// Events written and not yet taken by the body.
    buf: BytesMut,
    /// Frames in `buf`.
    frames: usize,
    /// The stream ends once `buf` is taken.
    ended: bool,
    /// The body, waiting for events.
    waker: Option<Waker>,
}

impl Shared {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// An SSE response as its session's transport.
pub struct SseWire {
    shared: Rc<RefCell<Shared>>,
    cursor: ResumeCursor,
    /// What the client said it has (`Last-Event-ID`), applied once the session is ready.
    resume: Option<ResumeCursor>,
    /// Broadcast channels to subscribe to (`?subscribe=`).
    subscribe: Vec<Channel>,
}

/// How an SSE stream starts.
pub struct SseStart {
    /// The client's position (`Last-Event-ID`), if it resumes.
    pub resume: Option<ResumeCursor>,
    /// Broadcast channels to subscribe to.
    pub subscribe: Vec<Channel>,
}

/// The response body: the session's events as they come.
pub struct SseBody {
    shared: Rc<RefCell<Shared>>,
    session: Addr<SseSession>,
}

impl Stream for SseBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let mut s = self.shared.borrow_mut();
        if !s.buf.is_empty() {
            s.frames = 0;
            return Poll::Ready(Some(Ok(s.buf.split().freeze())));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        // The client went (or the stream ended): the session has nobody to write to.
        self.session.do_send(BodyGone);
    }
}

/// The response body was dropped.
#[derive(Message)]
#[rtype(result = "()")]
struct BodyGone;

impl Handler<BodyGone> for SseSession {
    type Result = ();
    fn handle(&mut self, _: BodyGone, ctx: &mut Ctx<SseWire>) {
        ctx.stop();
    }
}

/// Starts a session for an SSE request; its events come out of the returned body.
pub fn start(app: web::Data<AppState>, adm: Admission, start: SseStart) -> SseBody {
    let shared = Rc::new(RefCell::new(Shared::default()));
    shared
        .borrow_mut()
        .buf
        .extend_from_slice(format!("retry: {RETRY_MS}\n\n").as_bytes());
    let cursor = match &start.resume {
        Some(r) => r.broadcasts_only(),
        None => ResumeCursor::new(adm.client_id.clone()),
    };
    let wire = SseWire {
        shared: shared.clone(),
        cursor,
        resume: start.resume,
        subscribe: start.subscribe,
    };
    let session = SseSession::start_on(app, adm, move |_| wire);
    SseBody { shared, session }
}

#[derive(Serialize)]
struct CloseEvent<'a> {
    code: u16,
    reason: &'a str,
}

impl SseWire {
    fn event(&mut self, kind: &str, data: &str) {
        let id = self.cursor.text();
        let mut s = self.shared.borrow_mut();
        let b = &mut s.buf;
        b.reserve(kind.len() + id.len() + data.len() + 24);
        b.extend_from_slice(b"event: ");
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(b"\nid: ");
        b.extend_from_slice(id.as_bytes());
        b.extend_from_slice(b"\ndata: ");
        b.extend_from_slice(data.as_bytes());
        b.extend_from_slice(b"\n\n");
        s.frames += 1;
        s.wake();
    }
}

impl Wire for SseWire {
    const TRANSPORT: Transport = Transport::Sse;
    const RESUMABLE: bool = true;

    fn text(act: &mut SseSession, frame: &str, ctx: &mut Ctx<Self>) {
        if act.wire.closing() {
            return;
        }
        act.wire.event(frame_type(frame), frame);
        if act.wire.backlog() > act.app.settings.limits.outbound_queue {
            act.overflow(ctx);
        }
    }

    fn delivery(act: &mut SseSession, channel: &str, seq: Seq, frame: &str, ctx: &mut Ctx<Self>) {
        if act.wire.closing() {
            return;
        }
        act.wire.cursor.advance(channel, seq);
        Self::text(act, frame, ctx)
    }

    fn close(act: &mut SseSession, code: u16, reason: &str, ctx: &mut Ctx<Self>) {
        if act.wire.closing() {
            return;
        }
        let data = serde_json::to_string(&CloseEvent { code, reason }).unwrap_or_default();
        act.wire.event("close", &data);
        let mut s = act.wire.shared.borrow_mut();
        s.ended = true;
        s.wake();
        drop(s);
        act.leave();
        ctx.stop();
    }

    fn closing(&self) -> bool {
        self.shared.borrow().ended
    }

    fn backlog(&self) -> usize {
        self.shared.borrow().frames
    }

    fn sync_budget(_: &SseSession) -> i64 {
        // Paced by the client instead (see `sync_next`): the stream sends all it missed.
        i64::MAX
    }

    fn tick(act: &mut SseSession, _: &mut Ctx<Self>) {
        // A comment line keeps proxies from closing an idle stream.
        let mut s = act.wire.shared.borrow_mut();
        if !s.ended {
            s.buf.extend_from_slice(b": keep-alive\n\n");
            s.wake();
        }
    }

    fn ready(act: &mut SseSession, ctx: &mut Ctx<Self>) {
        let resume = act.wire.resume.take();
        let subscribe = std::mem::take(&mut act.wire.subscribe);
        act.resume_from(resume.as_ref(), &subscribe, ctx);
    }
}
