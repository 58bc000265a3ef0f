//! # Switchboard server
//!
//! The HTTP side of the broker: configuration, the CLI's building blocks, authentication,
//! admission limits, the WebSocket session actor and the REST routes. The engine (every
//! other actor, the store) lives in the `switchboard-actors` crate; dependencies point one
//! way, from here to there.
//!
//! A client frame travels: [`session`] → router → channel → persistence → ack → fan-out
//! (see `switchboard_actors`).

pub mod api_keys;
pub mod auth;
pub mod config;
pub mod error;
pub mod gate;
pub mod limit_share;
pub mod logging;
pub mod net;
pub mod revocation_watch;
pub mod routes;
pub mod service_manager;
pub mod session;
pub mod startup;
pub mod state;
pub mod tls;

pub use config::Settings;
pub use startup::Application;
