//! `SyncEngine`: small per-user documents kept in sync across devices.
//!
//! Part of the supervision tree from the start so that `/status` and restarts cover it;
//! `state_sync` and the `/api/state` endpoints arrive with the sync issue, which gives it
//! its messages. It holds no state yet, so a restart loses nothing.

use std::sync::Arc;

use actix::prelude::*;

use crate::health::ActorHealth;

/// The sync-engine actor.
pub struct SyncEngine {
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl Actor for SyncEngine {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.health.started();
    }
}

impl Supervised for SyncEngine {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
    }
}

crate::health_handlers!(SyncEngine);
