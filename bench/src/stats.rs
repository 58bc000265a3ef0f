//! Latency histograms and per-receiver delivery bookkeeping (loss, duplicates, order).

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds (1 µs … 10 min, 3 significant digits), allocated on
/// its first sample (an empty one costs nothing, which matters with 20,000 idle connections).
#[derive(Default)]
pub struct Latency(Option<Box<Histogram<u64>>>);

/// Percentiles of a [`Latency`], in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    fn hist(&mut self) -> &mut Histogram<u64> {
        self.0.get_or_insert_with(|| {
            Box::new(
                Histogram::new_with_bounds(1, 600_000_000, 3)
                    .expect("static histogram bounds are valid"),
            )
        })
    }

    /// Records a latency given in nanoseconds.
    pub fn record_ns(&mut self, ns: u64) {
        self.hist().saturating_record((ns / 1_000).max(1));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        if let Some(o) = &other.0 {
            // Same bounds on both sides: adding cannot fail.
            let _ = self.hist().add(o.as_ref());
        }
    }

    /// p50/p99/p99.9/max in ms (zeros when empty).
    pub fn summary(&self) -> LatencySummary {
        let Some(h) = &self.0 else {
            return LatencySummary::default();
        };
        let ms = |us: u64| us as f64 / 1_000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// What one receiver saw of a numbered stream of messages `0..expected`.
pub struct Tracker {
    seen: Vec<u64>,
    /// Distinct messages received.
    pub unique: u64,
    /// Messages received more than once.
    pub duplicates: u64,
    /// Deliveries whose order key was not above the previous one.
    pub out_of_order: u64,
    last_key: Option<u64>,
    /// Indices outside `0..expected` (not ours, or corrupt).
    pub foreign: u64,
    /// Delivery latency.
    pub latency: Latency,
    /// When the last delivery arrived ([`crate::common::now_ns`]).
    pub last_ns: u64,
}

impl Tracker {
    /// A tracker for messages numbered `0..expected`.
    pub fn new(expected: u64) -> Self {
        Tracker {
            seen: vec![0; expected.div_ceil(64) as usize],
            unique: 0,
            duplicates: 0,
            out_of_order: 0,
            last_key: None,
            foreign: 0,
            latency: Latency::default(),
            last_ns: 0,
        }
    }

    /// Records message `idx`, delivered at `now_ns` after being sent at `sent_ns`; `key` is
    /// what must increase from one delivery to the next (the seq, or the index). True when
    /// the message is new.
    pub fn record(&mut self, idx: u64, key: u64, sent_ns: u64, now_ns: u64) -> bool {
        let (word, bit) = ((idx / 64) as usize, idx % 64);
        let Some(w) = self.seen.get_mut(word) else {
            self.foreign += 1;
            return false;
        };
        let new = *w & (1 << bit) == 0;
        if new {
            *w |= 1 << bit;
            self.unique += 1;
        } else {
            self.duplicates += 1;
        }
        if let Some(last) = self.last_key {
            if key <= last {
                self.out_of_order += 1;
            }
        }
        self.last_key = Some(key);
        self.latency.record_ns(now_ns.saturating_sub(sent_ns));
        self.last_ns = now_ns;
        new
    }

    /// Messages among `0..sent` that never arrived.
    pub fn missing(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.unique_below(sent))
    }

    fn unique_below(&self, n: u64) -> u64 {
        let full = (n / 64) as usize;
        let mut count: u64 = self
            .seen
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = n % 64;
        if rest > 0 {
            if let Some(w) = self.seen.get(full) {
                count += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        count
    }
}

/// Loss and order totals over many trackers.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Delivery {
    /// Deliveries expected.
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    /// Expected but never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Received out of order.
    pub out_of_order: u64,
}

impl Delivery {
    /// Adds one receiver that should have got messages `0..sent`.
    pub fn add(&mut self, t: &Tracker, sent: u64) {
        self.expected += sent;
        self.received += t.unique_below(sent);
        self.lost += t.missing(sent);
        self.duplicated += t.duplicates;
        self.out_of_order += t.out_of_order;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts() {
        let mut t = Tracker::new(130);
        for i in [0, 1, 2, 2, 5, 4, 129] {
            t.record(i, i, 0, 1_000);
        }
        assert_eq!(t.unique, 6);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 2);
        assert_eq!(t.missing(130), 124);
        assert_eq!(t.missing(6), 1);
        t.record(500, 500, 0, 1);
        assert_eq!(t.foreign, 1);
    }
}
