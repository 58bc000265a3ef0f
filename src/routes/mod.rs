//! HTTP routes: the WebSocket entry, operations endpoints and the REST API.

pub mod address_limit;
pub mod admin;
pub mod api_keys;
pub mod auth;
pub mod body;
pub mod caller;
pub mod connections;
pub mod cors;
pub mod groups;
pub mod messages;
pub mod offline;
pub mod ops;
pub mod request_id;
pub mod search;
pub mod state;
pub mod transports;
pub mod users;
pub mod ws;

use actix_web::middleware::from_fn;
use actix_web::web;

use crate::error::ApiError;
use crate::state::AppState;

/// Registers every route, with body and query errors mapped to the contract's error shape.
pub fn configure(cfg: &mut web::ServiceConfig, state: web::Data<AppState>) {
    // Request bodies ([`body::JsonBody`]): as large as a client frame, at least 64 KiB.
    let body = web::PayloadConfig::new(state.settings.limits.max_frame_bytes.max(64 * 1024));
    let query = web::QueryConfig::default()
        .error_handler(|e, _| ApiError::BadRequest(format!("invalid query: {e}")).into());
    let path = web::PathConfig::default()
        .error_handler(|e, _| ApiError::BadRequest(format!("invalid path: {e}")).into());
    cfg.app_data(state)
        .app_data(body)
        .app_data(query)
        .app_data(path)
        .route(ws::PATH, web::get().to(ws::not_upgraded))
        .route("/health", web::get().to(ops::health))
        .route("/ready", web::get().to(ops::ready))
        .route("/status", web::get().to(ops::status))
        .route("/metrics", web::get().to(ops::metrics))
        .service(
            web::resource("/sse")
                .wrap(from_fn(address_limit::limit))
                .route(web::get().to(transports::sse)),
        )
        .service(
            web::resource("/poll")
                .wrap(from_fn(address_limit::limit))
                .route(web::get().to(transports::poll)),
        )
        .service(
            web::scope("/api")
                .wrap(from_fn(address_limit::limit))
                .service(small_body("/auth/token").route(web::post().to(auth::mint_token)))
                .service(small_body("/auth/refresh").route(web::post().to(auth::refresh)))
                .service(small_body("/auth/revoke").route(web::post().to(auth::revoke)))
                .route("/auth/validate", web::get().to(auth::validate))
                .service(
                    web::resource("/groups")
                        .app_data(web::PayloadConfig::new(groups::CREATE_BODY_LIMIT))
                        .route(web::post().to(groups::create)),
                )
                .route("/groups/{id}", web::get().to(groups::get))
                .route(
                    "/groups/{id}/members/{user_id}",
                    web::put().to(groups::add_member),
                )
                .route(
                    "/groups/{id}/members/{user_id}",
                    web::delete().to(groups::remove_member),
                )
                .route(
                    "/users/following/status",
                    web::get().to(users::following_status),
                )
                .route("/users/me/following", web::put().to(users::set_following))
                .route("/users/{user_id}/status", web::get().to(users::status))
                .route("/state/{collection}", web::get().to(state::changes))
                .route("/state/{collection}/{key}", web::put().to(state::put))
                .route("/admin/publish", web::post().to(admin::publish))
                .service(
                    small_body("/admin/api-keys")
                        .route(web::post().to(api_keys::create))
                        .route(web::get().to(api_keys::list)),
                )
                .route("/admin/api-keys/{id}", web::delete().to(api_keys::revoke))
                .route("/admin/connections", web::get().to(connections::list))
                .route(
                    "/admin/connections/{conn_id}",
                    web::delete().to(connections::close),
                )
                .route("/admin/debug/crash/{actor}", web::post().to(admin::crash))
                .route("/messages", web::post().to(transports::send))
                .service(small_body("/messages/read").route(web::post().to(messages::read)))
                .route("/messages/search", web::get().to(search::search))
                .route("/messages/undelivered", web::get().to(offline::undelivered))
                .route("/messages/unread", web::get().to(offline::unread))
                .route(
                    "/messages/user/{user_id}",
                    web::get().to(messages::user_history),
                )
                .route(
                    "/messages/group/{group_id}",
                    web::get().to(messages::group_history),
                )
                .default_service(web::to(not_found)),
        )
        .default_service(web::to(not_found));
}

/// Bodies of the routes that take a few small fields (tokens, keys, cursors) are refused
/// with 413 beyond this, well before the general limit.
pub const SMALL_BODY_LIMIT: usize = 16 * 1024;

/// A resource at `path` whose request bodies are limited to [`SMALL_BODY_LIMIT`].
fn small_body(path: &str) -> actix_web::Resource {
    web::resource(path).app_data(web::PayloadConfig::new(SMALL_BODY_LIMIT))
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such endpoint".into()))
}
