//! `/api/admin/connections`: the connections of this broker, listed and closed by admins.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use switchboard_actors::ids::{valid_id, ConnId, UserId};
use switchboard_actors::router::{CloseConnection, ListConnections};

use crate::error::ApiError;
use crate::routes::caller::Principal;
use crate::session::close;
use crate::state::AppState;

/// Most connections one listing returns.
const MAX_LIST: usize = 1000;

/// Query of the listing.
#[derive(Deserialize)]
pub struct ListQuery {
    user_id: Option<String>,
    limit: Option<usize>,
}

/// `{connections: [{conn_id, user_id, client_id, device, transport, connected_at}], total}`,
/// oldest first; `?user_id=` keeps one user's, `?limit=` (at most 1000, default 100).
pub async fn list(
    caller: Principal,
    app: web::Data<AppState>,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    if !caller.reads_all() {
        return Err(ApiError::Forbidden(
            "admin role (or an API key with scope `read`) required".into(),
        ));
    }
    let q = q.into_inner();
    if q.user_id.as_deref().is_some_and(|u| !valid_id(u)) {
        return Err(ApiError::BadRequest("`user_id` is not a valid id".into()));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be from 1 to {MAX_LIST}"
        )));
    }
    let (list, total) = app
        .tree
        .router
        .send(ListConnections {
            user: q.user_id.as_deref().map(UserId::new),
            limit,
        })
        .await
        .map_err(|_| ApiError::Unavailable("router unavailable; retry".into()))?;
    Ok(HttpResponse::Ok().json(json!({ "connections": list, "total": total })))
}

/// Closes a connection (WebSocket close 1008, "disconnected by an administrator"; an SSE
/// stream or a poll ends): 200 with what it was, 404 if it is not on this broker.
pub async fn close(
    caller: Principal,
    app: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let text = path.into_inner();
    let conn = text
        .strip_prefix('c')
        .and_then(|n| n.parse::<u64>().ok())
        .map(ConnId)
        .ok_or_else(|| ApiError::NotFound(format!("no connection `{text}`")))?;
    let closed = app
        .tree
        .router
        .send(CloseConnection {
            conn,
            code: close::POLICY,
            reason: "disconnected by an administrator",
        })
        .await
        .map_err(|_| ApiError::Unavailable("router unavailable; retry".into()))?;
    match closed {
        Some(info) => Ok(HttpResponse::Ok().json(info)),
        None => Err(ApiError::NotFound(format!(
            "no connection `{text}` on this broker"
        ))),
    }
}
