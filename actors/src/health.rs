//! Actor health, as `GET /status` shows it (contract section 9).
//!
//! Each long-lived actor owns an [`ActorHealth`] shared with the [`HealthBoard`]. The mailbox
//! backlog is measured, not guessed: a [`Probe`] joins the back of the mailbox, and the number
//! of messages the actor handled between sending it and answering it is what stood ahead.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use actix::prelude::*;
use serde::Serialize;

const RUNNING: u8 = 0;
const RESTARTING: u8 = 1;
const STOPPED: u8 = 2;

/// Live health of one actor (or one pool of identical sync actors).
#[derive(Debug)]
pub struct ActorHealth {
    /// Name shown by `/status`.
    pub name: String,
    state: AtomicU8,
    restarts: AtomicU32,
    handled: AtomicU64,
    started_at: Mutex<Instant>,
    last_error: Mutex<Option<String>>,
}

/// What `/status` prints for one actor.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HealthSnapshot {
    /// Actor name.
    pub name: String,
    /// `running`, `restarting` or `stopped`.
    #[schema(value_type = String)]
    pub state: &'static str,
    /// Messages waiting in its mailbox (`null` if it did not answer the probe in time).
    pub mailbox: Option<u64>,
    /// Times it was restarted by its supervisor.
    pub restarts: u32,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// Seconds since it last (re)started.
    pub uptime_s: u64,
}

impl ActorHealth {
    /// A new cell, in state `running`.
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(ActorHealth {
            name: name.into(),
            state: AtomicU8::new(RUNNING),
            restarts: AtomicU32::new(0),
            handled: AtomicU64::new(0),
            started_at: Mutex::new(Instant::now()),
            last_error: Mutex::new(None),
        })
    }

    /// Counts one handled message (one relaxed add: cheap enough for hot handlers).
    #[inline]
    pub fn handled(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages handled so far.
    pub fn handled_count(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// The actor (re)started.
    pub fn started(&self) {
        self.state.store(RUNNING, Ordering::Relaxed);
        if let Ok(mut t) = self.started_at.lock() {
            *t = Instant::now();
        }
    }

    /// The supervisor is restarting the actor.
    pub fn restarting(&self) {
        self.state.store(RESTARTING, Ordering::Relaxed);
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The actor stopped for good.
    pub fn stopped(&self) {
        self.state.store(STOPPED, Ordering::Relaxed);
    }

    /// Records why the actor is failing.
    pub fn failed(&self, why: impl Into<String>) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why.into());
        }
    }

    /// A snapshot with the given measured backlog.
    pub fn snapshot(&self, mailbox: Option<u64>) -> HealthSnapshot {
        HealthSnapshot {
            name: self.name.clone(),
            state: match self.state.load(Ordering::Relaxed) {
                RUNNING => "running",
                RESTARTING => "restarting",
                _ => "stopped",
            },
            mailbox,
            restarts: self.restarts.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            uptime_s: self
                .started_at
                .lock()
                .map(|t| t.elapsed().as_secs())
                .unwrap_or(0),
        }
    }
}

/// Asks an actor how many messages it has handled; answered from the back of its mailbox.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Probe;

/// Makes a supervised actor fail (fault drills; only routed when `debug.fault_injection`
/// is on). The actor records the reason and stops; its supervisor restarts it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash {
    /// Recorded as `last_error`.
    pub reason: String,
}

/// Implements [`Probe`] and [`Crash`] for an async actor with a `health: Arc<ActorHealth>`.
#[macro_export]
macro_rules! health_handlers {
    ($actor:ty) => {
        impl ::actix::Handler<$crate::health::Probe> for $actor {
            type Result = u64;
            fn handle(&mut self, _: $crate::health::Probe, _: &mut Self::Context) -> u64 {
                self.health.handled_count()
            }
        }
        impl ::actix::Handler<$crate::health::Crash> for $actor {
            type Result = ();
            fn handle(&mut self, msg: $crate::health::Crash, ctx: &mut Self::Context) {
                log::warn!("{}: failing on request: {}", self.health.name, msg.reason);
                self.health.failed(msg.reason);
                ::actix::ActorContext::stop(ctx);
            }
        }
    };
}

/// Every actor whose health `/status` reports, with a way to probe its mailbox.
#[derive(Default)]
pub struct HealthBoard {
    entries: RwLock<Vec<(Arc<ActorHealth>, Recipient<Probe>)>>,
}

impl HealthBoard {
    /// An empty board.
    pub fn new() -> Arc<Self> {
        Arc::new(HealthBoard::default())
    }

    /// Adds an actor.
    pub fn register(&self, health: Arc<ActorHealth>, probe: Recipient<Probe>) {
        if let Ok(mut e) = self.entries.write() {
            e.push((health, probe));
        }
    }

    /// Snapshots of every actor, probing each mailbox for at most `timeout`.
    pub async fn snapshot(&self, timeout: std::time::Duration) -> Vec<HealthSnapshot> {
        let entries: Vec<_> = match self.entries.read() {
            Ok(e) => e.clone(),
            Err(_) => return Vec::new(),
        };
        let probes = entries.iter().map(|(h, probe)| {
            let before = h.handled_count();
            let req = probe.send(Probe);
            async move {
                match tokio::time::timeout(timeout, req).await {
                    Ok(Ok(after)) => h.snapshot(Some(after.saturating_sub(before))),
                    _ => h.snapshot(None),
                }
            }
        });
        futures_util::future::join_all(probes).await
    }
}
