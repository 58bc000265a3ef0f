//! Who makes a REST request. [`Caller`]: a user, by `Authorization: Bearer` (routes that
//! act as a user take it). [`Principal`]: a user or an application's API key
//! (`X-Api-Key`, with scopes), for routes a backend may call.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use switchboard_actors::ids::UserId;

use crate::api_keys::KeyHolder;
use crate::auth::{bearer, Claims};
use crate::error::ApiError;
use crate::routes::ws::gate_error;
use crate::state::AppState;

/// The header an API key comes in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// How the caller proved who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A user's access token.
    Token(Claims),
    /// An API key.
    ApiKey(KeyHolder),
}

/// A user calling with their access token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: UserId,
    /// The token's claims.
    pub claims: Claims,
}

impl Caller {
    /// Whether the caller may use the admin API.
    pub fn is_admin(&self) -> bool {
        self.claims.is_admin()
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(user_caller(req))
    }
}

fn user_caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    let app = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal("app state missing".into()))?;
    let Some(token) = bearer(req.headers()) else {
        if req.headers().contains_key(API_KEY_HEADER) {
            return Err(ApiError::Forbidden(
                "this route acts as a user: call it with the user's token, not an API key".into(),
            ));
        }
        return Err(ApiError::Unauthorized(
            "missing `Authorization: Bearer` token".into(),
        ));
    };
    let claims = app.auth.verify(token)?;
    let user = UserId::new(&claims.sub);
    app.gate.admit_user_request(&user).map_err(gate_error)?;
    Ok(Caller { user, claims })
}

/// A user (by token) or an application (by API key).
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user; for an API key, `api-key.<id>` (the sender of what it publishes).
    pub user: UserId,
    /// The credential.
    pub credential: Credential,
}

impl Principal {
    /// Whether the caller may use the admin API (an admin's token, a key with `admin`).
    pub fn is_admin(&self) -> bool {
        match &self.credential {
            Credential::Token(c) => c.is_admin(),
            Credential::ApiKey(k) => k.scopes.admin(),
        }
    }

    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "admin role (or an API key with scope `admin`) required".into(),
            ))
        }
    }

    /// Fails with 403 unless the caller may publish: an admin, or a key with `publish`.
    pub fn require_publish(&self) -> Result<(), ApiError> {
        let ok = match &self.credential {
            Credential::Token(c) => c.is_admin(),
            Credential::ApiKey(k) => k.scopes.publish(),
        };
        ok.then_some(()).ok_or_else(|| {
            ApiError::Forbidden("admin role (or an API key with scope `publish`) required".into())
        })
    }

    /// Whether the caller may read what an admin may: an admin, or a key with `read`.
    pub fn reads_all(&self) -> bool {
        match &self.credential {
            Credential::Token(c) => c.is_admin(),
            Credential::ApiKey(k) => k.scopes.read(),
        }
    }

    /// The token's claims, when a user calls.
    pub fn claims(&self) -> Option<&Claims> {
        match &self.credential {
            Credential::Token(c) => Some(c),
            Credential::ApiKey(_) => None,
        }
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Principal, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let app = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer(req.headers()).map(str::to_owned);
        let key = req
            .headers()
            .get(API_KEY_HEADER)
            .map(|v| v.to_str().map(str::to_owned));
        Box::pin(async move {
            let app = app.ok_or_else(|| ApiError::Internal("app state missing".into()))?;
            let caller = match (token, key) {
                (Some(token), None) => {
                    let claims = app.auth.verify(&token)?;
                    Ok(Principal {
                        user: UserId::new(&claims.sub),
                        credential: Credential::Token(claims),
                    })
                }
                (None, Some(Ok(key))) => {
                    let holder = app.api_keys.check(&app.tree.reads, key.trim()).await?;
                    Ok(Principal {
                        user: UserId::new(&format!("api-key.{}", holder.id)),
                        credential: Credential::ApiKey(holder),
                    })
                }
                (None, Some(Err(_))) => Err(ApiError::Unauthorized("invalid API key".into())),
                (Some(_), Some(_)) => Err(ApiError::BadRequest(
                    "give `Authorization: Bearer` or `X-Api-Key`, not both".into(),
                )),
                (None, None) => Err(ApiError::Unauthorized(
                    "missing `Authorization: Bearer` token or `X-Api-Key`".into(),
                )),
            }?;
            app.gate
                .admit_user_request(&caller.user)
                .map_err(gate_error)?;
            Ok(caller)
        })
    }
}
