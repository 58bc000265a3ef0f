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

use crate::error::ApiError;
use crate::routes::caller::{Caller, Principal};
use crate::state::AppState;

/// Largest page.
const MAX_LIMIT: i64 = 200;
/// Page size when none is asked for.
const DEFAULT_LIMIT: i64 = 50;

/// Paging query (bounds exclusive).
#[derive(Deserialize)]
pub struct PageQuery {
    before_seq: Option<i64>,
    after_seq: Option<i64>,
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

/// `{"messages": [frames], "has_more": bool, …}`, written from the frames' bytes; `extra`
/// holds further fields as (name, JSON text).
pub(crate) fn messages_body<F: AsRef<str>>(
    frames: impl ExactSizeIterator<Item = F>,
    has_more: bool,
    extra: &[(&str, String)],
) -> HttpResponse {
    let mut body = String::with_capacity(64 + frames.len() * 256);
    body.push_str("{\"messages\":[");
    for (i, f) in frames.enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(f.as_ref());
    }
    body.push_str("],\"has_more\":");
    body.push_str(if has_more { "true" } else { "false" });
    for (name, json) in extra {
        body.push_str(",\"");
        body.push_str(name);
        body.push_str("\":");
        body.push_str(json);
    }
    body.push('}');
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body)
}

/// A history page: `{"messages": [delivery frames], "has_more": bool}`.
fn page_body(rows: &[StoredMessage], has_more: bool) -> HttpResponse {
    messages_body(rows.iter().map(delivery_frame), has_more, &[])
}

async fn read_page(
    app: &AppState,
    channel: &Channel,
    page: Page,
) -> Result<HttpResponse, ApiError> {
    let name = channel.name.to_string();
    let (rows, has_more) = app.tree.reads.history(name, page).await?;
    Ok(page_body(&rows, has_more))
}

/// DM history between the caller and `user_id`.
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
#[derive(Deserialize)]
pub struct Read {
    channel: String,
    up_to_seq: Seq,
}

/// `POST /api/messages/read` reply: where the caller's cursor stands (it never moves back).
#[derive(Serialize)]
pub struct ReadCursor {
    channel: String,
    up_to_seq: Seq,
}

/// Moves the caller's read cursor in a channel they may read; the channel's other members
/// and the caller's connections get `read_receipt`, as for the WebSocket frame.
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
