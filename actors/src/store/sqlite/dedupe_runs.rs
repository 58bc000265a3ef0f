//! `DedupeRuns`: the resend keys moved out of memory, as sorted runs of (key, position)
//! pairs that are merged a few blocks per commit (a log-structured merge tree in two
//! tables, migration 000007).
//!
//! Keys are random (hashes of client frame ids), so in one sorted B-tree each moved key
//! would rewrite a page of its own once the tree is large (docs/BENCHMARKS.md, "resend
//! keys at scale", has the figures). A move writes the keys
//! held in memory as a new run, sorted, appended to the table; when [`FANIN`] runs of about
//! the same size exist they are merged into one, at most a budget of pairs per commit, so a
//! key is rewritten once per size class it passes through (a handful of times), always
//! into new, full pages. A look-up reads one block per live run, and happens only when the
//! resend filter says "maybe" (a resend, or 1–2 % of new keys).
//!
//! A run is in `dedupe_runs` (`state`, key count, and the first key of each block:
//! "fences", kept in memory to find a key's block) and its blocks are rows of
//! `dedupe_run_blocks` with ids `run * 2^32 + block`: appending a run appends rows, and a
//! block is found by its id. A merge's output is `BUILDING` and not consulted until the
//! commit that writes its last block marks it `LIVE` and its inputs `MERGED`; merged runs'
//! blocks are then deleted a few per commit. At start-up a run left `BUILDING` by a crash
//! is thrown away (its inputs are still live) and the merge begins again.
//!
//! Memory follows the table only once a commit succeeded: every step here returns what it
//! wrote, and [`DedupeRuns::committed`] applies it.

use std::collections::VecDeque;

use diesel::{Connection, QueryResult};

use super::{queries, DbConn};

/// Pairs per block written (2 KiB). A key's pairs are never cut apart, so a block may hold
/// a few more.
pub const BLOCK: usize = 128;
/// Runs of one size class merged together (each key is rewritten about log4 of the number
/// of keys over [`BLOCK`] times).
pub const FANIN: usize = 4;
/// Pairs a commit merges at least, when a merge is due (four blocks: a commit of a few
/// messages stays small; with 4,096 the ack p99 at 10 k/s on a large database rose by a
/// few ms while big runs merged)...
pub const MERGE_MIN: usize = 512;
/// ...and this many per key the commit stored, so that merges keep up with any rate (a key
/// passes through about log4(keys / run_keys) merges).
pub const MERGE_PER_KEY: usize = 8;
/// Bytes per (key, position) pair.
const PAIR: usize = 16;

/// `state` of a run: a merge's output, not yet consulted.
pub const BUILDING: i32 = 0;
/// `state` of a run: consulted by look-ups.
pub const LIVE: i32 = 1;
/// `state` of a run: merged into another; its blocks are being deleted.
pub const MERGED: i32 = 2;

/// A resend key and the position of the message stored under it.
pub type Pair = (i64, i64);

/// The pairs of a block, as the table holds them: key then position, big-endian, 16 bytes a
/// pair, sorted as SQLite sorts integers (signed).
pub fn encode(pairs: &[Pair]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pairs.len() * PAIR);
    for (key, pos) in pairs {
        out.extend_from_slice(&key.to_be_bytes());
        out.extend_from_slice(&pos.to_be_bytes());
    }
    out
}

/// The pairs of a block read from the table; an error if its length is not whole pairs.
pub fn decode(id: i64, bytes: &[u8]) -> QueryResult<Vec<Pair>> {
    check_pairs(id, bytes)?;
    Ok(bytes.chunks_exact(PAIR).map(pair_at).collect())
}

fn check_pairs(id: i64, bytes: &[u8]) -> QueryResult<()> {
    if bytes.len().is_multiple_of(PAIR) {
        return Ok(());
    }
    Err(diesel::result::Error::DeserializationError(
        format!(
            "dedupe block {id} holds {} bytes, not whole pairs",
            bytes.len()
        )
        .into(),
    ))
}

fn pair_at(p: &[u8]) -> Pair {
    let (mut key, mut pos) = ([0u8; 8], [0u8; 8]);
    key.copy_from_slice(&p[..8]);
    pos.copy_from_slice(&p[8..PAIR]);
    (i64::from_be_bytes(key), i64::from_be_bytes(pos))
}

/// The id of block `i` of run `run`.
pub fn block_id(run: i64, i: usize) -> i64 {
    (run << 32) + i as i64
}

/// The ids of every block run `run` can have.
pub fn block_ids(run: i64) -> (i64, i64) {
    (run << 32, (run << 32) + u32::MAX as i64)
}

/// Fences as `dedupe_runs.fences` holds them (8-byte big-endian signed integers).
pub fn encode_fences(fences: &[i64]) -> Vec<u8> {
    fences.iter().flat_map(|f| f.to_be_bytes()).collect()
}

/// Fences read from `dedupe_runs.fences`.
pub fn decode_fences(run: i64, bytes: &[u8]) -> QueryResult<Vec<i64>> {
    if !bytes.len().is_multiple_of(8) {
        return Err(diesel::result::Error::DeserializationError(
            format!("dedupe run {run} has fences of {} bytes", bytes.len()).into(),
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|b| {
            let mut f = [0u8; 8];
            f.copy_from_slice(b);
            i64::from_be_bytes(f)
        })
        .collect())
}

/// `pairs` (sorted) cut into blocks of [`BLOCK`] pairs, never between two pairs of one key;
/// with `whole`, the last piece is a block too, else it is left over (it may yet be joined
/// by more pairs of its last key). Answers the blocks and what is left.
fn cut(pairs: &[Pair], whole: bool) -> (Vec<&[Pair]>, &[Pair]) {
    let mut blocks = Vec::with_capacity(pairs.len() / BLOCK + 1);
    let mut rest = pairs;
    while rest.len() > BLOCK {
        let mut end = BLOCK;
        while end < rest.len() && rest[end].0 == rest[end - 1].0 {
            end += 1;
        }
        if end == rest.len() {
            break;
        }
        let (block, later) = rest.split_at(end);
        blocks.push(block);
        rest = later;
    }
    if whole && !rest.is_empty() {
        blocks.push(rest);
        rest = &[];
    }
    (blocks, rest)
}

/// Writes `blocks` as blocks `from..` of run `run`; answers their fences.
fn write_blocks(
    c: &mut DbConn,
    run: i64,
    from: usize,
    blocks: &[&[Pair]],
) -> QueryResult<Vec<i64>> {
    let rows: Vec<(i64, Vec<u8>)> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (block_id(run, from + i), encode(b)))
        .collect();
    queries::insert_run_blocks(c, &rows)?;
    Ok(blocks
        .iter()
        .filter_map(|b| b.first().map(|p| p.0))
        .collect())
}

/// A run's place in memory: its id, how many pairs it holds and its blocks' first keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    id: i64,
    keys: u64,
    fences: Vec<i64>,
}

impl Run {
    /// Its size class: runs within a factor of [`FANIN`] in blocks share one.
    fn class(&self) -> u32 {
        let blocks = self.fences.len().max(1) as u64;
        blocks.ilog(FANIN as u64)
    }

    /// The block `key` would be in.
    fn block_of(&self, key: i64) -> Option<usize> {
        self.fences.partition_point(|&f| f <= key).checked_sub(1)
    }
}

/// Where a merge is in one of its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    run: i64,
    /// Blocks of the run.
    blocks: usize,
    block: usize,
    offset: usize,
}

/// A merge of [`FANIN`] runs of one size class into a new one, done a budget of pairs per
/// commit.
#[derive(Debug)]
struct Merge {
    class: u32,
    out: Run,
    /// Whether its `BUILDING` row is in the table.
    started: bool,
    inputs: Vec<Cursor>,
    /// Merged pairs not yet written (less than a block, or a key that may continue).
    carry: Vec<Pair>,
}

/// What one commit's merge step wrote.
#[derive(Debug)]
struct MergeStep {
    inputs: Vec<Cursor>,
    carry: Vec<Pair>,
    fences: Vec<i64>,
    keys: u64,
    finished: bool,
    /// Pairs it took from its inputs.
    pulled: usize,
}

/// A merged run whose blocks are being deleted: (run, blocks, first block still there).
type Doomed = (i64, usize, usize);

/// What a commit wrote to the runs; applied to memory by [`DedupeRuns::committed`].
#[derive(Debug, Default)]
pub struct RunsMoved {
    /// A run written from memory.
    written: Option<Run>,
    /// A step of each merge under way, in their order (possibly fewer).
    merged: Vec<MergeStep>,
    /// (run, first block still there afterwards; `None`: all gone with its row).
    deleted: Option<(i64, Option<usize>)>,
    /// Upkeep failed: no more merges or deletions until restart.
    stall: bool,
}

/// The runs in the table, the merges under way and the merged runs being deleted.
#[derive(Debug, Default)]
pub struct DedupeRuns {
    /// Live runs, in the order they became live.
    live: Vec<Run>,
    /// At most one per size class, smallest first: a big merge takes many commits, and the
    /// small runs written meanwhile merge beside it rather than pile up behind it (a 10 M
    /// key test had 122 live runs while one merge of big runs went on).
    merges: Vec<Merge>,
    doomed: VecDeque<Doomed>,
    next_id: i64,
    /// Upkeep failed once ([`DedupeRuns::step`]): runs are only written, not merged.
    stalled: bool,
}

impl DedupeRuns {
    /// Reads the runs (at start-up), throwing away a merge a crash interrupted.
    pub fn load(c: &mut DbConn) -> QueryResult<Self> {
        let mut runs = DedupeRuns {
            next_id: 1,
            ..DedupeRuns::default()
        };
        for (id, state, keys, fences) in queries::dedupe_runs(c)? {
            runs.next_id = runs.next_id.max(id + 1);
            match state {
                LIVE => runs.live.push(Run {
                    id,
                    keys: keys.max(0) as u64,
                    fences: decode_fences(id, &fences)?,
                }),
                MERGED => runs
                    .doomed
                    .push_back((id, decode_fences(id, &fences)?.len(), 0)),
                _ => {
                    let (lo, hi) = block_ids(id);
                    queries::delete_run_blocks(c, lo, hi)?;
                    queries::delete_dedupe_run(c, id)?;
                }
            }
        }
        Ok(runs)
    }

    /// Live runs (the order is of no account: a key's candidates are all checked).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no run is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The ids of the live runs.
    pub fn ids(&self) -> Vec<i64> {
        self.live.iter().map(|r| r.id).collect()
    }

    /// Pairs in live runs.
    pub fn keys(&self) -> u64 {
        self.live.iter().map(|r| r.keys).sum()
    }

    /// The positions stored under `key`: one block read per live run whose keys span it.
    pub fn positions(&self, c: &mut DbConn, key: i64) -> QueryResult<Vec<i64>> {
        let mut out = Vec::new();
        for run in &self.live {
            let Some(i) = run.block_of(key) else {
                continue;
            };
            let id = block_id(run.id, i);
            let Some(bytes) = queries::dedupe_run_block(c, id)? else {
                continue;
            };
            check_pairs(id, &bytes)?;
            let pairs: Vec<&[u8]> = bytes.chunks_exact(PAIR).collect();
            let from = pairs.partition_point(|p| pair_at(p).0 < key);
            out.extend(
                pairs[from..]
                    .iter()
                    .map(|p| pair_at(p))
                    .take_while(|p| p.0 == key)
                    .map(|p| p.1),
            );
        }
        Ok(out)
    }

    /// Inside a commit: writes `pairs` (sorted as signed integers) as a new live run, if there
    /// are any. Memory changes only in [`DedupeRuns::committed`].
    pub fn write_run(&self, c: &mut DbConn, pairs: &[Pair]) -> QueryResult<Option<Run>> {
        if pairs.is_empty() {
            return Ok(None);
        }
        let id = self.next_id;
        let (blocks, _) = cut(pairs, true);
        let fences = write_blocks(c, id, 0, &blocks)?;
        queries::put_dedupe_run(c, id, LIVE, pairs.len() as i64, &encode_fences(&fences))?;
        Ok(Some(Run {
            id,
            keys: pairs.len() as u64,
            fences,
        }))
    }

    /// Inside a commit: moves the merges under way on by about `budget` pairs in all, the
    /// smallest first (finishing those whose inputs run out), and deletes up to `budget`
    /// pairs of merged runs. `written` is
    /// the run this commit wrote, if any, passed on to [`DedupeRuns::committed`].
    ///
    /// Upkeep never fails the commit: it runs in a savepoint, and if it fails (a block
    /// missing or unreadable) it is rolled back, logged, and no merge or deletion is tried
    /// again until the next start. Look-ups stay right, with more runs to read.
    pub fn step(&self, c: &mut DbConn, written: Option<Run>, budget: usize) -> RunsMoved {
        let mut moved = RunsMoved {
            written,
            ..RunsMoved::default()
        };
        // Most commits have no upkeep to do: no savepoint for them.
        if self.stalled || (self.merges.is_empty() && self.doomed.is_empty()) {
            return moved;
        }
        let upkeep = c.transaction(|c| {
            let mut merged = Vec::with_capacity(self.merges.len());
            let mut left = budget;
            for m in &self.merges {
                if left == 0 {
                    break;
                }
                let step = self.merge_step(c, m, left)?;
                left = left.saturating_sub(step.pulled);
                merged.push(step);
            }
            let deleted = match self.doomed.front() {
                Some(&(run, blocks, from)) => Some(delete_some(c, run, blocks, from, budget)?),
                None => None,
            };
            QueryResult::Ok((merged, deleted))
        });
        match upkeep {
            Ok((merged, deleted)) => {
                moved.merged = merged;
                moved.deleted = deleted;
            }
            Err(e) => {
                log::error!("resend key runs: merging stopped until restart: {e}");
                moved.stall = true;
            }
        }
        moved
    }

    fn merge_step(&self, c: &mut DbConn, m: &Merge, budget: usize) -> QueryResult<MergeStep> {
        if !m.started {
            queries::put_dedupe_run(c, m.out.id, BUILDING, 0, &[])?;
        }
        let mut inputs = m.inputs.clone();
        // Each input's current block, from its offset on.
        let mut heads: Vec<Vec<Pair>> = Vec::with_capacity(inputs.len());
        for cur in &inputs {
            heads.push(read_from(c, cur)?);
        }
        let mut at = vec![0usize; heads.len()];
        let mut out = m.carry.clone();
        let mut pulled = 0;
        while pulled < budget {
            let Some(i) = (0..inputs.len())
                .filter(|&i| at[i] < heads[i].len())
                .min_by_key(|&i| heads[i][at[i]])
            else {
                break;
            };
            let pair = heads[i][at[i]];
            at[i] += 1;
            if out.last() != Some(&pair) {
                out.push(pair);
            }
            pulled += 1;
            let cur = &mut inputs[i];
            cur.offset += 1;
            if at[i] == heads[i].len() {
                cur.block += 1;
                cur.offset = 0;
                heads[i] = read_from(c, cur)?;
                at[i] = 0;
            }
        }
        let finished = heads.iter().zip(&at).all(|(h, &a)| a >= h.len());
        let (blocks, rest) = cut(&out, finished);
        let fences = write_blocks(c, m.out.id, m.out.fences.len(), &blocks)?;
        let keys = blocks.iter().map(|b| b.len() as u64).sum::<u64>();
        if finished {
            let mut all = m.out.fences.clone();
            all.extend_from_slice(&fences);
            let total = (m.out.keys + keys) as i64;
            queries::put_dedupe_run(c, m.out.id, LIVE, total, &encode_fences(&all))?;
            for cur in &inputs {
                queries::set_dedupe_run_state(c, cur.run, MERGED)?;
            }
        }
        Ok(MergeStep {
            inputs,
            carry: rest.to_vec(),
            fences,
            keys,
            finished,
            pulled,
        })
    }

    /// After a commit: what it wrote, then a merge begins if one is due.
    pub fn committed(&mut self, moved: RunsMoved) {
        if moved.stall {
            self.stalled = true;
            self.merges.clear();
        }
        if let Some(run) = moved.written {
            self.next_id = self.next_id.max(run.id + 1);
            self.live.push(run);
        }
        let mut done = Vec::new();
        for (i, step) in moved.merged.into_iter().enumerate() {
            let Some(m) = self.merges.get_mut(i) else {
                break;
            };
            m.started = true;
            m.inputs = step.inputs;
            m.carry = step.carry;
            m.out.fences.extend(step.fences);
            m.out.keys += step.keys;
            if step.finished {
                done.push(i);
            }
        }
        for i in done.into_iter().rev() {
            let m = self.merges.remove(i);
            let gone: Vec<i64> = m.inputs.iter().map(|c| c.run).collect();
            for run in self.live.iter().filter(|r| gone.contains(&r.id)) {
                self.doomed.push_back((run.id, run.fences.len(), 0));
            }
            self.live.retain(|r| !gone.contains(&r.id));
            self.live.push(m.out);
        }
        match moved.deleted {
            Some((_, None)) => {
                self.doomed.pop_front();
            }
            Some((_, Some(from))) => {
                if let Some(d) = self.doomed.front_mut() {
                    d.2 = from;
                }
            }
            None => {}
        }
        if !self.stalled {
            self.begin_merges();
        }
    }

    /// Starts a merge of the [`FANIN`] oldest runs in each size class that has that many
    /// not being merged and no merge under way (memory only: a merge's first step writes
    /// its row).
    fn begin_merges(&mut self) {
        // Called after every commit: nothing to look at until a class could have enough.
        if self.live.len() < FANIN {
            return;
        }
        let busy: Vec<i64> = self
            .merges
            .iter()
            .flat_map(|m| m.inputs.iter().map(|c| c.run))
            .collect();
        let mut classes: Vec<u32> = self
            .live
            .iter()
            .filter(|r| !busy.contains(&r.id))
            .map(Run::class)
            .filter(|c| self.merges.iter().all(|m| m.class != *c))
            .collect();
        classes.sort_unstable();
        let due: Vec<u32> = classes
            .chunk_by(|a, b| a == b)
            .filter(|same| same.len() >= FANIN)
            .map(|same| same[0])
            .collect();
        for class in due {
            let inputs: Vec<Cursor> = self
                .live
                .iter()
                .filter(|r| r.class() == class && !busy.contains(&r.id))
                .take(FANIN)
                .map(|r| Cursor {
                    run: r.id,
                    blocks: r.fences.len(),
                    block: 0,
                    offset: 0,
                })
                .collect();
            let id = self.next_id;
            self.next_id += 1;
            self.merges.push(Merge {
                class,
                out: Run {
                    id,
                    keys: 0,
                    fences: Vec::new(),
                },
                started: false,
                inputs,
                carry: Vec::new(),
            });
        }
        self.merges.sort_by_key(|m| m.class);
    }

    /// Whether a merge is under way.
    pub fn merging(&self) -> bool {
        !self.merges.is_empty()
    }

    /// Whether merging stopped after a failure ([`DedupeRuns::step`]).
    pub fn stalled(&self) -> bool {
        self.stalled
    }
}

/// Deletes up to `budget` pairs' worth of blocks of merged run `run` (`blocks` blocks, those
/// before `from` gone already), and its row with the last of them. Answers the run and the
/// first block left (`None`: all gone).
fn delete_some(
    c: &mut DbConn,
    run: i64,
    blocks: usize,
    from: usize,
    budget: usize,
) -> QueryResult<(i64, Option<usize>)> {
    let to = from + budget.div_ceil(BLOCK);
    if to >= blocks {
        let (lo, hi) = block_ids(run);
        queries::delete_run_blocks(c, lo, hi)?;
        queries::delete_dedupe_run(c, run)?;
        return Ok((run, None));
    }
    queries::delete_run_blocks(c, block_id(run, from), block_id(run, to) - 1)?;
    Ok((run, Some(to)))
}

/// The pairs of `cur`'s current block from its offset on (none once it is past the end).
fn read_from(c: &mut DbConn, cur: &Cursor) -> QueryResult<Vec<Pair>> {
    if cur.block >= cur.blocks {
        return Ok(Vec::new());
    }
    let id = block_id(cur.run, cur.block);
    let bytes = queries::dedupe_run_block(c, id)?.ok_or_else(|| {
        diesel::result::Error::DeserializationError(
            format!("dedupe block {id} is missing from a run being merged").into(),
        )
    })?;
    let mut pairs = decode(id, &bytes)?;
    pairs.drain(..cur.offset.min(pairs.len()));
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_through_their_encoding_in_signed_order() {
        let pairs = vec![(i64::MIN, 1), (-5, 2), (0, 3), (i64::MAX, 4)];
        assert_eq!(decode(0, &encode(&pairs)).expect("decode"), pairs);
        assert!(decode(0, &[0; 17]).is_err());
        let fences = vec![i64::MIN, -1, 0, 7];
        assert_eq!(
            decode_fences(1, &encode_fences(&fences)).expect("fences"),
            fences
        );
        assert!(decode_fences(1, &[0; 9]).is_err());
    }

    #[test]
    fn blocks_are_cut_whole_and_never_between_pairs_of_one_key() {
        let pairs: Vec<Pair> = (0..300).map(|k| (k, k)).collect();
        let (blocks, rest) = cut(&pairs, true);
        assert_eq!(
            blocks.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![128, 128, 44]
        );
        assert!(rest.is_empty());
        // Not whole: what may continue is left over.
        let (blocks, rest) = cut(&pairs, false);
        assert_eq!(blocks.len(), 2);
        assert_eq!(rest.len(), 44);
        // 150 pairs of one key across the first cut stay together.
        let mut same: Vec<Pair> = (0..90).map(|k| (k, k)).collect();
        same.extend((0..150).map(|p| (90, p)));
        same.extend((91..200).map(|k| (k, k)));
        let (blocks, _) = cut(&same, true);
        for pair in blocks.windows(2) {
            assert_ne!(pair[0].last().map(|p| p.0), pair[1].first().map(|p| p.0));
        }
        assert_eq!(blocks.iter().map(|b| b.len()).sum::<usize>(), same.len());
    }

    #[test]
    fn size_classes_grow_by_the_fan_in() {
        let run = |blocks: usize| Run {
            id: 1,
            keys: 0,
            fences: (0..blocks as i64).collect(),
        };
        assert_eq!(run(0).class(), 0);
        assert_eq!(run(3).class(), 0);
        assert_eq!(run(4).class(), 1);
        assert_eq!(run(15).class(), 1);
        assert_eq!(run(16).class(), 2);
        let r = run(3);
        assert_eq!(r.block_of(-1), None);
        assert_eq!(r.block_of(0), Some(0));
        assert_eq!(r.block_of(1), Some(1));
        assert_eq!(r.block_of(99), Some(2));
    }
}
