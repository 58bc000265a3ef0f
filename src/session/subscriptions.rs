//! A session's explicit subscriptions: `subscribe` (with a replay after `since_seq` that
//! hands over to live deliveries without a gap or a repeat) and `unsubscribe`.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use switchboard_actors::channel::{Join, Leave};
use switchboard_actors::ids::{Channel, ChannelKind};
use switchboard_actors::metrics::metrics;
use switchboard_actors::protocol::{delivery_frame, encode, ErrorCode};
use switchboard_actors::router::{AskChannel, TellChannelIfActive};
use switchboard_actors::seq::Seq;
use switchboard_actors::store::Page;

use super::{AuthState, Ctx, SessionActor, Wire};

#[derive(Serialize)]
struct Subscribed<'a> {
    channel: &'a str,
    seq: Seq,
    recovered: bool,
}

#[derive(Serialize)]
struct ChannelOnly<'a> {
    channel: &'a str,
}

impl<W: Wire> SessionActor<W> {
    pub(super) fn subscribe(
        &mut self,
        channel: Channel,
        since: Option<Seq>,
        id: Option<String>,
        ctx: &mut Ctx<W>,
    ) {
        let name = channel.name.clone();
        if !self.subscriptions.contains(&name) && !self.channel_slots_left() {
            return self.error(
                ErrorCode::Forbidden,
                "subscription limit of this connection reached",
                id.as_deref(),
                ctx,
            );
        }
        let AuthState::Ready { handle, .. } = &self.auth else {
            return;
        };
        // From now on live deliveries of this channel wait until the replay is out.
        if since.is_some() {
            self.replaying.entry(name.clone()).or_default();
        }
        // The frames after this one wait until it has taken effect and been answered.
        self.wire.hold_reading();
        let req = self.app.tree.router.send(AskChannel {
            channel,
            msg: Join {
                handle: (**handle).clone(),
            },
        });
        ctx.spawn(req.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Ok(Ok(head))) => {
                act.muted.remove(&name);
                act.subscriptions.insert(name.clone());
                match since {
                    // Past the channel's last seq there is nothing to replay.
                    Some(since) if since < head => act.replay(name, since, head, ctx),
                    _ => {
                        act.subscribed(&name, head, since.is_some(), ctx);
                        act.flush_replay_buffer(&name, head, ctx);
                        act.wire.release_reading();
                    }
                }
            }
            other => {
                act.flush_replay_buffer(&name, Seq::ZERO, ctx);
                match other {
                    Ok(Ok(Err(e))) => act.error(e.code(), &e.to_string(), id.as_deref(), ctx),
                    _ => act.error(ErrorCode::Unavailable, "retry", id.as_deref(), ctx),
                }
                act.wire.release_reading();
            }
        }));
    }

    pub(super) fn subscribed(&mut self, name: &str, seq: Seq, recovered: bool, ctx: &mut Ctx<W>) {
        let frame = encode(
            "subscribed",
            None,
            Subscribed {
                channel: name,
                seq,
                recovered,
            },
        );
        self.text(&frame, ctx);
    }

    /// Sends `subscribed`, then every stored message after `since` (below `head`), then the
    /// live ones that arrived meanwhile (without repeating any); then reads on.
    pub(super) fn replay(&mut self, name: Arc<str>, since: Seq, head: Seq, ctx: &mut Ctx<W>) {
        let limit = self.app.settings.limits.max_replay;
        let ch = name.to_string();
        let page = Page {
            after_seq: Some(since.min(head).to_stored()),
            before_seq: None,
            limit,
        };
        let read = self.app.tree.reads.history(ch, page);
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok((rows, has_more)) => {
                    let last = rows
                        .last()
                        .map(|m| Seq::from_stored(m.seq))
                        .unwrap_or(since);
                    act.subscribed(&name, head.max(last), !has_more, ctx);
                    metrics().deliveries.inc_by(rows.len() as u64);
                    for m in &rows {
                        let seq = Seq::from_stored(m.seq);
                        W::delivery(act, &name, seq, &delivery_frame(m), ctx);
                    }
                    act.flush_replay_buffer(&name, last, ctx);
                }
                Err(e) => {
                    log::warn!(conn:% = act.conn; "replay of {name} failed: {e}");
                    act.flush_replay_buffer(&name, Seq::ZERO, ctx);
                    act.error(ErrorCode::Unavailable, "replay failed; retry", None, ctx);
                }
            }
            act.wire.release_reading();
        }));
    }

    pub(super) fn flush_replay_buffer(&mut self, name: &Arc<str>, after: Seq, ctx: &mut Ctx<W>) {
        let Some(held) = self.replaying.remove(name) else {
            return;
        };
        if after > Seq::ZERO {
            // The client has everything up to `after` now: later deliveries of it repeat.
            self.replayed.insert(name.clone(), after);
        }
        for (seq, frame) in held {
            if seq > after {
                W::delivery(self, name, seq, &frame, ctx);
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, channel: Channel, id: Option<String>, ctx: &mut Ctx<W>) {
        let name = channel.name.clone();
        let implicit = !matches!(channel.kind, ChannelKind::Broadcast(_));
        if implicit && !self.muted.contains(&name) && !self.channel_slots_left() {
            return self.error(
                ErrorCode::Forbidden,
                "subscription limit of this connection reached",
                id.as_deref(),
                ctx,
            );
        }
        if implicit {
            // Membership deliveries (DMs, groups, user:*) stop on this connection too.
            self.muted.insert(name.clone());
        }
        if self.subscriptions.remove(&name) {
            self.app.tree.router.do_send(TellChannelIfActive {
                channel,
                msg: Leave { conn: self.conn },
            });
        }
        self.text(
            &encode("unsubscribed", None, ChannelOnly { channel: &name }),
            ctx,
        );
    }

    /// Whether one more subscribed or muted channel fits the per-connection limit.
    pub(super) fn channel_slots_left(&self) -> bool {
        self.subscriptions.len() + self.muted.len() < self.app.settings.limits.max_subscriptions
    }
}
