//! What a transport gives the session core: a way to write server frames to the client,
//! to close, and to keep the connection alive. The core ([`SessionActor`]) is generic over
//! it, so each transport's calls are direct, not virtual.

use super::{Ctx, SessionActor};
use switchboard_actors::seq::Seq;
use switchboard_actors::session_handle::Transport;

/// A transport adapter: WebSocket, Server-Sent Events or one long poll.
pub trait Wire: Sized + Unpin + 'static {
    /// How `/status` counts these connections.
    const TRANSPORT: Transport;

    /// Whether frames already sent can be asked for again by a resume cursor (SSE, poll):
    /// live messages of a channel that a sync has not caught up with are then held back
    /// rather than written ahead of it, so that the cursor never skips a message.
    const RESUMABLE: bool;

    /// Whether the session registers with the router (receives deliveries, counts as
    /// online). Not for a single frame sent over HTTP.
    const REGISTERS: bool = true;

    /// Queues one server frame for the client. Closes the session with 1013 when the client
    /// does not take what is queued (more than `limits.outbound_queue` frames).
    fn text(act: &mut SessionActor<Self>, frame: &str, ctx: &mut Ctx<Self>);

    /// Queues a stored message of `channel` (its `seq`): resumable transports move their
    /// cursor with it.
    fn delivery(
        act: &mut SessionActor<Self>,
        channel: &str,
        seq: Seq,
        frame: &str,
        ctx: &mut Ctx<Self>,
    ) {
        let _ = (channel, seq);
        Self::text(act, frame, ctx)
    }

    /// Ends the connection with a close code and reason; the session stops once the
    /// transport has said it (at once if it cannot).
    fn close(act: &mut SessionActor<Self>, code: u16, reason: &str, ctx: &mut Ctx<Self>);

    /// Frames queued that the client has not taken yet.
    fn backlog(&self) -> usize;

    /// How many messages one `sync` sends at most before it answers `has_more`.
    fn sync_budget(act: &SessionActor<Self>) -> i64 {
        let cfg = &act.app.settings;
        i64::from(cfg.sync.max_per_sync).min(cfg.limits.outbound_queue as i64 / 2)
    }

    /// Whether the session is closing: nothing more is written.
    fn closing(&self) -> bool;

    /// The heartbeat tick (`session.heartbeat_interval`): keep the connection alive, detect
    /// a dead one, give back idle buffers.
    fn tick(act: &mut SessionActor<Self>, ctx: &mut Ctx<Self>);

    /// Holds reading client frames until [`Wire::release_reading`] (a frame whose effect is
    /// asynchronous is answered before the frames after it are read).
    fn hold_reading(&self) {}

    /// Reading goes on.
    fn release_reading(&self) {}

    /// The session authenticated and registered (its `connected` frame is queued).
    fn ready(act: &mut SessionActor<Self>, ctx: &mut Ctx<Self>) {
        let _ = (act, ctx);
    }

    /// A frame that has no answer when it succeeds (typing, receipts, status, `delivered`,
    /// a re-`auth`) took effect.
    fn settled(act: &mut SessionActor<Self>, ctx: &mut Ctx<Self>) {
        let _ = (act, ctx);
    }

    /// A `sync` finished: `has_more` when its budget ran out before every channel was sent.
    fn synced(act: &mut SessionActor<Self>, has_more: bool, ctx: &mut Ctx<Self>) {
        let _ = (act, has_more, ctx);
    }
}
