//! `GET /ws`: authenticate (or defer to the `auth` frame), admit, upgrade.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use switchboard_actors::ids::{valid_id, UserId};

use crate::auth::{bearer, DEVICES};
use crate::error::ApiError;
use crate::gate::GateError;
use crate::session::{self, Upgrade};
use crate::startup::AppState;

#[derive(Deserialize, Default)]
struct WsQuery {
    token: Option<String>,
    client_id: Option<String>,
    device: Option<String>,
}

fn gate_error(e: GateError) -> ApiError {
    let status = match e {
        GateError::NodeFull => StatusCode::SERVICE_UNAVAILABLE,
        GateError::UserFull => StatusCode::TOO_MANY_REQUESTS,
    };
    ApiError::TooMany {
        status,
        message: e.to_string(),
    }
}

/// The WebSocket upgrade.
pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    app: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let q = web::Query::<WsQuery>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let token = bearer(&req).map(str::to_owned).or(q.token);
    let claims = match token {
        Some(t) => Some(app.auth.verify(&t).map_err(ApiError::from)?),
        None => None,
    };
    let client_id: Arc<str> = match q.client_id {
        Some(c) if valid_id(&c) => Arc::from(c),
        Some(_) => return Err(ApiError::BadRequest("`client_id` is not a valid id".into()).into()),
        None => Arc::from(uuid::Uuid::new_v4().simple().to_string()),
    };
    let device = match q.device {
        Some(d) if DEVICES.contains(&d.as_str()) => Some(Arc::from(d)),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "`device` must be one of {}",
                DEVICES.join(", ")
            ))
            .into())
        }
        None => None,
    };
    let node = app.gate.admit_node().map_err(gate_error)?;
    let auth = match claims {
        Some(c) => {
            let ticket = app
                .gate
                .admit_user(&UserId::new(&c.sub))
                .map_err(gate_error)?;
            Some((c, ticket))
        }
        None => None,
    };
    let up = Upgrade {
        client_id,
        device,
        auth,
        node,
    };
    session::start(app.clone(), up, &req, stream)
}
