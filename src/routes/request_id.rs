//! Request ids: every HTTP response carries `X-Request-Id` (the client's, when it sent a
//! well-formed one, else a new one), and the access log line of the request
//! (`switchboard::access`, debug; warn for a 5xx) names it.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::HttpMessage;

/// The header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A request's id, in its extensions for handlers that log.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Whether a client's id is one we repeat: 1 to 64 of `[A-Za-z0-9._-]`.
fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The middleware (`actix_web::middleware::from_fn`).
pub async fn tag(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let (method, path) = (req.method().clone(), req.path().to_owned());
    let began = Instant::now();
    let mut res = next.call(req).await?;
    let status = res.status().as_u16();
    let ms = began.elapsed().as_millis() as u64;
    let level = if status >= 500 {
        log::Level::Warn
    } else {
        log::Level::Debug
    };
    log::log!(
        target: "switchboard::access",
        level,
        request_id = id.as_str(), method = method.as_str(), path = path.as_str(), status = status, ms = ms;
        "{method} {path} {status} {ms}ms"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_plain_short_ids_are_repeated() {
        assert!(super::acceptable("req-12.ab_C"));
        assert!(!super::acceptable(""));
        assert!(!super::acceptable(&"a".repeat(65)));
        assert!(!super::acceptable("a b"));
        assert!(!super::acceptable("a\nb"));
    }
}
