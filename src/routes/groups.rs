//! Groups: create, read, add and remove members (admin or the group's owner).

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::{now_ms, valid_id, Channel, MAX_ID_LEN};
use switchboard_actors::router::MembersChanged;
use switchboard_actors::store::models::GroupRow;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::routes::body::JsonBody;
use crate::routes::caller::{Caller, Principal};
use crate::state::AppState;

/// Most members a group may be created with in one request.
const MAX_MEMBERS: usize = 10_000;

/// Largest `POST /api/groups` body: [`MAX_MEMBERS`] ids of the longest length, quoted and
/// comma-separated, and room for the rest.
pub const CREATE_BODY_LIMIT: usize = MAX_MEMBERS * (MAX_ID_LEN + 3) + 64 * 1024;

/// `POST /api/groups` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// The group's id (default: a new UUID).
    #[serde(default)]
    id: Option<String>,
    /// Its name, 1 to 200 characters.
    name: String,
    /// Its first members besides the caller (at most 10,000).
    #[serde(default)]
    members: Vec<String>,
}

/// A group as the API returns it.
#[derive(Serialize, ToSchema)]
pub struct GroupView {
    /// Group id (its channel is `group:<id>`).
    id: String,
    /// Its name.
    name: String,
    /// Who made it.
    owner_id: String,
    /// Its members, sorted.
    members: Vec<String>,
}

fn view(g: GroupRow, members: Vec<String>) -> GroupView {
    GroupView {
        id: g.id,
        name: g.name,
        owner_id: g.owner_id,
        members,
    }
}

async fn load(app: &AppState, id: &str) -> Result<(GroupRow, Vec<String>), ApiError> {
    app.tree
        .reads
        .group(id.to_owned())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no group `{id}`")))
}

fn members_changed(app: &AppState, id: &str) {
    app.tree.router.do_send(MembersChanged {
        channel: Channel::group(id),
    });
}

/// Creates a group owned by the caller (who is always a member).
#[utoipa::path(post, path = "/api/groups", tag = "groups",
    summary = "Create a group owned by the caller",
    request_body = NewGroup,
    responses(
        (status = 201, description = "The group", body = GroupView),
        (status = 400, description = "Bad id, name or members", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 409, description = "The id exists", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    caller: Caller,
    app: web::Data<AppState>,
    body: JsonBody<NewGroup>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let id =
        b.id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if !valid_id(&id) {
        return Err(ApiError::BadRequest("`id` is not a valid id".into()));
    }
    if b.name.trim().is_empty() || b.name.len() > 200 {
        return Err(ApiError::BadRequest(
            "`name` must be 1 to 200 characters".into(),
        ));
    }
    if b.members.len() > MAX_MEMBERS || b.members.iter().any(|m| !valid_id(m)) {
        return Err(ApiError::BadRequest(format!(
            "`members` must be at most {MAX_MEMBERS} valid user ids"
        )));
    }
    let mut members = b.members;
    members.push(caller.user.to_string());
    members.sort();
    members.dedup();
    let row = GroupRow {
        id: id.clone(),
        name: b.name,
        owner_id: caller.user.to_string(),
        created_at: now_ms(),
    };
    let created = app
        .tree
        .writes
        .create_group(row.clone(), members.clone())
        .await?;
    if !created {
        return Err(ApiError::Conflict(format!("group `{id}` already exists")));
    }
    members_changed(&app, &id);
    Ok(HttpResponse::Created().json(view(row, members)))
}

/// Reads a group (its members, its owner and admins).
#[utoipa::path(get, path = "/api/groups/{id}", tag = "groups",
    summary = "A group and its members",
    params(("id" = String, Path, description = "Group id")),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not a member", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn get(
    caller: Principal,
    app: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (g, members) = load(&app, &path).await?;
    let me = caller.user.as_str();
    if !caller.reads_all() && g.owner_id != me && !members.iter().any(|m| m == me) {
        return Err(ApiError::Forbidden("not a member of this group".into()));
    }
    Ok(HttpResponse::Ok().json(view(g, members)))
}

async fn change_member(
    caller: Principal,
    app: web::Data<AppState>,
    path: web::Path<(String, String)>,
    add: bool,
) -> Result<HttpResponse, ApiError> {
    let (id, user) = path.into_inner();
    if !valid_id(&user) {
        return Err(ApiError::BadRequest("not a valid user id".into()));
    }
    let (g, _) = load(&app, &id).await?;
    if !caller.is_admin() && g.owner_id != caller.user.as_str() {
        return Err(ApiError::Forbidden(
            "only the group's owner or an admin may change members".into(),
        ));
    }
    let writes = &app.tree.writes;
    if add {
        writes.add_member(id.clone(), user).await?;
    } else {
        writes.remove_member(id.clone(), user).await?;
    }
    members_changed(&app, &id);
    let (g, members) = load(&app, &id).await?;
    Ok(HttpResponse::Ok().json(view(g, members)))
}

/// `PUT /api/groups/{id}/members/{user_id}`
#[utoipa::path(put, path = "/api/groups/{id}/members/{user_id}", tag = "groups",
    summary = "Add a member",
    params(("id" = String, Path, description = "Group id"), ("user_id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not the owner or an admin", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn add_member(
    caller: Principal,
    app: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    change_member(caller, app, path, true).await
}

/// `DELETE /api/groups/{id}/members/{user_id}`
#[utoipa::path(delete, path = "/api/groups/{id}/members/{user_id}", tag = "groups",
    summary = "Remove a member",
    params(("id" = String, Path, description = "Group id"), ("user_id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The group", body = GroupView),
        (status = 400, description = "Bad user id", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not the owner or an admin", body = ErrorBody),
        (status = 404, description = "No such group", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn remove_member(
    caller: Principal,
    app: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    change_member(caller, app, path, false).await
}
