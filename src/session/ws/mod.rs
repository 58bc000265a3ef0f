//! The WebSocket transport: the session owns its socket (handed over by the upgrade
//! service, `routes::ws`). Frames are read with actix-http's WebSocket codec through a small
//! read buffer ([`reader`]), and written from one outgoing buffer that is released when it
//! empties ([`socket`]). An idle connection thus holds no large buffer. The outgoing buffer
//! is bounded by `limits.outbound_queue` frames: a client that does not read is closed with
//! 1013 and never slows anyone else.

use std::collections::VecDeque;
use std::io::Cursor;
use std::rc::Rc;
use std::time::Instant;

use actix::prelude::*;
use actix_http::ws::{Codec, Frame, Item, Message};
use actix_web::web;
use bytes::{Bytes, BytesMut};
use switchboard_actors::protocol::ErrorCode;
use switchboard_actors::session_handle::Transport;
use tokio::io::AsyncReadExt;

use super::{close, Admission, Ctx, SessionActor, Wire};
use crate::state::AppState;

pub mod conn;
mod reader;
mod socket;

use conn::Socket;
use reader::FrameReader;
pub use reader::{check_header, ReadCodec, ReadControl, ReadError};
use socket::Outgoing;

/// A session on a WebSocket.
pub type WsSession = SessionActor<WsWire>;

/// A WebSocket connection as its session's transport.
pub struct WsWire {
    out: Outgoing,
    /// Shared with the [`ReadCodec`]: asks it to release a grown read buffer, and holds
    /// reading while a frame whose effect is asynchronous (`subscribe`) takes effect and is
    /// answered, so that the frames sent after it come after it.
    read: Rc<ReadControl>,
    /// A fragmented message being put together: whether it is text, and its bytes so far.
    fragments: Option<(bool, BytesMut)>,
    /// When the client was last heard from (any frame).
    last_heard: Instant,
}

/// Starts a session on an upgraded connection; `early` holds bytes the client sent right
/// after its upgrade request (already read by the HTTP layer).
pub fn start(app: web::Data<AppState>, adm: Admission, io: Socket, early: Bytes) {
    io.set_nodelay();
    let limits = &app.settings.limits;
    let max = limits.max_frame_bytes;
    let frame_timeout = limits.frame_timeout;
    let (reader, writer) = io.split();
    let reader = AsyncReadExt::chain(Cursor::new(early), reader);
    WsSession::start_on(app, adm, move |ctx| {
        let read = Rc::new(ReadControl::default());
        ctx.add_stream(FrameReader::new(
            reader,
            ReadCodec::new(max, read.clone()),
            frame_timeout,
        ));
        WsWire {
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
            read,
            fragments: None,
            last_heard: Instant::now(),
        }
    });
}

impl Wire for WsWire {
    const TRANSPORT: Transport = Transport::WebSocket;
    const RESUMABLE: bool = false;

    fn text(act: &mut WsSession, frame: &str, ctx: &mut Ctx<Self>) {
        WsWire::write_text(act, frame, ctx)
    }

    fn close(act: &mut WsSession, code: u16, reason: &str, ctx: &mut Ctx<Self>) {
        WsWire::close_code(act, code, reason, ctx)
    }

    fn closing(&self) -> bool {
        self.out.closing
    }

    fn backlog(&self) -> usize {
        self.out.ends.len()
    }

    fn tick(act: &mut WsSession, ctx: &mut Ctx<Self>) {
        let timeout = act.app.settings.session.heartbeat_timeout;
        if act.wire.last_heard.elapsed() > timeout {
            return act.close(close::GOING_AWAY, "heartbeat timeout", ctx);
        }
        act.wire.out.shed_if_idle();
        act.wire.read.shed_buffer();
        WsWire::send(act, Message::Ping(Bytes::new()), ctx);
    }

    fn hold_reading(&self) {
        self.read.hold();
    }

    fn release_reading(&self) {
        self.read.release();
    }
}

impl WsSession {
    fn on_binary(&mut self, ctx: &mut Ctx<WsWire>) {
        if self.admit_frame(None, ctx) {
            self.error(
                ErrorCode::BadRequest,
                "binary frames are not supported; send JSON text frames",
                None,
                ctx,
            );
        }
    }

    fn on_fragment(&mut self, item: Item, ctx: &mut Ctx<WsWire>) {
        let max = self.app.settings.limits.max_frame_bytes;
        let (first, chunk, last) = match item {
            Item::FirstText(b) => (Some(true), b, false),
            Item::FirstBinary(b) => (Some(false), b, false),
            Item::Continue(b) => (None, b, false),
            Item::Last(b) => (None, b, true),
        };
        match (first, self.wire.fragments.as_mut()) {
            (Some(is_text), None) => {
                self.wire.fragments = Some((is_text, BytesMut::from(&chunk[..])))
            }
            (None, Some((_, buf))) => buf.extend_from_slice(&chunk),
            _ => return self.close(close::PROTOCOL, "unexpected continuation frame", ctx),
        }
        if self
            .wire
            .fragments
            .as_ref()
            .map(|(_, b)| b.len())
            .unwrap_or(0)
            > max
        {
            return self.close(close::TOO_BIG, "message too large", ctx);
        }
        if !last {
            return;
        }
        let Some((is_text, buf)) = self.wire.fragments.take() else {
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

impl StreamHandler<Result<Frame, ReadError>> for WsSession {
    fn handle(&mut self, msg: Result<Frame, ReadError>, ctx: &mut Ctx<WsWire>) {
        if self.wire.out.closing {
            return;
        }
        self.wire.last_heard = Instant::now();
        match msg {
            Ok(Frame::Text(bytes)) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.on_text(text, ctx),
                Err(_) => self.close(close::INVALID_DATA, "invalid UTF-8 in text frame", ctx),
            },
            Ok(Frame::Binary(_)) => self.on_binary(ctx),
            Ok(Frame::Ping(p)) => WsWire::send(self, Message::Pong(p), ctx),
            Ok(Frame::Pong(_)) => {}
            Ok(Frame::Close(reason)) => WsWire::close_with(self, reason, ctx),
            Ok(Frame::Continuation(item)) => self.on_fragment(item, ctx),
            Err(e) => {
                // A client's mistake, not the broker's: logged for whoever debugs that client.
                log::debug!(conn:% = self.conn; "{e}");
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
    fn finished(&mut self, ctx: &mut Ctx<WsWire>) {
        self.wire.out.read_done = true;
        if !(self.wire.out.closing && self.wire.out.flushing) {
            ctx.stop();
        }
    }
}
