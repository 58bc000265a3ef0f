//! The router's side of the cluster: other nodes' envelopes to this node's channels and
//! connections, and this node's frames to the others.

use std::sync::Arc;

use actix::prelude::*;

use super::Router;
use crate::channel::{ChannelActor, ReloadMembers, RemoteCommit, RemoteHead, Resume};
use crate::cluster::{Audience, Envelope, FromCluster, NodesGone, Question, ShareAll};
use crate::ids::{Channel, ChannelKind, ConnId, UserId};
use crate::presence::RemoteNotes;
use crate::session_handle::Outbound;
use crate::store::reader::StoredSince;

/// Most channels read back from the store when nodes leave the node list.
const UNHEARD_CHANNELS: usize = 100_000;

impl Router {
    /// Publishes a frame for `users`' connections to the other nodes (no-op alone).
    pub(super) fn frame_to_cluster(
        &self,
        users: Arc<[UserId]>,
        skip_user: Option<UserId>,
        skip_conn: Option<ConnId>,
        item: &Outbound,
    ) {
        let (Some(c), Outbound::Frame(frame)) = (&self.cfg.cluster, item) else {
            return;
        };
        let env = Envelope::Frame {
            users,
            skip_user,
            skip_conn,
            frame: frame.clone(),
        };
        c.publish(env);
    }

    /// Whether a channel read by `audience` has anyone on this node, so that its actor is
    /// worth starting for another node's commit.
    fn has_readers(&self, audience: &Audience) -> bool {
        match audience {
            Audience::Users(users) => users.iter().any(|u| self.sessions.contains_key(u)),
            Audience::Members => !self.sessions.is_empty(),
            // Subscribers are in the running actor, if there is one.
            Audience::Subscribers => false,
        }
    }

    /// The actor of `channel` if it runs, or if it is started because `audience` has
    /// readers here.
    fn remote_target(
        &mut self,
        channel: &str,
        audience: &Audience,
        ctx: &mut Context<Self>,
    ) -> Option<Addr<ChannelActor>> {
        if let Some(e) = self.channels.get_mut(channel) {
            if e.addr.connected() {
                // Traffic from the bus keeps the actor, like local traffic.
                e.last_routed = std::time::Instant::now();
                return Some(e.addr.clone());
            }
        }
        if !self.has_readers(audience) {
            return None;
        }
        let channel = Channel::parse(channel)?;
        Some(self.channel(&channel, ctx).clone())
    }
}

impl Handler<FromCluster> for Router {
    type Result = ();
    fn handle(&mut self, msg: FromCluster, ctx: &mut Context<Self>) {
        self.health.handled();
        match msg.env {
            Envelope::Deliveries {
                channel,
                audience,
                items,
            } => {
                if let Some(addr) = self.remote_target(&channel, &audience, ctx) {
                    // A full mailbox loses the items here; the channel's next message
                    // shows the gap, which it fills from the store.
                    let _ = addr.try_send(RemoteCommit { items });
                }
            }
            Envelope::Heads(heads) => {
                for h in heads {
                    if let Some(addr) = self.remote_target(&h.channel, &h.audience, ctx) {
                        let _ = addr.try_send(RemoteHead { seq: h.seq });
                    }
                }
            }
            Envelope::Frame {
                users,
                skip_user,
                skip_conn,
                frame,
            } => {
                let item = Outbound::Frame(frame);
                for user in users.iter() {
                    if skip_user.as_ref() != Some(user) {
                        self.send_to_user(user, skip_conn, &item);
                    }
                }
            }
            Envelope::MembersChanged { channel } => {
                if let Some(e) = self.channels.get(&channel) {
                    e.addr.do_send(ReloadMembers);
                }
            }
            Envelope::CloseConnection { conn } => {
                self.close_local(conn);
            }
            Envelope::Revoked(jtis) => {
                self.close_revoked_local(Arc::from(jtis));
            }
            Envelope::Presence {
                generation,
                complete,
                notes,
            } => self.presence.do_send(RemoteNotes {
                node: msg.node,
                generation,
                complete,
                notes,
            }),
            Envelope::PresenceAsk => self.presence.do_send(ShareAll),
            Envelope::Ask { id, question } => self.answer(id, msg.node, question),
            // Answers reach the link itself.
            Envelope::Answer { .. }
            | Envelope::Resync { .. }
            | Envelope::RateSpent(_)
            | Envelope::Places(_) => {}
        }
    }
}

impl Router {
    /// Answers another node's question about this node's connections.
    fn answer(&self, id: u64, to: Arc<str>, question: Question) {
        let Some(c) = &self.cfg.cluster else {
            return;
        };
        let json = match question {
            Question::Connections { user, limit } => {
                let (list, total) = self.list_connections(user.as_ref(), limit as usize);
                serde_json::json!({ "connections": list, "total": total })
            }
            Question::Close { conn } => serde_json::json!({ "closed": self.close_local(conn) }),
        };
        let env = Envelope::Answer {
            id,
            to,
            json: json.to_string(),
        };
        c.publish(env);
    }
}

impl Handler<NodesGone> for Router {
    type Result = ();
    fn handle(&mut self, m: NodesGone, ctx: &mut Context<Self>) {
        self.health.handled();
        if self.cfg.cluster.is_none() {
            return;
        }
        let fut = self.reads.stored_since(m.since_ms, UNHEARD_CHANNELS);
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(list) => {
                log::info!(
                    "cluster: nodes left the list; {} channels with messages stored since then are read back",
                    list.len()
                );
                for s in list {
                    act.catch_up(s, ctx);
                }
            }
            Err(e) => {
                log::warn!("cluster: cannot read what departed nodes stored: {e}; again in 1 s");
                ctx.notify_later(m, std::time::Duration::from_secs(1));
            }
        }));
    }
}

impl Router {
    /// Delivers what `s` says was stored and this node may not have heard: the channel's
    /// running actor fills up to its head; one with readers here but no actor starts
    /// from where the unheard messages begin.
    fn catch_up(&mut self, s: StoredSince, ctx: &mut Context<Self>) {
        let Some(channel) = Channel::parse(&s.channel) else {
            return;
        };
        let running = self
            .channels
            .get(&channel.name)
            .is_some_and(|e| e.addr.connected());
        if !running {
            if !self.has_readers(&audience_of(&channel.kind)) {
                return;
            }
            let after = match self.resume.get(&channel.name) {
                Some((Resume::Delivered(d), _)) => (*d).max(s.after),
                _ => s.after,
            };
            let at = std::time::Instant::now();
            self.resume
                .insert(channel.name.clone(), (Resume::Unheard(after), at));
        }
        let _ = self
            .channel(&channel, ctx)
            .try_send(RemoteHead { seq: s.head });
    }
}

/// Who reads a channel of `kind`, as far as its name tells.
fn audience_of(kind: &ChannelKind) -> Audience {
    match kind {
        ChannelKind::Dm(a, b) => Audience::Users(Arc::from(vec![a.clone(), b.clone()])),
        ChannelKind::User(u) => Audience::Users(Arc::from(vec![u.clone()])),
        ChannelKind::Group(_) => Audience::Members,
        ChannelKind::Broadcast(_) => Audience::Subscribers,
    }
}

/// A group's members changed: its channel actor loads them again, on every node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MembersChanged {
    /// The group's channel.
    pub channel: Channel,
}

impl Handler<MembersChanged> for Router {
    type Result = ();
    fn handle(&mut self, msg: MembersChanged, _: &mut Context<Self>) {
        self.health.handled();
        if let Some(e) = self.channels.get(&msg.channel.name) {
            e.addr.do_send(ReloadMembers);
        }
        if let Some(c) = &self.cfg.cluster {
            let env = Envelope::MembersChanged {
                channel: msg.channel.name,
            };
            c.publish(env);
        }
    }
}
