//! The per-address request limit (`limits.requests_per_ip_per_second`): every request to
//! the REST API and the fallback transports takes a token of its client address's bucket,
//! or is refused with 429 and `Retry-After`. The address is the peer's, or the one a
//! trusted proxy names (`server.trusted_proxies`).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};

use crate::routes::ws::gate_error;
use crate::state::AppState;

/// The middleware (`actix_web::middleware::from_fn`).
pub async fn limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let refused = match (req.app_data::<web::Data<AppState>>(), req.peer_addr()) {
        (Some(app), Some(peer)) => {
            let forwarded = req.headers().get_all(header::X_FORWARDED_FOR);
            let client = app
                .gate
                .client_address(peer.ip(), forwarded.filter_map(|v| v.to_str().ok()));
            app.gate.admit_request(client).err()
        }
        _ => None,
    };
    match refused {
        Some(e) => {
            let res = gate_error(e).error_response();
            Ok(req.into_response(res))
        }
        None => Ok(next.call(req).await?.map_into_boxed_body()),
    }
}
