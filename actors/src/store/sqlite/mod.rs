//! The SQLite backend (embedded, bundled, WAL): one broker process per database file.
//!
//! The writer keeps state of the database in memory (seq counters, resend keys and their
//! filter, the places of recent messages), which is why one process holds the database's
//! lock ([`DatabaseLock`]). Its machinery: [`writer`] (one transaction per batch),
//! [`dedupe`], [`dedupe_runs`] and [`resend_filter`] (resend keys), [`channel_index`] and
//! [`positions`] and [`seqs`] (seqs and where messages are), [`checkpointer`] (WAL checkpoints off the commit
//! path), [`queries`] and [`schema`].

pub mod channel_index;
pub mod checkpointer;
pub mod dedupe;
pub mod dedupe_runs;
pub mod positions;
pub mod queries;
pub mod resend_filter;
/// Diesel table definitions: the shape of `migrations/sqlite` (what `diesel print-schema`
/// prints).
#[allow(missing_docs)]
pub mod schema;
pub mod seqs;
pub mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::health::{DatabaseHealth, PoolErrors};
use super::postgres;
use super::StoreError;

/// The connection type of the embedded backend.
pub type DbConn = SqliteConnection;
/// The shared connection pool.
pub type DbPool = Pool<ConnectionManager<DbConn>>;

/// The SQLite migrations in `migrations/sqlite`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

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
}

impl CustomizeConnection<DbConn, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut DbConn) -> Result<(), diesel::r2d2::Error> {
        let sync = match self.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        // A checkpoint runs inside the commit that crosses the threshold; a larger WAL means
        // fewer of them, and a page changed by many batches is copied back once per checkpoint.
        // None of these takes a lock: the pool opens its connections in parallel.
        conn.batch_execute(&format!(
            "PRAGMA busy_timeout = 5000; PRAGMA synchronous = {sync}; \
             PRAGMA wal_autocheckpoint = {}; PRAGMA foreign_keys = ON;",
            self.wal_autocheckpoint
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Creates the database file if needed and puts it in WAL mode, through one connection
/// before the pool opens any: switching the journal mode takes the file's exclusive lock,
/// which connections opening side by side would fight over ("database is locked"). Both
/// settings live in the file. The page size comes first: it applies only to a file not yet
/// written, which the journal mode would write. Larger pages mean fewer WAL frames (each a
/// header and a page written separately) for the rows a commit appends
/// (docs/BENCHMARKS.md).
fn prepare_file(path: &str, page_size: u32) -> Result<(), StoreError> {
    use diesel::Connection;
    let mut conn = DbConn::establish(path)
        .map_err(|e| StoreError::Setup(format!("cannot open database `{path}`: {e}")))?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = 5000; PRAGMA page_size = {page_size}; \
         PRAGMA journal_mode = WAL;"
    ))
    .map_err(|e| StoreError::Setup(format!("cannot set up database `{path}`: {e}")))
}

/// The file path a database URL names.
pub fn sqlite_path(url: &str) -> Result<&str, StoreError> {
    if postgres::is_postgres_url(url) {
        return Err(StoreError::NotSqlite(url.to_owned()));
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

/// Opens (creating if needed) the database and its pool; errors met opening connections
/// go to `database`.
pub fn open_pool(cfg: &StoreConfig, database: Arc<DatabaseHealth>) -> Result<DbPool, StoreError> {
    build_pool(cfg, Box::new(PoolErrors(database)))
}

/// [`open_pool`], with what becomes of the errors met while opening connections (r2d2
/// retries them; by default they are logged).
fn build_pool(
    cfg: &StoreConfig,
    errors: Box<dyn diesel::r2d2::HandleError<diesel::r2d2::Error>>,
) -> Result<DbPool, StoreError> {
    let path = sqlite_path(&cfg.url)?;
    create_parent_dir(path)?;
    prepare_file(path, cfg.page_size)?;
    Pool::builder()
        .max_size(cfg.pool_size.max(2))
        .connection_timeout(Duration::from_secs(5))
        // r2d2 runs `SELECT 1` on every check-out by default, to find connections a server
        // dropped; a SQLite connection is a file handle in this process and does not go
        // stale, and the writer checks one out per commit (2 % of its time at 10 k/s).
        .test_on_check_out(false)
        .error_handler(errors)
        .connection_customizer(Box::new(SqlitePragmas {
            synchronous: cfg.synchronous,
            wal_autocheckpoint: cfg.wal_autocheckpoint,
        }))
        .build(ConnectionManager::<DbConn>::new(path))
        .map_err(|e| StoreError::Setup(format!("cannot open database `{path}`: {e}")))
}

/// A pool on a new database file in a directory of its own (removed with the `TempDir`),
/// with `synchronous = NORMAL`, for tests.
#[cfg(test)]
pub(crate) fn temp_pool(wal_autocheckpoint: u32, page_size: u32) -> (tempfile::TempDir, DbPool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = open_pool(
        &StoreConfig {
            url: dir.path().join("t.db").display().to_string(),
            pool_size: 2,
            synchronous: Synchronous::Normal,
            wal_autocheckpoint,
            page_size,
        },
        Default::default(),
    )
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
    /// Token ids revoked and not yet expired, with their tokens' expiry (ms).
    pub revoked_jtis: Vec<(String, i64)>,
}

/// Reads the [`StartState`] from `pool`'s database.
pub fn read_start_state(
    pool: &DbPool,
    dedupe: dedupe::DedupeSettings,
) -> Result<StartState, StoreError> {
    let mut c = pool.get()?;
    let now = crate::ids::now_ms();
    Ok(StartState {
        revoked_jtis: queries::revoked_since(&mut c, 0, now)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Keeps the errors r2d2 met while opening connections.
    #[derive(Debug, Default, Clone)]
    struct Errors(Arc<Mutex<Vec<String>>>);

    impl diesel::r2d2::HandleError<diesel::r2d2::Error> for Errors {
        fn handle_error(&self, error: diesel::r2d2::Error) {
            self.0.lock().expect("errors").push(error.to_string());
        }
    }

    #[test]
    fn a_new_file_opens_in_wal_mode_with_its_page_size_and_no_connection_fails() {
        let errors = Errors::default();
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("temp dir");
            let cfg = StoreConfig {
                url: dir.path().join("t.db").display().to_string(),
                pool_size: 8,
                synchronous: Synchronous::Normal,
                wal_autocheckpoint: 1000,
                page_size: 16384,
            };
            let pool = build_pool(&cfg, Box::new(errors.clone())).expect("pool");
            let mut conn = pool.get().expect("conn");
            #[derive(diesel::QueryableByName)]
            struct Mode {
                #[diesel(sql_type = diesel::sql_types::Text)]
                journal_mode: String,
            }
            #[derive(diesel::QueryableByName)]
            struct Size {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                page_size: i64,
            }
            use diesel::RunQueryDsl;
            let mode: Mode = diesel::sql_query("PRAGMA journal_mode")
                .get_result(&mut conn)
                .expect("mode");
            let size: Size = diesel::sql_query("PRAGMA page_size")
                .get_result(&mut conn)
                .expect("size");
            assert_eq!((mode.journal_mode.as_str(), size.page_size), ("wal", 16384));
        }
        assert!(errors.0.lock().expect("errors").is_empty(), "{errors:?}");
    }
}
