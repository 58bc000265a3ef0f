//! The write operations every backend's writer commits, and what each did: the seam
//! between the write batcher and the writers.

use actix::prelude::*;

use super::credentials_sql::ApiKeyRow;
use super::models::{GroupRow, NewMessage, StateOutcome, StoredMessage};
use super::StoreError;

/// One write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Store a message (or find its earlier copy).
    Message(NewMessage),
    /// Move a user's read cursor forward.
    ReadCursor {
        /// Reader.
        user_id: String,
        /// Channel read.
        channel: String,
        /// Highest seq read.
        up_to_seq: i64,
    },
    /// Create a group with its first members, unless its id is taken.
    CreateGroup {
        /// The group.
        group: GroupRow,
        /// Its members (the owner among them).
        members: Vec<String>,
    },
    /// Add a user to a group (nothing if already a member).
    AddMember {
        /// The group id.
        group: String,
        /// The user.
        user: String,
    },
    /// Remove a user from a group (nothing if not a member).
    RemoveMember {
        /// The group id.
        group: String,
        /// The user.
        user: String,
    },
    /// Replace the list of users `user_id` follows (presence).
    SetFollowing {
        /// The follower.
        user_id: String,
        /// Whom they follow (no duplicates).
        follows: Vec<String>,
    },
    /// Write a synced document if `base_version` is its version (optimistic concurrency).
    PutState {
        /// Owner.
        user_id: String,
        /// Collection (`settings`, `tasks`…).
        collection: String,
        /// Key within it.
        key: String,
        /// JSON text.
        value: String,
        /// The version the writer saw (0 for a new key).
        base_version: i64,
        /// The writing device.
        client_id: Option<String>,
    },
    /// Bring the search index up to date for these channels (SQLite: for every channel, a
    /// step of rows at a time).
    IndexSearch {
        /// The channels about to be searched.
        channels: Vec<String>,
    },
    /// Move a device's delivery cursors forward (never back).
    DeliveryCursors {
        /// Owner.
        user_id: String,
        /// The device.
        client_id: String,
        /// (channel, last seq delivered).
        cursors: Vec<(String, i64)>,
    },
    /// Revoke a token id (until the token would have expired anyway).
    RevokeToken {
        /// The token's `jti`.
        jti: String,
        /// When the token expires, ms; the id is forgotten after that.
        expires_at: i64,
    },
    /// Store a new API key.
    CreateApiKey(ApiKeyRow),
    /// Revoke an API key.
    RevokeApiKey {
        /// Its id.
        id: String,
    },
    /// Note that a device connected (first and last seen).
    TouchDevice {
        /// Owner.
        user_id: String,
        /// Device/install id.
        client_id: String,
        /// Device kind.
        device: Option<String>,
    },
}

/// What one write did.
// `Stored` is the common case; boxing it would add an allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// The message as stored; `duplicate` when an earlier copy was found instead.
    Stored {
        /// The stored row.
        msg: StoredMessage,
        /// True if this was a resend of an already stored frame.
        duplicate: bool,
    },
    /// The read cursor after the write.
    Cursor {
        /// Effective cursor (never moves back).
        up_to_seq: i64,
    },
    /// Whether a [`WriteOp::CreateGroup`] made the group (`false`: the id was taken).
    GroupCreated(bool),
    /// What a [`WriteOp::PutState`] did.
    State(StateOutcome),
    /// Whether a [`WriteOp::IndexSearch`] left the index up to date (else: call again).
    Indexed {
        /// Up to date.
        caught_up: bool,
    },
    /// Whether a [`WriteOp::RevokeToken`] or [`WriteOp::RevokeApiKey`] revoked something
    /// (`false`: it already was, or there is no such key).
    Revoked(bool),
    /// A write with nothing to report.
    Done,
}

/// Writes committed together, answered in order.
#[derive(Message)]
#[rtype(result = "Vec<Result<WriteOutcome, StoreError>>")]
pub struct WriteBatch {
    /// The writes.
    pub ops: Vec<WriteOp>,
    /// How far back a resend is recognised, ms.
    pub dedupe_window_ms: i64,
}
