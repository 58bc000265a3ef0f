//! The store: where messages and everything else the broker keeps are written and read.
//!
//! The seam: the rest of the broker writes through the write batcher ([`batcher`], typed
//! [`write`] operations, one transaction per batch, answered in order) and reads through
//! [`reader::Reads`] (typed read operations on reader threads). Nothing outside this module
//! names a connection.
//!
//! Backends: [`sqlite`] (embedded, bundled, WAL; the default: one broker process per file)
//! and [`postgres`] (production: several broker processes may share one database), chosen
//! by the database URL. Shared by both: [`models`], [`batcher`], [`write`], [`reader`], and
//! [`health`] (whether the database answers).

pub mod batcher;
pub mod credentials_sql;
pub mod cursor_sql;
pub mod health;
pub mod models;
pub mod postgres;
pub mod reader;
pub mod sealing;
pub mod sqlite;
pub mod state_sql;
pub mod write;

use crate::error_code::ErrorCode;

pub use models::{NewMessage, Page, StoredMessage};
pub use sqlite::{
    lock_database, open_pool, read_start_state, run_migrations, DatabaseLock, DbConn, DbPool,
    StartState, StoreConfig, Synchronous,
};

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
    /// The database cannot be reached or is restarting; the client should retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A store actor (write batcher, writer or reader thread) is gone, restarting or shut
    /// down, before answering.
    #[error("store actor unavailable")]
    StoreGone,
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
    /// A sealed value does not open (encryption at rest).
    #[error("{0}")]
    Sealed(#[from] sealing::SealError),
    /// A PostgreSQL URL where a SQLite file is expected.
    #[error("database url `{0}` names PostgreSQL, not a SQLite file")]
    NotSqlite(String),
}

impl StoreError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Pool(_)
            | StoreError::Unavailable(_)
            | StoreError::StoreGone
            | StoreError::Overloaded => ErrorCode::Unavailable,
            StoreError::Query(e) if transient(e) => ErrorCode::Unavailable,
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
                // `DatabaseHealth` logs when the database starts and stops failing.
                log::debug!("store unavailable: {self}");
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

    /// Whether a retry may succeed where this failed: the database was unreachable,
    /// restarting or too slow, or the writers were busy or racing another node.
    pub fn is_transient(&self) -> bool {
        self.code() == ErrorCode::Unavailable
    }
}

/// Whether a failed query may succeed when retried: the database server went away, is
/// restarting, cancelled the statement (PostgreSQL's `statement_timeout`), or ended the
/// transaction to break a deadlock.
fn transient(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match e {
        Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => true,
        Error::DatabaseError(_, info) => {
            let m = info.message();
            [
                "canceling statement due to statement timeout",
                "terminating connection",
                "the database system is shutting down",
                "the database system is starting up",
                "server closed the connection",
                "deadlock detected",
                "could not serialize access",
            ]
            .iter()
            .any(|t| m.contains(t))
        }
        Error::BrokenTransactionManager => true,
        _ => false,
    }
}
