//! Admission and rate limits (contract section 8): connections per node and per user, a
//! token bucket per user shared by all of that user's connections, and the limits on
//! client addresses: upgrades per second, and connections not yet authenticated (which have
//! a budget of their own, so they never take the places of authenticated clients).
//!
//! Touched at upgrade, at authentication, at close, and once per client frame (the user's
//! own bucket only); never on the fan-out path. In a cluster, a user's places are counted
//! across the nodes ([`places`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_actors::ids::UserId;

use crate::config::LimitSettings;
use crate::net::{address_key, IpRange};

mod places;

use places::PlaceShare;

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GateError {
    /// `max_connections` reached (HTTP 503).
    #[error("this node is at its connection limit")]
    NodeFull,
    /// `max_connections_per_user` reached (HTTP 429).
    #[error("too many connections for this user")]
    UserFull,
    /// The share of places for connections not yet authenticated is taken (HTTP 503).
    #[error("too many connections waiting to authenticate; send a token with the upgrade")]
    PendingFull,
    /// `max_pending_per_ip` reached (HTTP 429).
    #[error("too many connections waiting to authenticate from this address")]
    AddressPendingFull,
    /// Over `requests_per_ip_per_second` (HTTP 429 with Retry-After).
    #[error("too many requests from this address")]
    AddressRequestsTooFast {
        /// When the next request would be admitted.
        retry_after_ms: u64,
    },
    /// Over `upgrades_per_ip_per_second` (HTTP 429 with Retry-After).
    #[error("too many connection attempts from this address")]
    AddressTooFast {
        /// When the next upgrade would be admitted.
        retry_after_ms: u64,
    },
    /// Over `connects_per_user_per_second` (HTTP 429 with Retry-After).
    #[error("too many connection attempts for this user")]
    UserTooFast {
        /// When the next attempt would be admitted.
        retry_after_ms: u64,
    },
    /// Over `requests_per_user_per_second` (HTTP 429 with Retry-After).
    #[error("too many requests for this caller")]
    UserRequestsTooFast {
        /// When the next request would be admitted.
        retry_after_ms: u64,
    },
}

/// A token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
    /// Tokens taken since the cluster was last told (see [`ConnectionGate::drain_spent`]).
    spent: u32,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            tokens: burst,
            last: Instant::now(),
            rate,
            burst,
            spent: 0,
        }
    }

    /// Takes one token, or says in how many ms one will be there.
    pub fn take(&mut self) -> Result<(), u64> {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.spent = self.spent.saturating_add(1);
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil() as u64)
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes `n` tokens the same user took on other nodes, down to one burst in debt.
    pub fn charge(&mut self, n: u32) {
        self.refill();
        self.tokens = (self.tokens - f64::from(n)).max(-self.burst);
    }
}

impl TokenBucket {
    /// Whether the bucket would be full now: it then says nothing a new bucket would not.
    fn refilled(&self) -> bool {
        self.tokens + self.last.elapsed().as_secs_f64() * self.rate >= self.burst
    }
}

/// One user's entry in the gate: one per connected user, so it is kept small (32 bytes).
/// The attempt and request buckets are boxed and made at the user's first attempt or
/// request, and only when their limit is on.
struct UserSlot {
    /// Connections holding one of the user's places.
    conns: u32,
    /// Frames sent over HTTP in progress: they draw from `bucket` and hold no place.
    senders: u32,
    bucket: Arc<Mutex<TokenBucket>>,
    /// Connection attempts (absent until the first one, and when not limited).
    connects: Option<Box<TokenBucket>>,
    /// REST requests (absent until the first one, and when not limited).
    requests: Option<Box<TokenBucket>>,
}

impl UserSlot {
    /// A slot with no connection and no send whose buckets have refilled says nothing a
    /// new one would not. One with a bucket still drawn is kept: reconnecting (or sending
    /// over HTTP again) must not hand a user a full bucket.
    fn forgettable(&self) -> bool {
        self.conns == 0
            && self.senders == 0
            && self.bucket.lock().map(|b| b.refilled()).unwrap_or(true)
            && self.connects.as_ref().is_none_or(|b| b.refilled())
            && self.requests.as_ref().is_none_or(|b| b.refilled())
    }
}

/// Takes a token from the bucket in `slot`, made full with `(rate, burst)` if absent.
fn take_lazily(slot: &mut Option<Box<TokenBucket>>, (rate, burst): (f64, f64)) -> Result<(), u64> {
    slot.get_or_insert_with(|| Box::new(TokenBucket::new(rate, burst)))
        .take()
}

/// Users slots kept before the gate sweeps out those that say nothing.
const USER_SWEEP_FLOOR: usize = 4096;

struct Users {
    slots: HashMap<UserId, UserSlot>,
    /// Sweep once the map holds this many slots.
    sweep_at: usize,
    /// In a cluster: the places users hold on the other nodes.
    share: Option<Box<PlaceShare>>,
}

/// What the gate knows of one client address.
struct AddressSlot {
    /// Its connections not yet authenticated.
    pending: usize,
    /// Its upgrades (absent when upgrades are not limited).
    upgrades: Option<TokenBucket>,
    /// Its HTTP requests (absent when requests are not limited).
    requests: Option<TokenBucket>,
}

impl AddressSlot {
    fn forgettable(&self) -> bool {
        self.pending == 0
            && self.upgrades.as_ref().is_none_or(TokenBucket::refilled)
            && self.requests.as_ref().is_none_or(TokenBucket::refilled)
    }
}

/// Address slots kept before the gate sweeps out those that say nothing (grows with the
/// addresses that are busy at once).
const ADDRESS_SWEEP_FLOOR: usize = 4096;

struct Addresses {
    slots: HashMap<IpAddr, AddressSlot>,
    /// Sweep once the map holds this many slots.
    sweep_at: usize,
}

/// Connection counts and rate limiters.
pub struct ConnectionGate {
    max_total: usize,
    max_per_user: usize,
    max_pending: usize,
    max_pending_per_address: usize,
    rate: f64,
    burst: f64,
    upgrade_rate: f64,
    upgrade_burst: f64,
    request_rate: f64,
    request_burst: f64,
    user_connect: (f64, f64),
    user_request: (f64, f64),
    total: AtomicUsize,
    pending: AtomicUsize,
    users: Mutex<Users>,
    addresses: Mutex<Addresses>,
    /// `server.trusted_proxies`.
    trusted_proxies: Vec<IpRange>,
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

/// A user's place (or, for a frame sent over HTTP, only their rate limiter); dropping it
/// frees the place. Carries the user's shared rate limiter.
pub struct UserTicket {
    gate: Arc<ConnectionGate>,
    user: UserId,
    /// Holds one of the user's `max_connections_per_user` places.
    holds_place: bool,
    /// The user's token bucket, shared by all their connections and HTTP sends.
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
        if let Ok(mut guard) = self.gate.users.lock() {
            let users = &mut *guard;
            if let Some(slot) = users.slots.get_mut(&self.user) {
                if self.holds_place {
                    slot.conns = slot.conns.saturating_sub(1);
                    if let Some(share) = users.share.as_mut() {
                        share.changed(&self.user);
                    }
                } else {
                    slot.senders = slot.senders.saturating_sub(1);
                }
                if slot.forgettable() {
                    users.slots.remove(&self.user);
                }
            }
        }
    }
}

/// A place among the connections not yet authenticated; dropping it (at authentication or
/// close) frees the place.
pub struct PendingTicket {
    gate: Arc<ConnectionGate>,
    address: IpAddr,
}

impl Drop for PendingTicket {
    fn drop(&mut self) {
        self.gate.pending.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut a) = self.gate.addresses.lock() {
            if let Some(slot) = a.slots.get_mut(&self.address) {
                slot.pending = slot.pending.saturating_sub(1);
                if slot.forgettable() {
                    a.slots.remove(&self.address);
                }
            }
        }
    }
}

impl ConnectionGate {
    /// A gate with the limits of `[limits]`, trusting `X-Forwarded-For` from
    /// `trusted_proxies`.
    pub fn new(l: &LimitSettings, trusted_proxies: Vec<IpRange>) -> Arc<Self> {
        let share = (l.max_connections as f64 * l.pending_connections_share).floor() as usize;
        Arc::new(ConnectionGate {
            max_total: l.max_connections,
            max_per_user: l.max_connections_per_user,
            max_pending: share.max(1),
            max_pending_per_address: l.max_pending_per_ip,
            rate: l.frames_per_second,
            burst: l.frames_burst,
            upgrade_rate: l.upgrades_per_ip_per_second,
            upgrade_burst: l.upgrades_per_ip_burst,
            request_rate: l.requests_per_ip_per_second,
            request_burst: l.requests_per_ip_burst,
            user_connect: (l.connects_per_user_per_second, l.connects_per_user_burst),
            user_request: (l.requests_per_user_per_second, l.requests_per_user_burst),
            total: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            users: Mutex::new(Users {
                slots: HashMap::new(),
                sweep_at: USER_SWEEP_FLOOR,
                share: None,
            }),
            addresses: Mutex::new(Addresses {
                slots: HashMap::new(),
                sweep_at: ADDRESS_SWEEP_FLOOR,
            }),
            trusted_proxies,
        })
    }

    /// The client's address: `peer`, or, when `peer` is a trusted proxy, the last address
    /// of `forwarded_for` (the `X-Forwarded-For` values, in order) that is not one. Each
    /// proxy appends the address it saw, so only the part trusted proxies wrote is
    /// believed; what the client wrote itself (the first entries) is not.
    pub fn client_address<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        let trusted = |ip: IpAddr| self.trusted_proxies.iter().any(|r| r.contains(ip));
        if !trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for entry in forwarded_for.rev().flat_map(|v| v.rsplit(',')) {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) if trusted(ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
        client
    }

    /// Runs `f` on the slot of `address` (made if new), sweeping out slots that say
    /// nothing once the map has doubled since the last sweep.
    fn with_address<T>(&self, address: IpAddr, f: impl FnOnce(&mut AddressSlot) -> T) -> T {
        let mut guard = match self.addresses.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let a = &mut *guard;
        if a.slots.len() >= a.sweep_at {
            a.slots.retain(|_, s| !s.forgettable());
            a.sweep_at = (a.slots.len() * 2).max(ADDRESS_SWEEP_FLOOR);
        }
        let (rate, burst) = (self.upgrade_rate, self.upgrade_burst);
        let (request_rate, request_burst) = (self.request_rate, self.request_burst);
        let slot = a.slots.entry(address).or_insert_with(|| AddressSlot {
            pending: 0,
            upgrades: (rate > 0.0).then(|| TokenBucket::new(rate, burst)),
            requests: (request_rate > 0.0).then(|| TokenBucket::new(request_rate, request_burst)),
        });
        f(slot)
    }

    /// Counts one upgrade from `client` against its address's rate.
    pub fn admit_upgrade(&self, client: IpAddr) -> Result<(), GateError> {
        self.take_address_token(client, self.upgrade_rate, |s| &mut s.upgrades)
            .map_err(|retry_after_ms| GateError::AddressTooFast { retry_after_ms })
    }

    /// Counts one HTTP request from `client` against its address's rate.
    pub fn admit_request(&self, client: IpAddr) -> Result<(), GateError> {
        self.take_address_token(client, self.request_rate, |s| &mut s.requests)
            .map_err(|retry_after_ms| GateError::AddressRequestsTooFast { retry_after_ms })
    }

    /// Takes a token of the bucket `bucket` picks in `client`'s slot (none when `rate` is
    /// 0: no limit), or says in how many ms one will be there.
    fn take_address_token(
        &self,
        client: IpAddr,
        rate: f64,
        bucket: impl FnOnce(&mut AddressSlot) -> &mut Option<TokenBucket>,
    ) -> Result<(), u64> {
        if rate <= 0.0 {
            return Ok(());
        }
        self.with_address(address_key(client), |slot| {
            bucket(slot).as_mut().map_or(Ok(()), TokenBucket::take)
        })
    }

    /// The tokens each user took here since the last call (for the other nodes of a
    /// cluster, which take them from their own buckets of the user).
    pub fn drain_spent(&self) -> Vec<(UserId, u32)> {
        let Ok(users) = self.users.lock() else {
            return Vec::new();
        };
        users
            .slots
            .iter()
            .filter_map(|(user, slot)| {
                let mut b = slot.bucket.lock().ok()?;
                let n = std::mem::take(&mut b.spent);
                (n > 0).then(|| (user.clone(), n))
            })
            .collect()
    }

    /// `user` took `n` tokens on another node: taken from their bucket here too, if they
    /// have one (a user with no connection here gets a bucket when they connect).
    pub fn charge(&self, user: &UserId, n: u32) {
        let Ok(users) = self.users.lock() else {
            return;
        };
        let Some(bucket) = users.slots.get(user).map(|s| s.bucket.clone()) else {
            return;
        };
        drop(users);
        if let Ok(mut b) = bucket.lock() {
            b.charge(n);
        };
    }

    /// Counts users' places across a cluster from now on: other nodes' counts hold for
    /// `ttl` unless said again ([`places`]).
    pub fn share_places(&self, ttl: Duration) {
        if let Ok(mut users) = self.users.lock() {
            users.share = Some(Box::new(PlaceShare::new(ttl)));
        }
    }

    /// For the other nodes of a cluster: the places users hold here whose count changed
    /// since the last call, or with `full` those of every user holding one (and those
    /// whose count went to 0). Empty on a node alone.
    pub fn drain_places(&self, full: bool) -> Vec<(UserId, u32)> {
        let Ok(mut guard) = self.users.lock() else {
            return Vec::new();
        };
        let users = &mut *guard;
        let Some(share) = users.share.as_mut() else {
            return Vec::new();
        };
        let slots = &users.slots;
        let here = |u: &UserId| slots.get(u).map_or(0, |s| s.conns);
        share.drain(full, here, slots.iter().map(|(u, s)| (u, s.conns)))
    }

    /// `node` says how many places the listed users hold on it.
    pub fn places_elsewhere(&self, node: &Arc<str>, places: Vec<(UserId, u32)>) {
        if let Ok(mut users) = self.users.lock() {
            if let Some(share) = users.share.as_mut() {
                share.heard(node, places);
            }
        }
    }

    /// Takes a place for a connection from `client` that has not authenticated yet.
    pub fn admit_pending(self: &Arc<Self>, client: IpAddr) -> Result<PendingTicket, GateError> {
        let prev = self.pending.fetch_add(1, Ordering::Relaxed);
        let address = address_key(client);
        let max_per_address = self.max_pending_per_address;
        let admitted = self.with_address(address, |slot| {
            if prev >= self.max_pending {
                Err(GateError::PendingFull)
            } else if max_per_address > 0 && slot.pending >= max_per_address {
                Err(GateError::AddressPendingFull)
            } else {
                slot.pending += 1;
                Ok(())
            }
        });
        match admitted {
            Ok(()) => Ok(PendingTicket {
                gate: self.clone(),
                address,
            }),
            Err(e) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Connections not yet authenticated.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
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

    /// Runs `f` on the slot of `user` (made if new), sweeping out slots that say nothing
    /// once the map has doubled since the last sweep.
    fn with_user<T>(
        &self,
        user: &UserId,
        f: impl FnOnce(&mut UserSlot, Option<&mut PlaceShare>) -> T,
    ) -> T {
        let mut guard = match self.users.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let users = &mut *guard;
        if users.slots.len() >= users.sweep_at {
            users.slots.retain(|_, s| !s.forgettable());
            users.sweep_at = (users.slots.len() * 2).max(USER_SWEEP_FLOOR);
        }
        let slot = users.slots.entry(user.clone()).or_insert_with(|| UserSlot {
            conns: 0,
            senders: 0,
            bucket: Arc::new(Mutex::new(TokenBucket::new(self.rate, self.burst))),
            connects: None,
            requests: None,
        });
        f(slot, users.share.as_deref_mut())
    }

    /// Counts one REST request of `user` (a token's user, or `api-key.<id>`) against its
    /// rate.
    pub fn admit_user_request(&self, user: &UserId) -> Result<(), GateError> {
        if self.user_request.0 <= 0.0 {
            return Ok(());
        }
        self.with_user(user, |slot, _| {
            take_lazily(&mut slot.requests, self.user_request)
        })
        .map_err(|retry_after_ms| GateError::UserRequestsTooFast { retry_after_ms })
    }

    /// Takes one of `user`'s places: a connection attempt, counted against the user's
    /// attempt rate, then a place among `max_connections_per_user`.
    pub fn admit_user(self: &Arc<Self>, user: &UserId) -> Result<UserTicket, GateError> {
        self.user_ticket(user, true)
    }

    /// Admits one frame that `user` sends over HTTP: it draws from the user's bucket like
    /// their connections' frames, but takes none of their places (a send is one request,
    /// not a connection, and is not refused because the user's devices are connected).
    pub fn admit_sender(self: &Arc<Self>, user: &UserId) -> Result<UserTicket, GateError> {
        self.user_ticket(user, false)
    }

    /// A ticket on `user`'s slot, holding one of their places (and an attempt of their
    /// attempt rate) if `holds_place`.
    fn user_ticket(
        self: &Arc<Self>,
        user: &UserId,
        holds_place: bool,
    ) -> Result<UserTicket, GateError> {
        let max = self.max_per_user;
        let limit_attempts = self.user_connect.0 > 0.0;
        let bucket = self.with_user(user, |slot, share| {
            if holds_place {
                if limit_attempts {
                    take_lazily(&mut slot.connects, self.user_connect)
                        .map_err(|retry_after_ms| GateError::UserTooFast { retry_after_ms })?;
                }
                let elsewhere = share.as_ref().map_or(0, |s| s.elsewhere(user));
                if (slot.conns + elsewhere) as usize >= max {
                    return Err(GateError::UserFull);
                }
                slot.conns += 1;
                if let Some(share) = share {
                    share.changed(user);
                }
            } else {
                slot.senders += 1;
            }
            Ok(slot.bucket.clone())
        })?;
        Ok(UserTicket {
            gate: self.clone(),
            user: user.clone(),
            holds_place,
            bucket,
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
    fn a_users_slot_stays_small() {
        // One per connected user: 10,000 idle users pay this (and the map's slack) each.
        assert!(std::mem::size_of::<UserSlot>() <= 32);
    }

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
    fn what_a_user_spent_elsewhere_is_taken_from_their_bucket_here() {
        let gate = ConnectionGate::new(
            &LimitSettings {
                frames_per_second: 1.0,
                frames_burst: 10.0,
                ..LimitSettings::default()
            },
            Vec::new(),
        );
        let u = UserId::new("u");
        let ticket = gate.admit_user(&u).expect("admitted");
        for _ in 0..3 {
            ticket.take().expect("within the burst");
        }
        assert_eq!(gate.drain_spent(), vec![(u.clone(), 3)]);
        assert_eq!(gate.drain_spent(), vec![], "told once");
        // Another node spent the rest of the burst and more: nothing is left here.
        gate.charge(&u, 20);
        assert!(ticket.take().is_err());
        // A user with no bucket here is not charged (nothing to take from).
        gate.charge(&UserId::new("stranger"), 5);
        assert!(gate.drain_spent().is_empty());
    }

    fn limits() -> LimitSettings {
        LimitSettings {
            max_connections: 10,
            max_connections_per_user: 2,
            ..LimitSettings::default()
        }
    }

    #[test]
    fn user_places_are_counted_and_freed() {
        let gate = ConnectionGate::new(&limits(), Vec::new());
        let u = UserId::new("u");
        let a = gate.admit_user(&u).expect("first");
        let _b = gate.admit_user(&u).expect("second");
        assert_eq!(gate.admit_user(&u).err(), Some(GateError::UserFull));
        drop(a);
        assert!(gate.admit_user(&u).is_ok());
    }

    #[test]
    fn in_a_cluster_places_on_other_nodes_count_and_changes_are_told() {
        let gate = ConnectionGate::new(&limits(), Vec::new());
        let u = UserId::new("u");
        let _here = gate.admit_user(&u).expect("first");
        assert!(
            gate.drain_places(false).is_empty(),
            "a node alone tells nothing"
        );
        gate.share_places(Duration::from_secs(10));
        gate.places_elsewhere(&Arc::from("other"), vec![(u.clone(), 1)]);
        assert_eq!(gate.admit_user(&u).err(), Some(GateError::UserFull));
        gate.places_elsewhere(&Arc::from("other"), vec![(u.clone(), 0)]);
        let second = gate.admit_user(&u).expect("the other node's place is free");
        assert_eq!(gate.drain_places(false), [(u.clone(), 2)]);
        drop(second);
        assert_eq!(gate.drain_places(false), [(u.clone(), 1)]);
        assert_eq!(gate.drain_places(true), [(u, 1)]);
    }

    #[test]
    fn an_http_sender_takes_no_place_and_draws_from_the_users_bucket() {
        let gate = ConnectionGate::new(
            &LimitSettings {
                frames_per_second: 0.001,
                frames_burst: 2.0,
                ..limits()
            },
            Vec::new(),
        );
        let u = UserId::new("u");
        let _places = (gate.admit_user(&u), gate.admit_user(&u));
        assert_eq!(gate.admit_user(&u).err(), Some(GateError::UserFull));
        let send = gate.admit_sender(&u).expect("a send needs no place");
        send.take().expect("first token");
        let conn = gate.admit_sender(&u).expect("another send");
        conn.take().expect("second token");
        assert!(send.take().is_err(), "one bucket for the user");
        drop((send, conn));
        assert_eq!(
            gate.admit_user(&u).err(),
            Some(GateError::UserFull),
            "sends freed no place"
        );
    }

    #[test]
    fn pending_connections_have_a_share_and_a_cap_per_address() {
        let gate = ConnectionGate::new(
            &LimitSettings {
                max_connections: 100,
                pending_connections_share: 0.1,
                max_pending_per_ip: 4,
                ..LimitSettings::default()
            },
            Vec::new(),
        );
        let (a, b): (IpAddr, IpAddr) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        let held: Vec<_> = (0..4).map(|_| gate.admit_pending(a).expect("a")).collect();
        assert_eq!(
            gate.admit_pending(a).err(),
            Some(GateError::AddressPendingFull)
        );
        let more: Vec<_> = (0..4).map(|_| gate.admit_pending(b).expect("b")).collect();
        let c: IpAddr = "192.0.2.3".parse().expect("ip");
        let _two = (gate.admit_pending(c), gate.admit_pending(c));
        assert_eq!(gate.admit_pending(c).err(), Some(GateError::PendingFull));
        assert_eq!(gate.pending(), 10);
        drop(held);
        drop(more);
        assert_eq!(gate.pending(), 2);
        assert!(gate.admit_pending(a).is_ok());
    }

    #[test]
    fn upgrades_per_address_are_rate_limited_unless_off() {
        let mut l = LimitSettings {
            upgrades_per_ip_per_second: 1.0,
            upgrades_per_ip_burst: 3.0,
            ..LimitSettings::default()
        };
        let gate = ConnectionGate::new(&l, Vec::new());
        let a: IpAddr = "198.51.100.7".parse().expect("ip");
        for _ in 0..3 {
            assert!(gate.admit_upgrade(a).is_ok());
        }
        assert!(matches!(
            gate.admit_upgrade(a),
            Err(GateError::AddressTooFast { retry_after_ms }) if retry_after_ms > 0
        ));
        assert!(gate
            .admit_upgrade("198.51.100.8".parse().expect("ip"))
            .is_ok());
        l.upgrades_per_ip_per_second = 0.0;
        let open = ConnectionGate::new(&l, Vec::new());
        for _ in 0..1000 {
            assert!(open.admit_upgrade(a).is_ok());
        }
    }

    #[test]
    fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
        let proxies = vec!["10.0.0.0/8".parse().expect("range")];
        let gate = ConnectionGate::new(&limits(), proxies);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // From a trusted proxy: the last entry no trusted proxy wrote.
        assert_eq!(
            gate.client_address(ip("10.0.0.5"), ["6.6.6.6, 203.0.113.9"].into_iter()),
            ip("203.0.113.9")
        );
        assert_eq!(
            gate.client_address(
                ip("10.0.0.5"),
                ["203.0.113.9, 10.0.0.7", "10.0.0.8"].into_iter()
            ),
            ip("203.0.113.9")
        );
        // From anyone else the header is the client's own word.
        assert_eq!(
            gate.client_address(ip("198.51.100.1"), ["203.0.113.9"].into_iter()),
            ip("198.51.100.1")
        );
        // A proxy that sent no header (or garbage) is the client.
        assert_eq!(
            gate.client_address(ip("10.0.0.5"), std::iter::empty()),
            ip("10.0.0.5")
        );
        assert_eq!(
            gate.client_address(ip("10.0.0.5"), ["junk"].into_iter()),
            ip("10.0.0.5")
        );
    }
}
