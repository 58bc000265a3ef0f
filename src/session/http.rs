//! `POST /api/messages`: one client frame sent over HTTP, run by a short session that is
//! never registered with the router (it receives no deliveries and does not make its user
//! online). Dispatch, rate limits and idempotency are the WebSocket's, frame for frame.
//!
//! The answer is the first frame the session gets (the `ack`, `error`,
//! `state_sync_result`, `response` or `heartbeat`), or nothing for a frame that has no
//! answer when it succeeds (typing, receipts, `status_update`, `delivered`).

use std::time::Duration;

use actix::prelude::*;
use actix_web::web;
use bytestring::ByteString;
use switchboard_actors::session_handle::Transport;
use tokio::sync::oneshot;

use super::{Admission, Ctx, SessionActor, Wire};
use crate::state::AppState;

/// A session running one frame sent over HTTP.
pub type HttpSession = SessionActor<HttpWire>;

/// Longest wait for the answer (a publish is answered by its channel, `unavailable` at
/// worst, well before this).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What one frame sent over HTTP gets.
#[derive(Debug)]
pub enum HttpAnswer {
    /// This frame.
    Frame(ByteString),
    /// Nothing: it took effect.
    Settled,
}

/// One frame's HTTP exchange as its session's transport.
pub struct HttpWire {
    frame: Option<String>,
    reply: Option<oneshot::Sender<HttpAnswer>>,
}

impl HttpWire {
    fn answer(act: &mut HttpSession, answer: HttpAnswer, ctx: &mut Ctx<Self>) {
        if let Some(tx) = act.wire.reply.take() {
            let _ = tx.send(answer);
        }
        ctx.stop();
    }
}

/// Runs client frame `frame` (JSON text) as the authenticated user of `adm`.
pub fn send(
    app: web::Data<AppState>,
    adm: Admission,
    frame: String,
) -> oneshot::Receiver<HttpAnswer> {
    let (tx, rx) = oneshot::channel();
    let wire = HttpWire {
        frame: Some(frame),
        reply: Some(tx),
    };
    HttpSession::start_on(app, adm, move |_| wire);
    rx
}

impl Wire for HttpWire {
    const TRANSPORT: Transport = Transport::Http;
    const RESUMABLE: bool = false;
    const REGISTERS: bool = false;

    fn text(act: &mut HttpSession, frame: &str, ctx: &mut Ctx<Self>) {
        Self::answer(act, HttpAnswer::Frame(ByteString::from(frame)), ctx)
    }

    fn close(act: &mut HttpSession, code: u16, reason: &str, ctx: &mut Ctx<Self>) {
        log::debug!(conn:% = act.conn; "HTTP send closed with {code}: {reason}");
        ctx.stop();
    }

    fn closing(&self) -> bool {
        self.reply.is_none()
    }

    fn backlog(&self) -> usize {
        0
    }

    fn tick(_: &mut HttpSession, _: &mut Ctx<Self>) {}

    fn ready(act: &mut HttpSession, ctx: &mut Ctx<Self>) {
        ctx.run_later(ANSWER_TIMEOUT, |_, ctx| ctx.stop());
        if let Some(frame) = act.wire.frame.take() {
            act.on_text(&frame, ctx);
        }
    }

    fn settled(act: &mut HttpSession, ctx: &mut Ctx<Self>) {
        Self::answer(act, HttpAnswer::Settled, ctx)
    }
}
