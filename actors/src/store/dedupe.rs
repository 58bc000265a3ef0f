//! `DedupeKeys`: finds the stored copy of a resent frame (contract guarantee 2) without a
//! B-tree index on random client ids.
//!
//! Client frame ids are random, so an index on (sender, client id) takes each insert to a
//! random page: every stored message dirtied a page of its own, which SQLite wrote to the WAL
//! and again at the next checkpoint, the largest cost of storing a message
//! (docs/BENCHMARKS.md). Here the key of each new message (a 64-bit hash of sender and client
//! id) is kept in memory first. Every commit also moves the pending keys of one slice of the
//! key space into `dedupe_keys`, sorted, so they land together on a few pages (a slice with
//! only a few keys may wait up to [`MOVE_WAIT`] commits for more). Under load a rotation
//! through all `slices` takes `slices` commits; memory holds about `slices` × `batch_max`
//! keys at most (plus those read back at start-up).
//!
//! A key points at its message's position (`messages.pos`); the table is one B-tree of
//! (key, pos) pairs (migration 000004).
//!
//! Crash safety: `dedupe_state.moved_through` names a message position up to which every
//! key is in the table; it is written in the commit that finishes a rotation. At start-up
//! the keys of later messages are read back from `messages` (a range of positions). A look-up
//! confirms each candidate against the message row (sender, frame id, dedupe window), so hash
//! collisions cost a read, never a wrong answer.

use std::collections::BTreeMap;
use std::ops::Bound;

use sha2::{Digest, Sha256};

use super::models::{DedupeKeyRow, StoredMessage};
use super::{queries, DbConn};

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

/// A slice moves once it holds this many keys...
const MOVE_AT: usize = 32;
/// ...or after this many commits passed it by. Moving a handful of keys costs a commit the
/// same pages as moving many (the table's last page and an index page), so under small
/// batches a slice waits for keys to gather rather than write two pages per commit.
const MOVE_WAIT: u32 = 16;

/// A pending key: (key, arrival number).
type Arrival = (u64, u64);

/// Where a message with a pending key is.
#[derive(Debug, Clone, Copy)]
struct PendingKey {
    /// The message's position.
    pos: i64,
    /// When it was stored, ms (keys past the dedupe window are not candidates).
    created_at: i64,
}

/// A slice moved inside a commit; applied to memory once that commit succeeded.
#[derive(Debug)]
pub struct SliceMoved {
    slice: u32,
    /// When the move finished a rotation: the newest position, where the next one begins.
    next_rotation: Option<i64>,
}

/// Keys of stored messages not yet in `dedupe_keys`, and the rotation that moves them there.
/// One per database, shared by the writer threads (which hold it across a transaction).
#[derive(Debug)]
pub struct DedupeKeys {
    /// (key, arrival number) -> where the message is. The arrival number lets two messages
    /// share a key (a collision) without one hiding the other.
    pending: BTreeMap<Arrival, PendingKey>,
    arrivals: u64,
    slices: u32,
    /// The slice the next commit moves.
    cursor: u32,
    /// Commits since a slice was last moved.
    waited: u32,
    /// [`MOVE_AT`] and [`MOVE_WAIT`] (tests set others).
    move_at: usize,
    move_wait: u32,
    /// The newest message position when the current rotation began: once the rotation
    /// ends, every key up to it is in the table.
    rotation_start: i64,
}

impl DedupeKeys {
    /// Loads the keys of messages stored since the last finished rotation, within the dedupe
    /// window (`since`, ms). `slices` is clamped to 1..=4096.
    pub fn load(c: &mut DbConn, slices: u32, since: i64) -> diesel::QueryResult<Self> {
        let moved = queries::dedupe_moved_through(c)?;
        let newest = queries::last_position(c)?;
        let mut keys = DedupeKeys {
            pending: BTreeMap::new(),
            arrivals: 0,
            slices: slices.clamp(1, 4096),
            cursor: 0,
            waited: 0,
            move_at: MOVE_AT,
            move_wait: MOVE_WAIT,
            rotation_start: newest,
        };
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

    /// The same keys, with a slice moved once it holds `move_at` keys or `move_wait` commits
    /// passed it by.
    #[cfg(test)]
    pub(crate) fn paced(self, move_at: usize, move_wait: u32) -> Self {
        DedupeKeys {
            move_at,
            move_wait,
            ..self
        }
    }

    /// Keys held in memory.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    fn add(&mut self, key: u64, at: PendingKey) {
        self.pending.insert((key, self.arrivals), at);
        self.arrivals += 1;
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
            .range((key, 0)..=(key, u64::MAX))
            .filter(|(_, p)| p.created_at >= since)
            .map(|(_, p)| p.pos);
        let candidates: Vec<i64> = held
            .chain(queries::dedupe_candidates(c, key as i64)?)
            .collect();
        for pos in candidates {
            if let Some(m) = queries::message_by_pos(c, pos)? {
                if m.created_at >= since
                    && m.sender_id == sender
                    && m.client_msg_id.as_deref() == Some(cmid)
                {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }

    /// The key range of slice `s` (the last slice runs to the top of the key space).
    fn bounds(&self, s: u32) -> (Bound<Arrival>, Bound<Arrival>) {
        let edge = |s: u32| ((u128::from(s) << 64) / u128::from(self.slices)) as u64;
        let lo = Bound::Included((edge(s), 0));
        let hi = if s + 1 >= self.slices {
            Bound::Unbounded
        } else {
            Bound::Excluded((edge(s + 1), 0))
        };
        (lo, hi)
    }

    /// Inside a commit: writes the pending keys of the next slice to `dedupe_keys` if it is
    /// due ([`MOVE_AT`], [`MOVE_WAIT`]) and, when that finishes a rotation, moves
    /// `moved_through` up. Memory changes only in [`DedupeKeys::committed`], once the commit
    /// succeeded.
    pub fn move_slice(&self, c: &mut DbConn) -> diesel::QueryResult<Option<SliceMoved>> {
        let slice = self.cursor;
        let full = self
            .pending
            .range(self.bounds(slice))
            .nth(self.move_at.max(1) - 1)
            .is_some();
        if !full && self.waited + 1 < self.move_wait {
            return Ok(None);
        }
        let rows: Vec<DedupeKeyRow> = self
            .pending
            .range(self.bounds(slice))
            .map(|(&(key, _), p)| DedupeKeyRow {
                key: key as i64,
                pos: p.pos,
            })
            .collect();
        queries::insert_dedupe_keys(c, &rows)?;
        let mut next_rotation = None;
        if slice + 1 >= self.slices {
            queries::set_dedupe_moved_through(c, self.rotation_start)?;
            // Read after this commit's inserts: its keys are pending when the next begins.
            next_rotation = Some(queries::last_position(c)?);
        }
        Ok(Some(SliceMoved {
            slice,
            next_rotation,
        }))
    }

    /// After a commit: forgets the keys it moved (if it moved a slice) and holds the keys of
    /// the messages it stored, `(key, position, stored at)`.
    pub fn committed(
        &mut self,
        moved: Option<SliceMoved>,
        stored: impl Iterator<Item = (u64, i64, i64)>,
    ) {
        self.waited += 1;
        if let Some(m) = moved {
            self.waited = 0;
            let doomed: Vec<Arrival> = self
                .pending
                .range(self.bounds(m.slice))
                .map(|(k, _)| *k)
                .collect();
            for k in doomed {
                self.pending.remove(&k);
            }
            match m.next_rotation {
                Some(start) => {
                    self.cursor = 0;
                    self.rotation_start = start;
                }
                None => self.cursor = m.slice + 1,
            }
        }
        for (key, pos, created_at) in stored {
            self.add(key, PendingKey { pos, created_at });
        }
    }
}
