//! The PostgreSQL backend (`database.url = "postgres://…"`): for deployments where several
//! broker processes share one database.
//!
//! Its schema (`migrations/postgres`) lets the database enforce what SQLite's single writer
//! process keeps in memory: one message per (channel, seq), one per resend key, and seq
//! counters taken inside the writing transaction. Nothing of the store is kept in memory
//! between batches, so several broker processes may write to one database.

pub mod queries;
pub mod writer;

use diesel::pg::PgConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::health::{DatabaseHealth, PoolErrors};
use super::StoreError;

/// The migrations in `migrations/postgres`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Sets up OpenSSL, which libpq uses, without its exit handler: that handler frees
/// OpenSSL's state when the process exits while pool threads may still be connecting
/// through it (a crash at exit). Runs once; call before the first connection.
pub fn init_client() {
    openssl_sys::init();
}

/// One connection to `url` (OpenSSL set up first, [`init_client`]).
pub fn connect(url: &str) -> Result<PgConnection, StoreError> {
    init_client();
    PgConnection::establish(url)
        .map_err(|e| StoreError::Setup(format!("cannot connect to PostgreSQL: {e}")))
}

/// Opens a pool of `size` connections to `url`; every statement of a connection is
/// cancelled after `statement_timeout` (0: never), so a stuck database fails writes with an
/// error (retry) instead of holding them. Errors met opening connections go to `database`.
pub fn open_pool(
    url: &str,
    size: u32,
    statement_timeout: std::time::Duration,
    database: std::sync::Arc<DatabaseHealth>,
) -> Result<writer::PgPool, StoreError> {
    #[derive(Debug)]
    struct Timeout(u128);
    impl diesel::r2d2::CustomizeConnection<PgConnection, diesel::r2d2::Error> for Timeout {
        fn on_acquire(&self, c: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
            use diesel::connection::SimpleConnection;
            c.batch_execute(&format!("SET statement_timeout = {}", self.0))
                .map_err(diesel::r2d2::Error::QueryError)
        }
    }
    init_client();
    diesel::r2d2::Pool::builder()
        .max_size(size.max(2))
        .connection_timeout(std::time::Duration::from_secs(5))
        .connection_customizer(Box::new(Timeout(statement_timeout.as_millis())))
        .error_handler(Box::new(PoolErrors(database)))
        .build(diesel::r2d2::ConnectionManager::new(url))
        .map_err(|e| StoreError::Setup(format!("cannot connect to PostgreSQL: {e}")))
}

/// Token ids revoked and not yet expired, with their tokens' expiry (ms).
pub fn revoked_jtis(pool: &writer::PgPool) -> Result<Vec<(String, i64)>, StoreError> {
    let mut c = pool.get()?;
    Ok(queries::revoked_since(&mut c, 0, crate::ids::now_ms())?)
}

/// The advisory lock key that serialises migrations: the ASCII of "sbmigrat".
const MIGRATION_LOCK: i64 = 0x7362_6d69_6772_6174;

/// Connects to `url` and applies pending migrations; returns the versions applied.
///
/// Nodes that start together migrate one at a time under a session advisory lock: two
/// concurrent `CREATE TABLE`s of one name fail in PostgreSQL, and a node binds its port
/// before it migrates, so an open port does not mean the schema is there. The lock goes
/// with the connection.
pub fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    use diesel::connection::SimpleConnection;
    let mut conn = connect(url)?;
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .map_err(|e| StoreError::Setup(format!("migration lock: {e}")))?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Setup(format!("migrations: {e}")))?;
    Ok(applied.iter().map(|v| v.to_string()).collect())
}

/// A fresh database on the test PostgreSQL server (`SWITCHBOARD_TEST_PG`, or the local one
/// CI starts), migrated, and dropped when this is dropped.
#[cfg(test)]
pub(crate) struct TestDatabase {
    pub url: String,
    name: String,
}

#[cfg(test)]
impl TestDatabase {
    fn admin_url() -> String {
        std::env::var("SWITCHBOARD_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    pub fn create() -> Self {
        let db = Self::create_empty();
        migrate(&db.url).expect("migrations");
        db
    }

    /// A fresh database without the schema.
    pub fn create_empty() -> Self {
        use diesel::RunQueryDsl;
        let admin = Self::admin_url();
        let name = format!("sb_unit_{}", uuid::Uuid::new_v4().simple());
        let mut c =
            connect(&admin).unwrap_or_else(|e| panic!("PostgreSQL at {admin} (CI starts it): {e}"));
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut c)
            .expect("create database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        let url = format!("{base}/{name}");
        TestDatabase { url, name }
    }

    pub fn pool(&self, size: u32) -> writer::PgPool {
        diesel::r2d2::Pool::builder()
            .max_size(size)
            .build(diesel::r2d2::ConnectionManager::new(&self.url))
            .expect("pool")
    }
}

#[cfg(test)]
impl Drop for TestDatabase {
    fn drop(&mut self) {
        use diesel::RunQueryDsl;
        if let Ok(mut c) = connect(&Self::admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut c);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use diesel::RunQueryDsl;

    use super::*;
    use crate::error_code::ErrorCode;

    #[test]
    fn nodes_migrating_one_database_at_once_all_start_and_one_applies_the_schema() {
        let db = TestDatabase::create_empty();
        let nodes: Vec<_> = (0..4)
            .map(|_| {
                let url = db.url.clone();
                std::thread::spawn(move || migrate(&url))
            })
            .collect();
        let mut applied = Vec::new();
        for node in nodes {
            applied.extend(node.join().expect("thread").expect("each node migrates"));
        }
        use diesel::migration::MigrationSource;
        let versions = MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
            .expect("embedded")
            .len();
        assert_eq!(
            applied.len(),
            versions,
            "each migration ran once: {applied:?}"
        );
    }

    #[test]
    fn a_cancelled_or_cut_statement_is_unavailable_and_a_bad_one_internal() {
        let db = TestDatabase::create();
        let pool =
            open_pool(&db.url, 2, Duration::from_millis(50), Default::default()).expect("pool");
        let mut c = pool.get().expect("conn");
        let slow = diesel::sql_query("SELECT pg_sleep(2)").execute(&mut c);
        let e = StoreError::from(slow.expect_err("cancelled by statement_timeout"));
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
        let bad = diesel::sql_query("SELECT * FROM no_such_table").execute(&mut c);
        let e = StoreError::from(bad.expect_err("no such table"));
        assert_eq!(e.code(), ErrorCode::Internal, "{e}");
        // The server ends the connection (as a restart would).
        let mut other = pool.get().expect("second conn");
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&mut other)
        .expect("terminate");
        let cut = diesel::sql_query("SELECT 1").execute(&mut c);
        let e = StoreError::from(cut.expect_err("connection ended"));
        assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    }
}
