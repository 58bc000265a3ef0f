//! The error codes of the wire contract (section 6), shared by every layer that answers a
//! client: frames, channels, the store, REST.

use serde::{Deserialize, Serialize};

/// Error codes of contract section 6, serialised in snake_case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No valid credentials.
    Unauthorized,
    /// Valid credentials, not allowed.
    Forbidden,
    /// Malformed input.
    BadRequest,
    /// Unknown frame `type`.
    UnknownType,
    /// Input over a size limit.
    TooLarge,
    /// Over the rate limit.
    RateLimited,
    /// The thing named does not exist.
    NotFound,
    /// A write lost a race (state documents, existing ids).
    Conflict,
    /// The feature needs configuration this broker lacks.
    NotConfigured,
    /// A dependency (database, actor) is not available right now.
    Unavailable,
    /// A bug or an unexpected failure on our side.
    Internal,
}
