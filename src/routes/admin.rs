//! Admin API: server-side publish and fault drills.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use switchboard_actors::channel::{ChannelError, Publish, Reply, Sender};
use switchboard_actors::ids::{Channel, ChannelKind};
use switchboard_actors::protocol::Ack;
use switchboard_actors::router::TellChannel;
use switchboard_actors::store::NewMessage;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::routes::body::JsonBody;
use crate::routes::caller::Principal;
use crate::state::AppState;

/// Frame types a publish may not use: they mean something else to clients.
const RESERVED_TYPES: [&str; 16] = [
    "auth",
    "ack",
    "error",
    "connected",
    "heartbeat",
    "subscribed",
    "unsubscribed",
    "sync_complete",
    "state_sync_result",
    "state_changed",
    "response",
    "connection_event",
    "typing_indicator",
    "read_receipt",
    "status_update",
    "sync",
];

/// `POST /api/admin/publish` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Any channel: `user:…`, `dm:…`, `group:…`, `broadcast:…`.
    channel: String,
    /// The message's type (default `notification`; not a reserved frame type).
    #[serde(rename = "type", default = "notification")]
    kind: String,
    /// Any JSON.
    #[schema(value_type = serde_json::Value)]
    payload: Box<RawValue>,
    /// Optional idempotency key: a retry with the same id returns the first ack.
    #[serde(default)]
    id: Option<String>,
}

fn notification() -> String {
    "notification".into()
}

/// Stores and delivers a message on any channel; replies with its ack payload.
#[utoipa::path(post, path = "/api/admin/publish", tag = "admin",
    summary = "Store and deliver a message on any channel",
    request_body = PublishRequest,
    responses(
        (status = 200, description = "The ack payload", body = Ack),
        (status = 400, description = "Bad channel, type or id", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not allowed to publish", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn publish(
    caller: Principal,
    app: web::Data<AppState>,
    body: JsonBody<PublishRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require_publish()?;
    let r = body.into_inner();
    let channel = Channel::parse(&r.channel).ok_or_else(|| {
        ApiError::BadRequest(format!("`{}` is not a valid channel name", r.channel))
    })?;
    let kind_ok = !r.kind.is_empty()
        && r.kind.len() <= 64
        && r.kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit());
    if !kind_ok || RESERVED_TYPES.contains(&r.kind.as_str()) {
        return Err(ApiError::BadRequest(format!(
            "`{}` cannot be used as a message type",
            r.kind
        )));
    }
    if r.id
        .as_ref()
        .is_some_and(|id| id.is_empty() || id.len() > 128)
    {
        return Err(ApiError::BadRequest(
            "`id` must be 1 to 128 characters".into(),
        ));
    }
    let target_id = match &channel.kind {
        ChannelKind::User(u) => u.0.clone(),
        _ => channel.name.clone(),
    };
    let msg = NewMessage {
        channel: channel.name.clone(),
        kind: Arc::from(r.kind),
        sender_id: caller.user.0.clone(),
        target_id,
        client_id: None,
        client_msg_id: r.id.clone(),
        payload: r.payload.get().to_owned(),
    };
    let (reply, answer) = Reply::caller(r.id);
    app.tree
        .router
        .send(TellChannel {
            channel,
            msg: Publish {
                msg,
                sender: Sender::Privileged,
                reply,
            },
        })
        .await?;
    let ack = answer
        .await
        .unwrap_or(Err(ChannelError::Unavailable))
        .map_err(ApiError::from)?;
    Ok(HttpResponse::Ok().json(ack))
}

/// `POST /api/admin/debug/crash/{actor}`: makes a supervised actor fail (fault drills).
/// Only with `debug.fault_injection = true`.
#[utoipa::path(post, path = "/api/admin/debug/crash/{actor}", tag = "admin",
    summary = "Fault drill: fail an actor (debug.fault_injection only)",
    params(("actor" = String, Path, description = "Actor name")),
    responses(
        (status = 202, description = "Crashed", body = Crashed),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "Off or unknown actor", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn crash(
    caller: Principal,
    app: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !app.settings.debug.fault_injection {
        return Err(ApiError::NotFound("fault injection is disabled".into()));
    }
    caller.require_admin()?;
    let name = path.into_inner();
    if !app.tree.crash(&name, "fault injection") {
        return Err(ApiError::NotFound(format!("no supervised actor `{name}`")));
    }
    Ok(HttpResponse::Accepted().json(Crashed { crashed: name }))
}

/// `POST /api/admin/debug/crash/{actor}` reply.
#[derive(Serialize, ToSchema)]
pub struct Crashed {
    /// The actor made to fail.
    crashed: String,
}
