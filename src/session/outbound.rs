//! A session's outgoing side: the buffer its frames are written into, the [`Flush`] that
//! writes it to the socket, the close handshake, and the engine's [`Outbound`] items.

use super::*;

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
pub(super) struct Outgoing {
    pub(super) writer: OwnedWriteHalf,
    pub(super) codec: Codec,
    pub(super) buf: BytesMut,
    /// Bytes the socket has taken since the session began.
    pub(super) written: u64,
    /// Where each frame still (partly) in `buf` ends, counted like `written`: its length is
    /// the outbound queue's length. A client that reads keeps it short even when `buf`
    /// never quite empties under steady load.
    pub(super) ends: VecDeque<u64>,
    /// A [`Flush`] is running.
    pub(super) flushing: bool,
    /// A close frame is queued: once it is written, the socket's write side is shut down and
    /// the session waits for the client to close its side (or for `CLOSE_GRACE`), so that
    /// what the client still sends does not turn into a reset that could destroy the close
    /// frame before the client reads it.
    pub(super) closing: bool,
    /// The client's side has ended.
    pub(super) read_done: bool,
    /// A text frame was queued since the last heartbeat tick (pings do not count).
    pub(super) wrote: bool,
}

impl Outgoing {
    /// Releases the buffer of a session that wrote nothing since the last call.
    pub(super) fn shed_if_idle(&mut self) {
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
pub(super) struct Flush;

impl ActorFuture<SessionActor> for Flush {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut SessionActor,
        ctx: &mut Ctx,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let out = &mut act.out;
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

impl SessionActor {
    /// Queues a frame for the socket. Beyond `limits.outbound_queue` frames not yet written,
    /// the client is not reading: close with 1013.
    pub(super) fn send(&mut self, msg: Message, ctx: &mut Ctx) {
        let out = &mut self.out;
        if out.closing {
            return;
        }
        if out.codec.encode(msg, &mut out.buf).is_err() {
            return ctx.stop();
        }
        self.queued(ctx);
    }

    /// A frame went into the write buffer: flush it soon, and close with 1013 beyond
    /// `limits.outbound_queue` frames not yet written.
    pub(super) fn queued(&mut self, ctx: &mut Ctx) {
        let out = &mut self.out;
        out.ends.push_back(out.written + out.buf.len() as u64);
        self.flush_soon(ctx);
        if self.out.ends.len() > self.app.settings.limits.outbound_queue {
            self.overflow(ctx);
        }
    }

    /// The outbound queue (mailbox or unwritten frames) is full: the client is not reading.
    pub(super) fn overflow(&mut self, ctx: &mut Ctx) {
        if !self.out.closing {
            log::info!(
                "conn {} (user {}): outbound queue full, closing with 1013",
                self.conn,
                self.user().map(UserId::as_str).unwrap_or("-"),
            );
        }
        self.close(
            close::TRY_AGAIN_LATER,
            "outbound queue full; reconnect and resume",
            ctx,
        );
    }

    /// Queues a text frame. Written straight into the buffer (a server's frames are not
    /// masked), so a delivery shared by many sessions is copied once into each socket buffer
    /// and never cloned or handed to the codec.
    pub(super) fn text(&mut self, text: &str, ctx: &mut Ctx) {
        let out = &mut self.out;
        if out.closing {
            return;
        }
        out.wrote = true;
        Parser::write_message(&mut out.buf, text, OpCode::Text, true, false);
        self.queued(ctx);
    }

    /// Queues a close frame; the session stops once it is written and the client has closed
    /// its side (or after `CLOSE_GRACE`).
    pub(super) fn close(&mut self, code: u16, reason: &str, ctx: &mut Ctx) {
        self.close_with(
            Some(CloseReason {
                code: CloseCode::from(code),
                description: Some(reason.to_owned()),
            }),
            ctx,
        );
    }

    pub(super) fn close_with(&mut self, reason: Option<CloseReason>, ctx: &mut Ctx) {
        let out = &mut self.out;
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
        self.flush_soon(ctx);
        self.leave();
        ctx.run_later(CLOSE_GRACE, |_, ctx| ctx.stop());
    }

    /// Makes sure a [`Flush`] runs once this wake-up's messages are handled.
    pub(super) fn flush_soon(&mut self, ctx: &mut Ctx) {
        if !self.out.flushing {
            self.out.flushing = true;
            ctx.spawn(Flush);
        }
    }
}

impl Handler<Outbound> for SessionActor {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Ctx) {
        self.gauge.taken(msg.frames_for(self.conn));
        if self.gauge.overflowed() {
            return self.overflow(ctx);
        }
        match msg {
            Outbound::Frame(frame) => self.text(&frame, ctx),
            Outbound::Frames(frames) => {
                for frame in &frames {
                    self.text(frame, ctx);
                }
            }
            Outbound::Deliveries { channel, items } => {
                if !self.muted.is_empty() && self.muted.contains(&channel) {
                    return;
                }
                for d in items.iter() {
                    if d.skip_conn == Some(self.conn) {
                        continue;
                    }
                    if self.out.closing {
                        return;
                    }
                    if !self.replaying.is_empty() {
                        if let Some(buf) = self.replaying.get_mut(&channel) {
                            if buf.len() >= self.app.settings.limits.outbound_queue {
                                return self.close(
                                    close::TRY_AGAIN_LATER,
                                    "replay buffer full",
                                    ctx,
                                );
                            }
                            buf.push((d.seq, d.frame.clone()));
                            continue;
                        }
                    }
                    self.text(&d.frame, ctx)
                }
            }
            Outbound::Close { code, reason } => self.close(code, reason, ctx),
        }
    }
}
