//! The cluster link's settings, and what it reports: its counters and the node list.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::ids::now_ms;

/// Settings of the cluster link.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://…`.
    pub url: String,
    /// This node's id, unique in the cluster.
    pub node_id: Arc<str>,
    /// Where clients and operators reach this node, as the node list shows it.
    pub advertise_url: String,
    /// Prefix of every Redis key and of the bus channel (`{prefix}:bus`).
    pub key_prefix: String,
    /// How often this node renews its entry in the node list.
    pub heartbeat: Duration,
    /// A node missing from the list's heartbeats for this long is gone.
    pub node_ttl: Duration,
    /// How long a channel waits for a missing seq to come by the bus before reading it
    /// from the database.
    pub gap_wait: Duration,
    /// How late a message may reach a node by the bus; also how far back a channel that
    /// starts on a node delivers what was just committed.
    pub late_window: Duration,
    /// How long the link remembers the channels it committed to, to announce their heads
    /// after a bus outage.
    pub replay_window: Duration,
    /// Most channels remembered for that.
    pub replay_channels: usize,
    /// Most envelopes waiting to be published; beyond, they are dropped (and their
    /// channels' heads announced later).
    pub outbox: usize,
}

impl ClusterConfig {
    /// The bus channel.
    pub fn bus(&self) -> String {
        format!("{}:bus", self.key_prefix)
    }

    pub(super) fn nodes_key(&self) -> String {
        format!("{}:nodes", self.key_prefix)
    }

    pub(super) fn node_key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.key_prefix)
    }
}

/// One node of the cluster, as its heartbeat describes it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct NodeInfo {
    /// Its id.
    pub id: String,
    /// Where it is reached.
    pub url: String,
    /// When it started (ms since the epoch).
    pub started_at: i64,
    /// Its last heartbeat (ms since the epoch).
    pub seen_at: i64,
}

/// What the link did, for `/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// This node's id.
    pub node_id: Arc<str>,
    /// The publishing connection is up.
    pub publisher_up: AtomicBool,
    /// The bus subscription is up.
    pub bus_up: AtomicBool,
    /// Envelopes published.
    pub published: AtomicU64,
    /// Envelopes received from other nodes.
    pub received: AtomicU64,
    /// Envelopes not published (Redis down or the outbox full).
    pub dropped: AtomicU64,
    /// Bus messages that were not envelopes.
    pub malformed: AtomicU64,
    /// Messages read back from the database to fill seq gaps.
    pub filled: AtomicU64,
    /// Times the link asked the others to announce their heads.
    pub resyncs: AtomicU64,
    /// The cluster's nodes at the last heartbeat.
    pub nodes: Mutex<Vec<NodeInfo>>,
    /// When (ms) an envelope last found the link's mailbox full (0: not since the link
    /// looked): the link then announces heads from that time.
    mailbox_full_at: AtomicI64,
}

impl ClusterStats {
    /// Counters of node `node_id`, all zero.
    pub fn new(node_id: Arc<str>) -> Self {
        ClusterStats {
            node_id,
            ..ClusterStats::default()
        }
    }

    /// Both connections are up.
    pub fn up(&self) -> bool {
        self.publisher_up.load(Ordering::Relaxed) && self.bus_up.load(Ordering::Relaxed)
    }

    /// An envelope found the link's mailbox full and was dropped.
    pub fn mailbox_full(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let _ = self.mailbox_full_at.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// When the mailbox was last found full, once.
    pub(super) fn take_mailbox_full(&self) -> Option<i64> {
        Some(self.mailbox_full_at.swap(0, Ordering::Relaxed)).filter(|t| *t != 0)
    }

    /// The node list at the last heartbeat.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.lock().map(|n| n.clone()).unwrap_or_default()
    }
}
