//! Hash maps of the message path.
//!
//! std's `HashMap` hashes with SipHash-1-3, which showed up at 1–3 % of the broker's threads
//! in `pairs` for a few look-ups per message (channel names, user ids, resend keys, seq
//! counters). These maps use foldhash instead, the hasher behind hashbrown's default: several
//! times faster on short keys, and seeded at random per process, so that keys a client picks
//! (channel and group names, frame ids) cannot be chosen to collide without knowing the seed.

/// A `HashMap` hashed with foldhash (random seed per process).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` hashed with foldhash (random seed per process).
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
