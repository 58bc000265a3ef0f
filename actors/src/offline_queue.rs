//! `OfflineQueue`: what each device has not received yet.
//!
//! Messages for offline users already wait in the store (every message is persisted before
//! fan-out); this actor keeps the per-device bookkeeping: it records every device
//! (user, client_id) that connects, and each device's delivery cursors. `delivered` frames
//! are coalesced here, per (device, channel) to the highest seq, and written together
//! every [`FLUSH_EVERY`] (or at once past [`MAX_HELD`] cursors) through the write batcher,
//! so marking messages delivered costs one small upsert per device and channel per flush,
//! not one per message. A sync plan ([`PlanSync`]) adds the cursors held here, and those
//! whose write has not committed yet, to the stored ones. A restart loses the cursors held (at most [`FLUSH_EVERY`] of them): their
//! messages are sent again at the next `sync`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::health::ActorHealth;
use crate::ids::UserId;
use crate::store::batcher::{PersistAndReply, WriteBatcher};
use crate::store::models::SyncPlan;
use crate::store::reader::Reads;
use crate::store::write::WriteOp;
use crate::store::StoreError;

/// How often held delivery cursors are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Held (device, channel) cursors past which they are written at once.
pub const MAX_HELD: usize = 10_000;

/// A device: (user, client_id).
type Device = (UserId, Arc<str>);

/// The offline-queue actor.
pub struct OfflineQueue {
    batcher: Addr<WriteBatcher>,
    reads: Reads,
    /// Delivery cursors not yet written: device → channel → seq.
    held: HashMap<Device, HashMap<String, i64>>,
    held_count: usize,
    /// Cursors on their way to the database (until their write commits): a read started
    /// meanwhile may not see them yet, so what is known here is `held` and `writing`.
    writing: HashMap<Device, HashMap<String, i64>>,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl OfflineQueue {
    /// An offline queue writing through `batcher` and reading through `reads`.
    pub fn new(batcher: Addr<WriteBatcher>, reads: Reads, health: Arc<ActorHealth>) -> Self {
        OfflineQueue {
            batcher,
            reads,
            held: HashMap::new(),
            held_count: 0,
            writing: HashMap::new(),
            health,
        }
    }

    /// Writes every held cursor, one write per device.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        self.held_count = 0;
        let held = std::mem::take(&mut self.held);
        for (device, cursors) in held {
            let cursors: Vec<(String, i64)> = cursors.into_iter().collect();
            let writing = self.writing.entry(device.clone()).or_default();
            for (channel, seq) in &cursors {
                let w = writing.entry(channel.clone()).or_insert(0);
                *w = (*w).max(*seq);
            }
            let op = WriteOp::DeliveryCursors {
                user_id: device.0.to_string(),
                client_id: device.1.to_string(),
                cursors: cursors.clone(),
            };
            ctx.spawn(self.batcher.send(PersistAndReply(op)).into_actor(self).map(
                move |res, act, _| {
                    // Lost cursors only mean messages sent again at the next sync.
                    if let Ok(Err(e)) = res {
                        act.health.failed(format!("writing delivery cursors: {e}"));
                    }
                    if let Some(writing) = act.writing.get_mut(&device) {
                        for (channel, seq) in &cursors {
                            if writing.get(channel) == Some(seq) {
                                writing.remove(channel);
                            }
                        }
                        if writing.is_empty() {
                            act.writing.remove(&device);
                        }
                    }
                },
            ));
        }
    }
}

impl Actor for OfflineQueue {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.health.started();
        ctx.run_interval(FLUSH_EVERY, |act, ctx| act.flush(ctx));
    }

    fn stopping(&mut self, ctx: &mut Context<Self>) -> Running {
        self.flush(ctx);
        Running::Stop
    }
}

impl Supervised for OfflineQueue {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
    }
}

crate::health_handlers!(OfflineQueue);

/// A device of `user` connected.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeviceSeen {
    /// Owner.
    pub user: UserId,
    /// Device/install id.
    pub client_id: Arc<str>,
    /// Device kind.
    pub device: Option<Arc<str>>,
}

impl Handler<DeviceSeen> for OfflineQueue {
    type Result = ();
    fn handle(&mut self, msg: DeviceSeen, ctx: &mut Context<Self>) {
        self.health.handled();
        let op = WriteOp::TouchDevice {
            user_id: msg.user.to_string(),
            client_id: msg.client_id.to_string(),
            device: msg.device.map(|d| d.to_string()),
        };
        let health = self.health.clone();
        ctx.spawn(
            self.batcher
                .send(PersistAndReply(op))
                .into_actor(self)
                .map(move |res, _, _| {
                    if let Ok(Err(e)) = res {
                        health.failed(format!("recording device: {e}"));
                    }
                }),
        );
    }
}

/// A device marked `channel` delivered up to `up_to_seq`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Delivered {
    /// Owner.
    pub user: UserId,
    /// The device.
    pub client_id: Arc<str>,
    /// The channel.
    pub channel: String,
    /// The last seq it has.
    pub up_to_seq: i64,
}

impl Handler<Delivered> for OfflineQueue {
    type Result = ();
    fn handle(&mut self, msg: Delivered, ctx: &mut Context<Self>) {
        self.health.handled();
        let cursors = self.held.entry((msg.user, msg.client_id)).or_default();
        let before = cursors.len();
        let seq = cursors.entry(msg.channel).or_insert(0);
        *seq = (*seq).max(msg.up_to_seq);
        self.held_count += cursors.len() - before;
        if self.held_count >= MAX_HELD {
            self.flush(ctx);
        }
    }
}

/// What a device's `sync` starts from: the stored plan with the cursors held here.
#[derive(Message)]
#[rtype(result = "Result<SyncPlan, StoreError>")]
pub struct PlanSync {
    /// Owner.
    pub user: UserId,
    /// The device.
    pub client_id: Arc<str>,
}

impl Handler<PlanSync> for OfflineQueue {
    type Result = ResponseActFuture<Self, Result<SyncPlan, StoreError>>;
    fn handle(&mut self, msg: PlanSync, _: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        let read = self
            .reads
            .sync_plan(msg.user.to_string(), msg.client_id.to_string());
        // What is known here now: a cursor written before this was committed before the
        // read starts, so the read sees it.
        let device = (msg.user, msg.client_id);
        let mut known: HashMap<String, i64> = HashMap::new();
        for map in [self.held.get(&device), self.writing.get(&device)]
            .into_iter()
            .flatten()
        {
            for (channel, &seq) in map {
                let k = known.entry(channel.clone()).or_insert(0);
                *k = (*k).max(seq);
            }
        }
        Box::pin(read.into_actor(self).map(move |res, _, _| {
            let mut plan = res?;
            plan.known_device |= !known.is_empty();
            for (name, _, cursor) in &mut plan.channels {
                if let Some(&seq) = known.get(name) {
                    *cursor = Some(cursor.unwrap_or(0).max(seq));
                }
            }
            Ok(plan)
        }))
    }
}

/// The furthest any device of `user` has marked `channel` delivered, held or stored.
#[derive(Message)]
#[rtype(result = "Result<i64, StoreError>")]
pub struct DeliveredUpTo {
    /// Owner.
    pub user: UserId,
    /// The channel.
    pub channel: String,
}

impl Handler<DeliveredUpTo> for OfflineQueue {
    type Result = ResponseActFuture<Self, Result<i64, StoreError>>;
    fn handle(&mut self, msg: DeliveredUpTo, _: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        let held = self
            .held
            .iter()
            .chain(self.writing.iter())
            .filter(|((user, _), _)| *user == msg.user)
            .filter_map(|(_, cursors)| cursors.get(&msg.channel).copied())
            .max()
            .unwrap_or(0);
        let read = self.reads.max_delivered(msg.user.to_string(), msg.channel);
        Box::pin(
            read.into_actor(self)
                .map(move |res, _, _| Ok(res?.max(held))),
        )
    }
}
