//! `DedupeBlocks`: the resend keys moved out of memory, as sorted blocks of (key, position)
//! pairs, one row per block.
//!
//! A key moved to the store used to be a row of its own in a (key, pos) B-tree: two bound
//! values, a statement step and a B-tree insert per key, about a tenth of the broker's CPU
//! in `pairs` (docs/BENCHMARKS.md, "resend keys in blocks"). Here the table holds blocks:
//! each row covers the keys from its `first_key` up to the next block's, sorted, 16 bytes a
//! pair (key, then position, big-endian). Moving a slice of keys reads the blocks they fall
//! in, merges them in memory and writes each back as one row (splitting one that grew past
//! [`BLOCK_MAX`] pairs); a look-up reads one block. Keys sort as signed 64-bit integers, as
//! SQLite stores them. The writer keeps every block's `first_key` in memory to find them.

use std::collections::BTreeSet;

use diesel::QueryResult;

use super::{queries, DbConn};

/// A block is split once it holds more pairs than this (3 KiB: a row on one 4 KiB page).
pub const BLOCK_MAX: usize = 192;
/// ...into blocks of about this many.
const BLOCK_SPLIT: usize = 128;
/// Bytes per (key, position) pair.
const PAIR: usize = 16;

/// A resend key and the position of the message stored under it.
pub type Pair = (i64, i64);

/// The pairs of a block, as the table holds them.
pub fn encode(pairs: &[Pair]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pairs.len() * PAIR);
    for (key, pos) in pairs {
        out.extend_from_slice(&key.to_be_bytes());
        out.extend_from_slice(&pos.to_be_bytes());
    }
    out
}

/// The pairs of a block read from the table; an error if its length is not whole pairs.
pub fn decode(first_key: i64, bytes: &[u8]) -> QueryResult<Vec<Pair>> {
    if !bytes.len().is_multiple_of(PAIR) {
        return Err(diesel::result::Error::DeserializationError(
            format!(
                "dedupe block {first_key} holds {} bytes, not whole pairs",
                bytes.len()
            )
            .into(),
        ));
    }
    Ok(bytes
        .chunks_exact(PAIR)
        .map(|p| {
            let (mut key, mut pos) = ([0u8; 8], [0u8; 8]);
            key.copy_from_slice(&p[..8]);
            pos.copy_from_slice(&p[8..]);
            (i64::from_be_bytes(key), i64::from_be_bytes(pos))
        })
        .collect())
}

/// What a move changed, applied to memory once its commit succeeded.
#[derive(Debug, Default)]
pub struct BlocksMoved {
    removed: Vec<i64>,
    added: Vec<i64>,
}

/// The `first_key` of every block in the table.
#[derive(Debug, Default)]
pub struct DedupeBlocks {
    firsts: BTreeSet<i64>,
}

impl DedupeBlocks {
    /// Reads the blocks' first keys (at start-up).
    pub fn load(c: &mut DbConn) -> QueryResult<Self> {
        Ok(DedupeBlocks {
            firsts: queries::dedupe_block_firsts(c)?.into_iter().collect(),
        })
    }

    /// Blocks in the table.
    pub fn len(&self) -> usize {
        self.firsts.len()
    }

    /// Whether the table holds no block.
    pub fn is_empty(&self) -> bool {
        self.firsts.is_empty()
    }

    /// The block a key belongs in: the last one beginning at or below it, else the first.
    fn block_of(&self, key: i64) -> Option<i64> {
        self.firsts
            .range(..=key)
            .next_back()
            .or_else(|| self.firsts.first())
            .copied()
    }

    /// The positions stored under `key`.
    pub fn positions(&self, c: &mut DbConn, key: i64) -> QueryResult<Vec<i64>> {
        let Some(first) = self.firsts.range(..=key).next_back().copied() else {
            return Ok(Vec::new());
        };
        let Some(bytes) = queries::dedupe_block(c, first)? else {
            return Ok(Vec::new());
        };
        let pairs = decode(first, &bytes)?;
        let from = pairs.partition_point(|p| p.0 < key);
        Ok(pairs[from..]
            .iter()
            .take_while(|p| p.0 == key)
            .map(|p| p.1)
            .collect())
    }

    /// Inside a commit: merges `pairs` (sorted, as signed integers) into the blocks they
    /// belong in and writes those back. A pair already there (moved again after a restart)
    /// is kept once. Memory changes only in [`DedupeBlocks::committed`].
    pub fn merge(&self, c: &mut DbConn, pairs: &[Pair]) -> QueryResult<BlocksMoved> {
        let mut moved = BlocksMoved::default();
        let mut rest = pairs;
        while let Some(&(key, _)) = rest.first() {
            let target = self.block_of(key);
            // The pairs bound for the same block: up to the next block's first key.
            let end = match target.and_then(|t| self.firsts.range(t + 1..).next()) {
                Some(&next) => rest.partition_point(|p| p.0 < next),
                None => rest.len(),
            };
            let (mine, later) = rest.split_at(end.max(1));
            rest = later;
            // A block memory knows of but the table lacks is written anew.
            let (target, old) = match target {
                Some(t) => match queries::dedupe_block(c, t)? {
                    Some(bytes) => (Some(t), decode(t, &bytes)?),
                    None => (None, Vec::new()),
                },
                None => (None, Vec::new()),
            };
            let merged = merge_sorted(&old, mine);
            let blocks = split(&merged);
            let unchanged_first = blocks.len() == 1 && target == blocks[0].first().map(|p| p.0);
            if let (true, Some(t)) = (unchanged_first, target) {
                queries::update_dedupe_block(c, t, &encode(blocks[0]))?;
                continue;
            }
            if let Some(t) = target {
                queries::delete_dedupe_block(c, t)?;
                moved.removed.push(t);
            }
            for block in blocks {
                if let Some(&(first, _)) = block.first() {
                    queries::insert_dedupe_block(c, first, &encode(block))?;
                    moved.added.push(first);
                }
            }
        }
        Ok(moved)
    }

    /// After a commit: the blocks its merge removed and added.
    pub fn committed(&mut self, moved: BlocksMoved) {
        for first in moved.removed {
            self.firsts.remove(&first);
        }
        self.firsts.extend(moved.added);
    }
}

/// `a` and `b` (each sorted) as one sorted list, without repeats.
fn merge_sorted(a: &[Pair], b: &[Pair]) -> Vec<Pair> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

/// `pairs` (sorted) cut into blocks: one while it holds at most [`BLOCK_MAX`], else pieces
/// of about [`BLOCK_SPLIT`]. A cut never falls between two pairs of one key, so that a
/// look-up reads one block (a key used again after many dedupe windows may make a block
/// longer than the rest).
fn split(pairs: &[Pair]) -> Vec<&[Pair]> {
    if pairs.len() <= BLOCK_MAX {
        return vec![pairs];
    }
    let pieces = pairs.len().div_ceil(BLOCK_SPLIT);
    let size = pairs.len().div_ceil(pieces);
    let mut out = Vec::with_capacity(pieces);
    let mut rest = pairs;
    while !rest.is_empty() {
        let mut cut = size.min(rest.len());
        while cut < rest.len() && rest[cut].0 == rest[cut - 1].0 {
            cut += 1;
        }
        let (block, later) = rest.split_at(cut);
        out.push(block);
        rest = later;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_through_their_encoding_in_signed_order() {
        let pairs = vec![(i64::MIN, 1), (-5, 2), (0, 3), (i64::MAX, 4)];
        assert_eq!(decode(0, &encode(&pairs)).expect("decode"), pairs);
        assert!(decode(0, &[0; 17]).is_err());
    }

    #[test]
    fn a_merge_keeps_order_and_drops_pairs_it_already_has() {
        let a = vec![(1, 1), (3, 3), (5, 5)];
        let b = vec![(2, 2), (3, 3), (3, 9), (6, 6)];
        assert_eq!(
            merge_sorted(&a, &b),
            vec![(1, 1), (2, 2), (3, 3), (3, 9), (5, 5), (6, 6)]
        );
    }

    #[test]
    fn a_long_block_is_split_but_never_between_pairs_of_one_key() {
        let short: Vec<Pair> = (0..BLOCK_MAX as i64).map(|k| (k, k)).collect();
        assert_eq!(split(&short).len(), 1);
        let long: Vec<Pair> = (0..300).map(|k| (k, k)).collect();
        let blocks = split(&long);
        assert_eq!(
            blocks.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![100; 3]
        );
        // 150 pairs of one key around the first cut: they stay together.
        let mut same: Vec<Pair> = (0..90).map(|k| (k, k)).collect();
        same.extend((0..150).map(|p| (90, p)));
        same.extend((91..150).map(|k| (k, k)));
        let blocks = split(&same);
        for pair in blocks.windows(2) {
            assert_ne!(pair[0].last().map(|p| p.0), pair[1].first().map(|p| p.0));
        }
        assert_eq!(blocks.iter().map(|b| b.len()).sum::<usize>(), same.len());
    }
}
