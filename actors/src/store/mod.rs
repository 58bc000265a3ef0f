//! The store: Diesel on an r2d2 pool, the schema, queries, and the persistence actors.
//!
//! Writes go `WriteBatcher` (async, batches) → `MessageWriter` (SyncArbiter, one transaction
//! per batch). Reads go to `StoreReader` (SyncArbiter) as closures over a pooled connection.
//! SQLite (bundled, WAL) is the embedded default.

pub mod batcher;
pub mod channel_index;
pub mod checkpointer;
pub mod dedupe;
pub mod dedupe_runs;
pub mod models;
pub mod postgres;
pub mod queries;
pub mod reader;
pub mod resend_filter;
/// Diesel table definitions: the shape of `migrations/` (what `diesel print-schema` prints).
#[allow(missing_docs)]
pub mod schema;
pub mod seqs;
pub mod writer;

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use crate::error_code::ErrorCode;

pub use models::{NewMessage, StoredMessage};

/// The connection type of the embedded backend.
pub type DbConn = SqliteConnection;
/// The shared connection pool.
pub type DbPool = Pool<ConnectionManager<DbConn>>;

/// The SQLite migrations in `migrations/sqlite`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// Everything the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had from the pool.
    #[error("database pool: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    /// A query failed.
    #[error("database: {0}")]
    Query(#[from] diesel::result::Error),
    /// Opening the database or applying migrations failed.
    #[error("database setup: {0}")]
    Setup(String),
    /// A persistence actor is gone (restarting or shut down) before answering.
    #[error("persistence actor unavailable")]
    WriterGone,
    /// Too many writes are waiting; the client should retry.
    #[error("write queue full")]
    Overloaded,
    /// A bug: an internal invariant did not hold.
    #[error("internal invariant broken: {0}")]
    Invariant(&'static str),
    /// Another broker process holds the database.
    #[error(
        "database `{path}` is in use by another broker process (it holds {lock}); \
         one broker process serves a database"
    )]
    Locked {
        /// The database file.
        path: String,
        /// The lock file.
        lock: String,
    },
    /// The database URL names a backend this build cannot serve from yet.
    #[error(
        "database url `{0}`: serving from PostgreSQL is not built yet (`switchboard migrate` \
         applies its schema); use a SQLite path or sqlite:// URL"
    )]
    UnsupportedUrl(String),
}

impl StoreError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Pool(_) | StoreError::WriterGone | StoreError::Overloaded => {
                ErrorCode::Unavailable
            }
            _ => ErrorCode::Internal,
        }
    }

    /// The code and the message a client is told. The database's own text never reaches a
    /// client: an internal failure is logged here under a short reference, which the
    /// message repeats so that an operator can find the log line.
    pub fn public(&self) -> (ErrorCode, String) {
        let code = self.code();
        let message = match self {
            StoreError::Overloaded => "the store is overloaded; retry".to_owned(),
            _ if code == ErrorCode::Unavailable => {
                log::warn!("store unavailable: {self}");
                "the store is unavailable; retry".to_owned()
            }
            _ => {
                let reference = uuid::Uuid::new_v4().simple().to_string();
                let reference = reference.get(..12).unwrap_or(&reference);
                log::error!("store error (ref {reference}): {self}");
                format!("internal error (ref {reference})")
            }
        };
        (code, message)
    }
}

/// How SQLite commits: `full` fsyncs every commit (an ack survives power loss),
/// `normal` survives a process crash but may lose the last commits on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit.
    Full,
    /// fsync at WAL checkpoints only.
    Normal,
}

/// Store settings, part of the broker's config.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// SQLite path, or `sqlite://path`.
    pub url: String,
    /// Pool size (writer + readers).
    pub pool_size: u32,
    /// SQLite `synchronous` pragma.
    pub synchronous: Synchronous,
    /// SQLite `wal_autocheckpoint` pragma, in pages.
    pub wal_autocheckpoint: u32,
    /// SQLite `page_size` pragma, bytes: takes effect only when the database file is
    /// created.
    pub page_size: u32,
}

#[derive(Debug)]
struct SqlitePragmas {
    synchronous: Synchronous,
    wal_autocheckpoint: u32,
    page_size: u32,
}

impl CustomizeConnection<DbConn, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut DbConn) -> Result<(), diesel::r2d2::Error> {
        let sync = match self.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        // A checkpoint runs inside the commit that crosses the threshold; a larger WAL means
        // fewer of them, and a page changed by many batches is copied back once per checkpoint.
        // The page size comes first: it only applies to a file not yet written, which the
        // journal mode would write. Larger pages mean fewer WAL frames (each a header and a
        // page written separately) for the rows a commit appends (docs/BENCHMARKS.md).
        conn.batch_execute(&format!(
            "PRAGMA page_size = {}; PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = {sync}; PRAGMA wal_autocheckpoint = {}; \
             PRAGMA foreign_keys = ON;",
            self.page_size, self.wal_autocheckpoint
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// The file path a database URL names.
pub fn sqlite_path(url: &str) -> Result<&str, StoreError> {
    if postgres::is_postgres_url(url) {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    }
    Ok(url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url))
}

/// Creates the directory a database file goes in, if it is missing.
fn create_parent_dir(path: &str) -> Result<(), StoreError> {
    match Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", dir.display()))),
        _ => Ok(()),
    }
}

/// Proof that this process is the database's only broker: an exclusive lock on
/// `<database>.lock`, held until dropped (the OS drops it when the process ends, however it
/// ends). The writer keeps state of the database in memory (seq counters, resend keys, the
/// places of recent messages), which a second writing process would contradict.
#[derive(Debug)]
pub struct DatabaseLock {
    _file: Option<std::fs::File>,
}

/// Takes the database's lock ([`DatabaseLock`]); fails at once if another process has it.
/// An in-memory database needs none.
pub fn lock_database(url: &str) -> Result<DatabaseLock, StoreError> {
    let path = sqlite_path(url)?;
    if path.is_empty() || path == ":memory:" {
        return Ok(DatabaseLock { _file: None });
    }
    create_parent_dir(path)?;
    let lock = format!("{path}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|e| StoreError::Setup(format!("cannot open {lock}: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(DatabaseLock { _file: Some(file) }),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_owned(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Setup(format!("cannot lock {lock}: {e}")))
        }
    }
}

/// Opens (creating if needed) the database and its pool.
pub fn open_pool(cfg: &StoreConfig) -> Result<DbPool, StoreError> {
    let path = sqlite_path(&cfg.url)?;
    create_parent_dir(path)?;
    Pool::builder()
        .max_size(cfg.pool_size.max(2))
        .connection_timeout(Duration::from_secs(5))
        // r2d2 runs `SELECT 1` on every check-out by default, to find connections a server
        // dropped; a SQLite connection is a file handle in this process and does not go
        // stale, and the writer checks one out per commit (2 % of its time at 10 k/s).
        .test_on_check_out(false)
        .connection_customizer(Box::new(SqlitePragmas {
            synchronous: cfg.synchronous,
            wal_autocheckpoint: cfg.wal_autocheckpoint,
            page_size: cfg.page_size,
        }))
        .build(ConnectionManager::<DbConn>::new(path))
        .map_err(|e| StoreError::Setup(format!("cannot open database `{path}`: {e}")))
}

/// A pool on a new database file in a directory of its own (removed with the `TempDir`),
/// with `synchronous = NORMAL`, for tests.
#[cfg(test)]
pub(crate) fn temp_pool(wal_autocheckpoint: u32, page_size: u32) -> (tempfile::TempDir, DbPool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = open_pool(&StoreConfig {
        url: dir.path().join("t.db").display().to_string(),
        pool_size: 2,
        synchronous: Synchronous::Normal,
        wal_autocheckpoint,
        page_size,
    })
    .expect("pool");
    (dir, pool)
}

/// What the writer and the token checks keep in memory, read back from the database at
/// start-up.
pub struct StartState {
    /// Resend keys of recent messages, with the resend filter over the window.
    pub keys: dedupe::DedupeKeys,
    /// Places of recent messages not yet moved to `channel_index`.
    pub index: channel_index::ChannelIndex,
    /// Token ids revoked and not yet expired.
    pub revoked_jtis: Vec<String>,
}

/// Reads the [`StartState`] from `pool`'s database.
pub fn read_start_state(
    pool: &DbPool,
    dedupe: dedupe::DedupeSettings,
) -> Result<StartState, StoreError> {
    let mut c = pool.get()?;
    let now = crate::ids::now_ms();
    Ok(StartState {
        revoked_jtis: queries::revoked_jtis(&mut c, now)?,
        keys: dedupe::DedupeKeys::load(&mut c, dedupe, now)?,
        index: channel_index::ChannelIndex::load(&mut c)?,
    })
}

/// Applies pending migrations; returns the versions applied.
pub fn run_migrations(pool: &DbPool) -> Result<Vec<String>, StoreError> {
    let mut conn = pool.get()?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Setup(format!("migrations: {e}")))?;
    Ok(applied.iter().map(|v| v.to_string()).collect())
}
