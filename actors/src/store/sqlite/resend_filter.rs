//! `ResendFilter`: a Bloom filter over the resend keys of the dedupe window, so that the
//! look-up for a frame id never stored (nearly every look-up) costs no query.
//!
//! Every message with a client frame id is looked up before it is stored (contract
//! guarantee 2). Keys still in memory are found there; keys already moved to the table
//! (now `dedupe_runs`) took one `SELECT` each, about a tenth of the broker's work in `pairs`
//! (docs/BENCHMARKS.md). The filter answers "certainly not stored" for most new keys; only
//! a "maybe" (a resend, or a false positive) queries the table. It never answers "not
//! stored" for a key that is: every key the writer stores goes in, and the keys already in
//! the table at start-up are read into a part sized for them (or, when there are more than
//! the whole filter holds, every look-up queries until they are out of the window).
//!
//! Keys expire with the window: the filter is cut into parts by storage time (a window
//! spans [`PARTS_PER_WINDOW`] of them), and a part is dropped once all it holds is older
//! than the window. A part that is full (the keys it was sized for) is followed by a new
//! one at once, so a burst of keys spreads over parts rather than filling one past use (10 M
//! keys in minutes made one part answer "maybe" to nearly every key). Memory is bounded:
//! parts take at most [`PARTS_PER_WINDOW`] + 1 parts' memory in all; with all of it full
//! within the window the newest part takes more keys than it was sized for and answers
//! "maybe" more often (more queries), never wrong.
//!
//! A part is a split-block Bloom filter: a key sets one bit in each of the eight words of
//! one 64-byte block, so a look-up touches one cache line.

use std::collections::VecDeque;

/// One 512-bit block: a key sets one bit in each word.
type Block = [u64; 8];

/// Parts per dedupe window: a part is dropped at most a window and one part after its
/// first key was stored.
pub const PARTS_PER_WINDOW: i64 = 8;

/// Bits per key a part is sized for (about 1–2 % false positives at that load).
const BITS_PER_KEY: usize = 10;

/// The keys stored in one span of time.
#[derive(Debug)]
struct Part {
    /// When its first key was stored, ms; it takes keys until `start + span` (or until full).
    start: i64,
    /// When its newest key was stored, ms: it is dropped once that is out of the window.
    newest: i64,
    /// Keys it took.
    keys: usize,
    blocks: Vec<Block>,
}

/// A Bloom filter over the resend keys stored within the dedupe window.
#[derive(Debug)]
pub struct ResendFilter {
    /// Blocks per part; 0: the filter is off and answers "maybe" to everything.
    blocks: usize,
    window_ms: i64,
    span_ms: i64,
    /// Oldest first.
    parts: VecDeque<Part>,
    /// At start-up the table held more keys than the filter holds: any key stored before
    /// this time (ms) may be there.
    unknown_before: Option<i64>,
}

impl ResendFilter {
    /// A filter using about `bytes` of memory over a dedupe window of `window_ms`; `bytes`
    /// 0 turns it off. Memory is taken as parts fill, not up front.
    pub fn new(bytes: usize, window_ms: i64) -> Self {
        // The parts alive at once: a window's and the current one.
        let shares = PARTS_PER_WINDOW as usize + 1;
        let blocks = bytes / shares / std::mem::size_of::<Block>();
        ResendFilter {
            blocks,
            window_ms: window_ms.max(1),
            span_ms: (window_ms / PARTS_PER_WINDOW).max(1),
            parts: VecDeque::new(),
            unknown_before: None,
        }
    }

    /// Whether the filter is on.
    pub fn is_on(&self) -> bool {
        self.blocks > 0
    }

    /// Keys the filter holds at its false-positive rate: beyond it, more look-ups query.
    pub fn capacity(&self) -> usize {
        (PARTS_PER_WINDOW as usize + 1) * self.part_capacity()
    }

    fn part_capacity(&self) -> usize {
        self.blocks * 512 / BITS_PER_KEY
    }

    /// Takes in the `expected` keys found in the table at start-up (`now`, ms), as if stored
    /// now: they leave a window after the start. They go into one part as large as they
    /// need (in whole parts' memory), not into parts filled one after the other: the table
    /// gives keys in sorted runs, and a part filled from a stretch of sorted keys would hold
    /// them in a few of its blocks (at 13 M keys 43 % of new keys were "maybe"). With more
    /// keys than the filter holds, none is read (so that a start stays quick) and every
    /// look-up queries until the window has passed the start. Answers how many it read.
    pub fn load_startup<E>(
        &mut self,
        keys: impl Iterator<Item = Result<u64, E>>,
        expected: usize,
        now: i64,
    ) -> Result<usize, E> {
        if !self.is_on() || expected == 0 {
            return Ok(0);
        }
        if expected > self.capacity() {
            self.unknown_before = Some(now);
            return Ok(0);
        }
        let shares = expected.div_ceil(self.part_capacity()).max(1);
        let mut part = Part {
            start: now,
            newest: now,
            keys: 0,
            blocks: vec![[0u64; 8]; shares * self.blocks],
        };
        for key in keys {
            set(&mut part.blocks, key?);
            part.keys += 1;
        }
        let read = part.keys;
        self.parts.push_back(part);
        Ok(read)
    }

    /// Whether the keys read at start-up were more than the filter holds (see
    /// [`ResendFilter::load_startup`]) and are still within the window.
    pub fn startup_overflowed(&self) -> bool {
        self.unknown_before.is_some()
    }

    /// False only if no key `key` was stored since `since` (ms): the look-up can skip the
    /// table.
    pub fn may_hold(&self, key: u64, since: i64) -> bool {
        if !self.is_on() {
            return true;
        }
        self.unknown_before.is_some_and(|before| before > since)
            || self
                .parts
                .iter()
                .rev()
                .take_while(|p| p.newest >= since)
                .any(|p| has(&p.blocks, key))
    }

    /// Reads the block of each of `keys` in every part, so that the look-ups or inserts
    /// that follow for the same keys find them in cache. A batch's keys fall in random
    /// blocks of parts of megabytes: one key at a time, each access waits for memory;
    /// touched together in a loop with nothing else between, their misses overlap.
    pub fn warm(&self, keys: impl Iterator<Item = u64>) {
        if !self.is_on() {
            return;
        }
        let mut seen = 0u64;
        for key in keys {
            for blocks in self.parts.iter().map(|p| p.blocks.as_slice()) {
                let (i, _) = place(blocks.len(), key);
                seen |= blocks.get(i).map_or(0, |b| b[0]);
            }
        }
        // The loads are the point; keep them from being optimised away.
        std::hint::black_box(seen);
    }

    /// Adds the key of a message stored at `stored_at` (ms), and drops what has left the
    /// window.
    pub fn insert(&mut self, key: u64, stored_at: i64) {
        if !self.is_on() {
            return;
        }
        // A key goes in the newest part unless its span is over or it is full (and there is
        // room for another). A clock that stepped back puts a key in a part later than its
        // time: dropped later, never sooner.
        let full = |p: &Part| p.keys >= p.blocks.len() * 512 / BITS_PER_KEY;
        let over = |p: &Part| p.start + self.span_ms <= stored_at || full(p);
        if self.parts.back().is_none_or(over) {
            self.expire(stored_at - self.window_ms);
            let shares: usize = self
                .parts
                .iter()
                .map(|p| p.blocks.len() / self.blocks)
                .sum();
            if shares <= PARTS_PER_WINDOW as usize {
                self.parts.push_back(Part {
                    start: stored_at,
                    newest: stored_at,
                    keys: 0,
                    blocks: vec![[0u64; 8]; self.blocks],
                });
            }
        }
        if let Some(p) = self.parts.back_mut() {
            set(&mut p.blocks, key);
            p.keys += 1;
            p.newest = p.newest.max(stored_at);
        }
    }

    /// Drops the parts, and the start-up keys not held, stored wholly before `since`.
    fn expire(&mut self, since: i64) {
        while self.parts.front().is_some_and(|p| p.newest < since) {
            self.parts.pop_front();
        }
        if self.unknown_before.is_some_and(|before| before <= since) {
            self.unknown_before = None;
        }
    }
}

/// The block of `key` and the bit it sets in each word. Keys are SHA-256 bits, so they are
/// uniform already: the high bits choose the block, the low 48 the bits.
fn place(blocks: usize, key: u64) -> (usize, [u64; 8]) {
    let block = ((u128::from(key) * blocks as u128) >> 64) as usize;
    let mut bits = [0u64; 8];
    for (i, b) in bits.iter_mut().enumerate() {
        *b = 1 << ((key >> (6 * i)) & 63);
    }
    (block, bits)
}

fn set(blocks: &mut [Block], key: u64) {
    let (i, bits) = place(blocks.len(), key);
    if let Some(block) = blocks.get_mut(i) {
        for (w, b) in block.iter_mut().zip(bits) {
            *w |= b;
        }
    }
}

fn has(blocks: &[Block], key: u64) -> bool {
    let (i, bits) = place(blocks.len(), key);
    blocks
        .get(i)
        .is_some_and(|block| block.iter().zip(bits).all(|(w, b)| w & b != 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    /// Uniform 64-bit keys, as `dedupe::key_of` gives (splitmix64).
    fn keys(from: u64, n: u64) -> impl Iterator<Item = u64> {
        (from..from + n).map(|i| {
            let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        })
    }

    #[test]
    fn every_stored_key_may_be_held_and_most_others_are_certainly_not() {
        let mut f = ResendFilter::new(1 << 20, 24 * HOUR);
        let now = 100 * HOUR;
        for k in keys(0, 5_000) {
            f.insert(k, now);
        }
        assert!(keys(0, 5_000).all(|k| f.may_hold(k, now - 24 * HOUR)));
        let false_positives = keys(1_000_000, 100_000)
            .filter(|&k| f.may_hold(k, now - 24 * HOUR))
            .count();
        assert!(false_positives < 1_000, "{false_positives} of 100,000");
    }

    #[test]
    fn keys_leave_with_the_window_and_not_before() {
        let window = 8 * HOUR;
        let mut f = ResendFilter::new(1 << 20, window);
        let t0 = 100 * HOUR;
        f.insert(7, t0);
        // Still within the window an hour short of its end.
        f.insert(8, t0 + window - HOUR);
        assert!(f.may_hold(7, t0 + window - HOUR - window));
        // Once the window has passed the part, it is dropped.
        f.insert(9, t0 + window + HOUR);
        assert!(!f.may_hold(7, t0 + HOUR + 1));
        assert!(f.may_hold(8, t0 + HOUR + 1));
        assert_eq!(f.parts.len(), 2);
    }

    #[test]
    fn keys_found_at_start_up_count_until_they_leave_the_window() {
        let now = 100 * HOUR;
        let mut f = ResendFilter::new(1 << 20, HOUR);
        let read = f.load_startup(keys(0, 100).map(Ok::<_, ()>), 100, now);
        assert_eq!(read, Ok(100));
        assert!(keys(0, 100).all(|k| f.may_hold(k, now - HOUR)));
        let others = keys(1_000_000, 10_000)
            .filter(|&k| f.may_hold(k, now - HOUR))
            .count();
        assert!(others < 100, "{others} of 10,000");
        // Stored before the start: gone once the window has passed the start.
        f.insert(1, now + 2 * HOUR);
        assert!(keys(0, 100).all(|k| !f.may_hold(k, now + HOUR)));

        // Three parts' worth, sorted as the table gives them: one part of three parts'
        // memory, as good as three parts of random keys.
        let mut three = ResendFilter::new(1 << 20, HOUR);
        let n = 3 * three.part_capacity();
        let mut sorted: Vec<u64> = keys(0, n as u64).collect();
        sorted.sort_unstable();
        let read = three.load_startup(sorted.iter().map(|&k| Ok::<_, ()>(k)), n, now);
        assert_eq!(read, Ok(n));
        assert_eq!(three.parts.len(), 1);
        assert!(sorted.iter().all(|&k| three.may_hold(k, now - HOUR)));
        let others = keys(1 << 40, 10_000)
            .filter(|&k| three.may_hold(k, now - HOUR))
            .count();
        assert!(others < 300, "{others} of 10,000");
        // New keys take the parts left: six more, not nine.
        for k in keys(1 << 41, 20 * three.part_capacity() as u64) {
            three.insert(k, now + 1);
        }
        assert_eq!(three.parts.len(), 1 + PARTS_PER_WINDOW as usize + 1 - 3);

        // More than the filter holds: none read, and every look-up queries until the
        // window has passed the start.
        let mut over = ResendFilter::new(10 * 64 * 64, HOUR);
        let capacity = over.capacity();
        let read = over.load_startup(keys(0, 10).map(Ok::<_, ()>), capacity + 1, now);
        assert_eq!(read, Ok(0));
        assert!(over.startup_overflowed());
        assert!(over.may_hold(1 << 50, now - HOUR));
        over.insert(1, now + 2 * HOUR);
        assert!(!over.startup_overflowed());
        assert!(!over.may_hold(1 << 50, now + HOUR));
    }

    #[test]
    fn a_burst_spreads_over_parts_and_memory_stays_bounded() {
        let mut f = ResendFilter::new(1 << 20, 24 * HOUR);
        let now = 100 * HOUR;
        let part = f.blocks * 512 / BITS_PER_KEY;
        // Four parts' worth at one instant: four parts, each used as it was sized for.
        for k in keys(0, 4 * part as u64) {
            f.insert(k, now);
        }
        assert_eq!(f.parts.len(), 4);
        let since = now - 24 * HOUR;
        assert!(keys(0, 4 * part as u64).all(|k| f.may_hold(k, since)));
        let false_positives = keys(1 << 40, 100_000)
            .filter(|&k| f.may_hold(k, since))
            .count();
        assert!(false_positives < 6_000, "{false_positives} of 100,000");
        // Far more than memory holds: no more parts than a window's and one, no key lost.
        for k in keys(1 << 20, 20 * part as u64) {
            f.insert(k, now + 1);
        }
        assert_eq!(f.parts.len(), PARTS_PER_WINDOW as usize + 1);
        assert!(keys(1 << 20, 20 * part as u64).all(|k| f.may_hold(k, since)));
        // A window later they are all gone.
        f.insert(1, now + 25 * HOUR);
        assert_eq!(f.parts.len(), 1);
    }

    #[test]
    fn a_filter_without_memory_is_off_and_answers_maybe() {
        let mut f = ResendFilter::new(0, HOUR);
        f.insert(1, 0);
        assert!(!f.is_on());
        assert!(f.may_hold(2, 0));
    }
}
