//! `POST /api/auth/token`: mint an access and a refresh token for a user (admin only).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use switchboard_actors::ids::valid_id;

use crate::auth::DEVICES;
use crate::error::ApiError;
use crate::routes::body::JsonBody;
use crate::routes::caller::Caller;
use crate::state::AppState;

/// Longest lifetime an access token may be minted with.
const MAX_TTL_S: u64 = 30 * 24 * 3600;

/// Request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    user_id: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    ttl_s: Option<u64>,
    #[serde(default)]
    device: Option<String>,
}

/// Mints `{access_token, refresh_token, expires_at}`; `expires_at` is the access token's
/// `exp` (seconds since epoch).
pub async fn mint_token(
    caller: Caller,
    app: web::Data<AppState>,
    body: JsonBody<TokenRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let r = body.into_inner();
    if !valid_id(&r.user_id) {
        return Err(ApiError::BadRequest("`user_id` is not a valid id".into()));
    }
    if let Some(d) = &r.device {
        if !DEVICES.contains(&d.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "`device` must be one of {}",
                DEVICES.join(", ")
            )));
        }
    }
    if r.roles.iter().any(|role| !valid_id(role)) {
        return Err(ApiError::BadRequest("`roles` must be ids".into()));
    }
    let ttl = match r.ttl_s {
        Some(0) => return Err(ApiError::BadRequest("`ttl_s` must be positive".into())),
        Some(s) if s > MAX_TTL_S => {
            return Err(ApiError::BadRequest(format!(
                "`ttl_s` must be at most {MAX_TTL_S}"
            )))
        }
        Some(s) => Duration::from_secs(s),
        None => app.settings.auth.access_ttl,
    };
    let access = app
        .auth
        .mint(&r.user_id, r.roles.clone(), ttl, r.device.clone(), false)?;
    let refresh = app.auth.mint(
        &r.user_id,
        r.roles,
        app.settings.auth.refresh_ttl,
        r.device,
        true,
    )?;
    Ok(HttpResponse::Ok().json(json!({
        "access_token": access.token,
        "refresh_token": refresh.token,
        "expires_at": access.exp,
    })))
}
