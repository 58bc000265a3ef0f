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
pub mod openapi;
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

/// Declares routes once, for the router and for the list the OpenAPI document is held to:
/// `"path" [limit = bytes] (per_address) { method => handler, … }` makes one resource per
/// path (`per_address`: under the per-address request limit), registered by `$register`, and lists
/// every (method, path) in `$list`.
macro_rules! routes {
    ($register:ident, $list:ident, $prefix:literal,
     $( $path:literal $([limit = $limit:expr])? $(($limited:ident))?
        { $($method:ident => $handler:path),+ $(,)? } )*) => {
        /// Every route these declare: (method, full path).
        pub const $list: &[(&str, &str)] = &[ $( $( (stringify!($method), concat!($prefix, $path)), )+ )* ];

        fn $register(cfg: &mut web::ServiceConfig) {
            $(
                let r = web::resource($path) $( .app_data(web::PayloadConfig::new($limit)) )?;
                $( let _ = stringify!($limited); let r = r.wrap(from_fn(address_limit::limit)); )?
                cfg.service(r $( .route(web::$method().to($handler)) )+);
            )*
        }
    };
}

routes!(register_root, ROOT_ROUTES, "",
    "/ws" { get => ws::not_upgraded }
    "/health" { get => ops::health }
    "/ready" { get => ops::ready }
    "/status" { get => ops::status }
    "/metrics" { get => ops::metrics }
    "/sse" (per_address) { get => transports::sse }
    "/poll" (per_address) { get => transports::poll }
);

routes!(register_api, API_ROUTES, "/api",
    "/openapi.json" { get => openapi::document }
    "/auth/token" [limit = SMALL_BODY_LIMIT] { post => auth::mint_token }
    "/auth/refresh" [limit = SMALL_BODY_LIMIT] { post => auth::refresh }
    "/auth/revoke" [limit = SMALL_BODY_LIMIT] { post => auth::revoke }
    "/auth/validate" { get => auth::validate }
    "/groups" [limit = groups::CREATE_BODY_LIMIT] { post => groups::create }
    "/groups/{id}" { get => groups::get }
    "/groups/{id}/members/{user_id}" { put => groups::add_member, delete => groups::remove_member }
    "/users/following/status" { get => users::following_status }
    "/users/me/following" { put => users::set_following }
    "/users/{user_id}/status" { get => users::status }
    "/state/{collection}" { get => state::changes }
    "/state/{collection}/{key}" { put => state::put }
    "/admin/publish" { post => admin::publish }
    "/admin/api-keys" [limit = SMALL_BODY_LIMIT] { post => api_keys::create, get => api_keys::list }
    "/admin/api-keys/{id}" { delete => api_keys::revoke }
    "/admin/connections" { get => connections::list }
    "/admin/connections/{conn_id}" { delete => connections::close }
    "/admin/debug/crash/{actor}" { post => admin::crash }
    "/messages" { post => transports::send }
    "/messages/read" [limit = SMALL_BODY_LIMIT] { post => messages::read }
    "/messages/search" { get => search::search }
    "/messages/undelivered" { get => offline::undelivered }
    "/messages/unread" { get => offline::unread }
    "/messages/user/{user_id}" { get => messages::user_history }
    "/messages/group/{group_id}" { get => messages::group_history }
);

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
        .configure(register_root)
        .service(
            web::scope("/api")
                .wrap(from_fn(address_limit::limit))
                .configure(register_api)
                .default_service(web::to(not_found)),
        )
        .default_service(web::to(not_found));
}

/// Bodies of the routes that take a few small fields (tokens, keys, cursors) are refused
/// with 413 beyond this, well before the general limit.
pub const SMALL_BODY_LIMIT: usize = 16 * 1024;

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such endpoint".into()))
}
