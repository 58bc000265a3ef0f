//! `GET /api/openapi.json`: the OpenAPI 3.1 document of every HTTP route, made by `utoipa`
//! from the handlers' own declarations (`#[utoipa::path]` on each handler) and the types
//! they take and send (`ToSchema`, `IntoParams`). A test holds the document to the
//! router's own route list (`routes!`) and to what the routes really answer.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    admin, api_keys, auth, connections, groups, messages, offline, ops, search, state, transports,
    users, ws,
};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Real-time messaging broker: REST API, fallback transports and operations endpoints. \
                       Errors are {\"error\": {\"code\", \"message\"}} (ErrorBody; docs/PROTOCOL.md, section 11).",
    ),
    paths(
        ws::not_upgraded, ops::health, ops::ready, ops::status, ops::metrics,
        transports::sse, transports::poll, document,
        auth::mint_token, auth::refresh, auth::revoke, auth::validate,
        groups::create, groups::get, groups::add_member, groups::remove_member,
        users::following_status, users::set_following, users::status,
        state::changes, state::put,
        admin::publish, api_keys::create, api_keys::list, api_keys::revoke,
        connections::list, connections::close, admin::crash,
        transports::send, messages::read, search::search,
        offline::undelivered, offline::unread,
        messages::user_history, messages::group_history,
    ),
    components(schemas(
        crate::error::ErrorBody, crate::error::ErrorDetail,
        auth::TokenRequest, auth::TokenPair, auth::RefreshRequest, auth::RevokeRequest,
        auth::Validation, auth::TokenValidation, auth::KeyValidation,
        auth::CredentialKind,
        api_keys::NewKeyRequest, api_keys::NewApiKey, api_keys::ApiKeyView, api_keys::ApiKeyList,
        admin::PublishRequest, admin::Crashed,
        connections::ConnectionList, connections::NodesAsked,
        groups::NewGroup, groups::GroupView,
        users::Following, users::FollowingStatus,
        state::Changes, state::Put, state::StateConflict,
        messages::HistoryPage, messages::DeliveryFrame, messages::DeliveryMeta,
        messages::Read, messages::ReadCursor,
        search::SearchPage, offline::UndeliveredPage, offline::UnreadList, offline::Unread,
        transports::PollPage, ops::Health, ops::Readiness,
        ops::StatusDocument, ops::ConnectionsStatus, ops::ChannelsStatus, ops::DatabaseStatus,
        ops::RedisStatus,
        switchboard_actors::protocol::Ack,
        switchboard_actors::router::ConnectionInfo,
        switchboard_actors::presence::Presence,
        switchboard_actors::store::models::StateDoc,
        switchboard_actors::sync_engine::StateResult,
        switchboard_actors::sync_engine::CurrentDoc,
    )),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Tokens"),
        (name = "groups", description = "Groups"),
        (name = "messages", description = "History, search, sending, read and delivery cursors"),
        (name = "presence", description = "Who is online"),
        (name = "state", description = "Synced documents"),
        (name = "admin", description = "Admin API (admin role or API key)"),
        (name = "transports", description = "WebSocket, SSE and long polling"),
        (name = "operations", description = "Health, status and metrics"),
    ),
)]
pub struct ApiDoc;

/// The two ways to authenticate.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
    }
}

/// The document as JSON, made once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default())
}

/// `GET /api/openapi.json`.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations", summary = "This document",
    responses((status = 200, description = "The OpenAPI document", body = Object)),
)]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}
