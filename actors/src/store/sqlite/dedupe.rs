//! `DedupeKeys`: finds the stored copy of a resent frame (contract guarantee 2) without a
//! B-tree index on random client ids.
//!
//! Client frame ids are random, so an index on (sender, client id) takes each insert to a
//! random page: every stored message dirtied a page of its own, which SQLite wrote to the WAL
//! and again at the next checkpoint, the largest cost of storing a message
//! (docs/BENCHMARKS.md). Here the key of each new message (a 64-bit hash of sender and client
//! id) is kept in memory first; once [`DedupeSettings::run_keys`] keys are held, a commit
//! writes them all, sorted, as a new run of [`DedupeRuns`] (migration 000007), which merges
//! runs of one size a few blocks per commit. Memory holds at most `run_keys` plus one
//! batch of keys (plus those read back at start-up).
//!
//! A key points at its message's position (`messages.pos`).
//!
//! Crash safety: `dedupe_state.moved_through` names a message position up to which every
//! key is in a run; it is written in the commit that writes the run. At start-up the keys of
//! later messages are read back from `messages` (a range of positions). A look-up confirms
//! each candidate against the message row (sender, frame id, dedupe window), so hash
//! collisions cost a read, never a wrong answer.

use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use diesel::QueryResult;
use sha2::{Digest, Sha256};

use super::dedupe_runs::{self, DedupeRuns, Pair, RunsMoved, MERGE_MIN, MERGE_PER_KEY};
use super::resend_filter::ResendFilter;
use super::{queries, DbConn};
use crate::fast_map::FastMap;
use crate::store::models::StoredMessage;

/// The dedupe key of a frame: the first 8 bytes of SHA-256 over the sender's length, the
/// sender and the client frame id. A stable function (it is stored), and one a client cannot
/// steer onto another user's key.
pub fn key_of(sender: &str, client_msg_id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update((sender.len() as u64).to_le_bytes());
    h.update(sender.as_bytes());
    h.update(client_msg_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Hashes a dedupe key as itself: keys are SHA-256 bits already. Only for maps that live
/// within one batch (bounded, so a client that ground out colliding keys gains little).
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Where a message with a pending key is.
#[derive(Debug, Clone, Copy)]
struct PendingKey {
    /// The message's position.
    pos: i64,
    /// When it was stored, ms (keys past the dedupe window are not candidates).
    created_at: i64,
}

/// What `/status` shows of the resend keys; the writer records it after each batch.
#[derive(Debug, Default)]
pub struct ResendKeyStats {
    held: AtomicU64,
    runs: AtomicU64,
    keys_in_runs: AtomicU64,
    merging: AtomicBool,
    stopped: AtomicBool,
}

/// A copy of [`ResendKeyStats`].
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct ResendKeySnapshot {
    /// Keys held in memory, not yet in a run.
    pub in_memory: u64,
    /// Live runs (a look-up the filter cannot rule out reads one block of each).
    pub runs: u64,
    /// Keys in them.
    pub keys_in_runs: u64,
    /// Whether a merge is under way.
    pub merging: bool,
    /// Whether merging stopped after a failure (until restart; see the log).
    pub merging_stopped: bool,
}

impl ResendKeyStats {
    /// Records where `keys` are now.
    pub fn record(&self, keys: &DedupeKeys) {
        let runs = keys.runs();
        self.held.store(keys.pending() as u64, Ordering::Relaxed);
        self.runs.store(runs.len() as u64, Ordering::Relaxed);
        self.keys_in_runs.store(runs.keys(), Ordering::Relaxed);
        self.merging.store(runs.merging(), Ordering::Relaxed);
        self.stopped.store(runs.stalled(), Ordering::Relaxed);
    }

    /// The figures now.
    pub fn snapshot(&self) -> ResendKeySnapshot {
        ResendKeySnapshot {
            in_memory: self.held.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
            keys_in_runs: self.keys_in_runs.load(Ordering::Relaxed),
            merging: self.merging.load(Ordering::Relaxed),
            merging_stopped: self.stopped.load(Ordering::Relaxed),
        }
    }
}

/// What a commit wrote of the keys; applied to memory once that commit succeeded.
#[derive(Debug)]
pub struct KeysMoved {
    /// Whether the pending keys went into a new run.
    wrote_run: bool,
    runs: RunsMoved,
}

/// How resend keys are kept; part of the broker's config.
#[derive(Debug, Clone, Copy)]
pub struct DedupeSettings {
    /// Keys held in memory before they are written as a run (at least 1).
    pub run_keys: usize,
    /// How far back a resend is recognised, ms.
    pub window_ms: i64,
    /// Memory for the [`ResendFilter`], bytes (0: off, every look-up queries).
    pub filter_bytes: usize,
}

/// Keys of stored messages not yet in a run, and the runs they move to. One per database,
/// shared by the writer threads (which hold it across a transaction).
#[derive(Debug)]
pub struct DedupeKeys {
    /// Pending key -> where its message is (the newest, if two share the key).
    pending: FastMap<u64, PendingKey>,
    /// Older messages under a key that is in `pending` too: a collision, or a frame id
    /// used again after the window. Almost always empty.
    shadowed: Vec<(u64, PendingKey)>,
    /// Every key stored within the window, for look-ups that skip the table.
    filter: ResendFilter,
    /// Where the moved keys are.
    runs: DedupeRuns,
    /// Keys held before they move ([`DedupeSettings::run_keys`]).
    run_keys: usize,
}

impl DedupeKeys {
    /// Loads the keys of messages stored since the last run was written, within the dedupe
    /// window, and fills the filter with the keys already in the table. `now` in ms.
    pub fn load(c: &mut DbConn, settings: DedupeSettings, now: i64) -> diesel::QueryResult<Self> {
        let moved = queries::dedupe_moved_through(c)?;
        let mut filter = ResendFilter::new(settings.filter_bytes, settings.window_ms);
        let runs = DedupeRuns::load(c)?;
        if filter.is_on() {
            // Only live runs' blocks (merged runs wait for deletion; their keys are in the
            // merge's output).
            let live = runs.ids();
            let rows = queries::dedupe_run_blocks_iter(c)?
                .filter(|block| {
                    block
                        .as_ref()
                        .map_or(true, |(id, _)| live.contains(&(id >> 32)))
                })
                .flat_map(|block| {
                    let pairs = block.and_then(|(id, bytes)| dedupe_runs::decode(id, &bytes));
                    let keys: Vec<QueryResult<u64>> = match pairs {
                        Ok(pairs) => pairs.into_iter().map(|(key, _)| Ok(key as u64)).collect(),
                        Err(e) => vec![Err(e)],
                    };
                    keys
                });
            let read = filter.load_startup(rows, runs.keys() as usize, now)?;
            if filter.startup_overflowed() {
                log::warn!(
                    "resend filter: more than {} keys in dedupe_runs; every resend look-up \
                     queries the table until they are out of dedupe_window (raise \
                     database.resend_filter_mib to hold them)",
                    filter.capacity()
                );
            } else {
                log::info!("resend filter: {read} keys read from dedupe_runs");
            }
        }
        let mut keys = DedupeKeys {
            pending: FastMap::default(),
            shadowed: Vec::new(),
            filter,
            runs,
            run_keys: settings.run_keys.max(1),
        };
        let since = now - settings.window_ms;
        for m in queries::keyed_messages_after(c, moved, since)? {
            keys.add(
                key_of(&m.sender_id, &m.client_msg_id),
                PendingKey {
                    pos: m.pos,
                    created_at: m.created_at,
                },
            );
        }
        Ok(keys)
    }

    /// The same keys, written as a run once `run_keys` are held.
    #[cfg(test)]
    pub(crate) fn paced(self, run_keys: usize) -> Self {
        DedupeKeys {
            run_keys: run_keys.max(1),
            ..self
        }
    }

    /// The runs the moved keys are in.
    pub fn runs(&self) -> &DedupeRuns {
        &self.runs
    }

    /// Keys held in memory.
    pub fn pending(&self) -> usize {
        self.pending.len() + self.shadowed.len()
    }

    fn add(&mut self, key: u64, at: PendingKey) {
        if let Some(older) = self.pending.insert(key, at) {
            self.shadowed.push((key, older));
        }
        self.filter.insert(key, at.created_at);
    }

    /// Brings what the look-ups of `keys` read into cache at once (see
    /// [`ResendFilter::warm`]).
    pub fn warm(&self, keys: impl Iterator<Item = u64>) {
        self.filter.warm(keys);
    }

    /// The message `sender` stored under client frame id `cmid` since `since`, if any.
    /// `key` is `key_of(sender, cmid)`.
    pub fn find(
        &self,
        c: &mut DbConn,
        key: u64,
        sender: &str,
        cmid: &str,
        since: i64,
    ) -> diesel::QueryResult<Option<StoredMessage>> {
        let held = self
            .pending
            .get(&key)
            .into_iter()
            .chain(
                self.shadowed
                    .iter()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, p)| p),
            )
            .filter(|p| p.created_at >= since)
            .map(|p| p.pos);
        let matches = |m: &StoredMessage| {
            m.created_at >= since
                && &*m.sender_id == sender
                && m.client_msg_id.as_deref() == Some(cmid)
        };
        for pos in held {
            if let Some(m) = queries::message_by_pos(c, pos)?.filter(matches) {
                return Ok(Some(m));
            }
        }
        // Nearly every key is new: the filter saves the query for most of them.
        if !self.filter.may_hold(key, since) {
            return Ok(None);
        }
        for pos in self.runs.positions(c, key as i64)? {
            if let Some(m) = queries::message_by_pos(c, pos)?.filter(matches) {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Inside a commit that stored `stored` keys: writes the pending keys as a new run once
    /// there are enough (then `moved_through` moves up to the newest of them), and moves the
    /// runs' merge on. Memory changes only in [`DedupeKeys::committed`], once the commit
    /// succeeded.
    pub fn move_keys(&self, c: &mut DbConn, stored: usize) -> diesel::QueryResult<KeysMoved> {
        let wrote_run = self.pending() >= self.run_keys;
        let written = if wrote_run {
            // Sorted as the table sorts them (signed); the newest of a key's pairs is kept
            // with the others (a look-up checks each against its message).
            let mut pairs: Vec<Pair> = self
                .pending
                .iter()
                .chain(self.shadowed.iter().map(|(k, p)| (k, p)))
                .map(|(&key, p)| (key as i64, p.pos))
                .collect();
            pairs.sort_unstable();
            pairs.dedup();
            let run = self.runs.write_run(c, &pairs)?;
            // Every key up to the newest of them is now in a run.
            if let Some(newest) = pairs.iter().map(|p| p.1).max() {
                queries::set_dedupe_moved_through(c, newest)?;
            }
            run
        } else {
            None
        };
        let budget = MERGE_MIN.max(MERGE_PER_KEY * stored);
        Ok(KeysMoved {
            wrote_run,
            runs: self.runs.step(c, written, budget),
        })
    }

    /// After a commit: forgets the keys it wrote as a run (if it did) and holds the keys of
    /// the messages it stored, `(key, position, stored at)`.
    pub fn committed(
        &mut self,
        moved: Option<KeysMoved>,
        stored: impl Iterator<Item = (u64, i64, i64)> + Clone,
    ) {
        self.filter.warm(stored.clone().map(|(key, _, _)| key));
        if let Some(m) = moved {
            if m.wrote_run {
                self.pending.clear();
                self.shadowed.clear();
            }
            self.runs.committed(m.runs);
        }
        for (key, pos, created_at) in stored {
            self.add(key, PendingKey { pos, created_at });
        }
    }
}
