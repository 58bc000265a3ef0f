//! Operations: `/health`, `/ready`, `/status`, `/metrics` (contract section 9).

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use serde_json::json;
use switchboard_actors::cluster::NodeInfo;
use switchboard_actors::command_proxy::BreakerState;
use switchboard_actors::health::HealthSnapshot;
use switchboard_actors::router::GetStats;
use switchboard_actors::store::batcher::BatchStatsSnapshot;
use switchboard_actors::store::health::DatabaseHealthSnapshot;
use switchboard_actors::store::sqlite::checkpointer::CheckpointStatsSnapshot;
use switchboard_actors::store::sqlite::dedupe::ResendKeySnapshot;
use switchboard_actors::tree::PoolState;
use utoipa::ToSchema;

use crate::state::AppState;

/// `GET /health` reply.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "The process serves HTTP", body = Health)),
)]
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

async fn database_ok(app: &AppState) -> Result<(), String> {
    let check = app.tree.reads.ping();
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

async fn redis_ok(pool: &deadpool_redis::Pool) -> Result<(), String> {
    let ping = async {
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        deadpool_redis::redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".into()),
    }
}

fn verdict(r: &Result<(), String>) -> serde_json::Value {
    match r {
        Ok(()) => json!("ok"),
        Err(e) => json!({ "error": e }),
    }
}

/// `GET /ready` reply (fields in name order, as always sent).
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `"ok"` or `{"error": "…"}`.
    database: serde_json::Value,
    /// `"ok"`, `{"error": "…"}` or `"not configured"`.
    redis: serde_json::Value,
    /// `ready` or `unavailable`.
    status: &'static str,
}

/// Readiness: the database (and Redis, when configured) answer.
#[utoipa::path(get, path = "/ready", tag = "operations",
    summary = "Readiness: the database (and Redis, when configured) answer",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, with the reason", body = Readiness),
    ),
)]
pub async fn ready(app: web::Data<AppState>) -> HttpResponse {
    let db = database_ok(&app).await;
    let redis = match &app.redis {
        Some(pool) => Some(redis_ok(pool).await),
        None => None,
    };
    let ok = db.is_ok() && redis.as_ref().is_none_or(|r| r.is_ok());
    let body = Readiness {
        database: verdict(&db),
        redis: redis
            .as_ref()
            .map(verdict)
            .unwrap_or(json!("not configured")),
        status: if ok { "ready" } else { "unavailable" },
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /status` reply (docs/OPERATIONS.md, "Status").
#[derive(Serialize, ToSchema)]
pub struct StatusDocument {
    /// `ok` when every supervised actor runs and answers its mailbox probe, else
    /// `degraded`.
    #[schema(value_type = String)]
    status: &'static str,
    /// Seconds since the process started.
    uptime_s: u64,
    /// Each supervised actor (or pool of sync actors).
    actors: Vec<HealthSnapshot>,
    /// Client connections.
    connections: ConnectionsStatus,
    /// Channel actors.
    channels: ChannelsStatus,
    /// The store.
    database: DatabaseStatus,
    /// The Redis link.
    redis: RedisStatus,
    /// The cluster (docs/CLUSTER.md).
    cluster: ClusterStatus,
    /// Push delivery; `null` without push.
    push: Option<PushStatus>,
    /// The command proxy.
    command: CommandStatus,
}

/// `configured: false`: the part of [`StatusDocument`] of something not set up.
#[derive(Serialize, ToSchema)]
pub struct NotConfigured {
    /// `false`.
    configured: bool,
}

/// `cluster` of [`StatusDocument`].
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ClusterStatus {
    /// A node alone (no `redis.url`).
    Alone(NotConfigured),
    /// A node of a cluster.
    Joined(ClusterLinkStatus),
}

/// [`ClusterStatus`] of a node in a cluster.
#[derive(Serialize, ToSchema)]
pub struct ClusterLinkStatus {
    /// `true`.
    configured: bool,
    /// This node's id.
    node_id: String,
    /// The publishing connection to Redis is up.
    publisher_up: bool,
    /// The bus subscription is up.
    bus_up: bool,
    /// Envelopes published.
    published: u64,
    /// Envelopes received from other nodes.
    received: u64,
    /// Envelopes not published (Redis down or the outbox full).
    dropped: u64,
    /// Bus messages that were not envelopes.
    malformed: u64,
    /// Messages read back from the database to fill a seq gap.
    filled_from_database: u64,
    /// Times the link asked the other nodes to announce their heads.
    resyncs: u64,
    /// The nodes whose heartbeat is current.
    nodes: Vec<NodeInfo>,
}

/// `push` of [`StatusDocument`].
#[derive(Serialize, ToSchema)]
pub struct PushStatus {
    /// Events the webhook accepted.
    sent: u64,
    /// Events given up after every try.
    failed: u64,
    /// Events dropped because the queue was full.
    dropped: u64,
}

/// `command` of [`StatusDocument`].
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum CommandStatus {
    /// No backend (`command.backend_url` unset).
    Alone(NotConfigured),
    /// A backend is set.
    Proxied(CommandProxyStatus),
}

/// [`CommandStatus`] with a backend.
#[derive(Serialize, ToSchema)]
pub struct CommandProxyStatus {
    /// `true`.
    configured: bool,
    /// The circuit breaker.
    breaker: BreakerState,
    /// Calls under way.
    in_flight: u64,
    /// Calls answered with a 2xx.
    ok: u64,
    /// Calls answered with an error frame by the backend's doing (4xx, 5xx, timeout…).
    failed: u64,
    /// Calls refused without calling (breaker open or too many in flight).
    rejected: u64,
}

/// `connections` of [`StatusDocument`].
#[derive(Serialize, ToSchema)]
pub struct ConnectionsStatus {
    /// Open, authenticated connections.
    total: usize,
    /// Distinct users connected.
    users: usize,
    /// Connections by device (`unknown` when the client did not say).
    by_device: BTreeMap<String, usize>,
    /// Connections by transport (`websocket`, `sse`, `poll`).
    #[schema(value_type = BTreeMap<String, usize>)]
    by_transport: BTreeMap<&'static str, usize>,
    /// Connections holding a place under `limits.max_connections`, authenticated or not.
    admitted: usize,
    /// Connections upgraded without a token that have not sent `auth` yet.
    pending: usize,
}

/// `channels` of [`StatusDocument`].
#[derive(Serialize, ToSchema)]
pub struct ChannelsStatus {
    /// Channels in the router's registry.
    active: usize,
    /// Channel actors alive, in the registry or finishing an idle stop.
    actors: usize,
}

/// `database` of [`StatusDocument`].
#[derive(Serialize, ToSchema)]
pub struct DatabaseStatus {
    /// `sqlite` or `postgres`.
    #[schema(value_type = String)]
    backend: &'static str,
    /// Errors and the last failure.
    health: DatabaseHealthSnapshot,
    /// The connection pool.
    pool: PoolState,
    /// Write batches so far.
    writes: BatchStatsSnapshot,
    /// SQLite's WAL checkpoints (zero on PostgreSQL).
    wal_checkpoints: CheckpointStatsSnapshot,
    /// Resend keys held in memory (also `resend_keys.in_memory`).
    resend_keys_in_memory: u64,
    /// SQLite's resend-key index.
    resend_keys: ResendKeySnapshot,
    /// SQLite's in-memory channel places (`null` on PostgreSQL).
    channel_places_in_memory: Option<usize>,
}

/// `redis` of [`StatusDocument`].
#[derive(Serialize, ToSchema)]
pub struct RedisStatus {
    /// Whether `redis.url` is set.
    configured: bool,
    /// Whether the cluster link reaches Redis now (`null` without a cluster).
    up: Option<bool>,
}

/// Actor health, connections and store state.
#[utoipa::path(get, path = "/status", tag = "operations",
    summary = "Actor health, connections, store state (docs/OPERATIONS.md)",
    responses((status = 200, description = "The status document", body = StatusDocument)),
)]
pub async fn status(app: web::Data<AppState>) -> HttpResponse {
    let actors = app.tree.health.snapshot(Duration::from_secs(1)).await;
    let stats = app.tree.router.send(GetStats).await.unwrap_or_default();
    let healthy = actors
        .iter()
        .all(|a| a.state == "running" && a.mailbox.is_some());
    let resend_keys = app.tree.resend_keys.snapshot();
    HttpResponse::Ok().json(StatusDocument {
        status: if healthy { "ok" } else { "degraded" },
        uptime_s: app.started.elapsed().as_secs(),
        actors,
        connections: ConnectionsStatus {
            total: stats.connections,
            users: stats.users,
            by_device: stats.by_device,
            by_transport: stats.by_transport,
            admitted: app.gate.connections(),
            pending: app.gate.pending(),
        },
        channels: ChannelsStatus {
            active: stats.active_channels,
            actors: stats.live_channel_actors,
        },
        database: DatabaseStatus {
            backend: app.tree.pools.backend(),
            health: app.tree.database.snapshot(),
            pool: app.tree.pools.state(),
            writes: app.tree.batch_stats.snapshot(),
            wal_checkpoints: app.tree.checkpoint_stats.snapshot(),
            resend_keys_in_memory: resend_keys.in_memory,
            resend_keys,
            channel_places_in_memory: app.tree.reads.index().map(|i| i.held()),
        },
        redis: RedisStatus {
            configured: app.redis.is_some(),
            up: app.tree.cluster.as_ref().map(|(_, s)| s.up()),
        },
        cluster: cluster_status(&app),
        push: app.tree.push.as_ref().map(|p| {
            use std::sync::atomic::Ordering::Relaxed;
            PushStatus {
                sent: p.sent.load(Relaxed),
                failed: p.failed.load(Relaxed),
                dropped: p.dropped.load(Relaxed),
            }
        }),
        command: command_status(&app),
    })
}

/// The cluster's part of `/status`: this node, the link's counters and every node whose
/// heartbeat is current.
fn cluster_status(app: &AppState) -> ClusterStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let Some((_, s)) = &app.tree.cluster else {
        return ClusterStatus::Alone(NotConfigured { configured: false });
    };
    ClusterStatus::Joined(ClusterLinkStatus {
        configured: true,
        node_id: s.node_id.to_string(),
        publisher_up: s.publisher_up.load(Relaxed),
        bus_up: s.bus_up.load(Relaxed),
        published: s.published.load(Relaxed),
        received: s.received.load(Relaxed),
        dropped: s.dropped.load(Relaxed),
        malformed: s.malformed.load(Relaxed),
        filled_from_database: s.filled.load(Relaxed),
        resyncs: s.resyncs.load(Relaxed),
        nodes: s.nodes(),
    })
}

/// The command proxy's part of `/status`.
fn command_status(app: &AppState) -> CommandStatus {
    use std::sync::atomic::Ordering::Relaxed;
    let Some((_, s)) = &app.tree.command else {
        return CommandStatus::Alone(NotConfigured { configured: false });
    };
    CommandStatus::Proxied(CommandProxyStatus {
        configured: true,
        breaker: s.breaker(),
        in_flight: s.in_flight.load(Relaxed),
        ok: s.ok.load(Relaxed),
        failed: s.failed.load(Relaxed),
        rejected: s.rejected.load(Relaxed),
    })
}

/// `GET /metrics`: every metric in the Prometheus text format. Gauges of state owned
/// elsewhere (connections, channel actors, mailboxes) are read now, and the restart
/// counters are brought up to date.
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus text format",
    responses((status = 200, description = "Metrics", content_type = "text/plain", body = String)),
)]
pub async fn metrics(app: web::Data<AppState>) -> HttpResponse {
    let m = switchboard_actors::metrics::metrics();
    let actors = app.tree.health.snapshot(Duration::from_secs(1)).await;
    let stats = app.tree.router.send(GetStats).await.unwrap_or_default();
    // The gauges are the process's; one scrape at a time sets and encodes them.
    static SCRAPE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SCRAPE.lock().unwrap_or_else(|e| e.into_inner());
    m.connections.reset();
    for ((transport, device), n) in &stats.by_transport_device {
        m.connections
            .with_label_values(&[*transport, device.as_str()])
            .set(*n as i64);
    }
    m.channels.set(stats.active_channels as i64);
    for a in &actors {
        let mailbox = a.mailbox.map_or(-1, |n| n as i64);
        m.mailbox.with_label_values(&[&a.name]).set(mailbox);
        // A counter: it only grows, by what the actor's health cell counted since.
        let restarts = m.restarts.with_label_values(&[&a.name]);
        restarts.inc_by(u64::from(a.restarts).saturating_sub(restarts.get()));
    }
    if let Some((_, s)) = &app.tree.cluster {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = [
            ("redis_up", i64::from(s.up())),
            ("nodes", s.nodes().len() as i64),
            ("published", s.published.load(Relaxed) as i64),
            ("received", s.received.load(Relaxed) as i64),
            ("dropped", s.dropped.load(Relaxed) as i64),
            ("malformed", s.malformed.load(Relaxed) as i64),
            ("filled_from_database", s.filled.load(Relaxed) as i64),
            ("resyncs", s.resyncs.load(Relaxed) as i64),
        ];
        for (what, n) in counters {
            m.cluster.with_label_values(&[what]).set(n);
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(m.encode())
}
