//! Tokens over REST: `POST /api/auth/token` mints an access and a refresh token for a user
//! (admin only), `POST /api/auth/refresh` exchanges a refresh token for a new pair (once),
//! `POST /api/auth/revoke` ends a token (and the connections holding it), and
//! `GET /api/auth/validate` tells what a token is.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use switchboard_actors::ids::valid_id;

use switchboard_actors::router::CloseRevoked;

use crate::auth::{AuthError, Claims, DEVICES, MAX_TOKEN_LIFE_S};
use crate::error::ApiError;
use crate::routes::body::JsonBody;
use crate::routes::caller::{Credential, Principal};
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
    caller: Principal,
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
    mint_pair(&app, &r.user_id, r.roles, ttl, r.device)
}

/// `{access_token, refresh_token, expires_at}` for `user`.
fn mint_pair(
    app: &AppState,
    user: &str,
    roles: Vec<String>,
    ttl: Duration,
    device: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let access = app
        .auth
        .mint(user, roles.clone(), ttl, device.clone(), false)?;
    let refresh = app
        .auth
        .mint(user, roles, app.settings.auth.refresh_ttl, device, true)?;
    Ok(HttpResponse::Ok().json(json!({
        "access_token": access.token,
        "refresh_token": refresh.token,
        "expires_at": access.exp,
    })))
}

/// `POST /api/auth/refresh` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Exchanges a refresh token for a new access and refresh token with the same user, roles
/// and device. The refresh token is revoked in the store first, so it works once, on any
/// node: a second use (a stolen copy, or a client retrying) is 401.
pub async fn refresh(
    app: web::Data<AppState>,
    body: JsonBody<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let claims = app
        .auth
        .verify_refresh(&body.into_inner().refresh_token)
        .map_err(|e| match e {
            AuthError::Revoked => {
                ApiError::Unauthorized("refresh token already used or revoked".into())
            }
            e => e.into(),
        })?;
    let jti = claims.jti.clone().unwrap_or_default();
    let first_use = app
        .tree
        .writes
        .revoke_token(jti.clone(), expiry_ms(&claims))
        .await?;
    app.auth.revoke(&jti, claims.exp);
    if !first_use {
        return Err(ApiError::Unauthorized("refresh token already used".into()));
    }
    mint_pair(
        &app,
        &claims.sub,
        claims.roles,
        app.settings.auth.access_ttl,
        claims.device,
    )
}

/// A token's `exp` in ms, where its revocation may be forgotten.
fn expiry_ms(c: &Claims) -> i64 {
    (c.exp.min(i64::MAX as u64 / 1000) as i64) * 1000
}

/// `POST /api/auth/revoke` body: one of the two.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    jti: Option<String>,
}

/// Revokes a token, access or refresh: by `token` (the caller's own, or anyone's for an
/// admin), or by `jti` (the caller's current token's, or any for an admin); 204, also when
/// it already was. Connections holding it close with 4001: here and on other nodes.
pub async fn revoke(
    caller: Principal,
    app: web::Data<AppState>,
    body: JsonBody<RevokeRequest>,
) -> Result<HttpResponse, ApiError> {
    let (jti, exp_ms) = match body.into_inner() {
        RevokeRequest {
            token: Some(token),
            jti: None,
        } => {
            let c = app
                .auth
                .verify_any(&token)
                .map_err(|e| ApiError::BadRequest(format!("`token` cannot be revoked: {e}")))?;
            if c.sub != caller.user.as_str() && !caller.is_admin() {
                return Err(ApiError::Forbidden(
                    "only an admin may revoke another user's token".into(),
                ));
            }
            let jti = c.jti.clone().ok_or_else(|| {
                ApiError::BadRequest("the token has no `jti`: it cannot be revoked".into())
            })?;
            (jti, expiry_ms(&c))
        }
        RevokeRequest {
            token: None,
            jti: Some(jti),
        } => {
            let own_token = caller.claims().filter(|c| c.jti.as_deref() == Some(&jti));
            let own = own_token.is_some();
            if !own && !caller.is_admin() {
                return Err(ApiError::Forbidden(
                    "only an admin may revoke a token id other than the caller's".into(),
                ));
            }
            if jti.is_empty() || jti.len() > 256 {
                return Err(ApiError::BadRequest("`jti` must be 1 to 256 bytes".into()));
            }
            // The token's expiry is unknown: keep the id as long as any token may live.
            let exp = if let Some(c) = own_token {
                expiry_ms(c)
            } else {
                switchboard_actors::ids::now_ms() + MAX_TOKEN_LIFE_S as i64 * 1000
            };
            (jti, exp)
        }
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `token` and `jti`".into(),
            ))
        }
    };
    app.tree.writes.revoke_token(jti.clone(), exp_ms).await?;
    app.auth.revoke(&jti, (exp_ms / 1000) as u64);
    let jtis: Arc<[Arc<str>]> = Arc::from([Arc::from(jti.as_str())]);
    app.tree.router.do_send(CloseRevoked {
        jtis,
        announce: true,
    });
    Ok(HttpResponse::NoContent().finish())
}

/// What the caller's credential is (401 if it is not valid): for a token
/// `{valid, kind: "token", user_id, roles, expires_at, device, exp, iat, jti}`
/// (`expires_at` = `exp`, as `POST /api/auth/token` names it), for an API key
/// `{valid, kind: "api_key", key_id, scopes}`.
pub async fn validate(caller: Principal) -> HttpResponse {
    let body = match caller.credential {
        Credential::Token(c) => json!({
            "valid": true,
            "kind": "token",
            "user_id": c.sub,
            "roles": c.roles,
            "expires_at": c.exp,
            "device": c.device,
            "exp": c.exp,
            "iat": c.iat,
            "jti": c.jti,
        }),
        Credential::ApiKey(k) => json!({
            "valid": true,
            "kind": "api_key",
            "key_id": k.id,
            "scopes": k.scopes,
        }),
    };
    HttpResponse::Ok().json(body)
}
