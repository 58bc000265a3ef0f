//! The supervision tree: starts every long-lived actor once and hands out their addresses.
//!
//! ```text
//! System
//! ├── Supervisor ── Router ─────────┬── Supervisor ── ChannelActor (one per active channel)
//! │                                 └── SessionHandle (one per connection, not supervised)
//! ├── Supervisor ── PresenceTracker
//! ├── Supervisor ── OfflineQueue
//! ├── Supervisor ── SyncEngine
//! ├── Supervisor ── PushNotifier, CommandProxy (when configured)
//! ├── Supervisor ── ClusterLink (with `redis.url`) ── bus reader task
//! ├── Supervisor ── WriteBatcher ─┬── SyncArbiter ── MessageWriter (SQLite) or PgWriter
//! │                               │                  × writer_threads
//! │                               └── SyncArbiter ── WalCheckpointer (SQLite)
//! └── SyncArbiter ── StoreReader × reader_threads
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;

use crate::channel::ChannelCluster;
use crate::cluster::{BadRedisUrl, ClusterConfig, ClusterLink, ClusterStats, LocalEnds};
use crate::command_proxy::{CommandConfig, CommandProxy, CommandStats};
use crate::health::{ActorHealth, Crash, HealthBoard};
use crate::ids::MessageIds;
use crate::offline_queue::OfflineQueue;
use crate::presence::PresenceTracker;
use crate::push_notifier::{PushConfig, PushNotifier, PushStats};
use crate::router::{PushRoute, Router, RouterConfig};
use crate::store::batcher::{BatchConfig, BatchStats, CheckpointPlan, WriteBatcher, Writes};
use crate::store::health::DatabaseHealth;
use crate::store::postgres::writer::{PgPool, PgWriter};
use crate::store::reader::{Reads, StoreReader};
use crate::store::sealing::Sealer;
use crate::store::sqlite::channel_index::ChannelIndex;
use crate::store::sqlite::checkpointer::{CheckpointStats, WalCheckpointer};
use crate::store::sqlite::dedupe::{DedupeKeys, ResendKeyStats};
use crate::store::sqlite::writer::{MessageWriter, WriterMemory};
use crate::store::write::WriteBatch;
use crate::store::DbPool;
use crate::sync_engine::SyncEngine;

/// The store a tree runs on, opened (and, for SQLite, read back) by the server's start-up.
// Made once at start-up and consumed by `Tree::start`: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StoreBackend {
    /// The embedded database, with the resend keys and channel places read back from it.
    Sqlite {
        /// Its pool.
        pool: DbPool,
        /// Resend keys of recent messages.
        keys: DedupeKeys,
        /// Places of recent messages.
        index: ChannelIndex,
    },
    /// A PostgreSQL database, possibly shared with other broker processes.
    Postgres {
        /// Its pool.
        pool: PgPool,
    },
}

/// The pool of the backend in use.
#[derive(Clone)]
pub enum StorePools {
    /// SQLite's.
    Sqlite(DbPool),
    /// PostgreSQL's.
    Postgres(PgPool),
}

impl StorePools {
    /// The backend's name, as `/status` shows it.
    pub fn backend(&self) -> &'static str {
        match self {
            StorePools::Sqlite(_) => "sqlite",
            StorePools::Postgres(_) => "postgres",
        }
    }

    /// The pool's size and use, for `/status`.
    pub fn state(&self) -> PoolState {
        let (max, s) = match self {
            StorePools::Sqlite(p) => (p.max_size(), p.state()),
            StorePools::Postgres(p) => (p.max_size(), p.state()),
        };
        PoolState {
            max,
            open: s.connections,
            idle: s.idle_connections,
            in_use: s.connections.saturating_sub(s.idle_connections),
        }
    }
}

/// A connection pool's size and use.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct PoolState {
    /// Connections it may open.
    pub max: u32,
    /// Connections open now.
    pub open: u32,
    /// Open and waiting for work.
    pub idle: u32,
    /// Checked out by a reader or writer.
    pub in_use: u32,
}

/// Settings of the tree.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    /// Writer threads. SQLite has one writer at a time, so 1 is right for it.
    pub writer_threads: usize,
    /// Reader threads.
    pub reader_threads: usize,
    /// Batching limits.
    pub batch: BatchConfig,
    /// How long after a commit the WAL checkpointer copies the WAL into the database file;
    /// zero: no checkpointer, commits checkpoint by themselves.
    pub wal_checkpoint_after: Duration,
    /// Idle channel actors stop after this long.
    pub channel_idle: Duration,
    /// Offline grace period (presence).
    pub presence_grace: Duration,
    /// Most users one connection watches (presence).
    pub presence_max_watched: usize,
    /// The push hook, if configured.
    pub push: Option<PushConfig>,
    /// The command backend, if configured.
    pub command: Option<CommandConfig>,
    /// Encryption at rest: seals payloads and state documents (`None`: stored as sent).
    pub sealer: Option<Arc<Sealer>>,
    /// The cluster this node joins (`None`: it runs alone).
    pub cluster: Option<ClusterConfig>,
}

/// Addresses of the running tree.
#[derive(Clone)]
pub struct Tree {
    /// Session and channel registries.
    pub router: Addr<Router>,
    /// The push hook's counters, when one is configured.
    pub push: Option<Arc<PushStats>>,
    /// The command proxy and its counters, when a backend is configured.
    pub command: Option<(Addr<CommandProxy>, Arc<CommandStats>)>,
    /// The cluster link and its counters, when this node is one of several.
    pub cluster: Option<(Addr<ClusterLink>, Arc<ClusterStats>)>,
    /// Write batching in front of the writers.
    pub batcher: Addr<WriteBatcher>,
    /// Who is online.
    pub presence: Addr<PresenceTracker>,
    /// Per-device delivery bookkeeping.
    pub offline: Addr<OfflineQueue>,
    /// Synced documents.
    pub sync: Addr<SyncEngine>,
    /// The store's read operations.
    pub reads: Reads,
    /// The store's write operations other than messages (groups), through the batcher.
    pub writes: Writes,
    /// The backend's connection pool (`/status`).
    pub pools: StorePools,
    /// Whether the database answers (`/status`).
    pub database: Arc<DatabaseHealth>,
    /// Health of every actor above.
    pub health: Arc<HealthBoard>,
    /// What the write batcher committed.
    pub batch_stats: Arc<BatchStats>,
    /// What the WAL checkpointer did.
    pub checkpoint_stats: Arc<CheckpointStats>,
    /// Where the resend keys are: in memory, or in runs of `dedupe_runs` (`store::dedupe`).
    pub resend_keys: Arc<ResendKeyStats>,
}

impl Tree {
    /// Starts the tree on the current actix system, on `store`, whose readers and writers
    /// report to `database`.
    pub fn start(
        cfg: TreeConfig,
        store: StoreBackend,
        database: Arc<DatabaseHealth>,
    ) -> Result<Tree, BadRedisUrl> {
        let board = HealthBoard::new();
        let resend_keys = Arc::new(ResendKeyStats::default());
        let h = ActorHealth::new("store_writer");
        let hw = h.clone();
        let hr = ActorHealth::new("store_reader");
        let dw = database.clone();
        let (writers, reads, pools, sqlite_pool): (Recipient<WriteBatch>, Reads, StorePools, _) =
            match store {
                StoreBackend::Sqlite { pool, keys, index } => {
                    let p = pool.clone();
                    resend_keys.record(&keys);
                    let mut mem = WriterMemory::new(keys, index.clone());
                    mem.sealer = cfg.sealer.clone();
                    let memory = Arc::new(Mutex::new(mem));
                    let held = resend_keys.clone();
                    let writers =
                        SyncArbiter::start(cfg.writer_threads.max(1), move || MessageWriter {
                            pool: p.clone(),
                            health: hw.clone(),
                            memory: memory.clone(),
                            key_stats: held.clone(),
                            database: dw.clone(),
                        });
                    board.register(h, writers.clone().recipient());
                    let readers = StoreReader::start(
                        cfg.reader_threads,
                        pool.clone(),
                        hr.clone(),
                        database.clone(),
                    );
                    board.register(hr, readers.clone().recipient());
                    let reads = Reads::Sqlite {
                        addr: readers,
                        index,
                        sealer: cfg.sealer.clone(),
                    };
                    let pools = StorePools::Sqlite(pool.clone());
                    (writers.recipient(), reads, pools, Some(pool))
                }
                StoreBackend::Postgres { pool } => {
                    let p = pool.clone();
                    let sealer = cfg.sealer.clone();
                    let writers = SyncArbiter::start(cfg.writer_threads.max(1), move || PgWriter {
                        pool: p.clone(),
                        ids: MessageIds::default(),
                        health: hw.clone(),
                        database: dw.clone(),
                        sealer: sealer.clone(),
                    });
                    board.register(h, writers.clone().recipient());
                    let readers = StoreReader::start(
                        cfg.reader_threads,
                        pool.clone(),
                        hr.clone(),
                        database.clone(),
                    );
                    board.register(hr, readers.clone().recipient());
                    let reads = Reads::Postgres {
                        addr: readers,
                        sealer: cfg.sealer.clone(),
                    };
                    (writers.recipient(), reads, StorePools::Postgres(pool), None)
                }
            };

        let checkpoint_stats = Arc::new(CheckpointStats::default());
        let checkpoints = sqlite_pool
            .filter(|_| !cfg.wal_checkpoint_after.is_zero())
            .map(|pool| {
                let h = ActorHealth::new("wal_checkpointer");
                let (p, hh, st) = (pool.clone(), h.clone(), checkpoint_stats.clone());
                let to = SyncArbiter::start(1, move || WalCheckpointer {
                    pool: p.clone(),
                    health: hh.clone(),
                    stats: st.clone(),
                });
                board.register(h, to.clone().recipient());
                CheckpointPlan {
                    to,
                    after: cfg.wal_checkpoint_after,
                }
            });

        let h = ActorHealth::new("write_batcher");
        let batch_stats = Arc::new(BatchStats::default());
        let (bc, st, hh) = (cfg.batch.clone(), batch_stats.clone(), h.clone());
        let batcher =
            Supervisor::start(move |_| WriteBatcher::new(writers, bc, checkpoints, st, hh));
        board.register(h, batcher.clone().recipient());

        let cluster = match cfg.cluster.clone() {
            Some(ccfg) => {
                let h = ActorHealth::new("cluster_link");
                let stats = Arc::new(ClusterStats::new(ccfg.node_id.clone()));
                let link = ClusterLink::new(ccfg.clone(), stats.clone(), h.clone())?;
                let link = Supervisor::start(move |_| link);
                board.register(h, link.clone().recipient());
                Some(ChannelCluster {
                    link,
                    gap_wait: ccfg.gap_wait,
                    late_window: ccfg.late_window,
                    stats,
                })
            }
            None => None,
        };

        let h = ActorHealth::new("presence_tracker");
        let (grace, watched, hh) = (cfg.presence_grace, cfg.presence_max_watched, h.clone());
        let link = cluster.as_ref().map(|c| c.link.clone());
        let presence =
            Supervisor::start(move |_| PresenceTracker::new(grace, watched, hh).in_cluster(link));
        board.register(h, presence.clone().recipient());

        let h = ActorHealth::new("offline_queue");
        let (b, r, hh) = (batcher.clone(), reads.clone(), h.clone());
        let offline = Supervisor::start(move |_| OfflineQueue::new(b, r, hh));
        board.register(h, offline.clone().recipient());

        let push = cfg.push.clone().map(|pcfg| {
            let h = ActorHealth::new("push_notifier");
            let stats = Arc::new(PushStats::default());
            let awaits = !pcfg.ack_delay.is_zero();
            let (st, o, hh) = (stats.clone(), offline.clone(), h.clone());
            let p = cluster.as_ref().map(|_| presence.clone());
            let notifier = Supervisor::start(move |_| {
                PushNotifier::new(pcfg.clone(), o.clone(), st.clone(), hh).in_cluster(p)
            });
            board.register(h, notifier.clone().recipient());
            PushRoute {
                offline: notifier.clone().recipient(),
                await_delivered: awaits.then(|| notifier.recipient()),
                stats,
            }
        });
        let push_stats = push.as_ref().map(|p| p.stats.clone());

        let h = ActorHealth::new("router");
        let rcfg = RouterConfig {
            channel_idle: cfg.channel_idle,
            push,
            cluster: cluster.clone(),
        };
        let (b, r, p, o, hh) = (
            batcher.clone(),
            reads.clone(),
            presence.clone(),
            offline.clone(),
            h.clone(),
        );
        let router = Supervisor::start(move |_| Router::new(b, r, p, o, rcfg, hh));
        board.register(h, router.clone().recipient());
        if let Some(c) = &cluster {
            c.link.do_send(LocalEnds {
                router: router.clone().recipient(),
                live_nodes: presence.clone().recipient(),
                share_all: presence.clone().recipient(),
                nodes_gone: router.clone().recipient(),
            });
        }

        let h = ActorHealth::new("sync_engine");
        let (b, r, hh) = (batcher.clone(), router.clone(), h.clone());
        let sync = Supervisor::start(move |_| SyncEngine::new(b, r, hh));
        board.register(h, sync.clone().recipient());

        let command = cfg.command.clone().map(|ccfg| {
            let h = ActorHealth::new("command_proxy");
            let stats = Arc::new(CommandStats::default());
            let (st, hh) = (stats.clone(), h.clone());
            let proxy = Supervisor::start(move |_| CommandProxy::new(ccfg.clone(), st.clone(), hh));
            board.register(h, proxy.clone().recipient());
            (proxy, stats)
        });

        Ok(Tree {
            push: push_stats,
            command,
            cluster: cluster.map(|c| (c.link, c.stats)),
            router,
            writes: Writes::new(batcher.clone()),
            batcher,
            presence,
            offline,
            sync,
            reads,
            pools,
            database,
            health: board,
            batch_stats,
            checkpoint_stats,
            resend_keys,
        })
    }

    /// Makes the named supervised actor fail (fault drills). False for an unknown name.
    pub fn crash(&self, name: &str, reason: &str) -> bool {
        let msg = Crash {
            reason: reason.to_owned(),
        };
        match name {
            "router" => self.router.do_send(msg),
            "write_batcher" => self.batcher.do_send(msg),
            "presence_tracker" => self.presence.do_send(msg),
            "offline_queue" => self.offline.do_send(msg),
            "sync_engine" => self.sync.do_send(msg),
            _ => return false,
        }
        true
    }
}
