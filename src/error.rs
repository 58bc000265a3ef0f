//! REST errors: one type, mapped once to the contract's status codes and error body
//! `{"error": {"code", "message"}}` (contract section 10).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use switchboard_actors::channel::ChannelError;
use switchboard_actors::metrics::{metrics, ErrorVia};
use switchboard_actors::protocol::ErrorCode;
use switchboard_actors::store::StoreError;

/// The body of every REST error: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// An error's code and text.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The contract's error code.
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
}

/// Anything a REST handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, invalid, expired or revoked credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the right.
    #[error("{0}")]
    Forbidden(String),
    /// Malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// Already exists / lost a race.
    #[error("{0}")]
    Conflict(String),
    /// A request body over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// Over a limit of this node or user.
    #[error("{message}")]
    TooMany {
        /// HTTP 429 (per user) or 503 (whole node).
        status: StatusCode,
        /// For humans.
        message: String,
        /// When to try again (sent as `Retry-After`, in whole seconds).
        retry_after_ms: Option<u64>,
    },
    /// A feature this deployment is not configured for.
    #[error("{0}")]
    NotConfigured(String),
    /// A dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// Our bug.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// The contract's error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::BadRequest(_) => ErrorCode::BadRequest,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::TooMany { status, .. } if *status == StatusCode::TOO_MANY_REQUESTS => {
                ErrorCode::RateLimited
            }
            ApiError::TooMany { .. } | ApiError::Unavailable(_) => ErrorCode::Unavailable,
            ApiError::NotConfigured(_) => ErrorCode::NotConfigured,
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// An error from a wire error code (channel and frame errors reuse their codes).
    pub fn from_code(code: ErrorCode, message: String) -> Self {
        match code {
            ErrorCode::Unauthorized => ApiError::Unauthorized(message),
            ErrorCode::Forbidden => ApiError::Forbidden(message),
            ErrorCode::BadRequest | ErrorCode::UnknownType => ApiError::BadRequest(message),
            ErrorCode::TooLarge => ApiError::TooLarge(message),
            ErrorCode::NotFound => ApiError::NotFound(message),
            ErrorCode::Conflict => ApiError::Conflict(message),
            ErrorCode::RateLimited => ApiError::TooMany {
                status: StatusCode::TOO_MANY_REQUESTS,
                message,
                retry_after_ms: None,
            },
            ErrorCode::NotConfigured => ApiError::NotConfigured(message),
            ErrorCode::Unavailable => ApiError::Unavailable(message),
            ErrorCode::Internal => ApiError::Internal(message),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooMany { status, .. } => *status,
            ApiError::NotConfigured(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        metrics().error(self.code(), ErrorVia::Rest);
        let mut res = HttpResponse::build(self.status_code());
        if let ApiError::TooMany {
            retry_after_ms: Some(ms),
            ..
        } = self
        {
            res.insert_header(("Retry-After", ms.div_ceil(1000).max(1).to_string()));
        }
        res.json(ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (code, message) = e.public();
        ApiError::from_code(code, message)
    }
}

impl From<ChannelError> for ApiError {
    fn from(e: ChannelError) -> Self {
        ApiError::from_code(e.code(), e.to_string())
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(_: actix::MailboxError) -> Self {
        ApiError::Unavailable("an internal actor is restarting, retry".into())
    }
}
