//! `OfflineQueue`: what each device has not received yet.
//!
//! Messages for offline users already wait in the store (every message is persisted before
//! fan-out); this actor keeps the per-device bookkeeping. It records every device
//! (user, client_id) that connects, batched through the write batcher: what a new device's
//! bounded backlog and `sync` / `delivered` will be built on. Stateless between messages: a
//! restart loses nothing.

use std::sync::Arc;

use actix::prelude::*;

use crate::health::ActorHealth;
use crate::ids::UserId;
use crate::store::batcher::{PersistAndReply, WriteBatcher};
use crate::store::write::WriteOp;

/// The offline-queue actor.
pub struct OfflineQueue {
    batcher: Addr<WriteBatcher>,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl OfflineQueue {
    /// An offline queue writing through `batcher`.
    pub fn new(batcher: Addr<WriteBatcher>, health: Arc<ActorHealth>) -> Self {
        OfflineQueue { batcher, health }
    }
}

impl Actor for OfflineQueue {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.health.started();
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
