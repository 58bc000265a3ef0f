//! `DedupeKeys`: finds the stored copy of a resent frame (contract guarantee 2) without a
//! B-tree index on random client ids.
//!
//! Client frame ids are random, so an index on (sender, client id) takes each insert to a
//! random page: every stored message dirtied a page of its own, which SQLite wrote to the WAL
//! and again at the next checkpoint, the largest cost of storing a message
//! (docs/BENCHMARKS.md). Here the key of each new message (a 64-bit hash of sender and client
//! id) is kept in memory first. Every commit also moves the pending keys of one slice of the
//! key space to the table, sorted, so they land together in a few blocks (a slice with
//! only a few keys may wait up to [`MOVE_WAIT`] commits for more). Under load a rotation
//! through all `slices` takes `slices` commits; memory holds about `slices` × `batch_max`
//! keys at most (plus those read back at start-up).
//!
//! A key points at its message's position (`messages.pos`); the table, `dedupe_blocks`,
//! holds sorted blocks of (key, pos) pairs ([`DedupeBlocks`], migration 000006).
//!
//! Crash safety: `dedupe_state.moved_through` names a message position up to which every
//! key is in the table; it is written in the commit that finishes a rotation. At start-up
//! the keys of later messages are read back from `messages` (a range of positions). A look-up
//! confirms each candidate against the message row (sender, frame id, dedupe window), so hash
//! collisions cost a read, never a wrong answer.

use std::hash::Hasher;

use diesel::QueryResult;
use sha2::{Digest, Sha256};

use super::dedupe_blocks::{self, BlocksMoved, DedupeBlocks, Pair};
use super::models::StoredMessage;
use super::resend_filter::ResendFilter;
use super::{queries, DbConn};
use crate::fast_map::FastMap;

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

/// The slice of the key space `key` is in: slice `s` of `slices` holds the keys from
/// `s / slices` of the space up to `(s + 1) / slices`.
fn slice_of(key: u64, slices: u32) -> u32 {
    ((u128::from(key) * u128::from(slices)) >> 64) as u32
}

/// A slice moves once it holds this many keys...
const MOVE_AT: usize = 32;
/// ...or after this many commits passed it by. Moving a handful of keys costs a commit the
/// same pages as moving many (the table's last page and an index page), so under small
/// batches a slice waits for keys to gather rather than write two pages per commit.
const MOVE_WAIT: u32 = 16;

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
    /// The blocks it rewrote.
    blocks: BlocksMoved,
}

/// How resend keys are kept; part of the broker's config.
#[derive(Debug, Clone, Copy)]
pub struct DedupeSettings {
    /// Slices of the key space, one moved per commit (clamped to 1..=4096).
    pub slices: u32,
    /// How far back a resend is recognised, ms.
    pub window_ms: i64,
    /// Memory for the [`ResendFilter`], bytes (0: off, every look-up queries).
    pub filter_bytes: usize,
}

/// Keys of stored messages not yet in `dedupe_blocks`, and the rotation that moves them there.
/// One per database, shared by the writer threads (which hold it across a transaction).
#[derive(Debug)]
pub struct DedupeKeys {
    /// Pending key -> where its message is (the newest, if two share the key).
    pending: FastMap<u64, PendingKey>,
    /// Older messages under a key that is in `pending` too: a collision, or a frame id
    /// used again after the window. Almost always empty.
    shadowed: Vec<(u64, PendingKey)>,
    /// The keys of `pending` and `shadowed` by slice, in arrival order.
    by_slice: Vec<Vec<(u64, PendingKey)>>,
    /// Every key stored within the window, for look-ups that skip the table.
    filter: ResendFilter,
    /// Where the moved keys are.
    blocks: DedupeBlocks,
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
    /// window, and fills the filter with the keys already in the table. `now` in ms.
    pub fn load(c: &mut DbConn, settings: DedupeSettings, now: i64) -> diesel::QueryResult<Self> {
        let moved = queries::dedupe_moved_through(c)?;
        let newest = queries::last_position(c)?;
        let slices = settings.slices.clamp(1, 4096);
        let mut filter = ResendFilter::new(settings.filter_bytes, settings.window_ms);
        let blocks = DedupeBlocks::load(c)?;
        if filter.is_on() {
            let rows = queries::dedupe_blocks_iter(c)?.flat_map(|block| {
                let pairs = block.and_then(|(first, bytes)| dedupe_blocks::decode(first, &bytes));
                let keys: Vec<QueryResult<u64>> = match pairs {
                    Ok(pairs) => pairs.into_iter().map(|(key, _)| Ok(key as u64)).collect(),
                    Err(e) => vec![Err(e)],
                };
                keys
            });
            let read = filter.load_startup(rows, now)?;
            if filter.startup_overflowed() {
                log::warn!(
                    "resend filter: more than {} keys in dedupe_blocks; every resend look-up \
                     queries the table until they are out of dedupe_window (raise \
                     database.resend_filter_mib to hold them)",
                    filter.startup_capacity()
                );
            } else {
                log::info!("resend filter: {read} keys read from dedupe_blocks");
            }
        }
        let mut keys = DedupeKeys {
            pending: FastMap::default(),
            shadowed: Vec::new(),
            by_slice: (0..slices).map(|_| Vec::new()).collect(),
            filter,
            blocks,
            slices,
            cursor: 0,
            waited: 0,
            move_at: MOVE_AT,
            move_wait: MOVE_WAIT,
            rotation_start: newest,
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
        self.pending.len() + self.shadowed.len()
    }

    fn add(&mut self, key: u64, at: PendingKey) {
        if let Some(older) = self.pending.insert(key, at) {
            self.shadowed.push((key, older));
        }
        if let Some(keys) = self.by_slice.get_mut(slice_of(key, self.slices) as usize) {
            keys.push((key, at));
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
        for pos in self.blocks.positions(c, key as i64)? {
            if let Some(m) = queries::message_by_pos(c, pos)?.filter(matches) {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// Inside a commit: writes the pending keys of the next slice to `dedupe_blocks` if it is
    /// due ([`MOVE_AT`], [`MOVE_WAIT`]) and, when that finishes a rotation, moves
    /// `moved_through` up. Memory changes only in [`DedupeKeys::committed`], once the commit
    /// succeeded.
    pub fn move_slice(&self, c: &mut DbConn) -> diesel::QueryResult<Option<SliceMoved>> {
        let slice = self.cursor;
        let waiting = self
            .by_slice
            .get(slice as usize)
            .map_or(&[][..], Vec::as_slice);
        let full = waiting.len() >= self.move_at.max(1);
        if !full && self.waited + 1 < self.move_wait {
            return Ok(None);
        }
        // Sorted as the table sorts them (signed), to merge into its blocks in one pass.
        let mut pairs: Vec<Pair> = waiting
            .iter()
            .map(|&(key, p)| (key as i64, p.pos))
            .collect();
        pairs.sort_unstable();
        let blocks = self.blocks.merge(c, &pairs)?;
        let mut next_rotation = None;
        if slice + 1 >= self.slices {
            queries::set_dedupe_moved_through(c, self.rotation_start)?;
            // Read after this commit's inserts: its keys are pending when the next begins.
            next_rotation = Some(queries::last_position(c)?);
        }
        Ok(Some(SliceMoved {
            slice,
            next_rotation,
            blocks,
        }))
    }

    /// After a commit: forgets the keys it moved (if it moved a slice) and holds the keys of
    /// the messages it stored, `(key, position, stored at)`.
    pub fn committed(
        &mut self,
        moved: Option<SliceMoved>,
        stored: impl Iterator<Item = (u64, i64, i64)> + Clone,
    ) {
        self.filter.warm(stored.clone().map(|(key, _, _)| key));
        self.waited += 1;
        if let Some(m) = moved {
            self.waited = 0;
            if let Some(keys) = self.by_slice.get_mut(m.slice as usize) {
                for (key, _) in keys.drain(..) {
                    self.pending.remove(&key);
                }
            }
            let slices = self.slices;
            self.shadowed
                .retain(|(k, _)| slice_of(*k, slices) != m.slice);
            self.blocks.committed(m.blocks);
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
