//! The session's outbound side, whatever the transport: the engine's [`Outbound`] items
//! into the transport, with live deliveries held back while a replay or a sync of their
//! channel is under way, and the 1013 close when the client does not keep up.

use std::sync::Arc;

use actix::prelude::*;
use switchboard_actors::ids::UserId;
use switchboard_actors::metrics::metrics;
use switchboard_actors::session_handle::{Delivery, Outbound};

use super::{close, Ctx, SessionActor, Wire};

impl<W: Wire> SessionActor<W> {
    /// The outbound queue (mailbox or unwritten frames) is full: the client is not reading.
    pub(super) fn overflow(&mut self, ctx: &mut Ctx<W>) {
        if !self.wire.closing() {
            let user = self.user().map(UserId::as_str).unwrap_or("-");
            log::info!(
                conn:% = self.conn, user = user;
                "outbound queue full, closing with 1013"
            );
        }
        self.close(
            close::TRY_AGAIN_LATER,
            "outbound queue full; reconnect and resume",
            ctx,
        );
    }

    /// One live delivery of `channel`: written, or held while the channel is replayed or
    /// synced (then written after what the replay or sync sends, without a repeat).
    fn live_delivery(&mut self, channel: &Arc<str>, d: &Delivery, ctx: &mut Ctx<W>) {
        let limit = self.app.settings.limits.outbound_queue;
        if !self.replaying.is_empty() {
            if let Some(buf) = self.replaying.get_mut(channel) {
                if buf.len() >= limit {
                    return self.close(close::TRY_AGAIN_LATER, "replay buffer full", ctx);
                }
                buf.push((d.seq, d.frame.clone()));
                return;
            }
        }
        if !self.replayed.is_empty() && self.replayed.get(channel).is_some_and(|s| d.seq <= *s) {
            return;
        }
        if let Some(run) = self.sync_run.as_mut() {
            match run.hold(channel, d, limit) {
                Some(true) => return,
                Some(false) => {
                    return self.close(close::TRY_AGAIN_LATER, "sync buffer full", ctx);
                }
                None => {}
            }
        }
        W::delivery(self, channel, d.seq, &d.frame, ctx)
    }
}

impl<W: Wire> Handler<Outbound> for SessionActor<W> {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Ctx<W>) {
        let n = msg.frames_for(self.conn);
        self.gauge.taken(n);
        if let Outbound::Deliveries { .. } = msg {
            metrics().deliveries.inc_by(n as u64);
        }
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
                    if self.wire.closing() {
                        return;
                    }
                    self.live_delivery(&channel, d, ctx);
                }
            }
            Outbound::Close { code, reason } => self.close(code, reason, ctx),
            Outbound::Revoked(jtis) => {
                if self.jti.as_ref().is_some_and(|j| jtis.contains(j)) {
                    self.close(close::UNAUTHORIZED, "token revoked", ctx);
                }
            }
        }
    }
}
