//! A WebSocket session's outgoing side: the buffer its frames are written into, the
//! [`Flush`] that writes it to the socket, and the close handshake.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use actix::prelude::*;
use actix_http::ws::{CloseCode, CloseReason, Codec, Message, OpCode, Parser};
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio_util::codec::Encoder;

use super::conn::SocketWriter;
use super::{WsSession, WsWire};
use crate::session::Ctx;

/// An outgoing buffer larger than this is released as soon as it has been written out, so
/// that a burst (a replay of large messages, say) is not kept.
const KEEP_WRITE_BUFFER: usize = 64 * 1024;

/// An outgoing buffer larger than this is released at a heartbeat tick that finds it empty
/// and nothing written since the previous tick: busy sessions keep theirs, idle ones do not.
const IDLE_WRITE_BUFFER: usize = 1024;

/// How long a closing session waits for its close frame to be written and for the client to
/// close its side, before it drops the connection anyway.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A session's outgoing frames on their way to the socket.
pub(crate) struct Outgoing {
    pub(crate) writer: SocketWriter,
    pub(crate) codec: Codec,
    pub(crate) buf: BytesMut,
    /// Bytes the socket has taken since the session began.
    pub(crate) written: u64,
    /// Where each frame still (partly) in `buf` ends, counted like `written`: its length is
    /// the outbound queue's length. A client that reads keeps it short even when `buf`
    /// never quite empties under steady load.
    pub(crate) ends: VecDeque<u64>,
    /// A [`Flush`] is running.
    pub(crate) flushing: bool,
    /// A close frame is queued: once it is written, the socket's write side is shut down and
    /// the session waits for the client to close its side (or for `CLOSE_GRACE`), so that
    /// what the client still sends does not turn into a reset that could destroy the close
    /// frame before the client reads it.
    pub(crate) closing: bool,
    /// The client's side has ended.
    pub(crate) read_done: bool,
    /// A text frame was queued since the last heartbeat tick (pings do not count).
    pub(crate) wrote: bool,
}

impl Outgoing {
    /// Releases the buffer of a session that wrote nothing since the last call.
    pub(crate) fn shed_if_idle(&mut self) {
        if !std::mem::take(&mut self.wrote)
            && self.buf.is_empty()
            && self.buf.capacity() > IDLE_WRITE_BUFFER
        {
            self.buf = BytesMut::new();
            self.ends = VecDeque::new();
        }
    }
}

/// Writes a session's outgoing buffer to its socket; finishes when the buffer is empty.
/// Spawned when the first frame after an empty buffer is queued, so the frames of one
/// wake-up go out in one write.
pub(crate) struct Flush;

impl ActorFuture<WsSession> for Flush {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut WsSession,
        ctx: &mut Ctx<WsWire>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let out = &mut act.wire.out;
        while !out.buf.is_empty() {
            match Pin::new(&mut out.writer).poll_write(task, &out.buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    out.flushing = false;
                    ctx.stop();
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(n)) => {
                    out.buf.advance(n);
                    out.written += n as u64;
                    while out.ends.front().is_some_and(|&end| end <= out.written) {
                        out.ends.pop_front();
                    }
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        if out.closing {
            if Pin::new(&mut out.writer).poll_shutdown(task).is_pending() {
                return Poll::Pending;
            }
            if out.read_done {
                ctx.stop();
            }
        }
        out.flushing = false;
        out.ends.clear();
        if out.buf.capacity() > KEEP_WRITE_BUFFER {
            out.buf = BytesMut::new();
            out.ends = VecDeque::new();
        }
        Poll::Ready(())
    }
}

impl WsWire {
    /// Queues a frame for the socket. Beyond `limits.outbound_queue` frames not yet written,
    /// the client is not reading: close with 1013.
    pub(crate) fn send(act: &mut WsSession, msg: Message, ctx: &mut Ctx<WsWire>) {
        let out = &mut act.wire.out;
        if out.closing {
            return;
        }
        if out.codec.encode(msg, &mut out.buf).is_err() {
            return ctx.stop();
        }
        Self::queued(act, ctx);
    }

    /// A frame went into the write buffer: flush it soon, and close with 1013 beyond
    /// `limits.outbound_queue` frames not yet written.
    pub(crate) fn queued(act: &mut WsSession, ctx: &mut Ctx<WsWire>) {
        let out = &mut act.wire.out;
        out.ends.push_back(out.written + out.buf.len() as u64);
        Self::flush_soon(act, ctx);
        if act.wire.out.ends.len() > act.app.settings.limits.outbound_queue {
            act.overflow(ctx);
        }
    }

    /// Queues a text frame. Written straight into the buffer (a server's frames are not
    /// masked), so a delivery shared by many sessions is copied once into each socket buffer
    /// and never cloned or handed to the codec.
    pub(crate) fn write_text(act: &mut WsSession, text: &str, ctx: &mut Ctx<WsWire>) {
        let out = &mut act.wire.out;
        if out.closing {
            return;
        }
        out.wrote = true;
        Parser::write_message(&mut out.buf, text, OpCode::Text, true, false);
        Self::queued(act, ctx);
    }

    /// Queues a close frame; the session stops once it is written and the client has closed
    /// its side (or after `CLOSE_GRACE`).
    pub(crate) fn close_code(act: &mut WsSession, code: u16, reason: &str, ctx: &mut Ctx<WsWire>) {
        Self::close_with(
            act,
            Some(CloseReason {
                code: CloseCode::from(code),
                description: Some(reason.to_owned()),
            }),
            ctx,
        );
    }

    /// Queues a close frame with `reason` (the client's own, echoed, or none).
    pub(crate) fn close_with(
        act: &mut WsSession,
        reason: Option<CloseReason>,
        ctx: &mut Ctx<WsWire>,
    ) {
        let out = &mut act.wire.out;
        if out.closing {
            return;
        }
        out.closing = true;
        if out
            .codec
            .encode(Message::Close(reason), &mut out.buf)
            .is_err()
        {
            return ctx.stop();
        }
        Self::flush_soon(act, ctx);
        act.leave();
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
    }

    /// Makes sure a [`Flush`] runs once this wake-up's messages are handled.
    pub(crate) fn flush_soon(act: &mut WsSession, ctx: &mut Ctx<WsWire>) {
        if !act.wire.out.flushing {
            act.wire.out.flushing = true;
            ctx.spawn(Flush);
        }
    }
}
