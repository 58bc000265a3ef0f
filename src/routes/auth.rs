//! Tokens over REST: `POST /api/auth/token` mints an access and a refresh token for a user
//! (admin only), `POST /api/auth/refresh` exchanges a refresh token for a new pair (once),
//! `POST /api/auth/revoke` ends a token (and the connections holding it), and
//! `GET /api/auth/validate` tells what a token is.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::valid_id;
use utoipa::ToSchema;

use switchboard_actors::router::CloseRevoked;

use crate::auth::{AuthError, Claims, DEVICES, MAX_TOKEN_LIFE_S};
use crate::error::{ApiError, ErrorBody};
use crate::routes::body::JsonBody;
use crate::routes::caller::{Credential, Principal};
use crate::state::AppState;

/// Longest lifetime an access token may be minted with.
const MAX_TTL_S: u64 = 30 * 24 * 3600;

/// `POST /api/auth/token` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The user the tokens are for.
    user_id: String,
    /// Roles (`admin` for the admin API).
    #[serde(default)]
    roles: Vec<String>,
    /// The access token's lifetime, seconds (at most 30 days; default `auth.access_ttl`).
    #[serde(default)]
    ttl_s: Option<u64>,
    /// `web`, `desktop`, `mobile`, `extension`, `cli` or `server`.
    #[serde(default)]
    device: Option<String>,
}

/// An access and a refresh token (fields in name order, as always sent).
#[derive(Serialize, ToSchema)]
pub struct TokenPair {
    /// The access token (JWT).
    access_token: String,
    /// The access token's `exp`, seconds since epoch.
    expires_at: u64,
    /// The refresh token: exchanged once at `POST /api/auth/refresh`.
    refresh_token: String,
}

/// Mints `{access_token, refresh_token, expires_at}`; `expires_at` is the access token's
/// `exp` (seconds since epoch).
#[utoipa::path(post, path = "/api/auth/token", tag = "auth",
    summary = "Mint an access and a refresh token for a user",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "The tokens", body = TokenPair),
        (status = 400, description = "Bad field", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 501, description = "This broker only verifies tokens", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
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
    Ok(HttpResponse::Ok().json(TokenPair {
        access_token: access.token,
        expires_at: access.exp,
        refresh_token: refresh.token,
    }))
}

/// `POST /api/auth/refresh` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// A refresh token not used before.
    refresh_token: String,
}

/// Exchanges a refresh token for a new access and refresh token with the same user, roles
/// and device. The refresh token is revoked in the store first, so it works once, on any
/// node: a second use (a stolen copy, or a client retrying) is 401.
#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth",
    summary = "Exchange a refresh token for a new pair (works once)",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "The new tokens", body = TokenPair),
        (status = 400, description = "Bad body", body = ErrorBody),
        (status = 401, description = "Invalid, used or revoked refresh token", body = ErrorBody),
    ),
)]
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
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The token to revoke.
    #[serde(default)]
    token: Option<String>,
    /// Or its id.
    #[serde(default)]
    jti: Option<String>,
}

/// Revokes a token, access or refresh: by `token` (the caller's own, or anyone's for an
/// admin), or by `jti` (the caller's current token's, or any for an admin); 204, also when
/// it already was. Connections holding it close with 4001: here and on other nodes.
#[utoipa::path(post, path = "/api/auth/revoke", tag = "auth",
    summary = "Revoke a token by token or jti; its connections close with 4001",
    request_body = RevokeRequest,
    responses(
        (status = 204, description = "Revoked (also when it already was)"),
        (status = 400, description = "Neither or both, or not a revocable token", body = ErrorBody),
        (status = 401, description = "No valid credential", body = ErrorBody),
        (status = 403, description = "Another user's token", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
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

/// What kind of credential was validated.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An access token.
    Token,
    /// An API key.
    ApiKey,
}

/// `GET /api/auth/validate` reply for a token (fields in name order, as always sent).
#[derive(Serialize, ToSchema)]
pub struct TokenValidation {
    /// The token's device, if it names one.
    device: Option<String>,
    /// Expiry, seconds since epoch.
    exp: u64,
    /// The same as `exp`, as `POST /api/auth/token` names it.
    expires_at: u64,
    /// Issue time, seconds since epoch.
    iat: Option<u64>,
    /// Token id (what `POST /api/auth/revoke` takes).
    jti: Option<String>,
    /// `token`.
    kind: CredentialKind,
    /// Roles.
    roles: Vec<String>,
    /// The user.
    user_id: String,
    /// Always true (an invalid token is 401).
    valid: bool,
}

/// `GET /api/auth/validate` reply for an API key (fields in name order, as always sent).
#[derive(Serialize, ToSchema)]
pub struct KeyValidation {
    /// The key's id.
    key_id: String,
    /// `api_key`.
    kind: CredentialKind,
    /// The key's scopes.
    #[schema(value_type = Vec<String>)]
    scopes: crate::api_keys::Scopes,
    /// Always true (an invalid key is 401).
    valid: bool,
}

/// `GET /api/auth/validate` reply: what the credential is.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Validation {
    /// A token.
    Token(TokenValidation),
    /// An API key.
    ApiKey(KeyValidation),
}

/// What the caller's credential is (401 if it is not valid): for a token
/// `{device, exp, expires_at, iat, jti, kind: "token", roles, user_id, valid}`
/// (`expires_at` = `exp`, as `POST /api/auth/token` names it), for an API key
/// `{valid, kind: "api_key", key_id, scopes}`.
#[utoipa::path(get, path = "/api/auth/validate", tag = "auth",
    summary = "What the caller's token or API key is",
    responses(
        (status = 200, description = "The credential", body = Validation),
        (status = 401, description = "Not valid", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn validate(caller: Principal) -> HttpResponse {
    let body = match caller.credential {
        Credential::Token(c) => Validation::Token(TokenValidation {
            device: c.device,
            exp: c.exp,
            expires_at: c.exp,
            iat: c.iat,
            jti: c.jti,
            kind: CredentialKind::Token,
            roles: c.roles,
            user_id: c.sub,
            valid: true,
        }),
        Credential::ApiKey(k) => Validation::ApiKey(KeyValidation {
            key_id: k.id,
            kind: CredentialKind::ApiKey,
            scopes: k.scopes,
            valid: true,
        }),
    };
    HttpResponse::Ok().json(body)
}
