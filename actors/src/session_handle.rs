//! How the engine reaches a WebSocket session without knowing about WebSockets.
//!
//! The session actor (in the server crate) implements `Handler<Outbound>`; the engine keeps a
//! [`SessionHandle`] per connection. Every push is a `try_send` into the session's bounded
//! mailbox, which is the connection's outbound queue: a full mailbox means the client is not
//! reading, so the handle flags it overflowed and the session closes with 1013 instead of
//! slowing anyone else down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytestring::ByteString;

use crate::ids::{ConnId, UserId};

/// One committed message as its channel fans it out.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Seq of the message (the session orders replays by it).
    pub seq: u64,
    /// The encoded delivery frame, shared by every recipient.
    pub frame: ByteString,
    /// The publishing connection: it got an ack instead, so it skips this one.
    pub skip_conn: Option<ConnId>,
}

/// What the engine sends a session.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum Outbound {
    /// A frame to write as it is.
    Frame(ByteString),
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
    /// Close the connection with this WebSocket close code.
    Close {
        /// Close code (1012 on shutdown, 4001 on auth expiry…).
        code: u16,
        /// Close reason.
        reason: &'static str,
    },
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
    recipient: Recipient<Outbound>,
    overflowed: Arc<AtomicBool>,
}

impl SessionHandle {
    /// A handle for a session actor's outbound mailbox.
    pub fn new(
        conn: ConnId,
        user: UserId,
        client_id: Arc<str>,
        device: Option<Arc<str>>,
        recipient: Recipient<Outbound>,
        overflowed: Arc<AtomicBool>,
    ) -> Self {
        SessionHandle {
            conn,
            user,
            client_id,
            device,
            recipient,
            overflowed,
        }
    }

    /// Queues `msg` without waiting. False if the session is gone or its queue is full; in
    /// that case the caller forgets the handle and the session closes itself with 1013.
    pub fn push(&self, msg: Outbound) -> bool {
        match self.recipient.try_send(msg) {
            Ok(()) => true,
            Err(SendError::Full(_)) => {
                if !self.overflowed.swap(true, Ordering::Relaxed) {
                    log::info!("{}: outbound queue full, closing with 1013", self.conn);
                }
                false
            }
            Err(SendError::Closed(_)) => false,
        }
    }

    /// Asks the session to close with `code`, even past a full queue (shutdown, revocation).
    pub fn close(&self, code: u16, reason: &'static str) {
        self.recipient.do_send(Outbound::Close { code, reason });
    }

    /// Whether the session is still there to receive.
    pub fn alive(&self) -> bool {
        self.recipient.connected() && !self.overflowed.load(Ordering::Relaxed)
    }
}
