//! `SeqCounters`: the last seq given out in each channel, kept in memory by the writer.
//!
//! A channel's counter is read once, on first use, and then kept here, so that a commit
//! neither reads nor rewrites each channel's `channels` row (two statements per channel
//! per batch, and the row's page in the WAL of every commit); a commit only inserts the
//! `channels` row of a channel it creates.
//!
//! What the store holds stays the truth: a channel's counter is the larger of
//! `channels.last_seq` and the highest seq stored (`ChannelIndex::head_seq`: the channel's
//! newest place in memory, or else its last row in `channel_index`), so a restart, a
//! cleared cache or a reader computes the same value. Anything that ever
//! deletes messages must first raise `channels.last_seq` to the channel's highest seq, or
//! seqs would be given out again.
//!
//! Memory changes only after a commit succeeded ([`SeqCounters::committed`]); a failed batch
//! clears everything ([`SeqCounters::forget`]), so that its row-by-row retry reads them
//! from the store again.

use super::channel_index::ChannelIndex;
use super::DbConn;
use crate::fast_map::FastMap;

/// Most channels whose counter is held; past it the cache starts again empty (a miss costs
/// two index look-ups), so memory stays bounded however many channels are written to.
pub const MAX_HELD: usize = 100_000;

/// A channel's counter as one batch sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter {
    /// The last seq given out (0: none yet).
    pub last: i64,
    /// Whether the channel has its `channels` row; a commit that gives out its first seq
    /// inserts it.
    pub has_row: bool,
}

/// The last seq of each channel written to recently. One per database, shared by the
/// writer threads under the lock they hold across a transaction.
#[derive(Debug)]
pub struct SeqCounters {
    last: FastMap<String, i64>,
    max_held: usize,
}

impl Default for SeqCounters {
    fn default() -> Self {
        SeqCounters::new(MAX_HELD)
    }
}

impl SeqCounters {
    /// An empty cache holding at most `max_held` channels (at least 1).
    pub fn new(max_held: usize) -> Self {
        SeqCounters {
            last: FastMap::default(),
            max_held: max_held.max(1),
        }
    }

    /// Channels whose counter is held.
    pub fn held(&self) -> usize {
        self.last.len()
    }

    /// The counter of `channel`: from memory, or read from the store on a miss.
    pub fn get(
        &self,
        c: &mut DbConn,
        index: &ChannelIndex,
        channel: &str,
    ) -> diesel::QueryResult<Counter> {
        if let Some(&last) = self.last.get(channel) {
            return Ok(Counter {
                last,
                has_row: true,
            });
        }
        let (last, has_row) = index.head_seq(c, channel)?;
        Ok(Counter { last, has_row })
    }

    /// After a commit: the counters it moved, `(channel, last seq given out)`.
    pub fn committed<'a>(&mut self, moved: impl Iterator<Item = (&'a str, i64)>) {
        for (channel, last) in moved {
            if let Some(held) = self.last.get_mut(channel) {
                *held = last;
                continue;
            }
            if self.last.len() >= self.max_held {
                self.last.clear();
            }
            self.last.insert(channel.to_owned(), last);
        }
    }

    /// Forgets every counter (after a failed commit): the next use reads the store.
    pub fn forget(&mut self) {
        self.last.clear();
    }
}
