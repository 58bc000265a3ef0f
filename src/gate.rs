//! Admission and rate limits (contract section 8): connections per node and per user, and
//! a token bucket per user shared by all of that user's connections.
//!
//! Touched at upgrade, at close, and once per client frame (the user's own bucket only);
//! never on the fan-out path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use switchboard_actors::ids::UserId;

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateError {
    /// `max_connections` reached (HTTP 503).
    #[error("this node is at its connection limit")]
    NodeFull,
    /// `max_connections_per_user` reached (HTTP 429).
    #[error("too many connections for this user")]
    UserFull,
}

/// A token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            tokens: burst,
            last: Instant::now(),
            rate,
            burst,
        }
    }

    /// Takes one token, or says in how many ms one will be there.
    pub fn take(&mut self) -> Result<(), u64> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }
}

struct UserSlot {
    conns: usize,
    bucket: Arc<Mutex<TokenBucket>>,
}

/// Connection counts and rate limiters.
pub struct ConnectionGate {
    max_total: usize,
    max_per_user: usize,
    rate: f64,
    burst: f64,
    total: AtomicUsize,
    users: Mutex<HashMap<UserId, UserSlot>>,
}

/// A place on this node; dropping it frees the place.
pub struct NodeTicket {
    gate: Arc<ConnectionGate>,
}

impl Drop for NodeTicket {
    fn drop(&mut self) {
        self.gate.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A user's place; dropping it frees the place. Carries the user's shared rate limiter.
pub struct UserTicket {
    gate: Arc<ConnectionGate>,
    user: UserId,
    /// The user's token bucket, shared by all their connections.
    pub bucket: Arc<Mutex<TokenBucket>>,
}

impl UserTicket {
    /// Takes one frame's worth from the user's bucket.
    pub fn take(&self) -> Result<(), u64> {
        match self.bucket.lock() {
            Ok(mut b) => b.take(),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for UserTicket {
    fn drop(&mut self) {
        if let Ok(mut users) = self.gate.users.lock() {
            if let Some(slot) = users.get_mut(&self.user) {
                slot.conns = slot.conns.saturating_sub(1);
                if slot.conns == 0 {
                    users.remove(&self.user);
                }
            }
        }
    }
}

impl ConnectionGate {
    /// A gate with these limits.
    pub fn new(max_total: usize, max_per_user: usize, rate: f64, burst: f64) -> Arc<Self> {
        Arc::new(ConnectionGate {
            max_total,
            max_per_user,
            rate,
            burst,
            total: AtomicUsize::new(0),
            users: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a place on the node.
    pub fn admit_node(self: &Arc<Self>) -> Result<NodeTicket, GateError> {
        let prev = self.total.fetch_add(1, Ordering::Relaxed);
        let ticket = NodeTicket { gate: self.clone() };
        if prev >= self.max_total {
            return Err(GateError::NodeFull); // the ticket's drop gives the place back
        }
        Ok(ticket)
    }

    /// Takes one of `user`'s places.
    pub fn admit_user(self: &Arc<Self>, user: &UserId) -> Result<UserTicket, GateError> {
        let mut users = self.users.lock().map_err(|_| GateError::NodeFull)?;
        let slot = users.entry(user.clone()).or_insert_with(|| UserSlot {
            conns: 0,
            bucket: Arc::new(Mutex::new(TokenBucket::new(self.rate, self.burst))),
        });
        if slot.conns >= self.max_per_user {
            return Err(GateError::UserFull);
        }
        slot.conns += 1;
        Ok(UserTicket {
            gate: self.clone(),
            user: user.clone(),
            bucket: slot.bucket.clone(),
        })
    }

    /// Connections holding a node place.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_limits() {
        let mut b = TokenBucket::new(20.0, 50.0);
        for _ in 0..50 {
            assert!(b.take().is_ok());
        }
        let wait = b.take().expect_err("burst spent");
        assert!(wait > 0 && wait <= 50, "retry after {wait} ms");
    }

    #[test]
    fn user_places_are_counted_and_freed() {
        let gate = ConnectionGate::new(10, 2, 20.0, 50.0);
        let u = UserId::new("u");
        let a = gate.admit_user(&u).expect("first");
        let _b = gate.admit_user(&u).expect("second");
        assert_eq!(gate.admit_user(&u).err(), Some(GateError::UserFull));
        drop(a);
        assert!(gate.admit_user(&u).is_ok());
    }
}
