//! What the other nodes of a cluster say of their users' presence, and what this node
//! says of its own.
//!
//! Every node keeps, per user, the nodes the user is online on. A node tells the others
//! each change of what it contributes (online here or not, a status set here), and gives a
//! full account of its online users when a node asks ([`Envelope::PresenceAsk`]: it
//! joined, or missed the bus) or after its own publishing connection was lost
//! ([`ShareAll`]). A full account replaces what the sender said before: a user it no longer
//! lists is offline there. A node that leaves the node list ([`LiveNodes`]) takes its users
//! with it.

use std::sync::Arc;

use actix::prelude::*;

use super::{PresenceTracker, UserState};
use crate::cluster::{LiveNodes, PresenceNote, ShareAll};
use crate::ids::UserId;

/// Most notes in one bus message of a full account.
const NOTES_PER_ENVELOPE: usize = 2000;

/// A node a user is online on, as that node said.
#[derive(Debug, Clone)]
pub(super) struct Remote {
    node: Arc<str>,
    /// The sender's full-account count when it said so.
    generation: u64,
}

impl PresenceTracker {
    /// `node`'s notes: each user's contribution there, then watchers told of what changed.
    pub(crate) fn remote_notes(
        &mut self,
        node: &Arc<str>,
        generation: u64,
        complete: bool,
        notes: Vec<PresenceNote>,
    ) {
        for note in notes {
            let user = note.user.clone();
            self.apply_remote(&user, |s| {
                let view = s.cluster_mut();
                view.nodes.retain(|r| r.node != *node);
                if note.online {
                    view.nodes.push(Remote {
                        node: node.clone(),
                        generation,
                    });
                }
                if note.status_at > view.status_at {
                    view.status_at = note.status_at;
                    s.status = note.status;
                    s.text = note.text.clone();
                }
                if let Some(t) = note.last_seen {
                    s.last_seen = Some(s.last_seen.map_or(t, |l| l.max(t)));
                }
            });
        }
        if complete {
            // What the sender no longer lists is offline there.
            self.forget_remote(|r| r.node == *node && r.generation < generation);
        }
    }

    /// Drops every contribution `gone` matches, telling watchers of what changed.
    fn forget_remote(&mut self, gone: impl Fn(&Remote) -> bool) {
        let users: Vec<UserId> = self
            .users
            .iter()
            .filter(|(_, s)| s.remote().iter().any(&gone))
            .map(|(u, _)| u.clone())
            .collect();
        for user in users {
            self.apply_remote(&user, |s| s.cluster_mut().nodes.retain(|r| !gone(r)));
        }
    }

    /// Like `change`, for what another node said: never told back to the cluster.
    fn apply_remote(&mut self, user: &UserId, change: impl FnOnce(&mut UserState)) {
        self.update(user, false, change);
    }

    /// Tells the others every user online here, as a new full account.
    fn share_all(&mut self) {
        if self.cluster.is_none() {
            return;
        }
        self.generation += 1;
        let notes: Vec<PresenceNote> = self
            .users
            .iter()
            .filter(|(_, s)| s.online_here())
            .map(|(u, s)| s.note(u))
            .collect();
        let mut chunks = notes.chunks(NOTES_PER_ENVELOPE).peekable();
        if chunks.peek().is_none() {
            return self.tell_cluster(self.generation, true, Vec::new());
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            self.tell_cluster(self.generation, last, chunk.to_vec());
        }
    }
}

/// Another node's presence notes (from the bus).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteNotes {
    /// The node.
    pub node: Arc<str>,
    /// Its full-account count.
    pub generation: u64,
    /// Ends a full account.
    pub complete: bool,
    /// The notes.
    pub notes: Vec<PresenceNote>,
}

impl Handler<RemoteNotes> for PresenceTracker {
    type Result = ();
    fn handle(&mut self, m: RemoteNotes, _: &mut Context<Self>) {
        self.health.handled();
        self.remote_notes(&m.node, m.generation, m.complete, m.notes);
    }
}

impl Handler<ShareAll> for PresenceTracker {
    type Result = ();
    fn handle(&mut self, _: ShareAll, _: &mut Context<Self>) {
        self.health.handled();
        self.share_all();
    }
}

/// Whether `user` is online on another node (connected there, or in its grace period).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct OnlineElsewhere {
    /// The user.
    pub user: UserId,
}

impl Handler<OnlineElsewhere> for PresenceTracker {
    type Result = bool;
    fn handle(&mut self, m: OnlineElsewhere, _: &mut Context<Self>) -> bool {
        self.health.handled();
        self.users
            .get(&m.user)
            .is_some_and(|s| !s.remote().is_empty())
    }
}

/// Users online only on nodes missing from the list go offline.
impl Handler<LiveNodes> for PresenceTracker {
    type Result = ();
    fn handle(&mut self, m: LiveNodes, _: &mut Context<Self>) {
        self.health.handled();
        if m.0.is_empty() {
            return; // not a node list (this node is always on it)
        }
        self.forget_remote(|r| !m.0.contains(&r.node));
    }
}
