//! The fallback transports (contract section 2): `GET /sse` (Server-Sent Events),
//! `GET /poll` (long polling) and `POST /api/messages` (a client frame over HTTP). Each
//! admits its client as the WebSocket upgrade does (`Origin`, token, `client_id`,
//! `device`, the node's connection limit) and hands it to a session over its wire. An SSE
//! stream or a poll holds one of the user's connection places; a frame sent over HTTP is
//! one request, not a connection, and holds none: it only draws from the user's frame
//! bucket.

use std::time::Duration;

use actix_web::http::header::{self, ContentType, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::{now_ms, valid_id, Channel, ChannelKind, UserId};
use switchboard_actors::protocol::{parse_client_frame, ClientFrame, ErrorCode, ErrorPayload};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{bearer, Claims};
use crate::error::{ApiError, ErrorBody};
use crate::routes::caller::API_KEY_HEADER;
use crate::routes::messages::frames_body;
use crate::routes::ws::{check_origin, client_identity, gate_error};
use crate::session::cursor::{ResumeCursor, MAX_CHANNELS};
use crate::session::http::HttpAnswer;
use crate::session::{self, Admission};
use crate::state::AppState;

/// Longest `timeout_s` of a poll.
const MAX_POLL_TIMEOUT_S: u64 = 120;
/// `timeout_s` when none is given.
const DEFAULT_POLL_TIMEOUT_S: u64 = 25;

/// Query of `GET /sse` and `GET /poll`.
#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Access token (or `Authorization: Bearer`).
    token: Option<String>,
    /// Device id kept across reconnects (a resume cursor's device otherwise).
    client_id: Option<String>,
    /// `web`, `desktop`, `mobile`, `extension`, `cli` or `server`.
    device: Option<String>,
    /// Broadcast channels to subscribe to, comma-separated.
    subscribe: Option<String>,
    /// `GET /poll`: the previous answer's cursor.
    cursor: Option<String>,
    /// `GET /sse`, for EventSource polyfills that cannot set headers: the `Last-Event-ID`.
    last_event_id: Option<String>,
    /// `GET /poll`: the longest wait, seconds (at most 120, default 25).
    timeout_s: Option<u64>,
}

/// `GET /poll` reply.
#[derive(Serialize, ToSchema)]
pub struct PollPage {
    /// Server frames, in the order they came.
    frames: Vec<serde_json::Value>,
    /// Where the next poll resumes.
    cursor: String,
    /// The answer stopped at its cap (half of `limits.outbound_queue` frames): more may
    /// wait, so poll again at once.
    has_more: bool,
}

/// What an admitted client takes of its user's allowance.
#[derive(Clone, Copy)]
enum Takes {
    /// One of the user's `limits.max_connections_per_user` places (an SSE stream, a poll).
    Place,
    /// Only the user's frame bucket (a frame sent over HTTP).
    Bucket,
}

/// Admits a client of a fallback transport: authenticated by its token (no `auth` frame
/// here), on device `client_id` (the cursor's, the query's, or a new one).
fn admit(
    app: &AppState,
    req: &HttpRequest,
    token: Option<&str>,
    client_id: Option<&str>,
    device: Option<&str>,
    takes: Takes,
) -> Result<Admission, ApiError> {
    let token = bearer(req.headers()).or(token).ok_or_else(|| {
        ApiError::Unauthorized("missing token (`Authorization: Bearer` or `?token=`)".into())
    })?;
    let claims = app.auth.verify(token)?;
    admit_claims(app, claims, client_id, device, takes)
}

/// Admits a client authenticated as `claims`.
fn admit_claims(
    app: &AppState,
    claims: Claims,
    client_id: Option<&str>,
    device: Option<&str>,
    takes: Takes,
) -> Result<Admission, ApiError> {
    let (client_id, device) = client_identity(client_id, device)?;
    let node = app.gate.admit_node().map_err(gate_error)?;
    let user = UserId::new(&claims.sub);
    let ticket = match takes {
        Takes::Place => app.gate.admit_user(&user),
        Takes::Bucket => app.gate.admit_sender(&user),
    }
    .map_err(gate_error)?;
    Ok(Admission {
        client_id,
        device,
        auth: Some((claims, ticket)),
        pending: None,
        node,
    })
}

/// The resume cursor a request names (the poll's `cursor`, or SSE's `Last-Event-ID`).
fn resume_cursor(text: Option<&str>) -> Result<Option<ResumeCursor>, ApiError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => ResumeCursor::parse(t)
            .map(Some)
            .map_err(|e| ApiError::BadRequest(e.to_string())),
    }
}

/// The device of a request: the cursor's, which a `client_id` in the query must match.
fn device_of<'a>(
    cursor: Option<&'a ResumeCursor>,
    query: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    match (cursor.map(|c| &*c.client_id), query) {
        (Some(c), Some(q)) if c != q => Err(ApiError::BadRequest(
            "`client_id` differs from the cursor's device".into(),
        )),
        (Some(c), _) => Ok(Some(c)),
        (None, q) => Ok(q),
    }
}

/// `?subscribe=a,b`: channels to join for the stream's life.
fn subscriptions(list: Option<&str>, max: usize) -> Result<Vec<Channel>, ApiError> {
    let mut out = Vec::new();
    for name in list.unwrap_or("").split(',').filter(|n| !n.is_empty()) {
        let channel = Channel::parse(name)
            .ok_or_else(|| ApiError::BadRequest(format!("`{name}` is not a channel")))?;
        if !matches!(channel.kind, ChannelKind::Broadcast(_)) {
            return Err(ApiError::BadRequest(format!(
                "`{name}`: only broadcast channels are subscribed to; the user's own \
                 channels come without asking"
            )));
        }
        out.push(channel);
    }
    if out.len() > max.min(MAX_CHANNELS) {
        return Err(ApiError::BadRequest(
            "more channels than one connection may subscribe to".into(),
        ));
    }
    Ok(out)
}

/// Admits an SSE or poll client resuming from `cursor`: its admission, its cursor and the
/// broadcast channels it subscribes to.
fn admit_resumable(
    app: &AppState,
    req: &HttpRequest,
    q: &StreamQuery,
    cursor: Option<&str>,
) -> Result<(Admission, Option<ResumeCursor>, Vec<Channel>), ApiError> {
    let resume = resume_cursor(cursor)?;
    let subscribe = subscriptions(
        q.subscribe.as_deref(),
        app.settings.limits.max_subscriptions,
    )?;
    let client_id = device_of(resume.as_ref(), q.client_id.as_deref())?;
    let adm = admit(
        app,
        req,
        q.token.as_deref(),
        client_id,
        q.device.as_deref(),
        Takes::Place,
    )?;
    Ok((adm, resume, subscribe))
}

/// `GET /sse`: a stream of server frames as Server-Sent Events.
#[utoipa::path(get, path = "/sse", tag = "transports",
    summary = "Server frames as Server-Sent Events; Last-Event-ID resumes",
    params(StreamQuery),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad cursor, device or subscription", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Origin not allowed", body = ErrorBody),
        (status = 429, description = "Rate or connection limit", body = ErrorBody),
        (status = 503, description = "Node full", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn sse(
    app: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let last_id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| q.last_event_id.clone());
    check_origin(&app, req.headers().get(header::ORIGIN))?;
    let peer = req.peer_addr().map(|a| a.ip());
    if let Some(peer) = peer {
        let forwarded = req.headers().get_all(header::X_FORWARDED_FOR);
        let client = app
            .gate
            .client_address(peer, forwarded.filter_map(|v| v.to_str().ok()));
        app.gate.admit_upgrade(client).map_err(gate_error)?;
    }
    let (adm, resume, subscribe) = admit_resumable(&app, &req, &q, last_id.as_deref())?;
    let body = session::sse::start(app, adm, session::sse::SseStart { resume, subscribe });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header(("X-Accel-Buffering", HeaderValue::from_static("no")))
        .streaming(body))
}

/// `GET /poll`: `{"frames": […], "cursor": "…"}` once frames wait or `timeout_s` passes.
/// A browser page may poll only from `server.allowed_origins`, as it may open a stream.
#[utoipa::path(get, path = "/poll", tag = "transports",
    summary = "Long polling: frames and the next cursor",
    params(StreamQuery),
    responses(
        (status = 200, description = "Frames (maybe none) and the next cursor", body = PollPage),
        (status = 400, description = "Bad cursor, device, subscription or timeout", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 429, description = "Rate or connection limit", body = ErrorBody),
        (status = 503, description = "Node full", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn poll(
    app: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&app, req.headers().get(header::ORIGIN))?;
    let q = q.into_inner();
    let timeout_s = q.timeout_s.unwrap_or(DEFAULT_POLL_TIMEOUT_S);
    if timeout_s > MAX_POLL_TIMEOUT_S {
        return Err(ApiError::BadRequest(format!(
            "`timeout_s` is at most {MAX_POLL_TIMEOUT_S}"
        )));
    }
    let (adm, resume, subscribe) = admit_resumable(&app, &req, &q, q.cursor.as_deref())?;
    let start = session::poll::PollStart {
        resume,
        subscribe,
        timeout: Duration::from_secs(timeout_s),
    };
    let answer = session::poll::start(app, adm, start)
        .await
        .map_err(|_| ApiError::Unavailable("the poll ended without an answer; retry".into()))?;
    let page = PollPage {
        frames: Vec::new(),
        cursor: answer.cursor,
        has_more: answer.has_more,
    };
    let body = frames_body(&page, answer.frames.iter())?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(body))
}

/// Query of `POST /api/messages`.
#[derive(Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SendQuery {
    /// Device id.
    client_id: Option<String>,
    /// With an API key: the user the frame is sent as.
    user_id: Option<String>,
}

/// How long the identity an API key sends with lasts: longer than any answer takes.
const KEY_SEND_TTL_S: u64 = 300;

/// Admits a frame sent with an API key (scope `publish`) as user `q.user_id`.
async fn admit_key(
    app: &AppState,
    key: &HeaderValue,
    q: &SendQuery,
) -> Result<Admission, ApiError> {
    let key = key
        .to_str()
        .map_err(|_| ApiError::Unauthorized("invalid API key".into()))?;
    let holder = app.api_keys.check(&app.tree.reads, key.trim()).await?;
    if !holder.scopes.publish() {
        return Err(ApiError::Forbidden(
            "sending as a user needs an API key with scope `publish`".into(),
        ));
    }
    let user = q.user_id.as_deref().ok_or_else(|| {
        ApiError::BadRequest("an API key sends as a user: give `?user_id=`".into())
    })?;
    if !valid_id(user) {
        return Err(ApiError::BadRequest("`user_id` is not a valid id".into()));
    }
    let now = (now_ms() / 1000) as u64;
    let claims = Claims {
        sub: user.to_owned(),
        exp: now + KEY_SEND_TTL_S,
        iat: Some(now),
        nbf: None,
        jti: None,
        roles: Vec::new(),
        device: Some("server".into()),
        typ: None,
    };
    admit_claims(app, claims, q.client_id.as_deref(), None, Takes::Bucket)
}

/// `POST /api/messages`: the body is a client frame; the answer is the frame a WebSocket
/// would have got (`ack`, `error`, `state_sync_result`, `response`, `heartbeat`), or 204
/// for a frame with no answer. An `error` comes with the HTTP status of its code.
///
/// Its `Origin` is checked as the other transports' are: a browser page may send only from
/// `server.allowed_origins`, whatever the CORS preflight would have said.
#[utoipa::path(post, path = "/api/messages", tag = "messages",
    summary = "Send any client frame over HTTP; the answer is its ack or error frame",
    params(SendQuery),
    request_body(content = serde_json::Value, description = "A client frame (docs/PROTOCOL.md)"),
    responses(
        (status = 200, description = "The answer frame", body = serde_json::Value),
        (status = 204, description = "Accepted; no answer frame"),
        (status = 400, description = "Bad frame (an error frame)", body = serde_json::Value),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Forbidden (an error frame, or a key without `publish`)", body = serde_json::Value),
        (status = 413, description = "Over the frame size limit", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn send(
    app: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<SendQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    check_origin(&app, req.headers().get(header::ORIGIN))?;
    if body.len() > app.settings.limits.max_frame_bytes {
        return Err(ApiError::TooLarge(format!(
            "a frame is at most {} bytes",
            app.settings.limits.max_frame_bytes
        )));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8".into()))?
        .to_owned();
    // Frames that only make sense on a connection are refused before anything runs.
    match parse_client_frame(&text, app.settings.limits.max_json_depth) {
        Ok(f) => {
            if let Some(why) = needs_a_connection(&f.frame) {
                let frame = switchboard_actors::protocol::error_frame(
                    ErrorCode::BadRequest,
                    why,
                    f.id.as_deref(),
                );
                return Ok(frame_response(frame.as_ref()));
            }
        }
        Err(e) => {
            let frame =
                switchboard_actors::protocol::error_frame(e.code(), &e.to_string(), e.ref_id());
            return Ok(frame_response(frame.as_ref()));
        }
    }
    let q = q.into_inner();
    let adm = match req.headers().get(API_KEY_HEADER) {
        Some(key) => admit_key(&app, key, &q).await?,
        None if q.user_id.is_some() => {
            return Err(ApiError::BadRequest(
                "`user_id` is for API keys: a token sends as its own user".into(),
            ))
        }
        None => admit(
            &app,
            &req,
            None,
            q.client_id.as_deref(),
            None,
            Takes::Bucket,
        )?,
    };
    match session::http::send(app, adm, text).await {
        Ok(HttpAnswer::Frame(frame)) => Ok(frame_response(&frame)),
        Ok(HttpAnswer::Settled) => Ok(HttpResponse::NoContent().finish()),
        Err(_) => Err(ApiError::Unavailable("no answer; retry".into())),
    }
}

/// Why a frame cannot be sent over HTTP, if it cannot.
fn needs_a_connection(frame: &ClientFrame) -> Option<&'static str> {
    match frame {
        ClientFrame::Auth { .. } => Some("`auth` re-authenticates a connection; over HTTP send the token in `Authorization`"),
        ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. } => Some(
            "subscriptions belong to a connection: use `GET /sse?subscribe=` or `GET /poll?subscribe=`",
        ),
        ClientFrame::Sync { .. } => Some(
            "`sync` belongs to a connection: use `GET /poll` or `GET /api/messages/undelivered`",
        ),
        ClientFrame::PresenceSubscribe { .. } => Some(
            "`presence_subscribe` belongs to a connection: use `PUT /api/users/me/following`",
        ),
        _ => None,
    }
}

/// A server frame as the HTTP answer: 200, or the status of its error code.
fn frame_response(frame: &str) -> HttpResponse {
    let status = if session::frame_type(frame) == "error" {
        serde_json::from_str::<ErrorFrame>(frame)
            .map(|f| ApiError::from_code(f.payload.code, String::new()).status_code())
            .unwrap_or(StatusCode::BAD_REQUEST)
    } else {
        StatusCode::OK
    };
    HttpResponse::build(status)
        .content_type(ContentType::json())
        .body(frame.to_owned())
}

#[derive(Deserialize)]
struct ErrorFrame {
    payload: ErrorPayload,
}
