//! `/api/admin/api-keys`: API keys made, listed and revoked by admins. The key itself is
//! in the answer that makes it, and nowhere else.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::now_ms;
use switchboard_actors::router::CloseRevoked;
use switchboard_actors::store::credentials_sql::ApiKeyRow;
use utoipa::ToSchema;

use crate::api_keys::{ApiKeys, Scopes};
use crate::error::{ApiError, ErrorBody};
use crate::routes::body::JsonBody;
use crate::routes::caller::Principal;
use crate::state::AppState;

/// `POST /api/admin/api-keys` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    /// What the operator calls it (1 to 200 characters).
    name: String,
    /// `admin`, `publish` and/or `read`.
    scopes: Vec<String>,
}

/// A key as listed: never its secret (fields in name order, as always sent).
#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    /// Creation time, ms since epoch.
    created_at: i64,
    /// Key id.
    id: String,
    /// Its name.
    name: String,
    /// Revocation time, ms since epoch; `null` while it works.
    revoked_at: Option<i64>,
    /// Its scopes.
    scopes: Vec<String>,
}

/// A key just made: its fields and the key itself, shown this once (fields in name order).
#[derive(Serialize, ToSchema)]
pub struct NewApiKey {
    /// Creation time, ms since epoch.
    created_at: i64,
    /// Key id.
    id: String,
    /// The key, for `X-Api-Key`: shown only in this answer.
    key: String,
    /// Its name.
    name: String,
    /// `null`: it works.
    revoked_at: Option<i64>,
    /// Its scopes.
    scopes: Vec<String>,
}

/// `GET /api/admin/api-keys` reply.
#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    /// Newest first, revoked ones included.
    keys: Vec<ApiKeyView>,
}

/// A key as listed.
fn view(row: &ApiKeyRow) -> ApiKeyView {
    ApiKeyView {
        created_at: row.created_at,
        id: row.id.clone(),
        name: row.name.clone(),
        revoked_at: row.revoked_at,
        scopes: scope_names(row),
    }
}

/// A key's scopes, listed.
fn scope_names(row: &ApiKeyRow) -> Vec<String> {
    row.scopes
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Makes a key: 201 with the key's fields and `key`, the secret shown this once.
#[utoipa::path(post, path = "/api/admin/api-keys", tag = "admin",
    summary = "Make an API key (shown once)",
    request_body = NewKeyRequest,
    responses(
        (status = 201, description = "The key's fields and key", body = NewApiKey),
        (status = 400, description = "Bad name or scopes", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn create(
    caller: Principal,
    app: web::Data<AppState>,
    body: JsonBody<NewKeyRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let r = body.into_inner();
    let name = r.name.trim().to_owned();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "`name` must be 1 to 200 characters without control characters".into(),
        ));
    }
    let scopes =
        Scopes::parse(r.scopes.iter().map(String::as_str)).map_err(ApiError::BadRequest)?;
    let made = web::block(move || ApiKeys::generate(name, scopes, now_ms()))
        .await
        .map_err(|e| ApiError::Internal(format!("making a key: {e}")))??;
    app.tree.writes.create_api_key(made.row.clone()).await?;
    let row = made.row;
    Ok(HttpResponse::Created().json(NewApiKey {
        scopes: scope_names(&row),
        created_at: row.created_at,
        id: row.id,
        key: made.key,
        name: row.name,
        revoked_at: row.revoked_at,
    }))
}

/// Every key, newest first, revoked ones included (`revoked_at`).
#[utoipa::path(get, path = "/api/admin/api-keys", tag = "admin",
    summary = "List API keys (without secrets)",
    responses(
        (status = 200, description = "The keys", body = ApiKeyList),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn list(caller: Principal, app: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let keys = app.tree.reads.api_keys().await?;
    let keys = keys.iter().map(view).collect();
    Ok(HttpResponse::Ok().json(ApiKeyList { keys }))
}

/// Revokes a key: it stops working here at once and on other nodes within
/// `auth.revocation_poll`. 404 if there is no such key; 200 again for a revoked one.
#[utoipa::path(delete, path = "/api/admin/api-keys/{id}", tag = "admin",
    summary = "Revoke an API key",
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key, with revoked_at", body = ApiKeyView),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such key", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn revoke(
    caller: Principal,
    app: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let id = path.into_inner();
    app.tree.writes.revoke_api_key(id.clone()).await?;
    app.api_keys.forget(&id);
    // The other nodes of a cluster drop it from their caches now, not at their next poll.
    app.tree.router.do_send(CloseRevoked {
        jtis: Arc::from([]),
        announce: true,
    });
    let row = app
        .tree
        .reads
        .api_key(id.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no API key `{id}`")))?;
    Ok(HttpResponse::Ok().json(view(&row)))
}
