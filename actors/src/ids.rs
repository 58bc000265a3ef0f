//! Identifier newtypes and channel names.
//!
//! Ids are cheap to clone (`Arc<str>`) because they travel in every message between
//! actors. Every id that comes from the network is checked by [`valid_id`] first, so a
//! `:` can never appear inside a user or group id and channel names stay unambiguous.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest user, group, client or channel-suffix id we accept.
pub const MAX_ID_LEN: usize = 128;

/// True when `s` is a usable id: 1..=128 bytes of `[A-Za-z0-9_.@-]`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
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
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
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
