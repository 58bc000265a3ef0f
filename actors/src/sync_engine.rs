//! `SyncEngine`: small per-user documents kept in sync across devices (contract section 5,
//! `state_sync`).
//!
//! A document is a JSON value under (user, collection, key) with a version per key: a write
//! names the version it was based on and applies only if that is still the key's version
//! (optimistic concurrency; a new key has version 0). Otherwise it is a conflict, answered
//! with what is stored, and nothing is written: no write silently overwrites another. Each
//! applied write also takes the collection's next revision, so a device fetches what
//! changed since the revision it last saw; and the user's other connections get
//! `state_changed` at once.
//!
//! Receives [`PutDocument`] from sessions and REST. The documents live in the store (the
//! write goes through the write batcher, in the lane of its user, so one user's writes
//! commit in order); the engine keeps nothing in memory, so a restart loses nothing.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::health::ActorHealth;
use crate::ids::{ConnId, UserId};
use crate::protocol::encode;
use crate::router::Router;
use crate::session_handle::{FanOut, Outbound};
use crate::store::batcher::{PersistAndReply, WriteBatcher};
use crate::store::models::StateOutcome;
use crate::store::write::{WriteOp, WriteOutcome};
use crate::store::StoreError;

/// The sync-engine actor.
pub struct SyncEngine {
    batcher: Addr<WriteBatcher>,
    router: Addr<Router>,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl SyncEngine {
    /// An engine writing through `batcher` and telling devices through `router`.
    pub fn new(
        batcher: Addr<WriteBatcher>,
        router: Addr<Router>,
        health: Arc<ActorHealth>,
    ) -> Self {
        SyncEngine {
            batcher,
            router,
            health,
        }
    }
}

impl Actor for SyncEngine {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Context<Self>) {
        self.health.started();
    }
}

impl Supervised for SyncEngine {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
    }
}

crate::health_handlers!(SyncEngine);

/// A device writes one document.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<StateOutcome, StoreError>")]
pub struct PutDocument {
    /// Owner.
    pub user: UserId,
    /// Collection.
    pub collection: String,
    /// Key.
    pub key: String,
    /// JSON text (checked by the caller).
    pub value: String,
    /// The version the device saw (0: a new key).
    pub base_version: i64,
    /// The writing device, if known.
    pub client_id: Option<Arc<str>>,
    /// The writing connection: it gets the result, not `state_changed`.
    pub origin: Option<ConnId>,
}

/// `state_changed`: what the user's other devices get.
#[derive(Serialize)]
struct StateChanged<'a> {
    collection: &'a str,
    key: &'a str,
    value: &'a RawValue,
    version: i64,
    revision: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_by: Option<&'a str>,
}

impl Handler<PutDocument> for SyncEngine {
    type Result = ResponseActFuture<Self, Result<StateOutcome, StoreError>>;

    fn handle(&mut self, put: PutDocument, _: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        let op = WriteOp::PutState {
            user_id: put.user.to_string(),
            collection: put.collection.clone(),
            key: put.key.clone(),
            value: put.value.clone(),
            base_version: put.base_version,
            client_id: put.client_id.as_deref().map(str::to_owned),
        };
        let req = self.batcher.send(PersistAndReply(op));
        Box::pin(req.into_actor(self).map(move |res, act, _| {
            let outcome = match res {
                Ok(Ok(WriteOutcome::State(outcome))) => outcome,
                Ok(Ok(_)) => return Err(StoreError::Invariant("a state write answered otherwise")),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(StoreError::StoreGone),
            };
            if let StateOutcome::Applied { version, revision } = outcome {
                act.tell_devices(&put, version, revision);
            }
            Ok(outcome)
        }))
    }
}

impl SyncEngine {
    /// `state_changed` to every connection of the user but the writing one.
    fn tell_devices(&self, put: &PutDocument, version: i64, revision: i64) {
        let Ok(value) = serde_json::from_str::<&RawValue>(&put.value) else {
            return;
        };
        let frame = encode(
            "state_changed",
            None,
            StateChanged {
                collection: &put.collection,
                key: &put.key,
                value,
                version,
                revision,
                updated_by: put.client_id.as_deref(),
            },
        );
        self.router.do_send(FanOut {
            users: Arc::from([put.user.clone()]),
            skip_conn: put.origin,
            skip_user: None,
            item: Outbound::Frame(frame),
        });
    }
}

/// Whether a state write was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateStatus {
    /// Written.
    Applied,
    /// `base_version` was not the key's version: nothing written.
    Conflict,
}

/// The stored document a conflicting write lost to.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CurrentDoc {
    /// Its value (`null` for a key with no document).
    pub value: serde_json::Value,
    /// Its version (0 for a key with no document).
    pub version: i64,
}

/// The `state_sync_result` payload (also the reply of `PUT /api/state/{collection}/{key}`).
/// Fields in name order, as the payload has always been written.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StateResult {
    /// The collection written.
    pub collection: String,
    /// On a conflict: the stored document.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<CurrentDoc>,
    /// The key written.
    pub key: String,
    /// The client frame this answers (WebSocket only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_id: Option<String>,
    /// When applied: the collection's revision now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// `applied` or `conflict`.
    pub status: StateStatus,
    /// The key's version now (applied), or the stored one (conflict).
    pub version: i64,
}

/// The `state_sync_result` payload for `outcome` (also the REST reply): `status`
/// `applied` with the key's new `version` and the collection's `revision`, or `conflict`
/// with the stored `version` and `current` {`value`, `version`} (`null` and 0 for a key
/// with no document).
pub fn state_result(
    ref_id: Option<&str>,
    collection: &str,
    key: &str,
    outcome: &StateOutcome,
) -> StateResult {
    let (status, version, revision, current) = match outcome {
        StateOutcome::Applied { version, revision } => {
            (StateStatus::Applied, *version, Some(*revision), None)
        }
        StateOutcome::Conflict { current } => {
            let value = current
                .as_ref()
                .and_then(|d| serde_json::from_str::<serde_json::Value>(&d.value).ok())
                .unwrap_or(serde_json::Value::Null);
            let version = current.as_ref().map_or(0, |d| d.version);
            let current = CurrentDoc { value, version };
            (StateStatus::Conflict, version, None, Some(current))
        }
    };
    StateResult {
        collection: collection.to_owned(),
        current,
        key: key.to_owned(),
        ref_id: ref_id.map(str::to_owned),
        revision,
        status,
        version,
    }
}
