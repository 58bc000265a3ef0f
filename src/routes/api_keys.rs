//! `/api/admin/api-keys`: API keys made, listed and revoked by admins. The key itself is
//! in the answer that makes it, and nowhere else.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use switchboard_actors::ids::now_ms;
use switchboard_actors::router::CloseRevoked;
use switchboard_actors::store::credentials_sql::ApiKeyRow;

use crate::api_keys::{ApiKeys, Scopes};
use crate::error::ApiError;
use crate::routes::body::JsonBody;
use crate::routes::caller::Principal;
use crate::state::AppState;

/// `POST /api/admin/api-keys` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKeyRequest {
    name: String,
    scopes: Vec<String>,
}

/// A key as listed: never its secret.
fn view(row: &ApiKeyRow) -> serde_json::Value {
    let scopes: Vec<&str> = row.scopes.split(',').filter(|s| !s.is_empty()).collect();
    json!({
        "id": row.id,
        "name": row.name,
        "scopes": scopes,
        "created_at": row.created_at,
        "revoked_at": row.revoked_at,
    })
}

/// Makes a key: 201 with the key's fields and `key`, the secret shown this once.
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
    let mut body = view(&made.row);
    body["key"] = json!(made.key);
    Ok(HttpResponse::Created().json(body))
}

/// Every key, newest first, revoked ones included (`revoked_at`).
pub async fn list(caller: Principal, app: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let keys = app.tree.reads.api_keys().await?;
    let list: Vec<_> = keys.iter().map(view).collect();
    Ok(HttpResponse::Ok().json(json!({ "keys": list })))
}

/// Revokes a key: it stops working here at once and on other nodes within
/// `auth.revocation_poll`. 404 if there is no such key; 200 again for a revoked one.
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
