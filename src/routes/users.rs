//! Presence over REST: one user's status, the statuses of the users the caller follows,
//! and the list of whom the caller follows.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::{valid_id, UserId};
use switchboard_actors::presence::{GetPresence, GetPresences, Presence};
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::routes::body::JsonBody;
use crate::routes::caller::{Caller, Principal};
use crate::state::AppState;

/// Most users one may follow.
pub const MAX_FOLLOWING: usize = 1000;

/// `PUT /api/users/me/following` body.
#[derive(Deserialize, ToSchema)]
pub struct Following {
    /// Everyone the caller follows from now on (at most 1,000).
    user_ids: Vec<String>,
}

/// `GET /api/users/following/status` reply.
#[derive(Serialize, ToSchema)]
pub struct FollowingStatus {
    /// Sorted by user id.
    users: Vec<Presence>,
}

/// The presence of one user (`offline` for a user never seen): for any user's token, and
/// for an API key with `read` (or `admin`).
#[utoipa::path(get, path = "/api/users/{user_id}/status", tag = "presence",
    summary = "One user's presence (never seen: offline)",
    params(("user_id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The presence", body = Presence),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "An API key without read or admin", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn status(
    caller: Principal,
    app: web::Data<AppState>,
    user_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if caller.claims().is_none() && !caller.reads_all() {
        return Err(ApiError::Forbidden(
            "an API key with scope `read` (or `admin`) required".into(),
        ));
    }
    let user_id = user_id.into_inner();
    if !valid_id(&user_id) {
        return Err(ApiError::BadRequest("not a valid user id".into()));
    }
    let presence = app
        .tree
        .presence
        .send(GetPresence {
            user: UserId::new(&user_id),
        })
        .await?;
    Ok(HttpResponse::Ok().json(presence))
}

/// The presence of every user the caller follows, sorted by user id.
#[utoipa::path(get, path = "/api/users/following/status", tag = "presence",
    summary = "Presence of the users the caller follows",
    responses(
        (status = 200, description = "Their presence", body = FollowingStatus),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "An API key (this route acts as a user)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn following_status(
    caller: Caller,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let follows = app.tree.reads.following(caller.user.to_string()).await?;
    let users = follows.iter().map(|u| UserId::new(u)).collect();
    let users = app.tree.presence.send(GetPresences { users }).await?;
    Ok(HttpResponse::Ok().json(FollowingStatus { users }))
}

/// Replaces the list of users the caller follows.
#[utoipa::path(put, path = "/api/users/me/following", tag = "presence",
    summary = "Set whom the caller follows",
    request_body = Following,
    responses(
        (status = 204, description = "Set"),
        (status = 400, description = "Bad ids or too many", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "An API key (this route acts as a user)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn set_following(
    caller: Caller,
    app: web::Data<AppState>,
    body: JsonBody<Following>,
) -> Result<HttpResponse, ApiError> {
    let mut ids = body.into_inner().user_ids;
    if let Some(bad) = ids.iter().find(|u| !valid_id(u)) {
        return Err(ApiError::BadRequest(format!(
            "`user_ids` holds an invalid user id: {bad:?}"
        )));
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > MAX_FOLLOWING {
        return Err(ApiError::BadRequest(format!(
            "one may follow at most {MAX_FOLLOWING} users"
        )));
    }
    app.tree
        .writes
        .set_following(caller.user.to_string(), ids)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
