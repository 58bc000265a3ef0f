//! A channel's part in a cluster: who reads it (for other nodes), other nodes' commits and
//! heads, and the gap fills that keep delivery in seq order when the bus lost something.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;

use super::sequencer::Sequencer;
use super::{ChannelActor, Members, FILL_PAGE};
use crate::cluster::Audience;
use crate::protocol::delivery_frame;
use crate::seq::Seq;
use crate::session_handle::Delivery;
use crate::store::Page;

impl ChannelActor {
    /// Who reads this channel, as another node needs to know it.
    pub(super) fn audience(&self) -> Audience {
        /// Groups up to this size are listed; larger ones are started wherever any user is.
        const LISTED: usize = 256;
        match &self.members {
            Members::Open => Audience::Subscribers,
            Members::Fixed(l) => Audience::Users(l.clone()),
            Members::Group(Some((_, l))) if l.len() <= LISTED => Audience::Users(l.clone()),
            _ => Audience::Members,
        }
    }

    /// Schedules a fill of the sequencer's gap, if it has one: at once when the gap is
    /// older than the actor (stored before it loaded), else after the bus had its chance.
    pub(super) fn watch_gap(&mut self, ctx: &mut Context<Self>) {
        let (Some(order), Some(c)) = (&self.order, &self.deps.cluster) else {
            return;
        };
        let Some((after, _)) = order.gap() else {
            if let Some(t) = self.gap_timer.take() {
                ctx.cancel_future(t);
            }
            return;
        };
        if self.filling || self.gap_timer.is_some() {
            return;
        }
        let wait = if after < self.loaded_head {
            Duration::ZERO
        } else {
            c.gap_wait
        };
        self.gap_timer = Some(ctx.run_later(wait, |act, ctx| {
            act.gap_timer = None;
            act.fill(ctx);
        }));
    }

    /// Reads the gap from the store and delivers it with what waited behind it.
    fn fill(&mut self, ctx: &mut Context<Self>) {
        let Some((after, before)) = self.order.as_ref().and_then(Sequencer::gap) else {
            return;
        };
        self.filling = true;
        let page = Page {
            after_seq: Some(after.to_stored()),
            before_seq: Some(before.to_stored()),
            limit: FILL_PAGE,
        };
        let fut = self.deps.reads.history(self.channel.name.to_string(), page);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.filling = false;
            match res {
                Ok((rows, more)) => {
                    let through = match (more, rows.last()) {
                        (true, Some(last)) => Seq::from_stored(last.seq),
                        _ => Seq::new(before.get().saturating_sub(1)),
                    };
                    if let Some(c) = &act.deps.cluster {
                        c.stats
                            .filled
                            .fetch_add(rows.len() as u64, Ordering::Relaxed);
                    }
                    let rows = rows
                        .iter()
                        .map(|m| Delivery {
                            seq: Seq::from_stored(m.seq),
                            frame: delivery_frame(m),
                            skip_conn: None,
                            from_here: false,
                        })
                        .collect();
                    if let Some(order) = &mut act.order {
                        let ready = order.filled(rows, through);
                        act.deliver_ready(ready);
                    }
                    act.watch_gap(ctx);
                }
                Err(e) => {
                    log::warn!("channel {}: cannot fill a seq gap: {e}", act.channel.name);
                    let retry = act
                        .deps
                        .cluster
                        .as_ref()
                        .map_or(Duration::from_secs(1), |c| c.gap_wait)
                        .max(Duration::from_millis(250));
                    act.gap_timer = Some(ctx.run_later(retry, |act, ctx| {
                        act.gap_timer = None;
                        act.fill(ctx);
                    }));
                }
            }
        }));
    }
}

/// Messages another node committed in this channel, in seq order (from the bus).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteCommit {
    /// Seq and delivery frame of each.
    pub items: Vec<(Seq, ByteString)>,
}

impl Handler<RemoteCommit> for ChannelActor {
    type Result = ();
    fn handle(&mut self, m: RemoteCommit, ctx: &mut Context<Self>) {
        if self.order.is_none() {
            return; // not a cluster member, or not loaded: the store has them
        }
        let items: Arc<[Delivery]> = m
            .items
            .into_iter()
            .map(|(seq, frame)| Delivery {
                seq,
                frame,
                skip_conn: None,
                from_here: false,
            })
            .collect();
        self.deliver_in_order(items, ctx);
    }
}

/// Another node committed this channel up to `seq` (announced after a bus outage): what
/// this node lacks up to it is read from the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteHead {
    /// The channel's last seq on that node.
    pub seq: Seq,
}

impl Handler<RemoteHead> for ChannelActor {
    type Result = ();
    fn handle(&mut self, m: RemoteHead, ctx: &mut Context<Self>) {
        if let Some(order) = &mut self.order {
            order.announced(m.seq);
            self.head = self.head.max(m.seq);
            self.watch_gap(ctx);
        }
    }
}
