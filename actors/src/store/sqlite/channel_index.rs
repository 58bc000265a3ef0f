//! `ChannelIndex`: where each message of a channel is stored, by seq, without an index that
//! every stored message updates.
//!
//! History and resume read a channel's messages by seq. An index on `messages (channel,
//! seq)` did that, but every insert updated it, so a commit rewrote one index leaf per
//! channel it held however few of that channel's messages it carried: at 200 busy channels
//! about half of the pages a commit wrote to the WAL, and again at the next checkpoint
//! (docs/BENCHMARKS.md, "channel index"). Here the writer keeps the places (seq, position)
//! of each channel's newest messages in memory and moves a channel's places into the
//! `channel_index` table once it holds [`MOVE_AT`] of them: as one row per run of up to
//! [`RUN_MAX`] consecutive seqs, holding their positions. Readers take a copy of a channel's
//! places from memory, then read the table.
//!
//! Two facts keep that correct:
//! - A channel moves all its places at once, so the table holds a channel's older seqs and
//!   memory its newer ones; a reader that copied memory before a move may find a place in
//!   both (it keeps one), never in neither.
//! - Memory changes only after a commit, before the commit is answered (and so before its
//!   messages are fanned out): a session that subscribed to a channel and then reads it sees
//!   every message it will not be sent live.
//!
//! Crash safety: `channel_index_state.moved_through` names a position up to which every
//! message is in the table. It lags behind by up to [`RECORD_EVERY`] positions so that it
//! is not rewritten by every commit. At start-up the places of later messages that are not
//! in the table are read back from `messages`. A channel whose oldest place is [`SPAN`]
//! positions behind the newest message moves however few places it holds, which bounds
//! both memory and that read.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use diesel::prelude::*;

pub use super::positions::{encode_positions, Place, RUN_MAX};
use super::{queries, DbConn};
use crate::fast_map::FastMap;
use crate::store::models::ChannelIndexRow;

/// A channel moves its places once it holds this many (a row of 1 KiB).
const MOVE_AT: usize = 128;
/// ...or once its oldest place is this many positions behind the newest message.
const SPAN: i64 = 32_768;
/// `moved_through` is written when it has advanced this far since it was last written
/// (half of [`SPAN`]).
const RECORD_EVERY: i64 = SPAN / 2;

/// The places not yet in the table.
#[derive(Debug, Default)]
struct Recent {
    /// Channel -> its places in memory, in seq (and position) order.
    by_channel: FastMap<Arc<str>, Vec<Place>>,
    /// Channels in the order their oldest place in memory arrived, with that place's
    /// position; an entry whose channel has moved since no longer matches and is skipped.
    arrival: VecDeque<(i64, Arc<str>)>,
    /// Channels that hold [`MOVE_AT`] places or more.
    full: Vec<Arc<str>>,
    /// Places held, over all channels.
    held: usize,
    /// The newest position stored.
    newest: i64,
    /// Every message at or below this position is in the table.
    moved_through: i64,
    /// What `channel_index_state.moved_through` says.
    recorded: i64,
    /// [`MOVE_AT`], [`SPAN`] and [`RECORD_EVERY`] (tests set others).
    move_at: usize,
    span: i64,
    record_every: i64,
}

impl Recent {
    /// Whether `(pos, channel)` from `arrival` is still its channel's oldest place.
    fn is_current(&self, pos: i64, channel: &str) -> bool {
        self.by_channel
            .get(channel)
            .and_then(|places| places.first())
            .is_some_and(|p| p.pos == pos)
    }

    fn add(&mut self, channel: &Arc<str>, place: Place) {
        let places = match self.by_channel.get_mut(&**channel) {
            Some(places) => places,
            None => self.by_channel.entry(channel.clone()).or_default(),
        };
        if places.is_empty() {
            self.arrival.push_back((place.pos, channel.clone()));
        }
        places.push(place);
        if places.len() == self.move_at {
            self.full.push(channel.clone());
        }
        self.held += 1;
        self.newest = self.newest.max(place.pos);
    }

    /// Drops `arrival` entries that no longer match, and sets `moved_through` just below
    /// the oldest place still held.
    fn settle(&mut self) {
        while let Some((pos, channel)) = self.arrival.front() {
            if self.is_current(*pos, channel) {
                break;
            }
            self.arrival.pop_front();
        }
        self.moved_through = match self.arrival.front() {
            Some((pos, _)) => pos - 1,
            None => self.newest,
        };
    }
}

/// `places` cut into runs of consecutive seqs, each at most [`RUN_MAX`] long. Seqs are
/// given out one after another, so a channel's places are one run unless a failed commit
/// was retried write by write; the cut is there so that a row never claims a seq it lacks.
fn runs(places: &[Place]) -> impl Iterator<Item = &[Place]> {
    places
        .chunk_by(|a, b| b.seq == a.seq + 1)
        .flat_map(|run| run.chunks(RUN_MAX))
}

/// What a commit moved into the table; applied to memory once that commit succeeded.
#[derive(Debug, Default)]
pub struct PlacesMoved {
    channels: Vec<Arc<str>>,
    recorded: Option<i64>,
}

/// The places of recent messages by channel, shared by the writer threads (which change
/// them) and the readers (which copy a channel's). One per database.
#[derive(Debug, Clone, Default)]
pub struct ChannelIndex {
    recent: Arc<RwLock<Recent>>,
}

impl ChannelIndex {
    /// Reads back the places of messages stored after `moved_through` that are not in the
    /// table (a crash came between their commit and their move).
    pub fn load(c: &mut DbConn) -> QueryResult<Self> {
        let recorded = queries::channel_index_moved_through(c)?;
        let mut recent = Recent {
            newest: queries::last_position(c)?,
            moved_through: recorded,
            recorded,
            move_at: MOVE_AT,
            span: SPAN,
            record_every: RECORD_EVERY,
            ..Recent::default()
        };
        let mut names: FastMap<String, Arc<str>> = FastMap::default();
        for (channel, seq, pos) in queries::unindexed_places_after(c, recorded)? {
            let name = names
                .entry(channel)
                .or_insert_with_key(|k| Arc::from(k.as_str()))
                .clone();
            recent.add(&name, Place { seq, pos });
        }
        recent.settle();
        Ok(ChannelIndex {
            recent: Arc::new(RwLock::new(recent)),
        })
    }

    /// The same places, moved at `move_at` places or `span` positions behind (and the mark
    /// written every `span / 2` positions).
    #[cfg(test)]
    pub(crate) fn paced(self, move_at: usize, span: i64) -> Self {
        {
            let mut r = self.write();
            r.move_at = move_at.max(1);
            r.span = span.max(1);
            r.record_every = (span / 2).max(1);
        }
        self
    }

    fn read(&self) -> RwLockReadGuard<'_, Recent> {
        self.recent.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Recent> {
        self.recent.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Places held in memory, over all channels.
    pub fn held(&self) -> usize {
        self.read().held
    }

    /// A copy of `channel`'s places in memory (its newest messages), in seq order. Take it
    /// before reading the table: see the module's doc.
    pub fn recent(&self, channel: &str) -> Vec<Place> {
        self.read()
            .by_channel
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// The last seq given out in `channel` and whether it has a `channels` row.
    pub fn head_seq(&self, c: &mut DbConn, channel: &str) -> QueryResult<(i64, bool)> {
        let newest = self
            .read()
            .by_channel
            .get(channel)
            .and_then(|places| places.last())
            .map(|p| p.seq);
        queries::head_seq(c, channel, newest)
    }

    /// Inside a commit: moves the places of every channel that is due into the table, in
    /// channel order, and writes `moved_through` when it has advanced far enough. Memory
    /// changes only in [`ChannelIndex::committed`], once the commit succeeded.
    pub fn move_due(&self, c: &mut DbConn) -> QueryResult<PlacesMoved> {
        let r = self.read();
        let mut due: Vec<&Arc<str>> = r.full.iter().collect();
        let behind = r.newest - r.span;
        for (pos, channel) in &r.arrival {
            if *pos > behind {
                break;
            }
            if r.is_current(*pos, channel) {
                due.push(channel);
            }
        }
        due.sort_unstable();
        due.dedup();
        let mut rows = Vec::new();
        for channel in &due {
            let places = r.by_channel.get(&***channel).map_or(&[][..], Vec::as_slice);
            for run in runs(places) {
                if let (Some(first), Some(last)) = (run.first(), run.last()) {
                    rows.push(ChannelIndexRow {
                        channel: Arc::clone(channel),
                        first_seq: first.seq,
                        last_seq: last.seq,
                        positions: encode_positions(run),
                    });
                }
            }
        }
        queries::insert_channel_index(c, &rows)?;
        let mut recorded = None;
        if r.moved_through - r.recorded >= r.record_every {
            queries::set_channel_index_moved_through(c, r.moved_through)?;
            recorded = Some(r.moved_through);
        }
        Ok(PlacesMoved {
            channels: due.into_iter().cloned().collect(),
            recorded,
        })
    }

    /// After a commit: forgets the places it moved and holds the places of the messages it
    /// stored, in the order they were stored.
    pub fn committed<'a>(
        &self,
        moved: Option<PlacesMoved>,
        stored: impl Iterator<Item = (&'a Arc<str>, Place)>,
    ) {
        let mut r = self.write();
        if let Some(m) = moved {
            if !m.channels.is_empty() {
                for channel in &m.channels {
                    if let Some(places) = r.by_channel.remove(&**channel) {
                        r.held -= places.len();
                    }
                }
                // Every full channel was due.
                r.full.clear();
            }
            if let Some(at) = m.recorded {
                r.recorded = at;
            }
        }
        for (channel, place) in stored {
            r.add(channel, place);
        }
        r.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::positions::places;

    #[test]
    fn runs_are_cut_at_gaps_in_seqs_and_at_their_longest() {
        let mut seqs: Vec<i64> = vec![1, 2, 3, 5, 6, 9];
        seqs.extend(100..100 + RUN_MAX as i64 + 2);
        let p = places(&seqs);
        let got: Vec<(i64, i64)> = runs(&p).map(|r| (r[0].seq, r[r.len() - 1].seq)).collect();
        let n = RUN_MAX as i64;
        assert_eq!(
            got,
            vec![(1, 3), (5, 6), (9, 9), (100, 99 + n), (100 + n, 101 + n)]
        );
    }
}
