//! # Switchboard's engine
//!
//! Every actor of the broker and the messages between them; no HTTP here. The server crate
//! (`switchboard`) owns the WebSocket session actor and the REST routes, and talks to this
//! crate through [`tree::Tree`] and [`session_handle::SessionHandle`].
//!
//! # Layout
//! A message goes one way through the modules:
//! session (server crate) → [`router`] → [`channel`] → [`store::batcher`] →
//! [`store::writer`] (commit) → [`channel`] (ack, then fan-out in seq order) → sessions.
//!
//! - [`ids`], [`protocol`], [`json_check`], [`error_code`]: names, frames and error codes
//!   of the wire contract.
//! - [`fast_map`]: the hash maps of the message path.
//! - [`session_handle`]: how the engine reaches a session (bounded, never blocking).
//! - [`router`]: session registry and channel registry.
//! - [`channel`]: one actor per active channel.
//! - [`presence`], [`offline_queue`], [`sync_engine`]: per-user trackers.
//! - [`store`]: schema, queries, the batching writer and the readers.
//! - [`push_notifier`], [`command_proxy`]: calls out to the application's HTTP backend.
//! - [`health`]: what `/status` reports; [`tree`]: starts and supervises all of it.

pub mod channel;
pub mod cluster;
pub mod command_proxy;
pub mod error_code;
pub mod fast_map;
pub mod health;
pub mod ids;
pub mod json_check;
pub mod metrics;
pub mod offline_queue;
pub mod presence;
pub mod protocol;
pub mod push_notifier;
pub mod router;
pub mod seq;
pub mod session_handle;
pub mod store;
pub mod sync_engine;
pub mod tree;
