//! The wire contract's frames (`shared/spec/PROTOCOL.md` sections 3, 5, 6 and 8).
//!
//! Parsing turns one text frame into a [`ClientFrame`] or a [`FrameError`] that says which
//! `error` frame to answer with. Encoding builds server frames as [`ByteString`]s once, so a
//! delivery's bytes are shared by every session that receives it.

use std::borrow::Cow;
use std::cell::RefCell;

use bytestring::ByteString;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use crate::error_code::ErrorCode;
use crate::ids::{valid_id, Channel, MessageId, UserId};
use crate::json_check::check_json;
use crate::seq::Seq;
use crate::store::StoredMessage;

/// Why a client frame was refused; becomes one `error` frame (the connection stays open).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not JSON, wrong field types, missing fields.
    #[error("{message}")]
    BadRequest {
        /// What was wrong, for humans.
        message: String,
        /// The frame's `id`, when it could be read.
        ref_id: Option<String>,
    },
    /// A `type` this broker does not know.
    #[error("unknown frame type `{kind}`")]
    UnknownType {
        /// The type as sent.
        kind: String,
        /// The frame's `id`.
        ref_id: Option<String>,
    },
}

impl FrameError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::BadRequest { .. } => ErrorCode::BadRequest,
            FrameError::UnknownType { .. } => ErrorCode::UnknownType,
        }
    }
    /// The id of the frame this error answers.
    pub fn ref_id(&self) -> Option<&str> {
        match self {
            FrameError::BadRequest { ref_id, .. } | FrameError::UnknownType { ref_id, .. } => {
                ref_id.as_deref()
            }
        }
    }
}

/// The envelope of a client frame, before its payload is checked. Borrowed from the frame's
/// text where it can be (strings without escapes, the payload), so that parsing copies only
/// what the frame keeps.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    /// Read as [`EnvelopeMeta`] once it is known to be an object ([`meta_of`]).
    #[serde(default, borrow)]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct EnvelopeMeta<'a> {
    #[serde(default, borrow)]
    target_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AuthPayload {
    token: String,
}

/// Body of a `chat_message` or `group_message`: `content` is required, the rest is kept (the
/// payload is stored as sent; this only checks its shape, copying nothing).
#[derive(Deserialize)]
struct MessagePayload<'a> {
    #[serde(borrow)]
    content: Cow<'a, str>,
    /// A list of anything; its items are not looked at here.
    #[serde(default, rename = "attachments")]
    _attachments: Option<Vec<IgnoredAny>>,
}

#[derive(Deserialize)]
struct TypingPayload {
    typing: bool,
}

#[derive(Deserialize)]
struct ChannelSeqPayload {
    channel: String,
    up_to_seq: Seq,
}

#[derive(Deserialize)]
struct SubscribePayload {
    channel: String,
    #[serde(default)]
    since_seq: Option<Seq>,
}

#[derive(Deserialize)]
struct ChannelPayload {
    channel: String,
}

#[derive(Deserialize)]
struct StatusPayload {
    status: PresenceStatus,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct StateSyncPayload<'a> {
    collection: String,
    key: String,
    #[serde(borrow)]
    value: &'a RawValue,
    base_version: u64,
}

#[derive(Deserialize)]
struct CommandPayload<'a> {
    name: String,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SyncPayload {
    #[serde(default)]
    cursors: std::collections::HashMap<String, Seq>,
}

#[derive(Deserialize)]
struct PresenceSubscribePayload {
    user_ids: Vec<String>,
}

/// Longest status text a user may set, in characters.
pub const MAX_STATUS_TEXT: usize = 256;

/// What a user says of themselves (`status_update`); `invisible` users appear `offline` to
/// others and receive everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    /// Available.
    Online,
    /// Away from the device.
    Away,
    /// Do not disturb.
    Busy,
    /// Connected, but shown to others as offline.
    Invisible,
}

/// Who a `typing_indicator` is for.
#[derive(Debug, Clone)]
pub enum TypingTarget {
    /// One user (a DM).
    User(UserId),
    /// A group's members.
    Group(Channel),
}

/// A checked client frame (contract section 5).
#[derive(Debug)]
pub enum ClientFrame {
    /// Re-authenticate or refresh.
    Auth {
        /// The new access token.
        token: String,
    },
    /// Keep-alive; answered with `heartbeat`.
    Heartbeat,
    /// A direct message.
    Chat {
        /// The other user.
        target: UserId,
        /// The payload as sent (checked to hold a non-empty `content`).
        payload: String,
    },
    /// A group message.
    Group {
        /// `group:{id}`.
        channel: Channel,
        /// The payload as sent (checked to hold a non-empty `content`).
        payload: String,
    },
    /// Ephemeral typing state.
    Typing {
        /// Recipient(s).
        target: TypingTarget,
        /// Typing or stopped.
        typing: bool,
    },
    /// The sender has read `channel` up to `up_to_seq`.
    ReadReceipt {
        /// The channel read.
        channel: Channel,
        /// Highest seq read.
        up_to_seq: Seq,
    },
    /// Start receiving `channel` (with replay after `since_seq`).
    Subscribe {
        /// The channel.
        channel: Channel,
        /// Replay everything after this seq.
        since_seq: Option<Seq>,
    },
    /// Stop receiving an explicitly subscribed channel.
    Unsubscribe {
        /// The channel.
        channel: Channel,
    },
    /// The sender's own presence status.
    StatusUpdate {
        /// The new status.
        status: PresenceStatus,
        /// Optional text ("in a meeting"), at most [`MAX_STATUS_TEXT`] characters.
        text: Option<String>,
    },
    /// Send this device what it has not marked delivered, then `sync_complete`.
    Sync {
        /// What the device says it already has, per channel (sorted by channel name).
        cursors: Vec<(Channel, Seq)>,
    },
    /// This device has `channel` up to `up_to_seq`.
    Delivered {
        /// The channel.
        channel: Channel,
        /// Its last seq the device has.
        up_to_seq: Seq,
    },
    /// Write a synced document if `base_version` is still its version.
    StateSync {
        /// Collection (a valid id: `settings`, `tasks`…).
        collection: String,
        /// Key within it (a valid id).
        key: String,
        /// Any JSON value, as sent (checked like a message payload).
        value: String,
        /// The version the device saw (0 for a new key).
        base_version: i64,
    },
    /// Watch these users' presence: their status now, then every change.
    PresenceSubscribe {
        /// Whom.
        users: Vec<UserId>,
    },
    /// Call the application's backend (answered with `response`).
    Command {
        /// The command's name (1 to 128 characters, no control characters).
        name: String,
        /// Its arguments: any JSON value as sent (checked like a payload), `null` if none.
        args: String,
    },
}

impl ClientFrame {
    /// The index of this frame's type in `metrics::FRAME_TYPES`.
    pub fn type_index(&self) -> usize {
        match self {
            ClientFrame::Auth { .. } => 0,
            ClientFrame::Heartbeat => 1,
            ClientFrame::Chat { .. } => 2,
            ClientFrame::Group { .. } => 3,
            ClientFrame::Typing { .. } => 4,
            ClientFrame::ReadReceipt { .. } => 5,
            ClientFrame::Subscribe { .. } => 6,
            ClientFrame::Unsubscribe { .. } => 7,
            ClientFrame::StatusUpdate { .. } => 8,
            ClientFrame::Sync { .. } => 9,
            ClientFrame::Delivered { .. } => 10,
            ClientFrame::StateSync { .. } => 11,
            ClientFrame::PresenceSubscribe { .. } => 12,
            ClientFrame::Command { .. } => 13,
        }
    }
}

/// A client frame with its correlation id.
#[derive(Debug)]
pub struct ParsedFrame {
    /// The client-made `id` (ack correlation and idempotency).
    pub id: Option<String>,
    /// The frame.
    pub frame: ClientFrame,
}

fn bad(message: impl Into<String>, ref_id: &Option<String>) -> FrameError {
    FrameError::BadRequest {
        message: message.into(),
        ref_id: ref_id.clone(),
    }
}

/// Whether a message payload is exactly `{"content":"…"}` with a non-empty content that
/// holds nothing to unescape: the shape most clients send, and a valid [`MessagePayload`]
/// without parsing it a second time. `raw` is valid JSON already (it was parsed as a
/// [`RawValue`]), so a string that opens after `{"content":"` and holds no `"` runs to the
/// final `"}`. Any other shape (more fields, spaces, escapes) is parsed as usual.
fn is_plain_content(raw: &str) -> bool {
    raw.strip_prefix(r#"{"content":""#)
        .and_then(|rest| rest.strip_suffix(r#""}"#))
        .is_some_and(|content| !content.is_empty() && !needs_escape(content.as_bytes()))
}

/// Whether a JSON value is an object. serde's derived structs also read a list, taking its
/// items as the fields in order (`["dm:a:b", 0]` as a subscribe payload): every wire struct
/// is checked with this first.
fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

fn payload_of<'a, T: Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    kind: &str,
    id: &Option<String>,
) -> Result<T, FrameError> {
    match raw {
        Some(raw) if is_object(raw) => {
            // The path names the field at fault (`text: invalid type: …`).
            let mut de = serde_json::Deserializer::from_str(raw.get());
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let field = e.path().to_string();
                let inner = e.into_inner();
                let message = if field == "." {
                    format!("invalid `{kind}` payload: {inner}")
                } else {
                    format!("invalid `{kind}` payload: `{field}`: {inner}")
                };
                bad(message, id)
            })
        }
        Some(_) => Err(bad(format!("`{kind}` payload must be an object"), id)),
        None => Err(bad(format!("`{kind}` needs a payload"), id)),
    }
}

fn meta_of<'a>(
    raw: Option<&'a RawValue>,
    id: &Option<String>,
) -> Result<Option<EnvelopeMeta<'a>>, FrameError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) if is_object(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| bad(format!("invalid `meta`: {e}"), id)),
        Some(_) => Err(bad("`meta` must be an object", id)),
    }
}

fn target_of<'m>(
    meta: &'m Option<EnvelopeMeta>,
    id: &Option<String>,
) -> Result<&'m str, FrameError> {
    match meta.as_ref().and_then(|m| m.target_id.as_deref()) {
        Some(t) => Ok(t),
        None => Err(bad("missing `meta.target_id`", id)),
    }
}

fn user_id_of(t: &str, id: &Option<String>) -> Result<UserId, FrameError> {
    if !valid_id(t) {
        return Err(bad("`meta.target_id` is not a valid user id", id));
    }
    Ok(UserId::new(t))
}

fn group_of(t: &str, id: &Option<String>) -> Result<Channel, FrameError> {
    let gid = t.strip_prefix("group:").unwrap_or(t);
    if !valid_id(gid) {
        return Err(bad("`meta.target_id` is not a valid group id", id));
    }
    Ok(Channel::group(gid))
}

fn channel_named(name: &str, id: &Option<String>) -> Result<Channel, FrameError> {
    Channel::parse(name).ok_or_else(|| bad(format!("`{name}` is not a valid channel name"), id))
}

/// Parses one text frame; `max_depth` is `limits.max_json_depth`, the deepest a stored
/// payload may nest. (Other frames' payloads are read into typed fields and not kept.)
pub fn parse_client_frame(text: &str, max_depth: usize) -> Result<ParsedFrame, FrameError> {
    match parse_plain_message(text, max_depth) {
        Some(parsed) => parsed,
        None => parse_envelope(text, max_depth),
    }
}

/// Parses a chat or group message laid out exactly as SDKs write one,
/// `{"type":"chat_message","id":"…","payload":…,"meta":{"target_id":"…"}}` with nothing
/// to unescape in the id and the target, without serde's walk over the envelope's fields
/// (two thirds of what parsing a message cost: callgrind, `pairs`). The payload is still
/// parsed by serde_json as a [`RawValue`], so it is checked as fully as in
/// [`parse_envelope`]. `None` for any other text, which is then parsed in full; for a text
/// it takes, the answer is the one the full parse gives (a test holds the two side by side).
fn parse_plain_message(text: &str, max_depth: usize) -> Option<Result<ParsedFrame, FrameError>> {
    let (kind, rest) = match text.strip_prefix(r#"{"type":"chat_message","id":""#) {
        Some(rest) => ("chat_message", rest),
        None => (
            "group_message",
            text.strip_prefix(r#"{"type":"group_message","id":""#)?,
        ),
    };
    let (id, rest) = plain_json_str(rest)?;
    let rest = rest.strip_prefix(r#","payload":"#)?;
    let mut values = serde_json::Deserializer::from_str(rest).into_iter::<&RawValue>();
    let payload = values.next()?.ok()?;
    let rest = rest.get(values.byte_offset()..)?;
    let rest = rest.strip_prefix(r#","meta":{"target_id":""#)?;
    let (target, rest) = plain_json_str(rest)?;
    if rest != "}}" {
        return None;
    }
    let id = Some(id.to_owned());
    // As `Option<&RawValue>` reads it, `null` is no payload.
    let payload = Some(payload).filter(|p| p.get() != "null");
    Some(
        message_frame(kind, payload, Some(target), &id, max_depth)
            .map(|frame| ParsedFrame { id, frame }),
    )
}

/// The text of a JSON string whose opening quote is just before `s`, and what follows its
/// closing quote; `None` if the string holds anything JSON escapes (or is not closed).
fn plain_json_str(s: &str) -> Option<(&str, &str)> {
    let end = s.find('"')?;
    let (text, rest) = (s.get(..end)?, s.get(end + 1..)?);
    (!needs_escape(text.as_bytes())).then_some((text, rest))
}

/// A `chat_message` or `group_message` from its parts: the payload must be an object with a
/// non-empty `content` and is kept exactly as sent (unknown fields included).
fn message_frame(
    kind: &str,
    payload: Option<&RawValue>,
    target: Option<&str>,
    id: &Option<String>,
    max_depth: usize,
) -> Result<ClientFrame, FrameError> {
    let payload = payload.ok_or_else(|| bad("missing payload", id))?;
    if !payload.get().starts_with('{') {
        // serde would take `["text"]` for a `MessagePayload` (a struct as a list).
        return Err(bad(format!("`{kind}` payload must be an object"), id));
    }
    // `{"content":"…"}` with nothing escaped holds nothing `check_json` refuses.
    if !is_plain_content(payload.get()) {
        check_json(payload.get(), max_depth)
            .map_err(|f| bad(format!("invalid `{kind}` payload: {f}"), id))?;
        let p: MessagePayload = payload_of(Some(payload), kind, id)?;
        if p.content.is_empty() {
            return Err(bad("`content` must not be empty", id));
        }
    }
    let target = target.ok_or_else(|| bad("missing `meta.target_id`", id))?;
    let payload = String::from(payload.get());
    Ok(if kind == "chat_message" {
        ClientFrame::Chat {
            target: user_id_of(target, id)?,
            payload,
        }
    } else {
        ClientFrame::Group {
            channel: group_of(target, id)?,
            payload,
        }
    })
}

/// Parses one text frame with serde, field by field: every frame [`parse_plain_message`]
/// does not take.
fn parse_envelope(text: &str, max_depth: usize) -> Result<ParsedFrame, FrameError> {
    let not_a_frame = |message: String| FrameError::BadRequest {
        message,
        ref_id: None,
    };
    if !text.trim_start().starts_with('{') {
        return Err(not_a_frame("a frame must be a JSON object".into()));
    }
    let env: Envelope =
        serde_json::from_str(text).map_err(|e| not_a_frame(format!("not a valid frame: {e}")))?;
    let id = env.id.map(Cow::into_owned);
    let meta = meta_of(env.meta, &id)?;
    let frame = match &*env.kind {
        "auth" => {
            let p: AuthPayload = payload_of(env.payload, "auth", &id)?;
            ClientFrame::Auth { token: p.token }
        }
        "heartbeat" => ClientFrame::Heartbeat,
        "chat_message" | "group_message" => {
            let target = meta.as_ref().and_then(|m| m.target_id.as_deref());
            message_frame(&env.kind, env.payload, target, &id, max_depth)?
        }
        "typing_indicator" => {
            let p: TypingPayload = payload_of(env.payload, "typing_indicator", &id)?;
            let t = target_of(&meta, &id)?;
            let target = if t.starts_with("group:") {
                TypingTarget::Group(group_of(t, &id)?)
            } else if valid_id(t) {
                TypingTarget::User(UserId::new(t))
            } else {
                return Err(bad("`meta.target_id` is not a valid user or group", &id));
            };
            ClientFrame::Typing {
                target,
                typing: p.typing,
            }
        }
        "read_receipt" => {
            let p: ChannelSeqPayload = payload_of(env.payload, "read_receipt", &id)?;
            ClientFrame::ReadReceipt {
                channel: channel_named(&p.channel, &id)?,
                up_to_seq: p.up_to_seq,
            }
        }
        "subscribe" => {
            let p: SubscribePayload = payload_of(env.payload, "subscribe", &id)?;
            ClientFrame::Subscribe {
                channel: channel_named(&p.channel, &id)?,
                since_seq: p.since_seq,
            }
        }
        "unsubscribe" => {
            let p: ChannelPayload = payload_of(env.payload, "unsubscribe", &id)?;
            ClientFrame::Unsubscribe {
                channel: channel_named(&p.channel, &id)?,
            }
        }
        "status_update" => {
            let p: StatusPayload = payload_of(env.payload, "status_update", &id)?;
            if p.text
                .as_ref()
                .is_some_and(|t| t.chars().count() > MAX_STATUS_TEXT)
            {
                return Err(bad(
                    format!("`text` is longer than {MAX_STATUS_TEXT} characters"),
                    &id,
                ));
            }
            ClientFrame::StatusUpdate {
                status: p.status,
                text: p.text.filter(|t| !t.is_empty()),
            }
        }
        "presence_subscribe" => {
            let p: PresenceSubscribePayload = payload_of(env.payload, "presence_subscribe", &id)?;
            let mut users = Vec::with_capacity(p.user_ids.len());
            for u in &p.user_ids {
                if !valid_id(u) {
                    return Err(bad(
                        format!("`user_ids` holds an invalid user id: {u:?}"),
                        &id,
                    ));
                }
                users.push(UserId::new(u));
            }
            ClientFrame::PresenceSubscribe { users }
        }
        "state_sync" => {
            let p: StateSyncPayload = payload_of(env.payload, "state_sync", &id)?;
            if !valid_id(&p.collection) {
                return Err(bad("`collection` is not a valid name", &id));
            }
            if !valid_id(&p.key) {
                return Err(bad("`key` is not a valid key", &id));
            }
            check_json(p.value.get(), max_depth)
                .map_err(|f| bad(format!("invalid `value`: {f}"), &id))?;
            let base_version = i64::try_from(p.base_version)
                .map_err(|_| bad("`base_version` is too large", &id))?;
            ClientFrame::StateSync {
                collection: p.collection,
                key: p.key,
                value: String::from(p.value.get()),
                base_version,
            }
        }
        "sync" => {
            let p: SyncPayload = match env.payload {
                None => SyncPayload {
                    cursors: Default::default(),
                },
                Some(raw) => payload_of(Some(raw), "sync", &id)?,
            };
            let mut cursors = Vec::with_capacity(p.cursors.len());
            for (name, seq) in p.cursors {
                let channel = Channel::parse(&name).ok_or_else(|| {
                    bad(format!("`cursors` names an invalid channel: {name:?}"), &id)
                })?;
                cursors.push((channel, seq));
            }
            cursors.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            ClientFrame::Sync { cursors }
        }
        "delivered" => {
            let p: ChannelSeqPayload = payload_of(env.payload, "delivered", &id)?;
            ClientFrame::Delivered {
                channel: channel_named(&p.channel, &id)?,
                up_to_seq: p.up_to_seq,
            }
        }
        "command" => {
            let p: CommandPayload = payload_of(env.payload, "command", &id)?;
            if p.name.is_empty() || p.name.len() > 128 || p.name.chars().any(char::is_control) {
                return Err(bad(
                    "`name` must be 1 to 128 characters without control characters",
                    &id,
                ));
            }
            let args = p.args.map_or("null", RawValue::get);
            check_json(args, max_depth).map_err(|f| bad(format!("invalid `args`: {f}"), &id))?;
            ClientFrame::Command {
                name: p.name,
                args: String::from(args),
            }
        }
        _ => {
            return Err(FrameError::UnknownType {
                kind: env.kind.into_owned(),
                ref_id: id,
            })
        }
    };
    Ok(ParsedFrame { id, frame })
}

#[derive(Serialize)]
struct OutFrame<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    payload: P,
}

/// Encodes a server frame `{type, id?, payload}`.
pub fn encode<P: Serialize>(kind: &str, id: Option<&str>, payload: P) -> ByteString {
    // `to_string` knows its output is UTF-8: no check before it becomes a `ByteString`.
    serde_json::to_string(&OutFrame { kind, id, payload })
        .map(ByteString::from)
        .unwrap_or_default()
}

/// Payload of an `error` frame.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ErrorPayload {
    /// The error code.
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
    /// The client frame this answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_id: Option<String>,
    /// When to retry (rate limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// An `error` frame.
pub fn error_frame(code: ErrorCode, message: &str, ref_id: Option<&str>) -> ByteString {
    crate::metrics::metrics().error(code, crate::metrics::ErrorVia::Frame);
    encode(
        "error",
        None,
        ErrorPayload {
            code,
            message: message.to_owned(),
            ref_id: ref_id.map(str::to_owned),
            retry_after_ms: None,
        },
    )
}

/// Payload of an `ack` frame (also the reply of `POST /api/admin/publish`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct Ack {
    /// The client frame id this acknowledges (`null` for server-side publishes without one).
    pub ref_id: Option<String>,
    /// The stored message id (UUID v7).
    pub message_id: String,
    /// The channel it was stored in.
    pub channel: String,
    /// Its seq in that channel.
    pub seq: Seq,
    /// Server time of storage, ms since epoch.
    pub timestamp: i64,
}

impl Ack {
    /// The ack of a stored message, answering frame `ref_id`.
    pub fn of(m: &StoredMessage, ref_id: Option<&str>) -> Self {
        Ack {
            ref_id: ref_id.map(str::to_owned),
            message_id: String::from(m.id.as_str()),
            channel: String::from(&*m.channel),
            seq: Seq::from_stored(m.seq),
            timestamp: m.created_at,
        }
    }
}

/// The `ack` frame of a stored message, answering client frame `ref_id`: the JSON of
/// `encode("ack", None, Ack::of(m, ref_id))`, written piece by piece ([`in_scratch`])
/// without copying the message's strings into an [`Ack`] first (one of these per message on
/// the publish path).
pub fn ack_frame(m: &StoredMessage, ref_id: Option<&str>) -> ByteString {
    in_scratch(|out| {
        out.push_str("{\"type\":\"ack\",\"payload\":{\"ref_id\":");
        match ref_id {
            Some(r) => push_json_str(out, r),
            None => out.push_str("null"),
        }
        out.push_str(",\"message_id\":");
        push_json_id(out, &m.id);
        out.push_str(",\"channel\":");
        push_json_str(out, &m.channel);
        out.push_str(",\"seq\":");
        push_json_int(out, m.seq);
        out.push_str(",\"timestamp\":");
        push_json_int(out, m.created_at);
        out.push_str("}}");
    })
}

/// The delivery frame of a stored message, exactly as sessions and history return it:
/// `{"type":…,"id":…,"payload":…,"meta":{…}}`.
///
/// Written piece by piece ([`in_scratch`]). The payload goes in as stored,
/// without parsing it again: the `payload` column is only ever written from a payload that
/// was parsed as JSON when it arrived.
pub fn delivery_frame(m: &StoredMessage) -> ByteString {
    in_scratch(|out| {
        out.push_str("{\"type\":");
        push_json_str(out, &m.kind);
        out.push_str(",\"id\":");
        push_json_id(out, &m.id);
        out.push_str(",\"payload\":");
        if m.payload.is_empty() {
            out.push_str("null");
        } else {
            out.push_str(&m.payload);
        }
        out.push_str(",\"meta\":{\"timestamp\":");
        push_json_int(out, m.created_at);
        out.push_str(",\"sender_id\":");
        push_json_str(out, &m.sender_id);
        out.push_str(",\"target_id\":");
        push_json_str(out, &m.target_id);
        if let Some(client_id) = &m.client_id {
            out.push_str(",\"client_id\":");
            push_json_str(out, client_id);
        }
        out.push_str(",\"channel\":");
        push_json_str(out, &m.channel);
        out.push_str(",\"seq\":");
        push_json_int(out, m.seq);
        out.push_str("}}");
    })
}

/// A scratch buffer kept beyond this is released after use (a frame of a large payload).
const SCRATCH_KEEP: usize = 64 * 1024;

/// Builds a frame in this thread's scratch buffer, then copies it out at its exact size.
///
/// A `Bytes` made from a `String` with room to spare gets a separately allocated shared
/// header, which costs an allocation and makes every drop an atomic update; one copied from
/// a slice of exact size has neither, and copying a few hundred bytes costs less.
fn in_scratch(build: impl FnOnce(&mut String)) -> ByteString {
    thread_local! {
        static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
    }
    SCRATCH.with_borrow_mut(|out| {
        out.clear();
        build(out);
        let frame = ByteString::from(out.as_str());
        if out.capacity() > SCRATCH_KEEP {
            *out = String::new();
        }
        frame
    })
}

/// Appends `s` as a JSON string. Ids, names and channels almost never need escaping, so
/// they are copied as they are; anything else goes through serde_json, whose general
/// escaper costs more than the copy for the handful of short strings of each message.
fn push_json_str(out: &mut String, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Serialising a `&str` cannot fail; keep the frame valid JSON regardless.
        out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "null".into()));
    }
}

/// Appends a message id as a JSON string. An id is a UUID's hex digits and hyphens
/// ([`MessageId`]), so it never needs escaping and is not checked.
fn push_json_id(out: &mut String, id: &MessageId) {
    out.reserve(MessageId::LEN + 2);
    out.push('"');
    out.push_str(id.as_str());
    out.push('"');
}

/// Whether `s` holds a byte JSON must escape: a control character, `"` or `\\`.
///
/// Eight bytes at a time, since this check is a large part of writing a frame: with
/// `ones` = 0x0101…01, `(x - ones * n) & !x & 0x8080…80` is non-zero exactly when some byte
/// of `x` is below `n`, and a byte equal to `c` is a zero byte of `x ^ ones * c`. What does
/// not fill a word is read as overlapping pieces (the last eight bytes; or the first and
/// last four, or two) padded with spaces: most ids and names are shorter than a word.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte that needs no escape, to fill a word past a short string.
    const SPACES: u64 = ONES * b' ' as u64;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * n as u64) & !x & HIGH;
    let escapes = |x: u64| {
        below(x, 0x20) | below(x ^ (ONES * b'"' as u64), 1) | below(x ^ (ONES * b'\\' as u64), 1)
    };
    let found = if let Some(last) = s.last_chunk::<8>() {
        let (words, _) = s.as_chunks::<8>();
        words
            .iter()
            .fold(escapes(u64::from_le_bytes(*last)), |f, w| {
                f | escapes(u64::from_le_bytes(*w))
            })
    } else if let (Some(a), Some(b)) = (s.first_chunk::<4>(), s.last_chunk::<4>()) {
        let (a, b) = (u32::from_le_bytes(*a), u32::from_le_bytes(*b));
        escapes(u64::from(a) | u64::from(b) << 32)
    } else if let (Some(a), Some(b)) = (s.first_chunk::<2>(), s.last_chunk::<2>()) {
        let (a, b) = (u16::from_le_bytes(*a), u16::from_le_bytes(*b));
        escapes(u64::from(a) | u64::from(b) << 16 | SPACES << 32)
    } else if let Some(&b) = s.first() {
        escapes(u64::from(b) | SPACES << 8)
    } else {
        0
    };
    found != 0
}

/// Appends `n` in decimal.
fn push_json_int(out: &mut String, n: i64) {
    out.push_str(itoa::Buffer::new().format(n));
}

#[cfg(test)]
mod tests;
