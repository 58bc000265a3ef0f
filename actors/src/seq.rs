//! `Seq`: a message's place in its channel.

use serde::{Deserialize, Serialize};

/// A message's place in its channel: 1, 2, 3 … with no gap; 0 stands before the first.
/// The wire carries it as an unsigned integer; the database as a BIGINT, which the store's
/// rows keep ([`Seq::from_stored`], [`Seq::to_stored`] cross between the two).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// Before the first message.
    pub const ZERO: Seq = Seq(0);

    /// The seq numbered `n`.
    pub const fn new(n: u64) -> Seq {
        Seq(n)
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// A seq read from the database; a negative value, which the broker never writes,
    /// reads as 0.
    pub fn from_stored(v: i64) -> Seq {
        Seq(u64::try_from(v).unwrap_or(0))
    }

    /// As the database stores it. Counting from 1 never leaves BIGINT; a seq from the wire
    /// beyond it (a client asking past every message) stays past every message.
    pub fn to_stored(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

impl std::fmt::Display for Seq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crosses_between_wire_and_database_without_wrapping() {
        assert_eq!(Seq::from_stored(42), Seq::new(42));
        assert_eq!(Seq::from_stored(-1), Seq::ZERO);
        assert_eq!(Seq::new(7).to_stored(), 7);
        assert_eq!(Seq::new(u64::MAX).to_stored(), i64::MAX);
        assert_eq!(serde_json::to_string(&Seq::new(9)).expect("json"), "9");
        assert_eq!(
            serde_json::from_str::<Seq>("12").expect("json"),
            Seq::new(12)
        );
        assert!(serde_json::from_str::<Seq>("-1").is_err());
        assert!(serde_json::from_str::<Seq>("\"3\"").is_err());
    }
}
