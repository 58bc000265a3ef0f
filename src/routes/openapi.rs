//! `GET /api/openapi.json`: the OpenAPI 3.1 document of every HTTP route, made by `utoipa`
//! from the declarations below. Bodies are described in words (docs/PROTOCOL.md has their
//! fields); a test holds the document to the router's own route list (`routes!`).

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard",
        description = "Real-time messaging broker: REST API, fallback transports and operations endpoints. \
                       Errors are {\"error\": {\"code\", \"message\"}} (docs/PROTOCOL.md, section 11).",
    ),
    paths(operations::op_get_ws, operations::op_get_health, operations::op_get_ready, operations::op_get_status, operations::op_get_metrics, operations::op_get_sse, operations::op_get_poll, operations::op_get_api_openapi_json, operations::op_post_api_auth_token, operations::op_post_api_auth_refresh, operations::op_post_api_auth_revoke, operations::op_get_api_auth_validate, operations::op_post_api_groups, operations::op_get_api_groups_id, operations::op_put_api_groups_id_members_user_id, operations::op_delete_api_groups_id_members_user_id, operations::op_get_api_users_following_status, operations::op_put_api_users_me_following, operations::op_get_api_users_user_id_status, operations::op_get_api_state_collection, operations::op_put_api_state_collection_key, operations::op_post_api_admin_publish, operations::op_post_api_admin_api_keys, operations::op_get_api_admin_api_keys, operations::op_delete_api_admin_api_keys_id, operations::op_get_api_admin_connections, operations::op_delete_api_admin_connections_conn_id, operations::op_post_api_admin_debug_crash_actor, operations::op_post_api_messages, operations::op_post_api_messages_read, operations::op_get_api_messages_search, operations::op_get_api_messages_undelivered, operations::op_get_api_messages_unread, operations::op_get_api_messages_user_user_id, operations::op_get_api_messages_group_group_id),
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
pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json())
}

/// The operations, one declaration each: only their attributes are read (by `utoipa`).
#[allow(dead_code)]
mod operations {
    #[utoipa::path(get, path = "/ws", tag = "transports", summary = "WebSocket upgrade (contract section 2): token in Authorization, ?token= or an auth frame",
        params(("token" = String, Query, description = "Access token (or Authorization: Bearer)"), ("client_id" = String, Query, description = "Device id kept across reconnects"), ("device" = String, Query, description = "web, desktop, mobile, extension, cli or server")),
        responses((status = 101, description = "Switching protocols"), (status = 401, description = "Bad, expired or revoked token"), (status = 403, description = "Origin not allowed"), (status = 429, description = "Too many connections for the user or from the address"), (status = 503, description = "Node full")),
    )]
    fn op_get_ws() {}

    #[utoipa::path(get, path = "/health", tag = "operations", summary = "Liveness",
        responses((status = 200, description = "The process serves HTTP")),
    )]
    fn op_get_health() {}

    #[utoipa::path(get, path = "/ready", tag = "operations", summary = "Readiness: the database (and Redis, when configured) answer",
        responses((status = 200, description = "Ready"), (status = 503, description = "Not ready, with the reason")),
    )]
    fn op_get_ready() {}

    #[utoipa::path(get, path = "/status", tag = "operations", summary = "Actor health, connections, store state (docs/OPERATIONS.md)",
        responses((status = 200, description = "The status document")),
    )]
    fn op_get_status() {}

    #[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus text format",
        responses((status = 200, description = "Metrics")),
    )]
    fn op_get_metrics() {}

    #[utoipa::path(get, path = "/sse", tag = "transports", summary = "Server frames as Server-Sent Events; Last-Event-ID resumes",
        params(("token" = String, Query, description = "Access token (or Authorization: Bearer)"), ("client_id" = String, Query, description = "Device id"), ("subscribe" = String, Query, description = "Broadcast channels, comma-separated"), ("last_event_id" = String, Query, description = "Resume cursor (or the Last-Event-ID header)")),
        responses((status = 200, description = "text/event-stream"), (status = 401, description = "No valid token"), (status = 403, description = "Origin not allowed"), (status = 429, description = "Rate or connection limit")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_get_sse() {}

    #[utoipa::path(get, path = "/poll", tag = "transports", summary = "Long polling: {frames, cursor}",
        params(("cursor" = String, Query, description = "The previous answer's cursor"), ("timeout_s" = String, Query, description = "Longest wait, at most 120 (default 25)"), ("client_id" = String, Query, description = "Device id"), ("subscribe" = String, Query, description = "Broadcast channels, comma-separated")),
        responses((status = 200, description = "{frames, cursor}"), (status = 401, description = "No valid token"), (status = 429, description = "Rate or connection limit")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_get_poll() {}

    #[utoipa::path(get, path = "/api/openapi.json", tag = "operations", summary = "This document",
        responses((status = 200, description = "The OpenAPI document")),
    )]
    fn op_get_api_openapi_json() {}

    #[utoipa::path(post, path = "/api/auth/token", tag = "auth", summary = "Mint an access and a refresh token for a user",
        request_body(content = Object, description = "{user_id, roles?, ttl_s?, device?}", content_type = "application/json"),
        responses((status = 200, description = "{access_token, refresh_token, expires_at}"), (status = 400, description = "Bad field"), (status = 403, description = "Not an admin"), (status = 501, description = "This broker only verifies tokens")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_post_api_auth_token() {}

    #[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", summary = "Exchange a refresh token for a new pair (works once)",
        request_body(content = Object, description = "{refresh_token}", content_type = "application/json"),
        responses((status = 200, description = "{access_token, refresh_token, expires_at}"), (status = 401, description = "Invalid, used or revoked refresh token")),
    )]
    fn op_post_api_auth_refresh() {}

    #[utoipa::path(post, path = "/api/auth/revoke", tag = "auth", summary = "Revoke a token by token or jti; its connections close with 4001",
        request_body(content = Object, description = "{token} or {jti}", content_type = "application/json"),
        responses((status = 200, description = "{jti, revoked}"), (status = 400, description = "Neither or both, or not a revocable token"), (status = 403, description = "Another user's token")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_post_api_auth_revoke() {}

    #[utoipa::path(get, path = "/api/auth/validate", tag = "auth", summary = "What the caller's token or API key is",
        responses((status = 200, description = "{valid, kind, …}"), (status = 401, description = "Not valid")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_get_api_auth_validate() {}

    #[utoipa::path(post, path = "/api/groups", tag = "groups", summary = "Create a group owned by the caller",
        request_body(content = Object, description = "{id?, name, members?}", content_type = "application/json"),
        responses((status = 201, description = "The group"), (status = 409, description = "The id exists")),
        security(("bearer" = [])),
    )]
    fn op_post_api_groups() {}

    #[utoipa::path(get, path = "/api/groups/{id}", tag = "groups", summary = "A group and its members",
        params(("id" = String, Path, description = "Group id")),
        responses((status = 200, description = "The group"), (status = 403, description = "Not a member"), (status = 404, description = "No such group")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_get_api_groups_id() {}

    #[utoipa::path(put, path = "/api/groups/{id}/members/{user_id}", tag = "groups", summary = "Add a member",
        params(("id" = String, Path, description = "Group id"), ("user_id" = String, Path, description = "User id")),
        responses((status = 200, description = "The group"), (status = 403, description = "Not the owner or an admin"), (status = 404, description = "No such group")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_put_api_groups_id_members_user_id() {}

    #[utoipa::path(delete, path = "/api/groups/{id}/members/{user_id}", tag = "groups", summary = "Remove a member",
        params(("id" = String, Path, description = "Group id"), ("user_id" = String, Path, description = "User id")),
        responses((status = 200, description = "The group"), (status = 403, description = "Not the owner or an admin"), (status = 404, description = "No such group")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_delete_api_groups_id_members_user_id() {}

    #[utoipa::path(get, path = "/api/users/following/status", tag = "presence", summary = "Presence of the users the caller follows",
        responses((status = 200, description = "{users: […]}")),
        security(("bearer" = [])),
    )]
    fn op_get_api_users_following_status() {}

    #[utoipa::path(put, path = "/api/users/me/following", tag = "presence", summary = "Set whom the caller follows",
        request_body(content = Object, description = "{user_ids: […]}", content_type = "application/json"),
        responses((status = 200, description = "The list"), (status = 400, description = "Bad ids or too many")),
        security(("bearer" = [])),
    )]
    fn op_put_api_users_me_following() {}

    #[utoipa::path(get, path = "/api/users/{user_id}/status", tag = "presence", summary = "One user's presence (never seen: offline)",
        params(("user_id" = String, Path, description = "User id")),
        responses((status = 200, description = "{user_id, status, text?, last_seen?}")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_get_api_users_user_id_status() {}

    #[utoipa::path(get, path = "/api/state/{collection}", tag = "state", summary = "The caller's documents written after a revision",
        params(("collection" = String, Path, description = "Collection"), ("since_version" = String, Query, description = "Revision already seen"), ("limit" = String, Query, description = "Most documents")),
        responses((status = 200, description = "{documents, revision, has_more}")),
        security(("bearer" = [])),
    )]
    fn op_get_api_state_collection() {}

    #[utoipa::path(put, path = "/api/state/{collection}/{key}", tag = "state", summary = "Write a document on its base version",
        params(("collection" = String, Path, description = "Collection"), ("key" = String, Path, description = "Key")),
        request_body(content = Object, description = "{value, base_version}", content_type = "application/json"),
        responses((status = 200, description = "Applied: {version, revision}"), (status = 409, description = "Conflict, with current")),
        security(("bearer" = [])),
    )]
    fn op_put_api_state_collection_key() {}

    #[utoipa::path(post, path = "/api/admin/publish", tag = "admin", summary = "Store and deliver a message on any channel",
        request_body(content = Object, description = "{channel, type?, payload, id?}", content_type = "application/json"),
        responses((status = 200, description = "The ack payload"), (status = 403, description = "Not allowed to publish")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_post_api_admin_publish() {}

    #[utoipa::path(post, path = "/api/admin/api-keys", tag = "admin", summary = "Make an API key (shown once)",
        request_body(content = Object, description = "{name, scopes}", content_type = "application/json"),
        responses((status = 201, description = "The key's fields and key"), (status = 400, description = "Bad name or scopes"), (status = 403, description = "Not an admin")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_post_api_admin_api_keys() {}

    #[utoipa::path(get, path = "/api/admin/api-keys", tag = "admin", summary = "List API keys (without secrets)",
        responses((status = 200, description = "{keys: […]}")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_get_api_admin_api_keys() {}

    #[utoipa::path(delete, path = "/api/admin/api-keys/{id}", tag = "admin", summary = "Revoke an API key",
        params(("id" = String, Path, description = "Key id")),
        responses((status = 200, description = "The key, with revoked_at"), (status = 404, description = "No such key")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_delete_api_admin_api_keys_id() {}

    #[utoipa::path(get, path = "/api/admin/connections", tag = "admin", summary = "This broker's connections",
        params(("user_id" = String, Query, description = "Only this user's"), ("limit" = String, Query, description = "1 to 1000, default 100")),
        responses((status = 200, description = "{connections, total}")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_get_api_admin_connections() {}

    #[utoipa::path(delete, path = "/api/admin/connections/{conn_id}", tag = "admin", summary = "Close a connection (1008)",
        params(("conn_id" = String, Path, description = "Connection id, e.g. c12")),
        responses((status = 200, description = "The connection"), (status = 404, description = "Not on this broker")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_delete_api_admin_connections_conn_id() {}

    #[utoipa::path(post, path = "/api/admin/debug/crash/{actor}", tag = "admin", summary = "Fault drill: fail an actor (debug.fault_injection only)",
        params(("actor" = String, Path, description = "Actor name")),
        responses((status = 200, description = "Crashed"), (status = 404, description = "Off or unknown actor")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_post_api_admin_debug_crash_actor() {}

    #[utoipa::path(post, path = "/api/messages", tag = "messages", summary = "Send any client frame over HTTP; the answer is its ack or error frame",
        params(("client_id" = String, Query, description = "Device id"), ("user_id" = String, Query, description = "With an API key (publish): the user to send as")),
        request_body(content = Object, description = "A client frame", content_type = "application/json"),
        responses((status = 200, description = "The answer frame"), (status = 204, description = "Accepted; no answer frame"), (status = 400, description = "Bad frame (error frame)"), (status = 403, description = "Forbidden (error frame)")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_post_api_messages() {}

    #[utoipa::path(post, path = "/api/messages/read", tag = "messages", summary = "Move the caller's read cursor",
        request_body(content = Object, description = "{channel, up_to_seq}", content_type = "application/json"),
        responses((status = 200, description = "{channel, up_to_seq}")),
        security(("bearer" = [])),
    )]
    fn op_post_api_messages_read() {}

    #[utoipa::path(get, path = "/api/messages/search", tag = "messages", summary = "Full-text search over what the caller may read",
        params(("q" = String, Query, description = "Words, all required"), ("channel" = String, Query, description = "One channel"), ("from" = String, Query, description = "Sender"), ("to" = String, Query, description = "Target"), ("limit" = String, Query, description = "Most results"), ("before" = String, Query, description = "Paging cursor")),
        responses((status = 200, description = "{messages, next?, complete}")),
        security(("bearer" = [])),
    )]
    fn op_get_api_messages_search() {}

    #[utoipa::path(get, path = "/api/messages/undelivered", tag = "messages", summary = "What a device has not marked delivered",
        params(("client_id" = String, Query, description = "Device id")),
        responses((status = 200, description = "{channels: […]}")),
        security(("bearer" = [])),
    )]
    fn op_get_api_messages_undelivered() {}

    #[utoipa::path(get, path = "/api/messages/unread", tag = "messages", summary = "Per channel: last seq and read cursor",
        responses((status = 200, description = "{channels: […]}")),
        security(("bearer" = [])),
    )]
    fn op_get_api_messages_unread() {}

    #[utoipa::path(get, path = "/api/messages/user/{user_id}", tag = "messages", summary = "DM history with a user",
        params(("user_id" = String, Path, description = "The other user"), ("before_seq" = String, Query, description = "Exclusive upper bound"), ("after_seq" = String, Query, description = "Exclusive lower bound"), ("limit" = String, Query, description = "At most 200")),
        responses((status = 200, description = "{messages, has_more}")),
        security(("bearer" = [])),
    )]
    fn op_get_api_messages_user_user_id() {}

    #[utoipa::path(get, path = "/api/messages/group/{group_id}", tag = "messages", summary = "Group history",
        params(("group_id" = String, Path, description = "Group id"), ("before_seq" = String, Query, description = "Exclusive upper bound"), ("after_seq" = String, Query, description = "Exclusive lower bound"), ("limit" = String, Query, description = "At most 200")),
        responses((status = 200, description = "{messages, has_more}"), (status = 403, description = "Not a member"), (status = 404, description = "No such group")),
        security(("bearer" = []), ("api_key" = [])),
    )]
    fn op_get_api_messages_group_group_id() {}
}
