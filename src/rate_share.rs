//! `RateShare`: one frame-rate bucket per user across the nodes of a cluster.
//!
//! Each node limits a user's frames with its own bucket (`gate`). Every
//! `cluster.rate_share_every` this actor tells the other nodes, over the bus, how many
//! tokens each user took here since the last time, and takes what users took elsewhere
//! from their buckets here. A user with connections on several nodes thus gets one rate,
//! not one per node, give or take what fits in one sharing interval. Nothing is asked of
//! Redis per frame.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use switchboard_actors::cluster::{ClusterLink, Envelope, SpentElsewhere, ToCluster};

use crate::gate::ConnectionGate;

/// Most users in one bus message.
const USERS_PER_ENVELOPE: usize = 5000;

/// The sharing actor.
pub struct RateShare {
    gate: Arc<ConnectionGate>,
    link: Addr<ClusterLink>,
    every: Duration,
}

impl RateShare {
    /// Shares `gate`'s per-user spending through `link` every `every`.
    pub fn new(gate: Arc<ConnectionGate>, link: Addr<ClusterLink>, every: Duration) -> Self {
        RateShare { gate, link, every }
    }
}

impl Actor for RateShare {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.every, |act, _| {
            let spent = act.gate.drain_spent();
            for chunk in spent.chunks(USERS_PER_ENVELOPE) {
                // A full link mailbox loses this interval's count: the other nodes then
                // allow a little more, once.
                let _ = act
                    .link
                    .try_send(ToCluster(Envelope::RateSpent(chunk.to_vec())));
            }
        });
    }
}

impl Handler<SpentElsewhere> for RateShare {
    type Result = ();
    fn handle(&mut self, msg: SpentElsewhere, _: &mut Context<Self>) {
        for (user, n) in msg.0 {
            self.gate.charge(&user, n);
        }
    }
}
