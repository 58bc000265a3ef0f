//! `Sequencer`: a channel's deliveries on this node in seq order and once each, whatever
//! order they arrive in.
//!
//! In a cluster a channel's messages reach a node two ways: its own commits (from the
//! write batcher) and other nodes' commits (from the Redis bus), interleaved in any order,
//! and the bus may lose some (a dropped subscription, Redis restarted). The sequencer
//! passes on what follows the last delivered seq, holds what comes early, and names the
//! gap in between; the channel actor fills a gap that does not close by itself from the
//! database, where every seq below a committed one is already stored (a channel's seqs
//! commit in order).
//!
//! On a node alone there is no sequencer: commits arrive in order from the batcher.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::seq::Seq;
use crate::session_handle::Delivery;

/// Most messages held while waiting for an earlier one. Beyond it a message is dropped
/// from memory and read back from the database with the gap.
pub const MAX_HELD: usize = 4096;

/// What may be delivered now.
#[derive(Debug)]
pub enum Ready {
    /// Nothing.
    Nothing,
    /// The items as they were offered (the common case: they follow what was delivered).
    Offered(Arc<[Delivery]>),
    /// These, in seq order.
    Items(Vec<Delivery>),
}

/// The order keeper of one channel on one node.
#[derive(Debug)]
pub struct Sequencer {
    delivered: Seq,
    held: BTreeMap<Seq, Delivery>,
    /// Highest seq known to exist: held, dropped from `held`, or announced by a head.
    known: Seq,
}

impl Sequencer {
    /// A sequencer that takes everything after `delivered` as not delivered yet.
    pub fn new(delivered: Seq) -> Self {
        Sequencer {
            delivered,
            held: BTreeMap::new(),
            known: delivered,
        }
    }

    /// The last seq delivered in order.
    pub fn delivered(&self) -> Seq {
        self.delivered
    }

    /// Takes messages (ascending); returns what follows what was delivered, in order.
    pub fn offer(&mut self, items: &Arc<[Delivery]>) -> Ready {
        let next = Seq::new(self.delivered.get() + 1);
        if self.held.is_empty() && self.known <= self.delivered && starts_run_at(items, next) {
            if let Some(last) = items.last() {
                self.delivered = last.seq;
                self.known = last.seq;
                return Ready::Offered(items.clone());
            }
            return Ready::Nothing;
        }
        for d in items.iter() {
            if self.held.len() < MAX_HELD {
                self.hold(d.clone());
            } else {
                self.known = self.known.max(d.seq);
            }
        }
        self.drain()
    }

    /// A head: messages up to `seq` exist, whether or not they reach this node by the bus.
    pub fn announced(&mut self, seq: Seq) {
        self.known = self.known.max(seq);
    }

    /// The missing seqs, if any: those after `.0` and before `.1`.
    pub fn gap(&self) -> Option<(Seq, Seq)> {
        let end = match self.held.keys().next() {
            Some(first) => *first,
            None if self.known > self.delivered => Seq::new(self.known.get() + 1),
            None => return None,
        };
        Some((self.delivered, end))
    }

    /// Messages read from the database for the gap, which they cover through `through`:
    /// every seq up to it is delivered now, in order, and a seq the database did not have
    /// (none should be missing) is passed over rather than waited for.
    pub fn filled(&mut self, rows: Vec<Delivery>, through: Seq) -> Ready {
        // A page of rows (bounded by the caller) is held whatever the bound of `held`.
        for d in rows {
            self.hold(d);
        }
        let mut out = match self.drain() {
            Ready::Items(v) => v,
            _ => Vec::new(),
        };
        if self.delivered < through {
            log::warn!(
                "seqs {}..={through} not all in the database; the missing are passed over",
                self.delivered.get() + 1
            );
            let rest = self.held.split_off(&Seq::new(through.get() + 1));
            out.extend(std::mem::replace(&mut self.held, rest).into_values());
            self.delivered = through;
            if let Ready::Items(more) = self.drain() {
                out.extend(more);
            }
        }
        if out.is_empty() {
            Ready::Nothing
        } else {
            Ready::Items(out)
        }
    }

    fn hold(&mut self, d: Delivery) {
        if d.seq <= self.delivered {
            return; // delivered already (a late bus copy of what a fill read)
        }
        self.known = self.known.max(d.seq);
        self.held.entry(d.seq).or_insert(d);
    }

    fn drain(&mut self) -> Ready {
        let mut out = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            if entry.key().get() != self.delivered.get() + 1 {
                break;
            }
            let d = entry.remove();
            self.delivered = d.seq;
            out.push(d);
        }
        if out.is_empty() {
            Ready::Nothing
        } else {
            Ready::Items(out)
        }
    }
}

/// Whether `items` are consecutive seqs starting at `next`.
fn starts_run_at(items: &[Delivery], next: Seq) -> bool {
    items
        .iter()
        .enumerate()
        .all(|(i, d)| d.seq.get() == next.get() + i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytestring::ByteString;

    fn items(seqs: &[u64]) -> Arc<[Delivery]> {
        seqs.iter()
            .map(|s| Delivery {
                seq: Seq::new(*s),
                frame: ByteString::from(format!("m{s}")),
                skip_conn: None,
                from_here: false,
            })
            .collect()
    }

    fn seqs(r: Ready) -> Vec<u64> {
        match r {
            Ready::Nothing => vec![],
            Ready::Offered(v) => v.iter().map(|d| d.seq.get()).collect(),
            Ready::Items(v) => v.iter().map(|d| d.seq.get()).collect(),
        }
    }

    #[test]
    fn in_order_items_pass_as_they_are() {
        let mut s = Sequencer::new(Seq::new(4));
        let batch = items(&[5, 6, 7]);
        match s.offer(&batch) {
            Ready::Offered(v) => assert!(Arc::ptr_eq(&v, &batch)),
            other => panic!("expected the batch itself, got {other:?}"),
        }
        assert_eq!(s.delivered(), Seq::new(7));
        assert_eq!(s.gap(), None);
    }

    #[test]
    fn early_items_wait_for_the_gap_and_go_in_order() {
        let mut s = Sequencer::new(Seq::new(0));
        assert_eq!(seqs(s.offer(&items(&[3, 4]))), Vec::<u64>::new());
        assert_eq!(s.gap(), Some((Seq::new(0), Seq::new(3))));
        assert_eq!(seqs(s.offer(&items(&[1]))), vec![1]);
        assert_eq!(seqs(s.offer(&items(&[2]))), vec![2, 3, 4]);
        assert_eq!(s.gap(), None);
        // A late copy of something delivered is dropped.
        assert_eq!(seqs(s.offer(&items(&[3]))), Vec::<u64>::new());
    }

    #[test]
    fn a_fill_delivers_the_gap_then_what_waited_without_repeats() {
        let mut s = Sequencer::new(Seq::new(10));
        s.offer(&items(&[14, 15]));
        let rows = items(&[11, 12, 13, 14]).to_vec();
        assert_eq!(seqs(s.filled(rows, Seq::new(13))), vec![11, 12, 13, 14, 15]);
        // The bus copies of the filled seqs come late: nothing is delivered twice.
        assert_eq!(seqs(s.offer(&items(&[12, 13]))), Vec::<u64>::new());
        assert_eq!(seqs(s.offer(&items(&[16]))), vec![16]);
    }

    #[test]
    fn a_head_names_a_gap_that_no_message_shows() {
        let mut s = Sequencer::new(Seq::new(2));
        s.announced(Seq::new(5));
        assert_eq!(s.gap(), Some((Seq::new(2), Seq::new(6))));
        assert_eq!(
            seqs(s.filled(items(&[3, 4, 5]).to_vec(), Seq::new(5))),
            vec![3, 4, 5]
        );
        assert_eq!(s.gap(), None);
    }

    #[test]
    fn a_seq_missing_from_the_database_is_passed_over() {
        let mut s = Sequencer::new(Seq::new(0));
        s.offer(&items(&[4]));
        assert_eq!(
            seqs(s.filled(items(&[1, 3]).to_vec(), Seq::new(3))),
            vec![1, 3, 4]
        );
        assert_eq!(s.delivered(), Seq::new(4));
    }

    #[test]
    fn held_items_are_bounded_and_the_overflow_is_read_back() {
        let mut s = Sequencer::new(Seq::new(0));
        let many: Vec<u64> = (2..(MAX_HELD as u64 + 100)).collect();
        s.offer(&items(&many));
        assert_eq!(s.held.len(), MAX_HELD);
        let last = *many.last().expect("some");
        // The gap runs to the first held seq; the dropped ones come back in later fills.
        assert_eq!(s.gap(), Some((Seq::new(0), Seq::new(2))));
        let out = seqs(s.filled(items(&[1]).to_vec(), Seq::new(1)));
        assert_eq!(out.len(), 1 + MAX_HELD);
        let (after, before) = s.gap().expect("the dropped tail is a gap");
        assert_eq!(after.get(), MAX_HELD as u64 + 1);
        assert_eq!(before.get(), last + 1);
    }
}
