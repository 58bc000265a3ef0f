//! `WalCheckpointer`: copies committed WAL frames back into the database file on a thread
//! of its own, so that a commit, and the acks waiting on it, seldom pays for a checkpoint.
//!
//! Left to itself, SQLite checkpoints inside the commit that finds the WAL longer than
//! `wal_autocheckpoint` pages: that commit writes every page changed since the last
//! checkpoint into the database file and fsyncs it, and every write of its batch waits
//! (the largest part of the ack latency tail, docs/BENCHMARKS.md). Here the write batcher
//! asks for a passive checkpoint a short while after it commits; a passive checkpoint takes
//! no writer lock, so commits go on while it copies.
//!
//! The writer's own threshold stays, as the backstop that keeps the WAL file bounded. SQLite
//! starts the WAL over only when a transaction begins with every frame already copied; under
//! writes without a pause, a pass here never ends before the next commit begins, so the WAL
//! grows until a commit crosses the threshold and checkpoints. By then the passes here have
//! copied all but the last few commits' pages, which is all that commit copies.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use super::DbPool;
use crate::health::{ActorHealth, Probe};
use crate::store::StoreError;

/// Copy what the WAL holds into the database file, without waiting for the writer.
#[derive(Message)]
#[rtype(result = "Result<WalProgress, StoreError>")]
pub struct CheckpointWal;

/// What a checkpoint found and did (SQLite's `wal_checkpoint` answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, QueryableByName)]
pub struct WalProgress {
    /// Frames in the WAL (-1 when the database is not in WAL mode).
    #[diesel(sql_type = BigInt, column_name = log)]
    pub frames: i64,
    /// Frames of them now in the database file.
    #[diesel(sql_type = BigInt, column_name = checkpointed)]
    pub copied: i64,
}

/// Counters of the passes, shown by `/status`.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    passes: AtomicU64,
    frames: AtomicI64,
    copied: AtomicI64,
}

/// A copy of [`CheckpointStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct CheckpointStatsSnapshot {
    /// Passes run.
    pub passes: u64,
    /// Frames in the WAL at the last pass.
    pub wal_frames: i64,
    /// Frames of them copied into the database file by its end.
    pub wal_frames_copied: i64,
}

impl CheckpointStats {
    fn record(&self, p: WalProgress) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        self.frames.store(p.frames, Ordering::Relaxed);
        self.copied.store(p.copied, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> CheckpointStatsSnapshot {
        CheckpointStatsSnapshot {
            passes: self.passes.load(Ordering::Relaxed),
            wal_frames: self.frames.load(Ordering::Relaxed),
            wal_frames_copied: self.copied.load(Ordering::Relaxed),
        }
    }
}

/// The checkpointing thread (a SyncArbiter of one).
pub struct WalCheckpointer {
    /// The shared pool; a pass holds one connection while it runs.
    pub pool: DbPool,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
    /// What the passes did.
    pub stats: Arc<CheckpointStats>,
}

impl Actor for WalCheckpointer {
    type Context = SyncContext<Self>;
}

impl Handler<CheckpointWal> for WalCheckpointer {
    type Result = Result<WalProgress, StoreError>;

    fn handle(&mut self, _: CheckpointWal, _: &mut SyncContext<Self>) -> Self::Result {
        self.health.handled();
        let done = self.pool.get().map_err(StoreError::from).and_then(|mut c| {
            diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)")
                .get_result::<WalProgress>(&mut c)
                .map_err(StoreError::from)
        });
        match done {
            Ok(p) => self.stats.record(p),
            Err(ref e) => self.health.failed(e.to_string()),
        }
        done
    }
}

impl Handler<Probe> for WalCheckpointer {
    type Result = u64;
    fn handle(&mut self, _: Probe, _: &mut SyncContext<Self>) -> u64 {
        self.health.handled_count()
    }
}

#[cfg(test)]
mod tests {
    use diesel::connection::SimpleConnection;

    use super::*;

    /// A pool whose commits never checkpoint by themselves.
    fn pool() -> (tempfile::TempDir, DbPool) {
        let (dir, pool) = crate::store::sqlite::temp_pool(0, 4096);
        pool.get()
            .expect("conn")
            .batch_execute("CREATE TABLE t (v TEXT NOT NULL)")
            .expect("table");
        (dir, pool)
    }

    fn insert(pool: &DbPool, rows: usize) {
        let mut c = pool.get().expect("conn");
        for _ in 0..rows {
            c.batch_execute("INSERT INTO t (v) VALUES (hex(randomblob(3000)))")
                .expect("insert");
        }
    }

    #[actix::test]
    async fn a_pass_copies_every_committed_frame_and_the_next_commit_starts_the_wal_over() {
        let (_dir, pool) = pool();
        let stats = Arc::new(CheckpointStats::default());
        let (p, s) = (pool.clone(), stats.clone());
        let checkpointer = SyncArbiter::start(1, move || WalCheckpointer {
            pool: p.clone(),
            health: ActorHealth::new("wal_checkpointer"),
            stats: s.clone(),
        });

        insert(&pool, 50);
        let first = checkpointer
            .send(CheckpointWal)
            .await
            .expect("sent")
            .expect("pass");
        assert!(first.frames >= 50, "{first:?}");
        assert_eq!(first.copied, first.frames);

        // The WAL was all copied, so the next transaction writes it from the start.
        insert(&pool, 1);
        let second = checkpointer
            .send(CheckpointWal)
            .await
            .expect("sent")
            .expect("pass");
        assert!(second.frames < first.frames, "{first:?} then {second:?}");
        assert_eq!(second.copied, second.frames);

        let seen = stats.snapshot();
        assert_eq!(seen.passes, 2);
        assert_eq!(seen.wal_frames, second.frames);
    }
}
