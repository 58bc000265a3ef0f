//! Identifier newtypes and channel names.
//!
//! Ids are cheap to clone (`Arc<str>`) because they travel in every message between
//! actors. Every id that comes from the network is checked by [`valid_id`] first, so a
//! `:` can never appear inside a user or group id and channel names stay unambiguous.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrayvec::ArrayString;

/// Longest user, group, client or channel-suffix id we accept.
pub const MAX_ID_LEN: usize = 128;

/// True when `s` is a usable id: 1..=128 bytes of `[A-Za-z0-9_.@-]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

/// Whether `user` may read channel `name`, as far as the name tells: a DM they are a party
/// of, their own `user:` channel, any group or broadcast channel (group membership is the
/// store's to check).
pub fn names_a_readable_channel(user: &str, name: &str) -> bool {
    match name.split_once(':') {
        Some(("dm", pair)) => pair
            .split_once(':')
            .is_some_and(|(a, b)| a == user || b == user),
        Some(("user", who)) => who == user,
        Some(("group" | "broadcast", _)) => true,
        _ => false,
    }
}

/// Milliseconds since the Unix epoch, on the server clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A user id (the token's `sub`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub Arc<str>);

impl UserId {
    /// Wraps an id that the caller has already checked with [`valid_id`].
    pub fn new(s: &str) -> Self {
        UserId(Arc::from(s))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", &self.0)
    }
}

/// A server-made connection id, unique within this process.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ConnId(pub u64);

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl ConnId {
    /// The next connection id.
    pub fn next() -> Self {
        ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed))
    }

    /// Numbers this process's connections after a random 24-bit prefix, so that ids do
    /// not repeat across the nodes of a cluster (an operator closes a connection by id on
    /// any node). Takes effect once per process, before the first connection.
    pub fn number_after(prefix: u32) {
        let first = (u64::from(prefix & 0xFF_FFFF) << 40) | 1;
        let _ = NEXT_CONN.compare_exchange(1, first, Ordering::Relaxed, Ordering::Relaxed);
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A stored message's id: a UUID in its hyphenated lower-case form, kept inline (36 bytes)
/// so that a message carries it without an allocation of its own, and as a string type so
/// that reading it as `&str` (for every row bound and frame written) checks nothing again.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageId(ArrayString<{ MessageId::LEN }>);

impl MessageId {
    /// Length of a hyphenated UUID.
    pub const LEN: usize = uuid::fmt::Hyphenated::LENGTH;

    /// The id of `uuid`.
    pub fn of(uuid: uuid::Uuid) -> Self {
        let mut buf = [0; Self::LEN];
        let text = uuid.hyphenated().encode_lower(&mut buf);
        let mut id = ArrayString::new();
        id.push_str(text);
        MessageId(id)
    }

    /// The lowest id of millisecond `ms`: every id given out at or after it sorts at or
    /// above it (as text too: hyphenated lower-case hex).
    pub fn floor(ms: i64) -> Self {
        let ms = (ms.max(0) as u128) & ((1 << 48) - 1);
        Self::of(uuid::Uuid::from_u128(ms << 80))
    }

    /// An id read back from the store; `None` unless it is a hyphenated lower-case UUID
    /// (every id the broker gives out is).
    pub fn parse(text: &str) -> Option<Self> {
        let uuid = uuid::Uuid::try_parse(text).ok()?;
        let id = Self::of(uuid);
        (id.as_str() == text).then_some(id)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Default for MessageId {
    /// The nil UUID. A placeholder the writer gives every message before its id (one per
    /// message), so it is copied rather than formatted.
    fn default() -> Self {
        const NIL: &str = "00000000-0000-0000-0000-000000000000";
        let mut id = ArrayString::new();
        id.push_str(NIL);
        MessageId(id)
    }
}

impl std::ops::Deref for MessageId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.as_str())
    }
}

/// Gives out UUID v7 message ids (RFC 9562): the millisecond, then 74 bits that start at a
/// random value in each new millisecond and count up within it ("monotonic random", section
/// 6.2, method 3). Ids of one generator sort in the order given; ids of two generators (or
/// two processes) meet only if their random starts fall within a batch of each other.
///
/// Drawing 74 random bits per id instead (`Uuid::now_v7`) cost about twice the instructions
/// of giving out the rest of a message's row, per message on the writer thread.
#[derive(Debug, Default)]
pub struct MessageIds {
    /// The millisecond of the last id.
    ms: i64,
    /// The 74 bits after the version and variant of the next id.
    next: u128,
}

impl MessageIds {
    /// Bits after the timestamp, version and variant.
    const RAND_BITS: u32 = 74;

    /// The next id, at `now_ms`.
    pub fn next(&mut self, now_ms: i64) -> MessageId {
        // `next == 0` only before the first id (or if the clock read 0, as `now_ms` answers
        // when it cannot read it): draw a start then too.
        if now_ms != self.ms || self.next == 0 {
            self.ms = now_ms;
            // The top bit clear: 2^73 ids of headroom before the count could wrap.
            self.next = uuid::Uuid::new_v4().as_u128() & ((1 << (Self::RAND_BITS - 1)) - 1);
        }
        let rand = self.next;
        self.next += 1;
        let ms = (now_ms as u128) & ((1 << 48) - 1);
        let rand_a = (rand >> 62) & 0xfff;
        let rand_b = rand & ((1 << 62) - 1);
        let bits = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b;
        MessageId::of(uuid::Uuid::from_u128(bits))
    }
}

/// What a channel name says about who may read and write it (contract section 4).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum ChannelKind {
    /// `dm:{a}:{b}` with `a < b` (or `a == b` for notes to self).
    Dm(UserId, UserId),
    /// `group:{id}`.
    Group(Arc<str>),
    /// `broadcast:{name}`.
    Broadcast(Arc<str>),
    /// `user:{id}`.
    User(UserId),
}

/// A channel: its canonical name (shared, as it is in every delivery) and its kind.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Channel {
    /// Canonical name, e.g. `dm:alice:bob`.
    pub name: Arc<str>,
    /// Parsed form of the name.
    pub kind: ChannelKind,
}

impl Channel {
    /// The DM channel between two users; order of the arguments does not matter.
    pub fn dm(a: &UserId, b: &UserId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        // Once per direct message: built without the formatting machinery.
        let mut name = String::with_capacity(4 + lo.0.len() + hi.0.len());
        name.push_str("dm:");
        name.push_str(&lo.0);
        name.push(':');
        name.push_str(&hi.0);
        Channel {
            name: Arc::from(name),
            kind: ChannelKind::Dm(lo.clone(), hi.clone()),
        }
    }

    /// Whether this is the DM channel between `a` and `b` (in either order).
    pub fn is_dm_of(&self, a: &UserId, b: &UserId) -> bool {
        match &self.kind {
            ChannelKind::Dm(lo, hi) => (lo == a && hi == b) || (lo == b && hi == a),
            _ => false,
        }
    }

    /// The channel of group `id`.
    pub fn group(id: &str) -> Self {
        Channel {
            name: Arc::from(format!("group:{id}")),
            kind: ChannelKind::Group(Arc::from(id)),
        }
    }

    /// Parses a channel name as clients write it; `None` if it is not a valid name.
    pub fn parse(name: &str) -> Option<Self> {
        let (prefix, rest) = name.split_once(':')?;
        match prefix {
            "dm" => {
                let (a, b) = rest.split_once(':')?;
                if !valid_id(a) || !valid_id(b) || a > b {
                    return None;
                }
                Some(Channel::dm(&UserId::new(a), &UserId::new(b)))
            }
            "group" if valid_id(rest) => Some(Channel::group(rest)),
            "broadcast" if valid_id(rest) => Some(Channel {
                name: Arc::from(name),
                kind: ChannelKind::Broadcast(Arc::from(rest)),
            }),
            "user" if valid_id(rest) => Some(Channel {
                name: Arc::from(name),
                kind: ChannelKind::User(UserId::new(rest)),
            }),
            _ => None,
        }
    }

    /// Whether `user` may read this channel, as far as the name alone decides.
    /// Groups need their member list: this returns `None` for them.
    pub fn readable_by(&self, user: &UserId) -> Option<bool> {
        match &self.kind {
            ChannelKind::Dm(a, b) => Some(a == user || b == user),
            ChannelKind::Group(_) => None,
            ChannelKind::Broadcast(_) => Some(true),
            ChannelKind::User(u) => Some(u == user),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_id_is_the_nil_uuid() {
        assert_eq!(MessageId::default(), MessageId::of(uuid::Uuid::nil()));
    }

    #[test]
    fn message_ids_are_uuid_v7_of_their_millisecond_and_ascend_within_it() {
        let mut ids = MessageIds::default();
        let at = 1_700_000_000_123;
        let a = ids.next(at);
        let b = ids.next(at);
        let c = ids.next(at + 1);
        for id in [a, b, c] {
            let u = uuid::Uuid::parse_str(&id).expect("a uuid");
            assert_eq!(u.get_version_num(), 7, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(MessageId::parse(&id), Some(id));
        }
        let ms = |id: MessageId| {
            let (secs, nanos) = uuid::Uuid::parse_str(&id)
                .expect("uuid")
                .get_timestamp()
                .expect("v7 has a time")
                .to_unix();
            secs as i64 * 1000 + i64::from(nanos / 1_000_000)
        };
        assert_eq!((ms(a), ms(b), ms(c)), (at, at, at + 1));
        assert!(a.as_str() < b.as_str() && b.as_str() < c.as_str());
        assert_eq!(MessageId::parse("not-a-uuid"), None);
        assert_eq!(MessageId::parse(&a.to_uppercase()), None);
    }

    #[test]
    fn the_floor_of_a_millisecond_sorts_below_its_ids_and_above_the_ones_before() {
        let mut ids = MessageIds::default();
        let at = 1_700_000_000_123;
        let before = ids.next(at - 1);
        let first = ids.next(at);
        let floor = MessageId::floor(at);
        assert!(before.as_str() < floor.as_str(), "{before} {floor}");
        assert!(floor.as_str() <= first.as_str(), "{floor} {first}");
    }

    #[test]
    fn dm_names_are_canonical() {
        let a = UserId::new("bob");
        let b = UserId::new("alice");
        assert_eq!(&*Channel::dm(&a, &b).name, "dm:alice:bob");
        assert_eq!(Channel::dm(&a, &b), Channel::dm(&b, &a));
    }

    #[test]
    fn parse_rejects_bad_names() {
        assert!(Channel::parse("dm:bob:alice").is_none());
        assert!(Channel::parse("dm:alice").is_none());
        assert!(Channel::parse("group:").is_none());
        assert!(Channel::parse("room:x").is_none());
        assert!(Channel::parse("user:a b").is_none());
        assert!(Channel::parse("broadcast:news").is_some());
        assert!(Channel::parse("group:g1").is_some());
    }
}
