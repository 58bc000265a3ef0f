//! The PostgreSQL backend (`database.url = "postgres://…"`): for deployments where several
//! broker processes share one database.
//!
//! Its schema (`migrations/postgres`) lets the database enforce what SQLite's single writer
//! process keeps in memory: one message per (channel, seq), one per resend key, and seq
//! counters taken inside the writing transaction. This build applies the schema
//! (`switchboard migrate`); serving from it is not built yet, and `serve` refuses the URL.

use diesel::pg::PgConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::StoreError;

/// The migrations in `migrations/postgres`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Connects to `url` and applies pending migrations; returns the versions applied.
pub fn migrate(url: &str) -> Result<Vec<String>, StoreError> {
    let mut conn = PgConnection::establish(url)
        .map_err(|e| StoreError::Setup(format!("cannot connect to PostgreSQL: {e}")))?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| StoreError::Setup(format!("migrations: {e}")))?;
    Ok(applied.iter().map(|v| v.to_string()).collect())
}
