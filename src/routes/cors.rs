//! CORS (`server.allowed_origins`): browser pages on the listed origins may call the REST
//! API, read SSE streams and poll. Done by `actix-cors`; off when the list is empty.

use actix_cors::Cors;
use actix_web::http::{header, Method};

use crate::config::ServerSettings;

/// The CORS middleware for `server`'s allowed origins (an empty list allows none).
pub fn cors(server: &ServerSettings) -> Cors {
    let mut c = Cors::default()
        .allowed_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("x-api-key"),
            header::HeaderName::from_static("x-request-id"),
            header::HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([
            header::RETRY_AFTER,
            header::HeaderName::from_static("x-request-id"),
        ])
        .max_age(3600);
    for origin in &server.allowed_origins {
        c = if origin == "*" {
            c.allow_any_origin()
        } else {
            c.allowed_origin(origin)
        };
    }
    c
}
