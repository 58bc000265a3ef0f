//! Acceptance tests: the wire contract (`shared/spec/PROTOCOL.md`) against a real broker.
//! One test binary; every test starts its own server through `helpers::spawn_app`.

mod admin_connections;
mod api_keys;
mod bad_input;
mod chat;
mod cluster;
mod command;
mod encryption;
mod fuzz;
mod groups;
mod hardening;
mod helpers;
mod history;
mod metrics;
mod openapi;
mod ops;
mod presence;
mod process;
mod push;
mod search;
mod session;
mod slow_consumer;
mod state;
mod subscribe;
mod sync;
mod tls;
mod tokens;
mod transports;
mod web_security;
