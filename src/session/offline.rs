//! A session's offline delivery: `sync` sends this device every message of its channels it
//! has not marked `delivered` (a bounded backlog for a device never seen to mark anything),
//! in seq order per channel, read a page at a time, then `sync_complete` with the cursors;
//! `delivered` moves the device's cursors (coalesced by the offline queue).
//!
//! While a channel is being synced, its live deliveries wait in the run and follow its last
//! page (those the pages already sent are dropped): each channel arrives in seq order with
//! nothing repeated.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use serde::Serialize;
use switchboard_actors::ids::{names_a_readable_channel, now_ms, Channel};
use switchboard_actors::metrics::metrics;
use switchboard_actors::offline_queue::{Delivered, PlanSync};
use switchboard_actors::protocol::{delivery_frame, encode, ErrorCode};
use switchboard_actors::seq::Seq;
use switchboard_actors::session_handle::Delivery;
use switchboard_actors::store::models::SyncPlan;
use switchboard_actors::store::Page;

use super::{AuthState, Ctx, SessionActor, Wire};

/// How long a sync waits before its next page while the client has not taken half of its
/// outbound queue.
const SYNC_PACE: Duration = Duration::from_millis(20);

/// Messages read per page of a sync.
const SYNC_PAGE: i64 = 200;

/// A sync in progress.
pub(super) struct SyncRun {
    /// Channels still to send: name, last seq sent (or had), last seq to send.
    todo: VecDeque<(String, i64, i64)>,
    /// Per channel, what the device has once this sync is received.
    cursors: BTreeMap<String, i64>,
    /// Messages this sync may still send.
    budget: i64,
    /// Messages stored before this are not sent (a new device's backlog), ms.
    not_before: i64,
    ref_id: Option<String>,
    /// Live deliveries of the channels in `todo`, held until their last page is out.
    held: HashMap<String, Vec<(Seq, ByteString)>>,
    /// Frames in `held`.
    held_count: usize,
}

impl SyncRun {
    /// Holds live delivery `d` of `channel` if the run has yet to send that channel:
    /// `Some(true)` held, `Some(false)` not held because `limit` frames are held already,
    /// `None` the channel is not the run's to send (write it now).
    pub(super) fn hold(&mut self, channel: &str, d: &Delivery, limit: usize) -> Option<bool> {
        let held = self.held.get_mut(channel)?;
        if self.held_count >= limit {
            return Some(false);
        }
        held.push((d.seq, d.frame.clone()));
        self.held_count += 1;
        Some(true)
    }

    /// Live deliveries held for `channel` that come after `after`, which the pages sent.
    fn release(&mut self, channel: &str, after: i64) -> Vec<(Seq, ByteString)> {
        let mut held = self.held.remove(channel).unwrap_or_default();
        self.held_count -= held.len();
        held.retain(|(seq, _)| seq.to_stored() > after);
        held
    }
}

#[derive(Serialize)]
struct SyncComplete<'a> {
    cursors: &'a BTreeMap<String, i64>,
    has_more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ref_id: Option<&'a str>,
}

impl<W: Wire> SessionActor<W> {
    /// `sync`: plans it from the stored cursors (and the device's own), then sends pages.
    pub(super) fn sync(
        &mut self,
        cursors: Vec<(Channel, Seq)>,
        id: Option<String>,
        ctx: &mut Ctx<W>,
    ) {
        let AuthState::Ready { handle, .. } = &self.auth else {
            return;
        };
        if self.sync_run.is_some() {
            return self.error(
                ErrorCode::BadRequest,
                "a sync of this connection is still running",
                id.as_deref(),
                ctx,
            );
        }
        let plan = PlanSync {
            user: handle.user.clone(),
            client_id: handle.client_id.clone(),
        };
        let req = self.app.tree.offline.send(plan);
        ctx.spawn(req.into_actor(self).map(move |res, act, ctx| match res {
            Ok(Ok(plan)) => act.start_sync(plan, cursors, id, ctx),
            Ok(Err(e)) => {
                let (code, message) = e.public();
                act.error(code, &message, id.as_deref(), ctx)
            }
            Err(_) => act.error(ErrorCode::Unavailable, "retry", id.as_deref(), ctx),
        }));
    }

    fn start_sync(
        &mut self,
        plan: SyncPlan,
        had: Vec<(Channel, Seq)>,
        ref_id: Option<String>,
        ctx: &mut Ctx<W>,
    ) {
        let cfg = &self.app.settings.sync;
        let had: HashMap<&str, i64> = had.iter().map(|(c, s)| (&*c.name, s.to_stored())).collect();
        let new_device = !plan.known_device;
        let mut run = SyncRun {
            todo: VecDeque::new(),
            cursors: BTreeMap::new(),
            budget: W::sync_budget(self).max(1),
            not_before: if new_device {
                now_ms().saturating_sub(cfg.new_device_max_age.as_millis() as i64)
            } else {
                0
            },
            ref_id,
            held: HashMap::new(),
            held_count: 0,
        };
        // In a cluster a channel actor starting on this node may deliver again what the
        // device has or this sync sends (its late window): dropped as a replay's are.
        let clustered = self.app.tree.cluster.is_some();
        for (name, after, head) in sync_points(plan, &had, cfg) {
            if clustered && after > 0 {
                self.replayed
                    .insert(Arc::from(name.as_str()), Seq::from_stored(after));
            }
            run.cursors.insert(name.clone(), after);
            if after < head {
                run.held.insert(name.clone(), Vec::new());
                run.todo.push_back((name, after, head));
            }
        }
        self.sync_run = Some(Box::new(run));
        self.sync_next(ctx);
    }

    /// Reads and sends the next page, or ends the sync with `sync_complete`.
    fn sync_next(&mut self, ctx: &mut Ctx<W>) {
        let Some(run) = self.sync_run.as_mut() else {
            return;
        };
        let next = run.todo.front().cloned().filter(|_| run.budget > 0);
        let Some((name, after, _)) = next else {
            return self.end_sync(ctx);
        };
        if W::backlog(&self.wire) > self.app.settings.limits.outbound_queue / 2 {
            // The client has not taken what was sent so far: the next page waits.
            ctx.run_later(SYNC_PACE, |act, ctx| act.sync_next(ctx));
            return;
        }
        let page = Page {
            after_seq: Some(after),
            before_seq: None,
            limit: SYNC_PAGE.min(run.budget),
        };
        let read = self.app.tree.reads.history(name.clone(), page);
        ctx.spawn(read.into_actor(self).map(move |res, act, ctx| {
            let rows = match res {
                Ok((rows, _)) => rows,
                Err(e) => {
                    let run = act.sync_run.take();
                    let (code, message) = e.public();
                    let id = run.and_then(|r| r.ref_id);
                    return act.error(code, &message, id.as_deref(), ctx);
                }
            };
            let Some(run) = act.sync_run.as_mut() else {
                return;
            };
            let not_before = run.not_before;
            let mut frames = Vec::with_capacity(rows.len());
            let mut last = after;
            for m in &rows {
                last = m.seq;
                if m.created_at >= not_before {
                    frames.push((Seq::from_stored(m.seq), delivery_frame(m)));
                }
            }
            run.budget -= frames.len() as i64;
            metrics().deliveries.inc_by(frames.len() as u64);
            run.cursors.insert(name.clone(), last);
            let live = match run.todo.front_mut() {
                Some(front) if !rows.is_empty() && last < front.2 => {
                    front.1 = last;
                    Vec::new()
                }
                _ => {
                    run.todo.pop_front();
                    if act.app.tree.cluster.is_some() && last > 0 {
                        act.replayed
                            .insert(Arc::from(name.as_str()), Seq::from_stored(last));
                    }
                    run.release(&name, last)
                }
            };
            for (seq, frame) in &frames {
                W::delivery(act, &name, *seq, frame, ctx);
            }
            for (seq, frame) in &live {
                W::delivery(act, &name, *seq, frame, ctx);
            }
            act.sync_next(ctx);
        }));
    }

    /// Ends the sync with `sync_complete`. Channels its budget left unsent keep their live
    /// deliveries only where the transport cannot be asked again for what it skips.
    fn end_sync(&mut self, ctx: &mut Ctx<W>) {
        let Some(mut run) = self.sync_run.take() else {
            return;
        };
        let has_more = !run.todo.is_empty();
        let frame = encode(
            "sync_complete",
            None,
            SyncComplete {
                cursors: &run.cursors,
                has_more,
                ref_id: run.ref_id.as_deref(),
            },
        );
        self.text(&frame, ctx);
        if !W::RESUMABLE {
            let unsent: Vec<(String, i64, i64)> = run.todo.drain(..).collect();
            for (name, after, _) in unsent {
                for (seq, frame) in run.release(&name, after) {
                    W::delivery(self, &name, seq, &frame, ctx);
                }
            }
        }
        W::synced(self, has_more, ctx);
    }

    /// `delivered`: the device has `channel` up to `up_to_seq`.
    pub(super) fn delivered(
        &mut self,
        channel: Channel,
        up_to_seq: Seq,
        id: Option<String>,
        ctx: &mut Ctx<W>,
    ) {
        if self.store_delivered(&channel, up_to_seq) {
            W::settled(self, ctx)
        } else {
            self.error(
                ErrorCode::Forbidden,
                "not a channel this user receives messages in",
                id.as_deref(),
                ctx,
            )
        }
    }

    /// Moves this device's cursor in `channel` to `up_to_seq` (coalesced by the offline
    /// queue); false for a channel the user has no cursor in (not theirs, or broadcast).
    pub(super) fn store_delivered(&mut self, channel: &Channel, up_to_seq: Seq) -> bool {
        let AuthState::Ready { handle, .. } = &self.auth else {
            return false;
        };
        if !names_a_readable_channel(handle.user.as_str(), &channel.name)
            || channel.name.starts_with("broadcast:")
        {
            return false;
        }
        self.app.tree.offline.do_send(Delivered {
            user: handle.user.clone(),
            client_id: handle.client_id.clone(),
            channel: channel.name.to_string(),
            up_to_seq: up_to_seq.to_stored(),
        });
        true
    }
}

/// Where a device's sync starts in each channel of `plan`: (channel, the last seq it has,
/// the channel's last seq). After its stored cursor or what it says it `had`, whichever is
/// further; a device that never marked anything delivered starts at most
/// `new_device_backlog` messages before the end.
pub(crate) fn sync_points(
    plan: SyncPlan,
    had: &HashMap<&str, i64>,
    cfg: &crate::config::SyncSettings,
) -> Vec<(String, i64, i64)> {
    let new_device = !plan.known_device;
    plan.channels
        .into_iter()
        .map(|(name, head, stored)| {
            let mut after = stored
                .unwrap_or(0)
                .max(had.get(&*name).copied().unwrap_or(0));
            if new_device && stored.is_none() && !had.contains_key(&*name) {
                after = after.max(head - i64::from(cfg.new_device_backlog));
            }
            (name, after.min(head), head)
        })
        .collect()
}
