//! [`Caller`]: the authenticated user of a REST request (`Authorization: Bearer`).

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};
use switchboard_actors::ids::UserId;

use crate::auth::{bearer, Claims};
use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated REST caller.
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

    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("admin role required".into()))
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(caller(req))
    }
}

fn caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    let app = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Internal("app state missing".into()))?;
    let token = bearer(req.headers())
        .ok_or_else(|| ApiError::Unauthorized("missing `Authorization: Bearer` token".into()))?;
    let claims = app.auth.verify(token)?;
    Ok(Caller {
        user: UserId::new(&claims.sub),
        claims,
    })
}
