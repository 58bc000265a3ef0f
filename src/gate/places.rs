//! `PlaceShare`: a user's connection places counted across the nodes of a cluster.
//!
//! Each node counts the places its own connections hold (`UserSlot::conns`). In a cluster
//! it also notes which users' counts changed, for the limit sharer to tell the other nodes
//! (`Envelope::Places`, every `cluster.rate_share_every`, and every user holding a place
//! every third of `cluster.node_ttl`), and keeps what the other nodes last said. A count
//! not said again within `cluster.node_ttl` is dropped, so the places of a node that died
//! free themselves. Admission adds the counts of the other nodes to its own; connections
//! opened on two nodes within one sharing interval may pass the limit by that much.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_actors::ids::UserId;

/// What one other node last said of one user.
struct Elsewhere {
    node: Arc<str>,
    places: u32,
    at: Instant,
}

/// A node's part in counting places across the cluster.
pub(super) struct PlaceShare {
    /// How long another node's count holds unless said again.
    ttl: Duration,
    /// Users whose count on this node changed since it last told the others.
    changed: HashSet<UserId>,
    /// What the other nodes said, by user.
    elsewhere: HashMap<UserId, Vec<Elsewhere>>,
}

impl PlaceShare {
    /// Counts kept for `ttl` unless said again.
    pub(super) fn new(ttl: Duration) -> Self {
        PlaceShare {
            ttl,
            changed: HashSet::new(),
            elsewhere: HashMap::new(),
        }
    }

    /// `user`'s count on this node changed.
    pub(super) fn changed(&mut self, user: &UserId) {
        if !self.changed.contains(user) {
            self.changed.insert(user.clone());
        }
    }

    /// Places `user` holds on the other nodes, by their current word.
    pub(super) fn elsewhere(&self, user: &UserId) -> u32 {
        let Some(nodes) = self.elsewhere.get(user) else {
            return 0;
        };
        nodes
            .iter()
            .filter(|e| e.at.elapsed() < self.ttl)
            .map(|e| e.places)
            .sum()
    }

    /// What to tell the other nodes, given this node's count of a user (`here`): the
    /// users whose count changed, or with `full` every user holding a place here (`held`)
    /// and those whose count went to 0. A full account also drops counts gone stale.
    pub(super) fn drain<'a>(
        &mut self,
        full: bool,
        here: impl Fn(&UserId) -> u32,
        held: impl Iterator<Item = (&'a UserId, u32)>,
    ) -> Vec<(UserId, u32)> {
        let changed = std::mem::take(&mut self.changed);
        if !full {
            return changed
                .into_iter()
                .map(|u| {
                    let n = here(&u);
                    (u, n)
                })
                .collect();
        }
        let ttl = self.ttl;
        self.elsewhere.retain(|_, nodes| {
            nodes.retain(|e| e.at.elapsed() < ttl);
            !nodes.is_empty()
        });
        let mut out: Vec<(UserId, u32)> = held
            .filter(|(_, n)| *n > 0)
            .map(|(u, n)| (u.clone(), n))
            .collect();
        out.extend(changed.into_iter().filter(|u| here(u) == 0).map(|u| (u, 0)));
        out
    }

    /// `node` says how many places the listed users hold on it.
    pub(super) fn heard(&mut self, node: &Arc<str>, places: Vec<(UserId, u32)>) {
        let now = Instant::now();
        for (user, n) in places {
            if n == 0 {
                if let Some(nodes) = self.elsewhere.get_mut(&user) {
                    nodes.retain(|e| e.node != *node);
                    if nodes.is_empty() {
                        self.elsewhere.remove(&user);
                    }
                }
                continue;
            }
            let nodes = self.elsewhere.entry(user).or_default();
            match nodes.iter_mut().find(|e| e.node == *node) {
                Some(e) => {
                    e.places = n;
                    e.at = now;
                }
                None => nodes.push(Elsewhere {
                    node: node.clone(),
                    places: n,
                    at: now,
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::new(name)
    }

    #[test]
    fn counts_of_other_nodes_add_up_and_a_zero_removes_one() {
        let mut share = PlaceShare::new(Duration::from_secs(10));
        let (b, c): (Arc<str>, Arc<str>) = (Arc::from("b"), Arc::from("c"));
        share.heard(&b, vec![(user("alice"), 2), (user("bob"), 1)]);
        share.heard(&c, vec![(user("alice"), 1)]);
        assert_eq!(share.elsewhere(&user("alice")), 3);
        share.heard(&b, vec![(user("alice"), 1)]);
        assert_eq!(
            share.elsewhere(&user("alice")),
            2,
            "a count replaces the last"
        );
        share.heard(&c, vec![(user("alice"), 0)]);
        assert_eq!(share.elsewhere(&user("alice")), 1);
        share.heard(&b, vec![(user("alice"), 0), (user("bob"), 0)]);
        assert_eq!(share.elsewhere(&user("alice")), 0);
        assert!(
            share.elsewhere.is_empty(),
            "users with no place elsewhere are forgotten"
        );
    }

    #[test]
    fn a_count_not_said_again_within_the_ttl_no_longer_holds() {
        let mut share = PlaceShare::new(Duration::from_millis(50));
        share.heard(&Arc::from("dead"), vec![(user("alice"), 4)]);
        assert_eq!(share.elsewhere(&user("alice")), 4);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            share.elsewhere(&user("alice")),
            0,
            "a dead node's places free"
        );
        let none = share.drain(true, |_| 0, std::iter::empty());
        assert!(none.is_empty());
        assert!(
            share.elsewhere.is_empty(),
            "a full account drops stale counts"
        );
    }

    #[test]
    fn changes_go_out_once_and_a_full_account_lists_every_holder() {
        let mut share = PlaceShare::new(Duration::from_secs(10));
        let held = [(user("alice"), 2u32), (user("bob"), 1), (user("idle"), 0)];
        let here = |u: &UserId| held.iter().find(|(h, _)| h == u).map_or(0, |(_, n)| *n);
        share.changed(&user("alice"));
        share.changed(&user("alice"));
        share.changed(&user("gone"));
        let mut said = share.drain(false, here, held.iter().map(|(u, n)| (u, *n)));
        said.sort();
        assert_eq!(said, [(user("alice"), 2), (user("gone"), 0)]);
        let again = share.drain(false, here, held.iter().map(|(u, n)| (u, *n)));
        assert!(again.is_empty(), "nothing changed since");
        share.changed(&user("gone"));
        let mut full = share.drain(true, here, held.iter().map(|(u, n)| (u, *n)));
        full.sort();
        assert_eq!(
            full,
            [(user("alice"), 2), (user("bob"), 1), (user("gone"), 0)]
        );
    }
}
