//! Configuration: one typed [`Settings`], loaded from `config.toml` (or the file given with
//! `--config` / `SWITCHBOARD_CONFIG`), then from `SWITCHBOARD__<SECTION>__<KEY>` environment
//! variables, which win. Every key is documented in the repository's `config.toml`.
//!
//! Environment values are converted to the type the key has (number, bool, string,
//! duration such as `"90s"`), so `SWITCHBOARD__SERVER__PORT=8080` and
//! `SWITCHBOARD__AUTH__JWT_SECRET=123` both do what they say.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_actors::store::sealing::Sealer;
use switchboard_actors::store::Synchronous;

use crate::net::IpRange;

mod load;
mod validate;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or the merged result is not valid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// `development` (the default for a local run) or `production`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Generates a JWT secret into the data dir when none is configured.
    #[default]
    Development,
    /// Refuses to start without a configured secret.
    Production,
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `development` or `production`.
    pub environment: Environment,
    /// Listening and process settings.
    pub server: ServerSettings,
    /// Tokens.
    pub auth: AuthSettings,
    /// The store.
    pub database: DatabaseSettings,
    /// Redis: set, it joins this node to the cluster of nodes that share it.
    pub redis: RedisSettings,
    /// The cluster (with `redis.url`).
    pub cluster: ClusterSettings,
    /// Per-connection and per-user limits (contract section 8).
    pub limits: LimitSettings,
    /// WebSocket session timing.
    pub session: SessionSettings,
    /// Presence.
    pub presence: PresenceSettings,
    /// Offline delivery (`sync`).
    pub sync: SyncSettings,
    /// The push hook.
    pub push: PushSettings,
    /// The backend `command` frames are forwarded to.
    pub command: CommandSettings,
    /// Encryption at rest.
    pub encryption: EncryptionSettings,
    /// Channel actors.
    pub channels: ChannelSettings,
    /// Fault drills.
    pub debug: DebugSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0: any free port).
    pub port: u16,
    /// Where the embedded database and the generated dev secret live.
    pub data_dir: PathBuf,
    /// HTTP worker threads (0: one per core).
    pub workers: usize,
    /// Linux: run the engine's thread (router, channels, write batcher) and the WebSocket
    /// worker threads in the SCHED_BATCH class; the database threads keep the default
    /// class (`startup::enter_batch_scheduling`).
    pub batch_scheduling: bool,
    /// How long a graceful shutdown may take.
    #[serde(with = "duration_str")]
    pub shutdown_timeout: Duration,
    /// The time over which a shutdown spreads its closes (at most `shutdown_timeout`
    /// less 2 s, kept for the flush).
    #[serde(with = "duration_str")]
    pub drain_window: Duration,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client;
    /// any other peer is the client itself.
    pub trusted_proxies: Vec<IpRange>,
    /// PEM certificate chain: with `tls_key_file`, the broker serves HTTPS and `wss://`
    /// itself. Empty: plain HTTP (TLS in a reverse proxy).
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// Web origins (`https://app.example.com`) whose pages may use the broker: CORS for
    /// the REST API, SSE and polls, and the `Origin` a browser's WebSocket upgrade or SSE
    /// request may carry. `["*"]`: any origin. Empty: no CORS, and any `Origin` accepted.
    pub allowed_origins: Vec<String>,
}

impl ServerSettings {
    /// Whether a request with `Origin: origin` may be served.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty()
            || self
                .allowed_origins
                .iter()
                .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            host: "127.0.0.1".into(),
            port: 8080,
            data_dir: PathBuf::from("data"),
            workers: 0,
            batch_scheduling: true,
            shutdown_timeout: Duration::from_secs(10),
            drain_window: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
        }
    }
}

/// The longest any token the broker mints may live (an access token's `ttl_s` limit, and
/// above any sane `auth.refresh_ttl`): how long a revoked id read back without its expiry
/// is kept.
pub const MAX_TOKEN_LIFE_S: u64 = 90 * 24 * 3600;

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 secret. Empty: generated into the data dir in development, an error in production.
    pub jwt_secret: String,
    /// `HS256`, or `RS256` / `ES256` with `jwt_public_key_file` (verification only).
    pub jwt_algorithm: String,
    /// PEM public key for RS256/ES256 tokens.
    pub jwt_public_key_file: String,
    /// Clock leeway for `exp` and `nbf`.
    #[serde(with = "duration_str")]
    pub leeway: Duration,
    /// How long a connection without a token may take to send its `auth` frame.
    #[serde(with = "duration_str")]
    pub auth_timeout: Duration,
    /// Lifetime of access tokens minted by `POST /api/auth/token` without `ttl_s`.
    #[serde(with = "duration_str")]
    pub access_ttl: Duration,
    /// Lifetime of refresh tokens (at most 90 days).
    #[serde(with = "duration_str")]
    pub refresh_ttl: Duration,
    /// How often the broker reads revocations made on other nodes sharing its database
    /// (tokens and API keys), and closes the connections they end.
    #[serde(with = "duration_str")]
    pub revocation_poll: Duration,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            jwt_secret: String::new(),
            jwt_algorithm: "HS256".into(),
            jwt_public_key_file: String::new(),
            leeway: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(10),
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            revocation_poll: Duration::from_secs(5),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// SQLite path or `sqlite://` URL; empty: `<data_dir>/switchboard.db`.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: u32,
    /// PostgreSQL: a statement running longer than this is cancelled (0s: never).
    #[serde(with = "duration_str")]
    pub statement_timeout: Duration,
    /// Writer threads committing batches side by side on PostgreSQL; 0: the default
    /// ([`DatabaseSettings::writers`]). SQLite always has one.
    pub writer_threads: usize,
    /// Reader threads.
    pub reader_threads: usize,
    /// SQLite `synchronous`: `full` or `normal`.
    pub sqlite_synchronous: Synchronous,
    /// SQLite WAL pages written before a commit also checkpoints them into the database
    /// (with the checkpointer on, the backstop that bounds the WAL file).
    pub sqlite_wal_autocheckpoint: u32,
    /// How long after a commit a thread of its own copies the WAL into the database file
    /// (a passive checkpoint, beside the writer); zero: only commits checkpoint.
    #[serde(with = "duration_str")]
    pub sqlite_checkpoint_after: Duration,
    /// SQLite page size in bytes for a database created by this broker (a power of two,
    /// 512 to 65,536); an existing database keeps its own.
    pub sqlite_page_size: u32,
    /// Most writes per transaction.
    pub batch_max: usize,
    /// Most writes waiting for a transaction before new ones are refused.
    pub max_pending_writes: usize,
    /// Resends of an acked frame id within this window return the original ack.
    #[serde(with = "duration_str")]
    pub dedupe_window: Duration,
    /// Resend keys of new messages wait in memory until this many are held, then move to
    /// the database as one sorted run.
    pub dedupe_run_keys: usize,
    /// No longer used (resend keys once moved one slice of the key space per commit);
    /// accepted, with a warning at start-up, so that an older config.toml still loads.
    #[serde(skip_serializing)]
    pub dedupe_slices: Option<u32>,
    /// Memory for the filter that lets most resend look-ups skip the database, MiB (0: off).
    pub resend_filter_mib: u32,
}

impl DatabaseSettings {
    /// Writer threads, each committing its own batches: SQLite has one writer at a time;
    /// PostgreSQL takes `writer_threads`, 2 when it is 0.
    pub fn writers(&self, postgres: bool) -> usize {
        match (postgres, self.writer_threads) {
            (false, _) => 1,
            (true, 0) => 2,
            (true, n) => n,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: String::new(),
            pool_size: 8,
            statement_timeout: Duration::from_secs(5),
            writer_threads: 0,
            reader_threads: 4,
            sqlite_synchronous: Synchronous::Full,
            sqlite_wal_autocheckpoint: 2_500,
            sqlite_checkpoint_after: Duration::from_millis(20),
            sqlite_page_size: 16_384,
            batch_max: 2048,
            max_pending_writes: 50_000,
            dedupe_window: Duration::from_secs(24 * 3600),
            dedupe_run_keys: 8192,
            dedupe_slices: None,
            resend_filter_mib: 32,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://…`; empty: single node, no Redis.
    pub url: String,
}

/// `[cluster]`: several nodes on one PostgreSQL database and one Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id, unique in the cluster; empty: made up at start.
    pub node_id: String,
    /// Where this node is reached, as the node list shows it; empty: its listening address.
    pub advertise_url: String,
    /// Prefix of every Redis key and of the bus channel; clusters sharing one Redis need
    /// different prefixes.
    pub key_prefix: String,
    /// How often the node renews its entry in the node list.
    #[serde(with = "duration_str")]
    pub heartbeat: Duration,
    /// A node missing from the list this long is gone.
    #[serde(with = "duration_str")]
    pub node_ttl: Duration,
    /// How long a channel waits for a missing seq to come by the bus before reading it
    /// from the database.
    #[serde(with = "duration_str")]
    pub gap_wait: Duration,
    /// How late a message may reach a node by the bus and still be delivered live.
    #[serde(with = "duration_str")]
    pub late_window: Duration,
    /// How long a node remembers the channels it committed to, to announce them after a
    /// Redis outage.
    #[serde(with = "duration_str")]
    pub replay_window: Duration,
    /// Most channels remembered for that.
    pub replay_channels: usize,
    /// Most envelopes waiting to be published.
    pub outbox: usize,
    /// How often a node tells the others how many frames each user sent through it and
    /// whose connection count changed, so that a user's frame rate and connections are
    /// limited across the cluster.
    #[serde(with = "duration_str")]
    pub rate_share_every: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node_id: String::new(),
            advertise_url: String::new(),
            key_prefix: "switchboard".into(),
            heartbeat: Duration::from_secs(2),
            node_ttl: Duration::from_secs(10),
            gap_wait: Duration::from_millis(50),
            late_window: Duration::from_secs(2),
            replay_window: Duration::from_secs(120),
            replay_channels: 100_000,
            outbox: 10_000,
            rate_share_every: Duration::from_millis(200),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Sustained client frames per second, per user.
    pub frames_per_second: f64,
    /// Burst of client frames, per user.
    pub frames_burst: f64,
    /// Largest client frame; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// Connections on this node (HTTP 503 beyond).
    pub max_connections: usize,
    /// Connections per user (HTTP 429 beyond).
    pub max_connections_per_user: usize,
    /// Frames queued for one connection before it is closed with 1013.
    pub outbound_queue: usize,
    /// Rate-limited frames within 10 s before the connection is closed with 1008.
    pub max_rejected_frames: u32,
    /// Most messages one `subscribe` replays.
    pub max_replay: i64,
    /// Most channels one connection may subscribe to (or mute by unsubscribing).
    pub max_subscriptions: usize,
    /// A frame begun but not completed within this closes the connection with 1008.
    #[serde(with = "duration_str")]
    pub frame_timeout: Duration,
    /// Deepest nesting of arrays and objects in a payload (client frames, REST bodies).
    pub max_json_depth: usize,
    /// Share of `max_connections` that connections not yet authenticated may take.
    pub pending_connections_share: f64,
    /// Connections not yet authenticated per client address; 0: no limit.
    pub max_pending_per_ip: usize,
    /// WebSocket upgrades per second per client address (token bucket); 0: no limit.
    pub upgrades_per_ip_per_second: f64,
    /// Burst of upgrades per client address above that rate.
    pub upgrades_per_ip_burst: f64,
    /// HTTP requests (REST, SSE, polls, HTTP send) per second per client address (token
    /// bucket); 0: no limit. `/health`, `/ready`, `/status` and `/metrics` are not counted.
    pub requests_per_ip_per_second: f64,
    /// Burst of requests per client address above that rate.
    pub requests_per_ip_burst: f64,
    /// Connection attempts (WebSocket, SSE, poll) per second per user, counted when the
    /// user is known (token or `auth` frame; token bucket); 0: no limit.
    pub connects_per_user_per_second: f64,
    /// Burst of connection attempts per user above that rate.
    pub connects_per_user_burst: f64,
    /// REST requests per second per caller (user token or API key; token bucket); 0: no
    /// limit.
    pub requests_per_user_per_second: f64,
    /// Burst of REST requests per caller above that rate.
    pub requests_per_user_burst: f64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            frames_per_second: 20.0,
            frames_burst: 50.0,
            max_frame_bytes: 64 * 1024,
            max_connections: 50_000,
            max_connections_per_user: 32,
            outbound_queue: 1024,
            max_rejected_frames: 100,
            max_replay: 1000,
            max_subscriptions: 256,
            frame_timeout: Duration::from_secs(10),
            max_json_depth: 32,
            pending_connections_share: 0.1,
            max_pending_per_ip: 32,
            upgrades_per_ip_per_second: 50.0,
            upgrades_per_ip_burst: 500.0,
            requests_per_ip_per_second: 100.0,
            requests_per_ip_burst: 500.0,
            connects_per_user_per_second: 10.0,
            connects_per_user_burst: 100.0,
            requests_per_user_per_second: 50.0,
            requests_per_user_burst: 200.0,
        }
    }
}

/// `[session]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// Server pings this often; also the `heartbeat_interval_s` told to clients.
    #[serde(with = "duration_str")]
    pub heartbeat_interval: Duration,
    /// A connection silent for this long is dropped.
    #[serde(with = "duration_str")]
    pub heartbeat_timeout: Duration,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(90),
        }
    }
}

/// `[presence]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceSettings {
    /// After a user's last connection closes, wait this long before they count as offline.
    #[serde(with = "duration_str")]
    pub offline_grace: Duration,
    /// Most users one connection may watch with `presence_subscribe`.
    pub max_watched: usize,
}

impl Default for PresenceSettings {
    fn default() -> Self {
        PresenceSettings {
            offline_grace: Duration::from_secs(5),
            max_watched: 1000,
        }
    }
}

/// `[sync]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// A device that never marked anything delivered gets at most this many of the newest
    /// messages per channel on its first `sync`.
    pub new_device_backlog: u32,
    /// … and none older than this.
    #[serde(with = "duration_str")]
    pub new_device_max_age: Duration,
    /// Most messages one `sync` sends before `sync_complete` says `has_more` (at most half
    /// of `limits.outbound_queue`).
    pub max_per_sync: u32,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            new_device_backlog: 1000,
            new_device_max_age: Duration::from_secs(30 * 86_400),
            max_per_sync: 500,
        }
    }
}

/// `[push]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSettings {
    /// Where a JSON event is POSTed for each message stored for a user with no connection
    /// on this broker; empty: off.
    pub webhook_url: String,
    /// Events waiting at most; a full queue drops new ones (counted in `/status`).
    pub queue: usize,
    /// Tries per event (0.5 s, 1 s, 2 s … apart).
    pub attempts: u32,
    /// Time one POST may take.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Messages delivered to a connected user are pushed too when none of their devices
    /// has marked them delivered after this long; zero: only users with no connection.
    #[serde(with = "duration_str")]
    pub ack_delay: Duration,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            webhook_url: String::new(),
            queue: 10_000,
            attempts: 5,
            timeout: Duration::from_secs(5),
            ack_delay: Duration::ZERO,
        }
    }
}

/// `[command]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandSettings {
    /// Where `command` frames are POSTed; empty: `command` is answered `not_configured`.
    pub backend_url: String,
    /// Sent as `Authorization: Bearer <secret>` with every call; empty: no header.
    pub secret: String,
    /// Time one call may take, answer included (at most 25 s).
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Calls open at once across the broker; more are answered `unavailable` at once.
    pub max_in_flight: usize,
    /// Failures in a row (timeouts, 5xx, unreachable) that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker answers `unavailable` without calling.
    #[serde(with = "duration_str")]
    pub breaker_cooldown: Duration,
    /// Largest answer body accepted from the backend.
    pub max_response_bytes: usize,
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings {
            backend_url: String::new(),
            secret: String::new(),
            timeout: Duration::from_secs(10),
            max_in_flight: 256,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(30),
            max_response_bytes: 64 * 1024,
        }
    }
}

/// `[encryption]`
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionSettings {
    /// AES-256 key, 32 bytes in base64; empty: payloads and documents are stored as sent.
    pub key: String,
    /// The id stored with each value sealed by `key` (1 to 32 of `[A-Za-z0-9_-]`).
    pub key_id: String,
    /// Earlier keys still needed to read old rows: `"id:base64key"`.
    pub old_keys: Vec<String>,
}

impl Default for EncryptionSettings {
    fn default() -> Self {
        EncryptionSettings {
            key: String::new(),
            key_id: "k1".into(),
            old_keys: Vec::new(),
        }
    }
}

impl std::fmt::Debug for EncryptionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("EncryptionSettings")
            .field("on", &!self.key.is_empty())
            .field("key_id", &self.key_id)
            .field("old_keys", &self.old_keys.len())
            .finish()
    }
}

impl EncryptionSettings {
    /// The sealer these settings describe, or `None` when encryption is off.
    pub fn sealer(&self) -> Result<Option<Sealer>, String> {
        if self.key.is_empty() {
            return Ok(None);
        }
        let mut old = Vec::new();
        for entry in &self.old_keys {
            let (id, key) = entry
                .split_once(':')
                .ok_or("encryption.old_keys entries are \"id:base64key\"")?;
            old.push((id, key));
        }
        Sealer::new((&self.key_id, &self.key), &old)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// `[channels]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelSettings {
    /// A channel actor with no traffic and no subscriber for this long is stopped.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
}

impl Default for ChannelSettings {
    fn default() -> Self {
        ChannelSettings {
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// `[debug]`
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DebugSettings {
    /// Enables `POST /api/admin/debug/crash/{actor}` (admin only) for fault drills.
    pub fault_injection: bool,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// env_logger filter; `RUST_LOG` wins when set.
    pub filter: String,
    /// `text` (the default) or `json`: one JSON object per line.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// env_logger's human-readable lines.
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `msg`, and the line's key-values
    /// (`conn`, `request_id`…).
    Json,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Settings {
    /// The SQLite URL in use (`database.url`, or the file in the data dir).
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            self.server
                .data_dir
                .join("switchboard.db")
                .display()
                .to_string()
        } else {
            self.database.url.clone()
        }
    }
}

/// Durations as humantime strings (`"90s"`, `"500ms"`, `"24h"`).
mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn env_wins_over_file_and_keeps_types() {
        let s = Settings::from_sources(
            "[server]\nport = 9000\n[auth]\njwt_secret = \"file\"\n",
            env(&[
                ("SWITCHBOARD__SERVER__PORT", "7001"),
                ("SWITCHBOARD__AUTH__JWT_SECRET", "123"),
                ("SWITCHBOARD__SESSION__HEARTBEAT_TIMEOUT", "2s"),
                ("SWITCHBOARD__ENVIRONMENT", "production"),
                ("SWITCHBOARD__LIMITS__FRAMES_PER_SECOND", "100000"),
            ]),
        )
        .expect("valid");
        assert_eq!(s.server.port, 7001);
        assert_eq!(s.auth.jwt_secret, "123");
        assert_eq!(s.session.heartbeat_timeout, Duration::from_secs(2));
        assert_eq!(s.environment, Environment::Production);
        assert_eq!(s.limits.frames_per_second, 100000.0);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Settings::from_sources("[server]\nprot = 1\n", env(&[])).is_err());
        assert!(Settings::from_sources("", env(&[("SWITCHBOARD__SERVER__PORT", "x")])).is_err());
        assert!(Settings::from_sources("", env(&[("SWITCHBOARD__NOPE__X", "1")])).is_err());
        for page in ["0", "1000", "131072"] {
            let e = Settings::from_sources(
                "",
                env(&[("SWITCHBOARD__DATABASE__SQLITE_PAGE_SIZE", page)]),
            );
            assert!(e.is_err(), "page size {page}");
        }
        let ok = Settings::from_sources(
            "",
            env(&[("SWITCHBOARD__DATABASE__SQLITE_PAGE_SIZE", "4096")]),
        );
        assert_eq!(ok.expect("4 KiB pages").database.sqlite_page_size, 4096);
    }

    #[test]
    fn trusted_proxies_are_ranges_from_the_file_or_a_comma_list() {
        let s = Settings::from_sources(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
            env(&[("SWITCHBOARD__SERVER__TRUSTED_PROXIES", "10.0.0.5, fd00::/8")]),
        )
        .expect("valid");
        let ranges: Vec<String> = s
            .server
            .trusted_proxies
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(ranges, ["10.0.0.5/32", "fd00::/8"]);
        let e = Settings::from_sources("[server]\ntrusted_proxies = [\"10.0.0.0/40\"]\n", env(&[]))
            .expect_err("bad range");
        assert!(e.to_string().contains("10.0.0.0/40"), "{e}");
        for (key, value) in [
            ("SWITCHBOARD__LIMITS__MAX_JSON_DEPTH", "0"),
            ("SWITCHBOARD__LIMITS__PENDING_CONNECTIONS_SHARE", "1.5"),
            ("SWITCHBOARD__LIMITS__FRAME_TIMEOUT", "0s"),
            ("SWITCHBOARD__LIMITS__UPGRADES_PER_IP_PER_SECOND", "-1"),
        ] {
            let e = Settings::from_sources("", env(&[(key, value)])).expect_err(key);
            assert!(e.to_string().contains("limits."), "{key}: {e}");
        }
    }

    #[test]
    fn the_shipped_config_file_is_valid() {
        let text = include_str!("../config.toml");
        Settings::from_sources(text, env(&[])).expect("config.toml parses");
    }

    #[test]
    fn a_config_from_before_dedupe_runs_still_loads() {
        let s = Settings::from_sources("[database]\ndedupe_slices = 64\n", env(&[]))
            .expect("the old key is accepted");
        assert_eq!(s.database.dedupe_slices, Some(64));
        assert_eq!(s.database.dedupe_run_keys, 8192);
    }
}
