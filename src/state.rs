//! [`AppState`]: what request handlers and sessions share, made once by `startup`.

use std::sync::Arc;
use std::time::Instant;

use switchboard_actors::tree::Tree;

use crate::api_keys::ApiKeys;
use crate::auth::Authority;
use crate::config::Settings;
use crate::gate::ConnectionGate;

/// Everything request handlers and sessions share.
pub struct AppState {
    /// The configuration.
    pub settings: Settings,
    /// The actor tree.
    pub tree: Tree,
    /// Token minting and checking.
    pub auth: Authority,
    /// API key checking (verified keys remembered).
    pub api_keys: ApiKeys,
    /// Connection and rate limits.
    pub gate: Arc<ConnectionGate>,
    /// Redis pool, when `redis.url` is set.
    pub redis: Option<deadpool_redis::Pool>,
    /// When the process started.
    pub started: Instant,
}
