//! Rows as Rust structs.

use std::sync::Arc;

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, Queryable};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};

use super::sqlite::schema::{groups, messages};
use crate::ids::MessageId;

/// A persisted message: one row of `messages`.
///
/// The names it shares with other messages (channel, kind, sender, target, device) are
/// `Arc<str>`s: a session hands the same ones to every message it publishes, where a
/// `String` each would cost an allocation per name per message, freed on another thread.
/// Rows are written by `queries::insert_messages` (multi-row statements), read with Diesel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = messages)]
pub struct StoredMessage {
    /// UUID v7.
    pub id: MessageId,
    /// Channel name.
    #[diesel(deserialize_as = String)]
    pub channel: Arc<str>,
    /// Seq within the channel.
    pub seq: i64,
    /// Frame type it is delivered as (`chat_message`, `group_message`, `notification`…).
    #[diesel(deserialize_as = String)]
    pub kind: Arc<str>,
    /// Who sent it (a user id, or the admin/API key that published it).
    #[diesel(deserialize_as = String)]
    pub sender_id: Arc<str>,
    /// `meta.target_id` as addressed.
    #[diesel(deserialize_as = String)]
    pub target_id: Arc<str>,
    /// Sender's device.
    #[diesel(deserialize_as = NullableText)]
    pub client_id: Option<Arc<str>>,
    /// The client frame id, for idempotent resends.
    pub client_msg_id: Option<String>,
    /// Payload JSON as sent.
    pub payload: String,
    /// Storage time, ms since epoch.
    pub created_at: i64,
}

/// Reads a nullable text column into an `Option<Arc<str>>` (Diesel has no `FromSql` for
/// `Arc<str>`; a field declares `deserialize_as = NullableText`).
#[derive(Debug)]
pub struct NullableText(Option<String>);

impl<DB: Backend> Queryable<Nullable<Text>, DB> for NullableText
where
    Option<String>: FromSql<Nullable<Text>, DB>,
{
    type Row = Option<String>;
    fn build(row: Option<String>) -> deserialize::Result<Self> {
        Ok(NullableText(row))
    }
}

impl From<NullableText> for Option<Arc<str>> {
    fn from(t: NullableText) -> Self {
        t.0.map(Arc::from)
    }
}

/// Reads a message id; a row whose id is not a hyphenated UUID is an error (the broker writes
/// no other).
impl<DB: Backend> Queryable<Text, DB> for MessageId
where
    String: FromSql<Text, DB>,
{
    type Row = String;
    fn build(text: String) -> deserialize::Result<Self> {
        MessageId::parse(&text).ok_or_else(|| format!("message id `{text}` is not a UUID").into())
    }
}

/// A message to store; the writer gives it an id, a seq and a timestamp.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Channel name.
    pub channel: Arc<str>,
    /// Delivery frame type.
    pub kind: Arc<str>,
    /// Sender.
    pub sender_id: Arc<str>,
    /// Addressed target.
    pub target_id: Arc<str>,
    /// Sender's device.
    pub client_id: Option<Arc<str>>,
    /// Client frame id (dedupe key with `sender_id`).
    pub client_msg_id: Option<String>,
    /// Payload JSON.
    pub payload: String,
}

impl NewMessage {
    /// The message as a row, to be stored as `id` and `seq` at `created_at` (its strings are
    /// moved, not copied).
    pub fn stored(self, id: MessageId, seq: i64, created_at: i64) -> StoredMessage {
        StoredMessage {
            id,
            channel: self.channel,
            seq,
            kind: self.kind,
            sender_id: self.sender_id,
            target_id: self.target_id,
            client_id: self.client_id,
            client_msg_id: self.client_msg_id,
            payload: self.payload,
            created_at,
        }
    }
}

/// Where a run of consecutive messages of a channel is: one row of `channel_index`.
/// Written only by `queries::insert_channel_index` (multi-row statements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelIndexRow {
    /// The channel.
    pub channel: Arc<str>,
    /// The seq of the run's first message.
    pub first_seq: i64,
    /// The seq of its last message.
    pub last_seq: i64,
    /// The messages' positions in seq order, 8 bytes each, big-endian.
    pub positions: Vec<u8>,
}

/// A stored message's dedupe key parts and place, as read back at start-up.
#[derive(Debug, Clone, Queryable)]
pub struct KeyedMessage {
    /// Sender.
    pub sender_id: String,
    /// Client frame id.
    pub client_msg_id: String,
    /// Position (`messages.pos`).
    pub pos: i64,
    /// Storage time, ms.
    pub created_at: i64,
}

/// A group row.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = groups)]
pub struct GroupRow {
    /// Group id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Who manages its members.
    pub owner_id: String,
    /// Creation time, ms.
    pub created_at: i64,
}

/// Which page of a channel's history to read. Bounds are exclusive.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Only seqs above this.
    pub after_seq: Option<i64>,
    /// Only seqs below this.
    pub before_seq: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// One synced document as stored (`state_documents`).
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName, serde::Serialize, utoipa::ToSchema)]
pub struct StateDoc {
    /// Its key within the collection.
    #[diesel(sql_type = Text, column_name = doc_key)]
    pub key: String,
    /// Its value, JSON text as written.
    #[diesel(sql_type = Text)]
    #[serde(serialize_with = "raw_json")]
    #[schema(value_type = serde_json::Value)]
    pub value: String,
    /// Writes applied to this key: 1 after the first.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub version: i64,
    /// The collection's revision when this key was last written.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub revision: i64,
    /// When, ms since epoch.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub updated_at: i64,
    /// The device (`client_id`) that wrote it.
    #[diesel(sql_type = Nullable<Text>)]
    pub updated_by: Option<String>,
}

/// Writes JSON text as it is (it was checked when written).
fn raw_json<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    match serde_json::value::RawValue::from_string(value.to_owned()) {
        Ok(raw) => raw.serialize(s),
        Err(_) => serde_json::Value::Null.serialize(s),
    }
}

/// What a state write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateOutcome {
    /// Written: the key's new version and the collection's new revision.
    Applied {
        /// The key's version now.
        version: i64,
        /// The collection's revision now.
        revision: i64,
    },
    /// `base_version` was not the key's version: nothing written. `current` is the stored
    /// document, `None` if the key has none (version 0).
    Conflict {
        /// The document as stored.
        current: Option<StateDoc>,
    },
}

/// A full-text search over the channels a user may read, newest first.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// Words, all of which a message's content must hold (no query syntax).
    pub words: Vec<String>,
    /// The channels searched.
    pub channels: Vec<String>,
    /// Stored at or after, ms since epoch.
    pub from: i64,
    /// Stored at or before, ms since epoch.
    pub to: i64,
    /// Only messages before this place in the order (`created_at`, channel, seq), for the
    /// next page.
    pub before: Option<(i64, String, i64)>,
    /// Most messages.
    pub limit: i64,
}

/// What a device's `sync` starts from.
#[derive(Debug, Clone, Default)]
pub struct SyncPlan {
    /// The user's channels with messages (DMs, groups, their `user:` channel): name, last
    /// seq, and this device's delivery cursor in it.
    pub channels: Vec<(String, i64, Option<i64>)>,
    /// The device has marked something delivered before (a device that never has gets a
    /// bounded backlog).
    pub known_device: bool,
}
