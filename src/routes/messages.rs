//! History: `GET /api/messages/user/{user_id}` and `GET /api/messages/group/{group_id}`;
//! read cursors: `POST /api/messages/read`.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::channel::Receipt;
use switchboard_actors::ids::{valid_id, Channel, UserId};
use switchboard_actors::protocol::delivery_frame;
use switchboard_actors::router::AskChannel;
use switchboard_actors::seq::Seq;
use switchboard_actors::store::Page;
use switchboard_actors::store::StoredMessage;
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::routes::caller::{Caller, Principal};
use crate::state::AppState;

/// Largest page.
const MAX_LIMIT: i64 = 200;
/// Page size when none is asked for.
const DEFAULT_LIMIT: i64 = 50;

/// Paging query (bounds exclusive).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Only messages below this seq.
    before_seq: Option<i64>,
    /// Only messages above this seq.
    after_seq: Option<i64>,
    /// Most messages (default 50, at most 200).
    limit: Option<i64>,
}

impl PageQuery {
    fn page(&self) -> Result<Page, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit < 1 {
            return Err(ApiError::BadRequest("`limit` must be at least 1".into()));
        }
        Ok(Page {
            after_seq: self.after_seq,
            before_seq: self.before_seq,
            limit: limit.min(MAX_LIMIT),
        })
    }
}

/// A message as history, search and `undelivered` list it: the delivery frame a connection
/// gets, as `switchboard_actors::protocol::delivery_frame` writes it (by hand, from the
/// stored bytes; tests/api/openapi.rs holds the two together).
#[derive(Serialize, ToSchema)]
pub struct DeliveryFrame {
    /// The message's type.
    #[serde(rename = "type")]
    kind: String,
    /// Message id (UUID v7).
    id: String,
    /// As sent: any JSON.
    payload: serde_json::Value,
    /// Where and when.
    meta: DeliveryMeta,
}

/// A delivery frame's `meta`.
#[derive(Serialize, ToSchema)]
pub struct DeliveryMeta {
    /// When it was stored, ms since epoch.
    timestamp: i64,
    /// Who sent it.
    sender_id: String,
    /// The user or group it went to.
    target_id: String,
    /// The sender's device, when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    /// Its channel.
    channel: String,
    /// Its seq in the channel.
    seq: i64,
}

/// A history page.
#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    /// Delivery frames, in seq order.
    messages: Vec<DeliveryFrame>,
    /// More messages lie beyond the page.
    has_more: bool,
}

/// `page` as JSON with `frames` written into its first field, an array `page` holds
/// empty: `{"messages":[],…}` becomes `{"messages":[f1,f2],…}`. The page's type names the
/// fields (and describes them in the OpenAPI document); the frames go in as their bytes.
pub(crate) fn frames_body<F: AsRef<str>>(
    page: &impl Serialize,
    frames: impl ExactSizeIterator<Item = F>,
) -> Result<String, ApiError> {
    let rest = serde_json::to_string(page)
        .map_err(|e| ApiError::Internal(format!("writing a page: {e}")))?;
    // The first field is `"<name>":[]`: its name has no quote, and nothing precedes it.
    let open = rest
        .find(":[]")
        .filter(|at| !rest[..*at].contains(','))
        .ok_or_else(|| ApiError::Internal("a page's first field is not an empty list".into()))?
        + 2;
    let mut body = String::with_capacity(rest.len() + frames.len() * 256);
    body.push_str(&rest[..open]);
    for (i, f) in frames.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(f.as_ref());
    }
    body.push_str(&rest[open..]);
    Ok(body)
}

/// [`frames_body`] as a 200 JSON answer.
pub(crate) fn messages_body<F: AsRef<str>>(
    page: &impl Serialize,
    frames: impl ExactSizeIterator<Item = F>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(frames_body(page, frames)?))
}

/// A history page: `{"messages": [delivery frames], "has_more": bool}`.
fn page_body(rows: &[StoredMessage], has_more: bool) -> Result<HttpResponse, ApiError> {
    let page = HistoryPage {
        messages: Vec::new(),
        has_more,
    };
    messages_body(&page, rows.iter().map(delivery_frame))
}

async fn read_page(
    app: &AppState,
    channel: &Channel,
    page: Page,
) -> Result<HttpResponse, ApiError> {
    let name = channel.name.to_string();
    let (rows, has_more) = app.tree.reads.history(name, page).await?;
    page_body(&rows, has_more)
}

/// DM history between the caller and `user_id`.
#[utoipa::path(get, path = "/api/messages/user/{user_id}", tag = "messages",
    summary = "DM history with a user",
    params(("user_id" = String, Path, description = "The other user"), PageQuery),
    responses(
        (status = 200, description = "A page of messages", body = HistoryPage),
        (status = 400, description = "Bad user id or paging", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "An API key (this route acts as a user)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn user_history(
    caller: Caller,
    app: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let other = path.into_inner();
    if !valid_id(&other) {
        return Err(ApiError::BadRequest("not a valid user id".into()));
    }
    let channel = Channel::dm(&caller.user, &UserId::new(&other));
    read_page(&app, &channel, q.page()?).await
}

/// Group history, for members (and admins).
#[utoipa::path(get, path = "/api/messages/group/{group_id}", tag = "messages",
    summary = "Group history",
    params(("group_id" = String, Path, description = "Group id"), PageQuery),
    responses(
        (status = 200, description = "A page of messages", body = HistoryPage),
        (status = 400, description = "Bad group id or paging", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn group_history(
    caller: Principal,
    app: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let gid = path.into_inner();
    if !valid_id(&gid) {
        return Err(ApiError::BadRequest("not a valid group id".into()));
    }
    let page = q.page()?;
    let group = app.tree.reads.group(gid.clone()).await?;
    let Some((_, members)) = group else {
        return Err(ApiError::NotFound(format!("no group `{gid}`")));
    };
    if !caller.reads_all() && !members.iter().any(|m| m == caller.user.as_str()) {
        return Err(ApiError::Forbidden("not a member of this group".into()));
    }
    read_page(&app, &Channel::group(&gid), page).await
}

/// `POST /api/messages/read` body.
#[derive(Deserialize, ToSchema)]
pub struct Read {
    /// A channel the caller may read.
    channel: String,
    /// Read up to this seq.
    up_to_seq: Seq,
}

/// `POST /api/messages/read` reply: where the caller's cursor stands (it never moves back).
#[derive(Serialize, ToSchema)]
pub struct ReadCursor {
    /// The channel.
    channel: String,
    /// The caller's read cursor now.
    up_to_seq: Seq,
}

/// Moves the caller's read cursor in a channel they may read; the channel's other members
/// and the caller's connections get `read_receipt`, as for the WebSocket frame.
#[utoipa::path(post, path = "/api/messages/read", tag = "messages",
    summary = "Move the caller's read cursor",
    request_body = Read,
    responses(
        (status = 200, description = "Where the cursor stands", body = ReadCursor),
        (status = 400, description = "Bad channel or seq", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not a channel the caller may read, or an API key", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn read(
    caller: Caller,
    app: web::Data<AppState>,
    body: crate::routes::body::JsonBody<Read>,
) -> Result<HttpResponse, ApiError> {
    let Read { channel, up_to_seq } = body.into_inner();
    let parsed = Channel::parse(&channel).ok_or_else(|| {
        ApiError::BadRequest(format!("`channel` is not a valid channel: {channel:?}"))
    })?;
    let msg = Receipt {
        user: caller.user.clone(),
        origin: None,
        up_to_seq,
    };
    let up_to_seq = app
        .tree
        .router
        .send(AskChannel {
            channel: parsed,
            msg,
        })
        .await???;
    Ok(HttpResponse::Ok().json(ReadCursor { channel, up_to_seq }))
}
