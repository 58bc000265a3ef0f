//! How the engine reaches a WebSocket session without knowing about WebSockets.
//!
//! The session actor (in the server crate) implements `Handler<Outbound>`; the engine keeps a
//! [`SessionHandle`] per connection. Every push is a `try_send` into the session's bounded
//! mailbox, which is the connection's outbound queue. The queue is bounded in frames, not
//! only in mailbox slots (one slot may carry a whole commit's deliveries): an
//! [`OutboundGauge`] counts the frames waiting. A full queue means the client is not
//! reading, so the handle flags it overflowed and the session closes with 1013 instead of
//! slowing anyone else down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::ids::{ConnId, UserId};
use crate::seq::Seq;

/// One committed message as its channel fans it out.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Seq of the message (the session orders replays by it).
    pub seq: Seq,
    /// The encoded delivery frame, shared by every recipient.
    pub frame: ByteString,
    /// The publishing connection: it got an ack instead, so it skips this one.
    pub skip_conn: Option<ConnId>,
    /// Committed on this node (not received from another one, nor read back from the
    /// store): only such messages go to the push hook.
    pub from_here: bool,
}

/// What the engine sends a session.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Outbound {
    /// A frame to write as it is.
    Frame(ByteString),
    /// Frames to write as they are, in order: the acks one commit gave this session's
    /// publishes in one channel, in one mailbox slot rather than one each.
    Frames(Vec<ByteString>),
    /// The messages of `channel` that one commit stored, in seq order. One mailbox slot
    /// and one wake-up per session for a whole commit, not one per message: the list is
    /// shared by every recipient, and each session skips what it published itself. A slot
    /// thus holds at most one batch (`database.batch_max`) of one channel.
    Deliveries {
        /// Channel name.
        channel: Arc<str>,
        /// The messages, in seq order.
        items: Arc<[Delivery]>,
    },
    /// These token ids were revoked: the session closes with 4001 if it holds one.
    Revoked(Arc<[Arc<str>]>),
    /// Close the connection with this WebSocket close code.
    Close {
        /// Close code (1012 on shutdown, 4001 on auth expiry…).
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
}

impl Outbound {
    /// How many frames this puts in connection `conn`'s outbound queue (not the deliveries
    /// it published itself, which it skips).
    pub fn frames_for(&self, conn: ConnId) -> usize {
        match self {
            Outbound::Frame(_) => 1,
            Outbound::Frames(frames) => frames.len(),
            Outbound::Deliveries { items, .. } => {
                items.iter().filter(|d| d.skip_conn != Some(conn)).count()
            }
            Outbound::Close { .. } | Outbound::Revoked(_) => 0,
        }
    }
}

/// The frames waiting in one session's mailbox, shared by the session (which takes them
/// out) and every handle to it (which puts them in).
#[derive(Debug)]
pub struct OutboundGauge {
    queued: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
}

impl OutboundGauge {
    /// A gauge admitting at most `limit` frames at once (`limits.outbound_queue`).
    pub fn new(limit: usize) -> Self {
        OutboundGauge {
            queued: AtomicUsize::new(0),
            limit: limit.max(1),
            overflowed: AtomicBool::new(false),
        }
    }

    /// Admits `n` more frames, unless that would pass the limit.
    fn admit(&self, n: usize) -> bool {
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before + n > self.limit {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The session took `n` frames out of its mailbox. Saturating: a frame that reached the
    /// mailbox without a handle (none does today) cannot wrap the count around.
    pub fn taken(&self, n: usize) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
    }

    /// Flags the queue overflowed; true the first time.
    fn overflow(&self) -> bool {
        !self.overflowed.swap(true, Ordering::Relaxed)
    }

    /// Whether a push was refused: the session closes with 1013.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }
}

/// How a client is connected: the session core is the same, its adapter differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// `GET /ws`.
    WebSocket,
    /// `GET /sse`: Server-Sent Events.
    Sse,
    /// `GET /poll`: one long-polling request.
    Poll,
    /// `POST /api/messages`: one frame sent over HTTP (never registered with the router).
    Http,
}

impl Transport {
    /// The name `/status` counts it under.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Http => "http",
        }
    }
}

/// A connection as the engine sees it.
#[derive(Clone)]
pub struct SessionHandle {
    /// Server-made connection id.
    pub conn: ConnId,
    /// The user it is authenticated as.
    pub user: UserId,
    /// The device/install id.
    pub client_id: Arc<str>,
    /// Device kind (`web`, `mobile`…), if the client said.
    pub device: Option<Arc<str>>,
    /// How it is connected.
    pub transport: Transport,
    /// When it authenticated, ms since epoch.
    pub connected_at: i64,
    recipient: Recipient<Outbound>,
    gauge: Arc<OutboundGauge>,
}

impl SessionHandle {
    /// A handle for a session actor's outbound mailbox.
    pub fn new(
        conn: ConnId,
        user: UserId,
        client_id: Arc<str>,
        device: Option<Arc<str>>,
        transport: Transport,
        recipient: Recipient<Outbound>,
        gauge: Arc<OutboundGauge>,
    ) -> Self {
        SessionHandle {
            conn,
            user,
            client_id,
            device,
            transport,
            connected_at: crate::ids::now_ms(),
            recipient,
            gauge,
        }
    }

    /// Queues `msg` without waiting. False if the session is gone or its queue is full; in
    /// that case the caller forgets the handle and the session closes itself with 1013.
    pub fn push(&self, msg: Outbound) -> bool {
        let n = msg.frames_for(self.conn);
        if !self.gauge.admit(n) {
            self.overflowed();
            return false;
        }
        match self.recipient.try_send(msg) {
            Ok(()) => true,
            Err(SendError::Full(_)) => {
                self.gauge.taken(n);
                self.overflowed();
                false
            }
            Err(SendError::Closed(_)) => {
                self.gauge.taken(n);
                false
            }
        }
    }

    fn overflowed(&self) {
        if self.gauge.overflow() {
            log::info!(conn:% = self.conn; "outbound queue full, closing with 1013");
        }
    }

    /// Asks the session to close with `code`, even past a full queue (shutdown, revocation).
    pub fn close(&self, code: u16, reason: &'static str) {
        self.recipient.do_send(Outbound::Close { code, reason });
    }

    /// Tells the session which token ids were revoked, even past a full queue.
    pub fn revoked(&self, jtis: Arc<[Arc<str>]>) {
        self.recipient.do_send(Outbound::Revoked(jtis));
    }

    /// Whether the session is still there to receive.
    pub fn alive(&self) -> bool {
        self.recipient.connected() && !self.gauge.overflowed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_charged_only_for_the_deliveries_it_will_write() {
        let (me, other) = (ConnId::next(), ConnId::next());
        let d = |skip_conn| Delivery {
            seq: Seq::new(1),
            frame: ByteString::from_static("{}"),
            skip_conn,
            from_here: true,
        };
        let msg = Outbound::Deliveries {
            channel: Arc::from("dm:a:b"),
            items: Arc::from(vec![d(Some(me)), d(Some(other)), d(None), d(Some(me))]),
        };
        assert_eq!(msg.frames_for(me), 2, "its own two are skipped");
        assert_eq!(msg.frames_for(other), 3);
        assert_eq!(Outbound::Frame(ByteString::new()).frames_for(me), 1);
        let acks = Outbound::Frames(vec![ByteString::new(), ByteString::new()]);
        assert_eq!(acks.frames_for(me), 2);
    }

    #[test]
    fn the_gauge_counts_frames_and_refuses_past_its_limit() {
        let g = OutboundGauge::new(10);
        assert!(g.admit(4));
        assert!(g.admit(6), "exactly at the limit");
        assert!(!g.admit(1), "one frame past it");
        g.taken(6);
        assert!(
            !g.admit(7),
            "a commit's worth that does not fit is refused whole"
        );
        assert!(g.admit(6));
        assert!(!g.overflowed());
        assert!(g.overflow(), "the first overflow is reported");
        assert!(!g.overflow());
        assert!(g.overflowed());
        g.taken(100);
        assert!(
            g.admit(10),
            "taking more than was queued does not wrap around"
        );
    }
}

/// Deliver `item` to every connection of `users`, except connection `skip_conn` and every
/// connection of `skip_user`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FanOut {
    /// Recipients.
    pub users: Arc<[UserId]>,
    /// The sending connection (it got an ack instead).
    pub skip_conn: Option<ConnId>,
    /// A user to leave out entirely (typing indicators skip the typist).
    pub skip_user: Option<UserId>,
    /// What to deliver.
    pub item: Outbound,
}
