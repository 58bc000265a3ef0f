//! Building and running the application: open the store, start the actor tree, bind HTTP,
//! and shut down gracefully (contract section 9).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Supervisor};
use actix_http::HttpService;
use actix_server::{Server, ServerHandle};
use actix_service::{fn_service, map_config};
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::AppConfig;
use actix_web::{web, App};
use switchboard_actors::cluster::{AttachLimiter, AttachRevocations, ClusterConfig, Leave};
use switchboard_actors::command_proxy::CommandConfig;
use switchboard_actors::health::ActorHealth;
use switchboard_actors::ids::ConnId;
use switchboard_actors::push_notifier::PushConfig;
use switchboard_actors::router::CloseAll;
use switchboard_actors::store::batcher::{BatchConfig, Drain};
use switchboard_actors::store::health::DatabaseHealth;
use switchboard_actors::store::sqlite::dedupe::DedupeSettings;
use switchboard_actors::store::{self, DatabaseLock, DbPool, StoreConfig, StoreError};
use switchboard_actors::tree::{StoreBackend, Tree, TreeConfig};
use tokio::net::TcpStream;

use crate::api_keys::ApiKeys;
use crate::auth::{Authority, KeyError};
use crate::config::Settings;
use crate::gate::ConnectionGate;
use crate::limit_share::LimitShare;
use crate::revocation_watch::RevocationWatch;
use crate::routes;
use crate::service_manager;
use crate::session::close;
use crate::state::AppState;

/// Seconds the HTTP workers get to stop once sessions are closed and writes flushed.
const WORKER_STOP_S: u64 = 1;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Token keys are missing or bad.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Redis settings are invalid.
    #[error("redis: {0}")]
    Redis(String),
    /// The TLS certificate or key is unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// The encryption keys are unusable.
    #[error("encryption: {0}")]
    Encryption(String),
    /// The port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// host:port.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Puts the calling thread in Linux's SCHED_BATCH scheduling class
/// (`server.batch_scheduling`). Threads inherit the class of the thread that creates them:
/// `serve` calls this on the engine's thread after the database threads have started and
/// before the WebSocket workers do, so the engine and the workers are SCHED_BATCH and the
/// database threads are not.
///
/// Why: every publish crosses from a session's thread to the engine's, and every delivery
/// back. In the default class a woken thread preempts the running one at once, so on a
/// busy core they switch about once per message. A SCHED_BATCH thread is not favoured on
/// wake-up: it runs when the other yields, and then handles everything that arrived
/// meanwhile. The writer, whose commit every ack waits for, keeps the default class and so
/// still runs as soon as its sync returns. Elsewhere than Linux this does nothing.
pub fn enter_batch_scheduling() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param that outlives the call, which only reads
        // it; pid 0 names the calling thread.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Opens the database and applies pending migrations; errors met opening connections go to
/// `database`.
pub fn open_store(
    settings: &Settings,
    database: Arc<DatabaseHealth>,
) -> Result<DbPool, StoreError> {
    let cfg = StoreConfig {
        url: settings.database_url(),
        pool_size: settings.database.pool_size,
        synchronous: settings.database.sqlite_synchronous,
        wal_autocheckpoint: settings.database.sqlite_wal_autocheckpoint,
        page_size: settings.database.sqlite_page_size,
    };
    let pool = store::open_pool(&cfg, database)?;
    let applied = store::run_migrations(&pool)?;
    if !applied.is_empty() {
        log::info!("applied migrations: {}", applied.join(", "));
    }
    Ok(pool)
}

/// Applies pending migrations to the configured database, SQLite or PostgreSQL
/// (`switchboard migrate`), and says what it did.
pub fn migrate(settings: &Settings) -> Result<(), StoreError> {
    let url = settings.database_url();
    if store::postgres::is_postgres_url(&url) {
        let applied = store::postgres::migrate(&url)?;
        println!(
            "PostgreSQL migrations applied: {}",
            if applied.is_empty() {
                "none pending".to_owned()
            } else {
                applied.join(", ")
            }
        );
        return Ok(());
    }
    open_store(settings, Default::default())?;
    println!("migrations applied to {url}");
    Ok(())
}

/// A built, bound application, not yet running.
pub struct Application {
    port: u16,
    server: Server,
    state: web::Data<AppState>,
    /// Held while the server runs (SQLite: one broker process per database file).
    lock: Option<DatabaseLock>,
}

impl Application {
    /// Opens the store, starts the actor tree and binds the listener. Must run inside an
    /// actix system.
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        let auth = Authority::from_settings(&settings)?;
        // Bind before starting anything, so a taken port fails cleanly.
        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&addr).map_err(|source| StartupError::Bind {
            addr: addr.clone(),
            source,
        })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let db = &settings.database;
        let url = settings.database_url();
        let database = Arc::new(DatabaseHealth::default());
        let postgres = store::postgres::is_postgres_url(&url);
        let writers = db.writers(postgres);
        if !postgres && db.writer_threads > 1 {
            log::warn!("database.writer_threads is 1 on SQLite (one writer at a time)");
        }
        let (lock, backend) = if postgres {
            // Several broker processes may share a PostgreSQL database: no lock.
            let applied = store::postgres::migrate(&url)?;
            if !applied.is_empty() {
                log::info!("applied PostgreSQL migrations: {}", applied.join(", "));
            }
            let pool = store::postgres::open_pool(
                &url,
                db.pool_size,
                db.statement_timeout,
                database.clone(),
            )?;
            auth.revoke_all(store::postgres::revoked_jtis(&pool)?);
            (None, StoreBackend::Postgres { pool })
        } else {
            let lock = store::lock_database(&url)?;
            let pool = open_store(&settings, database.clone())?;
            if db.dedupe_slices.is_some() {
                log::warn!(
                    "database.dedupe_slices is no longer used (see database.dedupe_run_keys)"
                );
            }
            let start = store::read_start_state(
                &pool,
                DedupeSettings {
                    run_keys: db.dedupe_run_keys,
                    window_ms: db.dedupe_window.as_millis() as i64,
                    filter_bytes: (db.resend_filter_mib as usize) << 20,
                },
            )?;
            auth.revoke_all(start.revoked_jtis);
            let (keys, index) = (start.keys, start.index);
            log::info!(
                "resend keys read back from recent messages: {}",
                keys.pending()
            );
            log::info!(
                "channel places read back from recent messages: {}",
                index.held()
            );
            (Some(lock), StoreBackend::Sqlite { pool, keys, index })
        };
        ConnId::number_after(rand::random());
        let cluster = (!settings.redis.url.is_empty()).then(|| cluster_config(&settings, port));
        let redis = if settings.redis.url.is_empty() {
            None
        } else {
            let cfg = deadpool_redis::Config::from_url(settings.redis.url.clone());
            Some(
                cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1))
                    .map_err(|e| StartupError::Redis(e.to_string()))?,
            )
        };
        let tree = Tree::start(
            TreeConfig {
                writer_threads: writers,
                reader_threads: db.reader_threads,
                batch: BatchConfig {
                    max_batch: db.batch_max.max(1),
                    max_pending: db.max_pending_writes.max(1),
                    dedupe_window_ms: db.dedupe_window.as_millis() as i64,
                    lanes: writers,
                },
                wal_checkpoint_after: db.sqlite_checkpoint_after,
                channel_idle: settings.channels.idle_timeout,
                presence_grace: settings.presence.offline_grace,
                presence_max_watched: settings.presence.max_watched.max(1),
                push: (!settings.push.webhook_url.is_empty()).then(|| PushConfig {
                    url: settings.push.webhook_url.clone(),
                    queue: settings.push.queue.max(1),
                    attempts: settings.push.attempts.max(1),
                    timeout: settings.push.timeout,
                    ack_delay: settings.push.ack_delay,
                }),
                sealer: settings
                    .encryption
                    .sealer()
                    .map_err(StartupError::Encryption)?
                    .map(Arc::new),
                command: (!settings.command.backend_url.is_empty()).then(|| {
                    let c = &settings.command;
                    CommandConfig {
                        url: c.backend_url.clone(),
                        secret: c.secret.clone(),
                        timeout: c.timeout,
                        max_in_flight: c.max_in_flight,
                        breaker_failures: c.breaker_failures,
                        breaker_cooldown: c.breaker_cooldown,
                        max_response_bytes: c.max_response_bytes,
                    }
                }),
                cluster,
            },
            backend,
            database,
        )
        .map_err(|e| StartupError::Redis(e.to_string()))?;
        let gate = ConnectionGate::new(&settings.limits, settings.server.trusted_proxies.clone());
        let workers = match settings.server.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let state = web::Data::new(AppState {
            settings,
            tree,
            auth,
            api_keys: ApiKeys::default(),
            gate,
            redis,
            started: Instant::now(),
        });
        if let Some((link, _)) = &state.tree.cluster {
            let (gate, link2) = (state.gate.clone(), link.clone());
            let c = &state.settings.cluster;
            let share = LimitShare::new(gate, link2, c.rate_share_every, c.node_ttl).start();
            link.do_send(AttachLimiter {
                spent: share.clone().recipient(),
                places: share.recipient(),
            });
        }
        let h = ActorHealth::new("revocation_watch");
        let (watched, hh) = (state.clone(), h.clone());
        let watch = Supervisor::start(move |_| RevocationWatch::new(watched, hh));
        if let Some((link, _)) = &state.tree.cluster {
            link.do_send(AttachRevocations(watch.clone().recipient()));
        }
        state.tree.health.register(h, watch.recipient());
        let server_settings = &state.settings.server;
        let tls = match (
            &server_settings.tls_cert_file,
            &server_settings.tls_key_file,
        ) {
            (cert, key) if !cert.is_empty() => {
                Some(crate::tls::server_config(cert, key).map_err(StartupError::Tls)?)
            }
            _ => None,
        };
        // actix-web's `HttpServer` has no upgrade hook, so the HTTP service is put together
        // here: upgrades go to `routes::ws::upgrade` (the session then owns the socket),
        // everything else to the actix-web `App`; over TLS when a certificate is set.
        // A client that closes its side of an HTTP/1 connection is taken as gone, not
        // half-closed: its request's handler is dropped at once, so a long poll or an SSE
        // stream it leaves ends then instead of at its timeout or next write.
        let builder = Server::build()
            .workers(workers)
            .backlog(4096)
            .max_concurrent_connections(100_000)
            // Sessions are closed and writes flushed before the workers stop (see
            // `shutdown`), so the workers need little time of their own.
            .shutdown_timeout(WORKER_STOP_S)
            .disable_signals();
        let data = state.clone();
        let builder = match tls {
            None => builder.listen("switchboard", listener, move || {
                let up = data.clone();
                HttpService::build()
                    .h1_allow_half_closed(false)
                    .upgrade(fn_service(move |(req, framed)| {
                        routes::ws::upgrade::<TcpStream>(up.clone(), req, framed)
                    }))
                    .finish(map_config(web_app(&data), |_| AppConfig::default()))
                    .tcp()
            }),
            Some(tls) => builder.listen("switchboard", listener, move || {
                let up = data.clone();
                HttpService::build()
                    .h1_allow_half_closed(false)
                    .upgrade(fn_service(move |(req, framed)| {
                        routes::ws::upgrade::<TlsStream<TcpStream>>(up.clone(), req, framed)
                    }))
                    .finish(map_config(web_app(&data), |_| AppConfig::default()))
                    .rustls_0_23(tls.clone())
            }),
        };
        let server = builder
            .map_err(|source| StartupError::Bind { addr, source })?
            .run();
        Ok(Application {
            port,
            server,
            state,
            lock,
        })
    }

    /// The port actually bound.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT (graceful shutdown) or until the server stops.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            server,
            state,
            lock,
            ..
        } = self;
        let handle = server.handle();
        service_manager::start_watchdog(state.tree.router.clone());
        actix_web::rt::spawn(async move {
            wait_for_signal().await;
            service_manager::stopping();
            shutdown(state, handle).await;
        });
        service_manager::ready();
        let stopped = server.await;
        drop(lock);
        stopped
    }
}

/// The cluster link's settings: `[cluster]`, with the node id made up when none is set.
fn cluster_config(settings: &Settings, port: u16) -> ClusterConfig {
    let c = &settings.cluster;
    let node_id = if c.node_id.is_empty() {
        format!("node-{:08x}", rand::random::<u32>())
    } else {
        c.node_id.clone()
    };
    let advertise_url = if c.advertise_url.is_empty() {
        let scheme = if settings.server.tls_cert_file.is_empty() {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}:{port}", settings.server.host)
    } else {
        c.advertise_url.clone()
    };
    ClusterConfig {
        url: settings.redis.url.clone(),
        node_id: Arc::from(node_id),
        advertise_url,
        key_prefix: c.key_prefix.clone(),
        heartbeat: c.heartbeat,
        node_ttl: c.node_ttl,
        gap_wait: c.gap_wait,
        late_window: c.late_window,
        replay_window: c.replay_window,
        replay_channels: c.replay_channels,
        outbox: c.outbox,
    }
}

/// The actix-web application: every route, CORS when origins are allowed, request ids.
fn web_app(
    data: &web::Data<AppState>,
) -> App<
    impl actix_service::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let cors_on = !data.settings.server.allowed_origins.is_empty();
    App::new()
        .wrap(actix_web::middleware::Condition::new(
            cors_on,
            routes::cors::cors(&data.settings.server),
        ))
        .wrap(actix_web::middleware::from_fn(routes::request_id::tag))
        .configure(|cfg| routes::configure(cfg, data.clone()))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot listen for signals; graceful shutdown disabled");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            _ = int.recv() => log::info!("SIGINT: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Stop accepting, close every client with 1012, flush pending writes, stop the server; all
/// within `server.shutdown_timeout`.
async fn shutdown(state: web::Data<AppState>, handle: ServerHandle) {
    let limit = state.settings.server.shutdown_timeout;
    let drain = state.settings.server.drain_window;
    // What is left after the closes, their frames' grace and the workers' own stop time.
    let close_grace = Duration::from_millis(200);
    let flush_budget = limit
        .saturating_sub(Duration::from_secs(WORKER_STOP_S) + close_grace + drain)
        .max(Duration::from_millis(500));
    handle.pause().await;
    match state
        .tree
        .router
        .send(CloseAll {
            code: close::RESTART,
            reason: "server restart",
            over: drain,
        })
        .await
    {
        Ok(n) => log::info!("closing {n} sessions over {drain:?}"),
        Err(e) => log::error!("router did not answer: {e}"),
    }
    // Sessions still open write on until their turn comes; their writes are flushed below.
    tokio::time::sleep(drain).await;
    if tokio::time::timeout(flush_budget, state.tree.batcher.send(Drain))
        .await
        .is_err()
    {
        log::error!("pending writes not flushed within {flush_budget:?}");
    }
    // The others see this node gone now rather than when its heartbeat expires.
    if let Some((link, _)) = &state.tree.cluster {
        let _ = tokio::time::timeout(Duration::from_secs(1), link.send(Leave)).await;
    }
    // Let the close frames reach the sockets before the workers stop.
    tokio::time::sleep(close_grace).await;
    handle.stop(true).await;
}

#[cfg(test)]
mod tests {
    /// The scheduling policy of the calling thread, from `/proc/thread-self/stat` (field 41).
    #[cfg(target_os = "linux")]
    fn policy_of_this_thread() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        // The command name (field 2) is in parentheses and may hold spaces: count after it.
        let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
        after_name
            .split(' ')
            .nth(41 - 3)
            .and_then(|f| f.parse().ok())
            .expect("policy field")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_engine_thread_moves_to_sched_batch_and_no_other_thread_does() {
        const SCHED_OTHER: u32 = 0;
        const SCHED_BATCH: u32 = 3;
        let other = std::thread::spawn(policy_of_this_thread);
        let engine = std::thread::spawn(|| {
            super::enter_batch_scheduling().expect("sched_setscheduler");
            policy_of_this_thread()
        });
        assert_eq!(engine.join().expect("engine thread"), SCHED_BATCH);
        assert_eq!(other.join().expect("other thread"), SCHED_OTHER);
        assert_eq!(policy_of_this_thread(), SCHED_OTHER);
    }
}
