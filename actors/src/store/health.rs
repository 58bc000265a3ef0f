//! `DatabaseHealth`: whether the database answers, as `/status` and the logs show it.
//!
//! Writers and readers report each database operation's outcome here. An operator sees the
//! state (`ok`, or `failing` since the last error), how many operations failed, and the
//! last error with its time; the log says once when the database starts failing and once
//! when it answers again, instead of a line per failed write.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::StoreError;
use crate::ids::now_ms;

/// Outcomes of database operations, shared by the writer and reader threads.
#[derive(Debug, Default)]
pub struct DatabaseHealth {
    errors: AtomicU64,
    pool_timeouts: AtomicU64,
    last_ok_ms: AtomicI64,
    last_error: Mutex<Option<LastError>>,
}

/// Hands the errors a connection pool meets while opening connections (r2d2 retries them
/// in the background) to [`DatabaseHealth`], which logs when failing starts.
#[derive(Debug, Clone)]
pub struct PoolErrors(pub Arc<DatabaseHealth>);

impl diesel::r2d2::HandleError<diesel::r2d2::Error> for PoolErrors {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        self.0
            .failed(&StoreError::Unavailable(format!("connecting: {error}")));
    }
}

/// The last failure of a database operation.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LastError {
    /// What the database or the pool said.
    pub message: String,
    /// When, in Unix milliseconds.
    pub at_ms: i64,
}

/// What `/status` shows under `database`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DatabaseHealthSnapshot {
    /// `ok`, or `failing` when the last operation failed.
    #[schema(value_type = String)]
    pub state: &'static str,
    /// Operations and connection attempts failed since start.
    pub errors: u64,
    /// Of those, how many found no connection within the pool's timeout.
    pub pool_timeouts: u64,
    /// The last failure, if any.
    pub last_error: Option<LastError>,
    /// Seconds since the last failure.
    pub last_error_age_s: Option<u64>,
}

impl DatabaseHealth {
    /// An operation succeeded. One atomic load on the common path; the first success after
    /// a failure is logged.
    pub fn ok(&self) {
        let now = now_ms();
        let before = self.last_ok_ms.swap(now, Ordering::Relaxed);
        if let Some(err) = self.failing_since(before) {
            log::info!(
                "database answers again ({} ms after the last error: {})",
                now - err.at_ms,
                err.message
            );
        }
    }

    /// An operation failed with `e`. Only the database's own failures count (a full write
    /// queue or a resend race is not the database failing).
    pub fn failed(&self, e: &StoreError) {
        if !matches!(
            e,
            StoreError::Pool(_) | StoreError::Query(_) | StoreError::Unavailable(_)
        ) {
            return;
        }
        if matches!(e, StoreError::Pool(_)) {
            self.pool_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        self.errors.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let message = e.to_string();
        let Ok(mut last) = self.last_error.lock() else {
            return;
        };
        let was_failing = last
            .as_ref()
            .is_some_and(|l| l.at_ms >= self.last_ok_ms.load(Ordering::Relaxed));
        if !was_failing {
            log::warn!("database failing: {message}");
        }
        *last = Some(LastError {
            message,
            at_ms: now,
        });
    }

    /// The last error, if it came after the success at `last_ok_ms`.
    fn failing_since(&self, last_ok_ms: i64) -> Option<LastError> {
        let last = self.last_error.lock().ok()?;
        last.as_ref().filter(|l| l.at_ms >= last_ok_ms).cloned()
    }

    /// A snapshot for `/status`.
    pub fn snapshot(&self) -> DatabaseHealthSnapshot {
        let last_error = self.last_error.lock().ok().and_then(|l| l.clone());
        let failing = last_error
            .as_ref()
            .is_some_and(|l| l.at_ms >= self.last_ok_ms.load(Ordering::Relaxed));
        DatabaseHealthSnapshot {
            state: if failing { "failing" } else { "ok" },
            errors: self.errors.load(Ordering::Relaxed),
            pool_timeouts: self.pool_timeouts.load(Ordering::Relaxed),
            last_error_age_s: last_error
                .as_ref()
                .map(|l| (now_ms() - l.at_ms).max(0) as u64 / 1000),
            last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_after_an_error_until_the_next_success() {
        let h = DatabaseHealth::default();
        h.ok();
        assert_eq!(h.snapshot().state, "ok");
        h.failed(&StoreError::Overloaded);
        assert_eq!((h.snapshot().state, h.snapshot().errors), ("ok", 0));
        h.failed(&StoreError::Unavailable(
            "server closed the connection".into(),
        ));
        let s = h.snapshot();
        assert_eq!((s.state, s.errors), ("failing", 1));
        assert!(s
            .last_error
            .expect("last")
            .message
            .contains("server closed"));
        std::thread::sleep(std::time::Duration::from_millis(2));
        h.ok();
        let s = h.snapshot();
        assert_eq!((s.state, s.errors), ("ok", 1));
        assert!(s.last_error.is_some(), "the last error stays on show");
    }
}
