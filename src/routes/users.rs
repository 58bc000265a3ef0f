//! Presence over REST: one user's status, the statuses of the users the caller follows,
//! and the list of whom the caller follows.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::{valid_id, UserId};
use switchboard_actors::presence::{GetPresence, GetPresences, Presence};

use crate::error::ApiError;
use crate::routes::body::JsonBody;
use crate::routes::caller::{Caller, Principal};
use crate::state::AppState;

/// Most users one may follow.
pub const MAX_FOLLOWING: usize = 1000;

/// `PUT /api/users/me/following` body.
#[derive(Deserialize)]
pub struct Following {
    user_ids: Vec<String>,
}

/// `GET /api/users/following/status` reply.
#[derive(Serialize)]
pub struct FollowingStatus {
    users: Vec<Presence>,
}

/// The presence of one user (`offline` for a user never seen): for any user's token, and
/// for an API key with `read` (or `admin`).
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
