//! The sync engine's documents over HTTP: fetch a collection's changes since a revision,
//! and write one document with optimistic concurrency (409 with the stored value on a
//! conflict). Writes reach the user's connected devices as `state_changed`.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::valid_id;
use switchboard_actors::protocol::ErrorCode;
use switchboard_actors::store::models::{StateDoc, StateOutcome};
use switchboard_actors::sync_engine::{state_result, CurrentDoc, PutDocument, StateResult};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody, ErrorDetail};
use crate::routes::body::JsonBody;
use crate::routes::caller::Caller;
use crate::state::AppState;

/// Most documents one fetch returns.
const MAX_PAGE: i64 = 1000;

/// `GET /api/state/{collection}` query.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Since {
    /// The revision the device has seen (0: everything).
    #[serde(default)]
    since_version: u64,
    /// Most documents to return (default and most: 1,000).
    #[serde(default)]
    limit: Option<u32>,
}

/// `GET /api/state/{collection}` reply.
#[derive(Serialize, ToSchema)]
pub struct Changes {
    /// The collection.
    collection: String,
    /// Written after `since_version`, oldest first.
    documents: Vec<StateDoc>,
    /// The newest revision in `documents` while `has_more`, else the collection's revision:
    /// the next fetch's `since_version`.
    revision: i64,
    /// More documents wait: fetch again from `revision`.
    has_more: bool,
}

/// `PUT /api/state/{collection}/{key}` body.
#[derive(Deserialize, ToSchema)]
pub struct Put {
    /// The document: any JSON.
    value: serde_json::Value,
    /// The version this write is based on (0: the key has no document yet).
    base_version: u64,
}

/// `PUT /api/state/{collection}/{key}` reply on a conflict (fields in name order).
#[derive(Serialize, ToSchema)]
pub struct StateConflict {
    /// The stored document the write lost to.
    current: Option<CurrentDoc>,
    /// `conflict`.
    error: ErrorDetail,
}

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if valid_id(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("`{what}` is not valid")))
    }
}

/// The caller's documents of a collection written after revision `since_version`.
#[utoipa::path(get, path = "/api/state/{collection}", tag = "state",
    summary = "The caller's documents written after a revision",
    params(("collection" = String, Path, description = "Collection"), Since),
    responses(
        (status = 200, description = "The documents", body = Changes),
        (status = 400, description = "Bad collection or revision", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "An API key (this route acts as a user)", body = ErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn changes(
    caller: Caller,
    app: web::Data<AppState>,
    collection: web::Path<String>,
    q: web::Query<Since>,
) -> Result<HttpResponse, ApiError> {
    let collection = collection.into_inner();
    check_name("collection", &collection)?;
    let since = i64::try_from(q.since_version)
        .map_err(|_| ApiError::BadRequest("`since_version` is too large".into()))?;
    let limit = q
        .limit
        .map_or(MAX_PAGE, |l| i64::from(l).clamp(1, MAX_PAGE));
    let (mut documents, now) = app
        .tree
        .reads
        .state_since(
            caller.user.to_string(),
            collection.clone(),
            since,
            limit + 1,
        )
        .await?;
    let has_more = documents.len() as i64 > limit;
    documents.truncate(limit as usize);
    let revision = match documents.last() {
        Some(last) if has_more => last.revision,
        _ => now.max(since),
    };
    Ok(HttpResponse::Ok().json(Changes {
        collection,
        documents,
        revision,
        has_more,
    }))
}

/// Writes one of the caller's documents if `base_version` is still its version.
#[utoipa::path(put, path = "/api/state/{collection}/{key}", tag = "state",
    summary = "Write a document on its base version",
    params(("collection" = String, Path, description = "Collection"), ("key" = String, Path, description = "Key")),
    request_body = Put,
    responses(
        (status = 200, description = "Applied", body = StateResult),
        (status = 400, description = "Bad collection, key or body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "An API key (this route acts as a user)", body = ErrorBody),
        (status = 409, description = "Conflict, with the stored document", body = StateConflict),
    ),
    security(("bearer" = [])),
)]
pub async fn put(
    caller: Caller,
    app: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: JsonBody<Put>,
) -> Result<HttpResponse, ApiError> {
    let (collection, key) = path.into_inner();
    check_name("collection", &collection)?;
    check_name("key", &key)?;
    let body = body.into_inner();
    let base_version = i64::try_from(body.base_version)
        .map_err(|_| ApiError::BadRequest("`base_version` is too large".into()))?;
    let value = serde_json::to_string(&body.value)
        .map_err(|e| ApiError::BadRequest(format!("`value`: {e}")))?;
    let put = PutDocument {
        user: caller.user.clone(),
        collection: collection.clone(),
        key: key.clone(),
        value,
        base_version,
        client_id: None,
        origin: None,
    };
    let outcome = app.tree.sync.send(put).await??;
    let result = state_result(None, &collection, &key, &outcome);
    Ok(match outcome {
        StateOutcome::Applied { .. } => HttpResponse::Ok().json(result),
        StateOutcome::Conflict { .. } => HttpResponse::Conflict().json(StateConflict {
            error: ErrorDetail {
                code: ErrorCode::Conflict,
                message: format!(
                    "`{key}` is at version {}, not {base_version}",
                    result.version
                ),
            },
            current: result.current,
        }),
    })
}
