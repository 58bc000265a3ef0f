//! `LimitShare`: a user's limits held across the nodes of a cluster.
//!
//! Each node limits a user's frames with its own bucket and counts the places their
//! connections hold (`gate`). Every `cluster.rate_share_every` this actor tells the other
//! nodes, over the bus, how many tokens each user took here since the last time and whose
//! place count changed; every third of `cluster.node_ttl` it tells them the places of every
//! user holding one here, which is how a node that joins learns them and how a count lost
//! on the bus is set right. What the other nodes tell goes into this node's gate: their
//! spending is taken from the buckets here, their places count against
//! `limits.max_connections_per_user` here. A user thus gets one rate and one set of places
//! across the cluster, give or take what happens within one sharing interval. Nothing is
//! asked of Redis per frame or per connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use switchboard_actors::cluster::{
    ClusterLink, Envelope, PlacesElsewhere, SpentElsewhere, ToCluster,
};
use switchboard_actors::ids::UserId;

use crate::gate::ConnectionGate;

/// Most users in one bus message.
const USERS_PER_ENVELOPE: usize = 5000;

/// The sharing actor.
pub struct LimitShare {
    gate: Arc<ConnectionGate>,
    link: Addr<ClusterLink>,
    every: Duration,
    /// How often every held place is told, not only changes.
    full_every: Duration,
    last_full: Instant,
}

impl LimitShare {
    /// Shares `gate`'s per-user spending and places through `link` every `every`, and a
    /// full account of the places every third of `node_ttl` (which is also how long the
    /// gate keeps another node's count that is not told again).
    pub fn new(
        gate: Arc<ConnectionGate>,
        link: Addr<ClusterLink>,
        every: Duration,
        node_ttl: Duration,
    ) -> Self {
        gate.share_places(node_ttl);
        LimitShare {
            gate,
            link,
            every,
            full_every: node_ttl / 3,
            last_full: Instant::now(),
        }
    }

    /// Publishes `list` in envelopes of at most [`USERS_PER_ENVELOPE`] users.
    fn publish(&self, list: Vec<(UserId, u32)>, envelope: fn(Vec<(UserId, u32)>) -> Envelope) {
        for chunk in list.chunks(USERS_PER_ENVELOPE) {
            // A full link mailbox loses this interval's word: spending is then allowed a
            // little more once, and places are set right by the next full account.
            let _ = self.link.try_send(ToCluster(envelope(chunk.to_vec())));
        }
    }
}

impl Actor for LimitShare {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.every, |act, _| {
            act.publish(act.gate.drain_spent(), Envelope::RateSpent);
            let full = act.last_full.elapsed() >= act.full_every;
            if full {
                act.last_full = Instant::now();
            }
            act.publish(act.gate.drain_places(full), Envelope::Places);
        });
    }
}

impl Handler<SpentElsewhere> for LimitShare {
    type Result = ();
    fn handle(&mut self, msg: SpentElsewhere, _: &mut Context<Self>) {
        for (user, n) in msg.0 {
            self.gate.charge(&user, n);
        }
    }
}

impl Handler<PlacesElsewhere> for LimitShare {
    type Result = ();
    fn handle(&mut self, msg: PlacesElsewhere, _: &mut Context<Self>) {
        self.gate.places_elsewhere(&msg.node, msg.places);
    }
}
