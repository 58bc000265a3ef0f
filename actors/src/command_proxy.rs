//! `CommandProxy`: forwards `command` frames to the application's backend and answers
//! with what it replies (contract section 5).
//!
//! A call is one HTTP POST to `command.backend_url` with the caller's identity and the
//! frame: `{"name", "args", "user_id", "client_id", "ref_id"}`, and
//! `Authorization: Bearer <command.secret>` when a secret is set. A 2xx JSON answer
//! becomes the `response` frame's `result`; a 4xx becomes an `error` frame with the code of
//! its status and the backend's `message`; a timeout, a 5xx, an unreachable backend or an
//! answer that is not JSON becomes `unavailable`.
//!
//! Calls run side by side: the actor spawns each one and answers when it ends, so a slow
//! backend delays only its own `response`, never the session or other calls. At most
//! `max_in_flight` calls are open; more are refused at once. After `breaker_failures`
//! failures in a row the breaker opens: calls are refused for `breaker_cooldown`, then one
//! trial call goes through and its outcome closes or reopens it. A 4xx is the backend
//! working as meant and resets the count.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error_code::ErrorCode;
use crate::health::ActorHealth;
use crate::ids::UserId;
use crate::protocol::{encode, ErrorPayload};

/// Where and how calls go.
#[derive(Debug, Clone)]
pub struct CommandConfig {
    /// The backend (http:// or https://).
    pub url: String,
    /// Sent as a bearer token so the backend knows the call is the broker's; empty: none.
    pub secret: String,
    /// Time a call may take, answer body included.
    pub timeout: Duration,
    /// Calls open at most.
    pub max_in_flight: usize,
    /// Failures in a row that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls.
    pub breaker_cooldown: Duration,
    /// Largest answer body read.
    pub max_response_bytes: usize,
}

/// The breaker's state as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the cooldown ends.
    Open,
    /// The cooldown ended: one trial call is deciding.
    HalfOpen,
}

/// Counters and breaker state shown by `/status`.
#[derive(Debug, Default)]
pub struct CommandStats {
    /// Calls the backend answered with 2xx.
    pub ok: AtomicU64,
    /// Calls answered with an error frame by the backend's doing (4xx, 5xx, timeout…).
    pub failed: AtomicU64,
    /// Calls refused without calling (breaker open, too many in flight).
    pub rejected: AtomicU64,
    /// Calls open now.
    pub in_flight: AtomicU64,
    breaker: AtomicU8,
}

impl CommandStats {
    /// The breaker's state.
    pub fn breaker(&self) -> BreakerState {
        match self.breaker.load(Ordering::Relaxed) {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }

    fn set_breaker(&self, state: BreakerState) {
        self.breaker.store(state as u8, Ordering::Relaxed);
    }
}

/// Why a call has no result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    /// No backend is configured.
    #[error("no command backend is configured (command.backend_url)")]
    NotConfigured,
    /// `max_in_flight` calls are open.
    #[error("too many commands in flight; retry")]
    Busy,
    /// The breaker is open.
    #[error("the command backend is failing; calls resume in {}s", retry_after.as_secs().max(1))]
    BreakerOpen {
        /// Until the next trial call.
        retry_after: Duration,
    },
    /// No answer in time.
    #[error("the command backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend could not be reached or broke off.
    #[error("the command backend is unreachable: {0}")]
    Unreachable(String),
    /// The backend failed (5xx, or it refused the broker's secret).
    #[error("the command backend failed with status {0}")]
    Failed(u16),
    /// The backend's answer was not usable (not JSON, too large).
    #[error("the command backend's answer is unusable: {0}")]
    BadAnswer(String),
    /// The backend refused the call (4xx).
    #[error("{message}")]
    Refused {
        /// The wire code of its status.
        code: ErrorCode,
        /// The backend's message.
        message: String,
    },
}

impl CommandError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            CommandError::NotConfigured => ErrorCode::NotConfigured,
            CommandError::Refused { code, .. } => *code,
            _ => ErrorCode::Unavailable,
        }
    }

    /// When a retry may succeed, for refusals without a call.
    fn retry_after_ms(&self) -> Option<u64> {
        match self {
            CommandError::Busy => Some(100),
            CommandError::BreakerOpen { retry_after } => Some(retry_after.as_millis() as u64),
            _ => None,
        }
    }

    /// Whether the backend is healthy for the breaker: it answered, if only to refuse.
    fn backend_answered(&self) -> bool {
        matches!(self, CommandError::Refused { .. })
    }
}

/// What a call gives: the backend's JSON answer.
pub type CommandResult = Result<Box<RawValue>, CommandError>;

/// One `command` frame of an authenticated user.
#[derive(Message, Debug)]
#[rtype(result = "CommandResult")]
pub struct Call {
    /// The caller.
    pub user: UserId,
    /// The caller's client id.
    pub client_id: Arc<str>,
    /// The command's name.
    pub name: String,
    /// Its arguments (JSON text, checked like a payload).
    pub args: String,
    /// The frame's id.
    pub ref_id: Option<String>,
}

#[derive(Serialize)]
struct BackendRequest<'a> {
    name: &'a str,
    args: &'a RawValue,
    user_id: &'a str,
    client_id: &'a str,
    ref_id: Option<&'a str>,
}

#[derive(Serialize)]
struct ResponsePayload<'a> {
    ref_id: Option<&'a str>,
    result: &'a RawValue,
}

#[derive(Deserialize)]
struct BackendError {
    #[serde(default, alias = "error")]
    message: Option<String>,
}

/// The frame answering a call: `response {ref_id, result}` or `error`.
pub fn answer_frame(res: &CommandResult, ref_id: Option<&str>) -> ByteString {
    match res {
        Ok(result) => encode("response", None, ResponsePayload { ref_id, result }),
        Err(e) => {
            crate::metrics::metrics().error(e.code(), crate::metrics::ErrorVia::Frame);
            encode(
                "error",
                None,
                ErrorPayload {
                    code: e.code(),
                    message: e.to_string(),
                    ref_id: ref_id.map(str::to_owned),
                    retry_after_ms: e.retry_after_ms(),
                },
            )
        }
    }
}

/// The command-proxy actor.
pub struct CommandProxy {
    cfg: CommandConfig,
    client: Option<awc::Client>,
    in_flight: usize,
    /// Failures in a row.
    failures: u32,
    /// While open: when the next trial may go.
    open_until: Option<Instant>,
    /// A trial call is open (half-open state).
    trial: bool,
    stats: Arc<CommandStats>,
    /// Health reported by `/status`.
    pub health: Arc<ActorHealth>,
}

impl CommandProxy {
    /// A proxy calling `cfg.url`.
    pub fn new(cfg: CommandConfig, stats: Arc<CommandStats>, health: Arc<ActorHealth>) -> Self {
        CommandProxy {
            cfg,
            client: None,
            in_flight: 0,
            failures: 0,
            open_until: None,
            trial: false,
            stats,
            health,
        }
    }

    /// Admits a call, or says why not. Sets `trial` when this call decides a half-open
    /// breaker.
    fn admit(&mut self) -> Result<(), CommandError> {
        if self.in_flight >= self.cfg.max_in_flight {
            return Err(CommandError::Busy);
        }
        if let Some(until) = self.open_until {
            let now = Instant::now();
            if now < until {
                return Err(CommandError::BreakerOpen {
                    retry_after: until - now,
                });
            }
            if self.trial {
                return Err(CommandError::BreakerOpen {
                    retry_after: self.cfg.timeout,
                });
            }
            self.trial = true;
            self.stats.set_breaker(BreakerState::HalfOpen);
        }
        Ok(())
    }

    /// Counts a finished call and moves the breaker.
    fn record(&mut self, res: &CommandResult) {
        self.in_flight -= 1;
        self.stats
            .in_flight
            .store(self.in_flight as u64, Ordering::Relaxed);
        let healthy = match res {
            Ok(_) => {
                self.stats.ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                e.backend_answered()
            }
        };
        if healthy {
            self.failures = 0;
            self.trial = false;
            if self.open_until.take().is_some() {
                log::info!("command backend answers again: breaker closed");
            }
            self.stats.set_breaker(BreakerState::Closed);
            return;
        }
        self.failures += 1;
        if self.trial || self.failures >= self.cfg.breaker_failures {
            self.trial = false;
            self.open_until = Some(Instant::now() + self.cfg.breaker_cooldown);
            self.stats.set_breaker(BreakerState::Open);
            let why = res
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            log::warn!(
                "command backend failed {} times in a row ({why}): breaker open for {:?}",
                self.failures,
                self.cfg.breaker_cooldown
            );
            self.health.failed(format!("command backend: {why}"));
        }
    }

    /// The POST of one call and its answer.
    fn call(&mut self, msg: &Call) -> impl std::future::Future<Output = CommandResult> {
        let null = RawValue::NULL;
        let args = serde_json::from_str::<&RawValue>(&msg.args).unwrap_or(null);
        let body = serde_json::to_string(&BackendRequest {
            name: &msg.name,
            args,
            user_id: msg.user.as_str(),
            client_id: &msg.client_id,
            ref_id: msg.ref_id.as_deref(),
        })
        .unwrap_or_default();
        let client = self.client.get_or_insert_with(|| {
            awc::Client::builder()
                .timeout(self.cfg.timeout)
                .disable_redirects()
                .finish()
        });
        let mut req = client
            .post(&self.cfg.url)
            .insert_header(("content-type", "application/json"));
        if !self.cfg.secret.is_empty() {
            req = req.bearer_auth(&self.cfg.secret);
        }
        let (timeout, limit) = (self.cfg.timeout, self.cfg.max_response_bytes);
        let exchange = async move {
            let mut resp = req.send_body(body).await.map_err(|e| match e {
                awc::error::SendRequestError::Timeout => CommandError::Timeout(timeout),
                e => CommandError::Unreachable(e.to_string()),
            })?;
            let status = resp.status();
            let bytes = resp.body().limit(limit).await.map_err(|e| match e {
                awc::error::PayloadError::Overflow => {
                    CommandError::BadAnswer(format!("over {limit} bytes"))
                }
                e => CommandError::Unreachable(e.to_string()),
            })?;
            interpret(status.as_u16(), &bytes)
        };
        async move {
            match tokio::time::timeout(timeout, exchange).await {
                Ok(res) => res,
                Err(_) => Err(CommandError::Timeout(timeout)),
            }
        }
    }
}

/// Counts a call's outcome and time in `/metrics`.
fn observe(outcome: &str, took: Duration) {
    crate::metrics::metrics()
        .commands
        .with_label_values(&[outcome])
        .observe(took.as_secs_f64());
}

/// A backend answer as a call's result.
fn interpret(status: u16, body: &[u8]) -> CommandResult {
    match status {
        200..=299 => {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(RawValue::NULL.to_owned());
            }
            serde_json::from_slice::<Box<RawValue>>(body)
                .map_err(|e| CommandError::BadAnswer(format!("not JSON: {e}")))
        }
        // The backend refuses the broker itself: a misconfiguration, not the caller's fault.
        401 | 407 => Err(CommandError::Failed(status)),
        400..=499 => {
            let code = match status {
                403 => ErrorCode::Forbidden,
                404 => ErrorCode::NotFound,
                409 => ErrorCode::Conflict,
                413 => ErrorCode::TooLarge,
                429 => ErrorCode::RateLimited,
                _ => ErrorCode::BadRequest,
            };
            let message = serde_json::from_slice::<BackendError>(body)
                .ok()
                .and_then(|b| b.message)
                .unwrap_or_else(|| format!("the command backend refused the call ({status})"));
            Err(CommandError::Refused { code, message })
        }
        _ => Err(CommandError::Failed(status)),
    }
}

impl Actor for CommandProxy {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        self.health.started();
        // Calls beyond `max_in_flight` are answered at once, so the mailbox stays short.
        ctx.set_mailbox_capacity(self.cfg.max_in_flight.clamp(16, 4096));
    }
}

impl Supervised for CommandProxy {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.health.restarting();
        self.in_flight = 0;
        self.stats.in_flight.store(0, Ordering::Relaxed);
    }
}

crate::health_handlers!(CommandProxy);

impl Handler<Call> for CommandProxy {
    type Result = ResponseActFuture<Self, CommandResult>;

    fn handle(&mut self, msg: Call, _: &mut Context<Self>) -> Self::Result {
        self.health.handled();
        if let Err(e) = self.admit() {
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            observe("rejected", Duration::ZERO);
            return Box::pin(fut::ready(Err(e)));
        }
        let began = Instant::now();
        self.in_flight += 1;
        self.stats
            .in_flight
            .store(self.in_flight as u64, Ordering::Relaxed);
        let call = self.call(&msg);
        Box::pin(call.into_actor(self).map(move |res, act, _| {
            let outcome = match &res {
                Ok(_) => "ok",
                Err(e) if e.backend_answered() => "refused",
                Err(_) => "failed",
            };
            observe(outcome, began.elapsed());
            act.record(&res);
            res
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_statuses_map_to_wire_codes() {
        assert_eq!(
            interpret(200, b" {\"a\":1} ").expect("ok").get(),
            "{\"a\":1}"
        );
        assert_eq!(interpret(204, b"").expect("ok").get(), "null");
        assert!(matches!(
            interpret(200, b"<html>"),
            Err(CommandError::BadAnswer(_))
        ));
        let refused = interpret(404, br#"{"message":"no such command"}"#).expect_err("an error");
        assert_eq!(refused.code(), ErrorCode::NotFound);
        assert_eq!(refused.to_string(), "no such command");
        assert_eq!(
            interpret(422, b"nope").expect_err("an error").code(),
            ErrorCode::BadRequest
        );
        assert_eq!(
            interpret(401, b"").expect_err("an error").code(),
            ErrorCode::Unavailable
        );
        assert_eq!(
            interpret(503, b"").expect_err("an error").code(),
            ErrorCode::Unavailable
        );
    }

    #[test]
    fn answers_are_response_or_error_frames() {
        let ok: CommandResult = Ok(RawValue::from_string("[1,2]".into()).expect("ok"));
        assert_eq!(
            &*answer_frame(&ok, Some("c1")),
            r#"{"type":"response","payload":{"ref_id":"c1","result":[1,2]}}"#
        );
        let busy: CommandResult = Err(CommandError::Busy);
        let frame: serde_json::Value =
            serde_json::from_str(&answer_frame(&busy, None)).expect("ok");
        assert_eq!(frame["payload"]["code"], "unavailable");
        assert_eq!(frame["payload"]["retry_after_ms"], 100);
    }
}
