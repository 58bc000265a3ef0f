//! [`JsonBody`]: the JSON body of a REST request, read and checked the way client frames
//! are (contract section 8).
//!
//! The body is read up to the route's `PayloadConfig` limit (over it: 413 `too_large`),
//! parsed into `T` (an array where an object belongs is refused like any wrong type), and
//! checked with [`check_json`]: nesting deeper than `limits.max_json_depth` below the body
//! object, numbers outside the double range and lone surrogates get 400 `bad_request`, and
//! nothing is stored.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::error::PayloadError;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{web, FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use switchboard_actors::json_check::check_json;

use crate::error::ApiError;
use crate::state::AppState;

/// A checked JSON request body.
pub struct JsonBody<T>(pub T);

impl<T> JsonBody<T> {
    /// The parsed body.
    pub fn into_inner(self) -> T {
        self.0
    }
}

fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let depth = req
            .app_data::<web::Data<AppState>>()
            .map(|app| app.settings.limits.max_json_depth)
            .unwrap_or(32);
        let json = is_json(req);
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            if !json {
                return Err(ApiError::BadRequest(
                    "expected a JSON body (Content-Type: application/json)".into(),
                ));
            }
            let bytes = bytes
                .await
                .map_err(|e| match e.as_error::<PayloadError>() {
                    Some(PayloadError::Overflow) => {
                        ApiError::TooLarge("the request body is over this endpoint's limit".into())
                    }
                    _ => ApiError::BadRequest(format!("cannot read the request body: {e}")),
                })?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| ApiError::BadRequest("the request body is not UTF-8".into()))?;
            if !text.trim_start().starts_with('{') {
                return Err(ApiError::BadRequest(
                    "invalid JSON body: expected an object".into(),
                ));
            }
            let value = serde_json::from_str(text)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            // The body object is the level above its fields' values.
            check_json(text, depth.saturating_add(1))
                .map_err(|f| ApiError::BadRequest(format!("invalid JSON body: {f}")))?;
            Ok(JsonBody(value))
        })
    }
}
