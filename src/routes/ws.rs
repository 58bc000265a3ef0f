//! `GET /ws`: authenticate (or defer to the `auth` frame), admit, upgrade.
//!
//! WebSocket upgrades do not go through the actix-web `App`: actix-http hands every upgrade
//! request, with its connection, to [`upgrade`] (see `startup`). The session then owns the
//! socket with buffers sized for an idle connection, instead of the HTTP dispatcher's 16 KiB
//! that would otherwise stay allocated for the life of every connection.

use std::net::IpAddr;
use std::sync::Arc;

use crate::session::ws::conn::Upgraded;
use actix_codec::Framed;
use actix_http::body::{self, BodySize};
use actix_http::header::{HeaderValue, ORIGIN, X_FORWARDED_FOR};
use actix_http::{h1, ws, Method, Request, Response, Version};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use bytes::Bytes;
use futures_util::SinkExt;
use serde::Deserialize;
use switchboard_actors::ids::{valid_id, UserId};

use switchboard_actors::metrics::metrics;

use crate::auth::{bearer, DEVICES};
use crate::error::ApiError;
use crate::gate::GateError;
use crate::session::{self, Admission};
use crate::state::AppState;

/// The path WebSocket clients connect to.
pub const PATH: &str = "/ws";

#[derive(Deserialize, Default)]
struct WsQuery {
    token: Option<String>,
    client_id: Option<String>,
    device: Option<String>,
}

/// The HTTP answer to a refused admission: 503 when the node is full, 429 for one user or
/// address.
pub(crate) fn gate_error(e: GateError) -> ApiError {
    let limit = match e {
        GateError::NodeFull => "node_connections",
        GateError::PendingFull => "pending_connections",
        GateError::UserFull => "user_connections",
        GateError::AddressPendingFull => "address_pending_connections",
        GateError::AddressTooFast { .. } => "address_upgrade_rate",
        GateError::AddressRequestsTooFast { .. } => "address_request_rate",
        GateError::UserTooFast { .. } => "user_connect_rate",
        GateError::UserRequestsTooFast { .. } => "user_request_rate",
    };
    metrics().refused.with_label_values(&[limit]).inc();
    let (status, retry_after_ms) = match e {
        GateError::NodeFull | GateError::PendingFull => (StatusCode::SERVICE_UNAVAILABLE, None),
        GateError::UserFull | GateError::AddressPendingFull => {
            (StatusCode::TOO_MANY_REQUESTS, None)
        }
        GateError::AddressTooFast { retry_after_ms }
        | GateError::AddressRequestsTooFast { retry_after_ms }
        | GateError::UserTooFast { retry_after_ms }
        | GateError::UserRequestsTooFast { retry_after_ms } => {
            (StatusCode::TOO_MANY_REQUESTS, Some(retry_after_ms))
        }
    };
    ApiError::TooMany {
        status,
        message: e.to_string(),
        retry_after_ms,
    }
}

/// Refuses a browser request whose `Origin` is not among `server.allowed_origins` (403).
pub(crate) fn check_origin(app: &AppState, origin: Option<&HeaderValue>) -> Result<(), ApiError> {
    let Some(origin) = origin else {
        return Ok(());
    };
    let text = origin.to_str().unwrap_or("");
    if app.settings.server.origin_allowed(text) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "origin `{text}` is not allowed (server.allowed_origins)"
        )))
    }
}

/// A connection's device id (the one given, checked, or a new one) and device kind (one
/// of [`DEVICES`], or none), as every transport takes them from its query.
pub(crate) fn client_identity(
    client_id: Option<&str>,
    device: Option<&str>,
) -> Result<(Arc<str>, Option<Arc<str>>), ApiError> {
    let client_id: Arc<str> = match client_id {
        Some(c) if valid_id(c) => Arc::from(c),
        Some(_) => return Err(ApiError::BadRequest("`client_id` is not a valid id".into())),
        None => Arc::from(uuid::Uuid::new_v4().simple().to_string()),
    };
    let device = match device {
        Some(d) if DEVICES.contains(&d) => Some(Arc::from(d)),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "`device` must be one of {}",
                DEVICES.join(", ")
            )))
        }
        None => None,
    };
    Ok((client_id, device))
}

/// Everything the upgrade request from `peer` establishes, or the error to answer it with.
fn admit(app: &AppState, req: &Request, peer: IpAddr) -> Result<Admission, ApiError> {
    if req.path() != PATH {
        return Err(ApiError::NotFound(format!(
            "no WebSocket at `{}`",
            req.path()
        )));
    }
    if req.method() != Method::GET {
        return Err(ApiError::BadRequest("a WebSocket upgrade is a GET".into()));
    }
    // RFC 6455 section 4.1: the opening handshake is an HTTP/1.1 request.
    if req.version() != Version::HTTP_11 {
        return Err(ApiError::BadRequest(
            "a WebSocket upgrade needs HTTP/1.1".into(),
        ));
    }
    check_origin(app, req.head().headers().get(ORIGIN))?;
    let forwarded = req.head().headers().get_all(X_FORWARDED_FOR);
    let client = app
        .gate
        .client_address(peer, forwarded.filter_map(|v| v.to_str().ok()));
    app.gate.admit_upgrade(client).map_err(gate_error)?;
    let q = web::Query::<WsQuery>::from_query(req.uri().query().unwrap_or(""))
        .map(|q| q.into_inner())
        .map_err(|e| ApiError::BadRequest(format!("invalid query: {e}")))?;
    let token = bearer(req.head().headers()).map(str::to_owned).or(q.token);
    let claims = match token {
        Some(t) => Some(app.auth.verify(&t)?),
        None => None,
    };
    let (client_id, device) = client_identity(q.client_id.as_deref(), q.device.as_deref())?;
    let node = app.gate.admit_node().map_err(gate_error)?;
    let (auth, pending) = match claims {
        Some(c) => {
            let ticket = app
                .gate
                .admit_user(&UserId::new(&c.sub))
                .map_err(gate_error)?;
            (Some((c, ticket)), None)
        }
        None => (
            None,
            Some(app.gate.admit_pending(client).map_err(gate_error)?),
        ),
    };
    Ok(Admission {
        client_id,
        device,
        auth,
        pending,
        node,
    })
}

/// Writes `res` (head and body) on the connection; the connection is closed after it.
async fn respond<Io: Upgraded>(framed: &mut Framed<Io, h1::Codec>, res: Response<body::BoxBody>) {
    let (head, body) = res.into_parts();
    let bytes = body::to_bytes(body).await.unwrap_or_default();
    let size = BodySize::Sized(bytes.len() as u64);
    let _ = framed
        .send(h1::Message::Item((head.drop_body(), size)))
        .await;
    if !bytes.is_empty() {
        let _ = framed.send(h1::Message::Chunk(Some(bytes))).await;
    }
    let _ = framed.send(h1::Message::Chunk(None)).await;
}

/// The upgrade service: answers the request, and on success hands the socket (with any
/// bytes the client sent after its request) to a new session.
pub async fn upgrade<Io: Upgraded>(
    app: web::Data<AppState>,
    req: Request,
    mut framed: Framed<Io, h1::Codec>,
) -> Result<(), actix_http::Error> {
    let peer = match framed.io_ref().peer() {
        Ok(addr) => addr.ip(),
        Err(_) => return Ok(()), // the client is already gone
    };
    let up = match admit(&app, &req, peer) {
        Ok(up) => up,
        Err(e) => {
            respond(&mut framed, HttpResponse::from_error(e).into()).await;
            return Ok(());
        }
    };
    let res = match ws::handshake(req.head()) {
        Ok(mut builder) => builder.finish(),
        Err(e) => {
            respond(&mut framed, e.error_response().into()).await;
            return Ok(());
        }
    };
    let (head, _) = res.into_parts();
    if framed
        .send(h1::Message::Item((head, BodySize::None)))
        .await
        .is_err()
    {
        return Ok(());
    }
    let parts = framed.into_parts();
    // Copied out, so that the dispatcher's 8 KiB read buffer is freed now.
    let early = Bytes::copy_from_slice(&parts.read_buf);
    session::ws::start(app, up, parts.io.into_socket(), early);
    Ok(())
}

/// `GET /ws` without the upgrade headers. The upgrade itself is answered before routing
/// ([`upgrade`]); this declaration describes both.
#[utoipa::path(get, path = "/ws", tag = "transports",
    summary = "WebSocket upgrade (contract section 2): token in Authorization, ?token= or an auth frame",
    params(
        ("token" = Option<String>, Query, description = "Access token (or Authorization: Bearer, or an auth frame)"),
        ("client_id" = Option<String>, Query, description = "Device id kept across reconnects"),
        ("device" = Option<String>, Query, description = "web, desktop, mobile, extension, cli or server"),
    ),
    responses(
        (status = 101, description = "Switching protocols"),
        (status = 400, description = "Not an upgrade request", body = crate::error::ErrorBody),
        (status = 401, description = "Bad, expired or revoked token", body = crate::error::ErrorBody),
        (status = 403, description = "Origin not allowed", body = crate::error::ErrorBody),
        (status = 429, description = "Too many connections for the user or from the address", body = crate::error::ErrorBody),
        (status = 503, description = "Node full", body = crate::error::ErrorBody),
    ),
)]
pub async fn not_upgraded() -> Result<HttpResponse, ApiError> {
    Err(ApiError::BadRequest(
        "this endpoint takes a WebSocket upgrade (`Upgrade: websocket`)".into(),
    ))
}
