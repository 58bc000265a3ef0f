//! Prometheus metrics of the broker process, shown by `GET /metrics`.
//!
//! Counters and histograms live in one process-wide registry ([`metrics`]): one broker is
//! one process, and every layer counts without a handle passed down to it. The hot paths
//! touch only pre-resolved handles: one relaxed atomic add per client frame, per delivery
//! slot a session takes and per error frame; the write batcher fills its histograms
//! locally and flushes them once per batch. Gauges of state that already has an owner
//! (connections, mailboxes, restarts) are set when `/metrics` is read, not kept up to date.

use std::sync::OnceLock;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::error_code::ErrorCode;
/// The index of frames that did not parse.
pub const INVALID_FRAME: usize = 14;

/// Client frame types counted by `switchboard_frames_in_total`, in the order of
/// `ClientFrame::type_index`.
pub const FRAME_TYPES: [&str; 15] = [
    "auth",
    "heartbeat",
    "chat_message",
    "group_message",
    "typing_indicator",
    "read_receipt",
    "subscribe",
    "unsubscribe",
    "status_update",
    "sync",
    "delivered",
    "state_sync",
    "presence_subscribe",
    "command",
    "invalid",
];

/// Server frame types counted by `switchboard_frames_out_total` as a session writes them;
/// the last, `other`, takes any type not listed. Stored messages delivered live are
/// counted apart, as `type="delivery"`, once per commit batch per connection.
pub const SERVER_FRAME_TYPES: [&str; 19] = [
    "connected",
    "ack",
    "chat_message",
    "group_message",
    "notification",
    "typing_indicator",
    "read_receipt",
    "status_update",
    "connection_event",
    "subscribed",
    "unsubscribed",
    "sync_complete",
    "state_sync_result",
    "state_changed",
    "response",
    "heartbeat",
    "error",
    "presence",
    "other",
];

/// The error codes, in the order of [`ErrorCode`]'s variants.
const ERROR_CODES: [ErrorCode; 11] = [
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::BadRequest,
    ErrorCode::UnknownType,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::NotConfigured,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];

/// The admission and rate limits `switchboard_refused_total` counts refusals of.
pub const REFUSAL_LIMITS: [&str; 9] = [
    "frame_rate",
    "node_connections",
    "pending_connections",
    "user_connections",
    "address_pending_connections",
    "address_upgrade_rate",
    "address_request_rate",
    "user_connect_rate",
    "user_request_rate",
];

/// Where an error was answered.
#[derive(Clone, Copy)]
pub enum ErrorVia {
    /// An `error` frame (WebSocket, SSE, poll, HTTP send).
    Frame = 0,
    /// A REST error body.
    Rest = 1,
}

/// Every metric of the process.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    frames_in: Vec<IntCounter>,
    frames_out: Vec<IntCounter>,
    /// Messages written to clients as deliveries (one per message per connection).
    pub deliveries: IntCounter,
    errors: Vec<[IntCounter; 2]>,
    /// Frames refused by the per-user rate limit.
    pub rate_limited_frames: IntCounter,
    /// Connection attempts and requests refused by an admission limit, by limit.
    pub refused: IntCounterVec,
    /// From a write reaching the write batcher to its commit being answered.
    pub ack_latency: Histogram,
    /// Writes per committed batch.
    pub batch_size: Histogram,
    /// Time a batch took to commit.
    pub commit_seconds: Histogram,
    /// Authenticated connections by transport and device (set when read).
    pub connections: IntGaugeVec,
    /// Channel actors running (set when read).
    pub channels: IntGauge,
    /// Messages waiting in each supervised actor's mailbox (set when read).
    pub mailbox: IntGaugeVec,
    /// Restarts of each supervised actor since the process started (brought up to date
    /// when read).
    pub restarts: IntCounterVec,
    /// Command proxy calls by outcome.
    pub commands: HistogramVec,
    /// The cluster link's counters by name (set when read; absent on a node alone).
    pub cluster: IntGaugeVec,
}

/// The process's metrics, made on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Buckets of the latency histograms, seconds: 0.25 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 2.0,
    10.0,
];

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            // Names are fixed and unique: registering cannot fail.
            let _ = registry.register(c);
        };
        let frames_in_vec = IntCounterVec::new(
            Opts::new(
                "switchboard_frames_in_total",
                "Client frames received, by type",
            ),
            &["type"],
        )
        .expect("valid metric");
        let frames_out = IntCounterVec::new(
            Opts::new(
                "switchboard_frames_out_total",
                "Frames written to clients, by type (stored messages as `delivery`)",
            ),
            &["type"],
        )
        .expect("valid metric");
        let errors_vec = IntCounterVec::new(
            Opts::new(
                "switchboard_errors_total",
                "Errors answered, by code and by way",
            ),
            &["code", "via"],
        )
        .expect("valid metric");
        let refused = IntCounterVec::new(
            Opts::new(
                "switchboard_refused_total",
                "Connections and requests refused by an admission or rate limit, by limit",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric")
        };
        let ack_latency = histogram(
            "switchboard_ack_latency_seconds",
            "From a write reaching the write batcher to its commit answered (the durable part of an ack's latency)",
            LATENCY_BUCKETS.to_vec(),
        );
        let commit_seconds = histogram(
            "switchboard_commit_seconds",
            "Time one batch took to commit",
            LATENCY_BUCKETS.to_vec(),
        );
        let batch_size = histogram(
            "switchboard_batch_writes",
            "Writes per committed batch (group commit)",
            vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ],
        );
        let connections = IntGaugeVec::new(
            Opts::new(
                "switchboard_connections",
                "Authenticated connections by transport and device",
            ),
            &["transport", "device"],
        )
        .expect("valid metric");
        let channels = IntGauge::new("switchboard_channels_active", "Channel actors running")
            .expect("valid metric");
        let cluster = IntGaugeVec::new(
            Opts::new(
                "switchboard_cluster",
                "The cluster link: redis_up (1/0), nodes, and envelopes published, received, \
                 dropped, malformed, messages filled from the database, resyncs",
            ),
            &["what"],
        )
        .expect("valid metric");
        let mailbox = IntGaugeVec::new(
            Opts::new(
                "switchboard_actor_mailbox",
                "Messages waiting in a supervised actor's mailbox (-1: it did not answer)",
            ),
            &["actor"],
        )
        .expect("valid metric");
        let restarts = IntCounterVec::new(
            Opts::new(
                "switchboard_actor_restarts_total",
                "Restarts of a supervised actor since the process started",
            ),
            &["actor"],
        )
        .expect("valid metric");
        let commands = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_command_seconds",
                "Command proxy calls by outcome (ok, refused, failed, rejected)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");

        let frames_in = FRAME_TYPES
            .iter()
            .map(|t| frames_in_vec.with_label_values(&[t]))
            .collect();
        let errors = ERROR_CODES
            .iter()
            .map(|c| {
                let code = code_name(*c);
                [
                    errors_vec.with_label_values(&[code, "frame"]),
                    errors_vec.with_label_values(&[code, "rest"]),
                ]
            })
            .collect();
        let deliveries = frames_out.with_label_values(&["delivery"]);
        let frames_out_by_type = SERVER_FRAME_TYPES
            .iter()
            .map(|t| frames_out.with_label_values(&[t]))
            .collect();
        let rate_limited_frames = refused.with_label_values(&["frame_rate"]);
        // Every series that can appear is there from the start, at 0.
        for limit in REFUSAL_LIMITS {
            refused.with_label_values(&[limit]);
        }
        for outcome in ["ok", "refused", "failed", "rejected"] {
            commands.with_label_values(&[outcome]);
        }
        reg(Box::new(frames_in_vec));
        reg(Box::new(frames_out));
        reg(Box::new(errors_vec));
        reg(Box::new(refused.clone()));
        reg(Box::new(ack_latency.clone()));
        reg(Box::new(commit_seconds.clone()));
        reg(Box::new(batch_size.clone()));
        reg(Box::new(connections.clone()));
        reg(Box::new(channels.clone()));
        reg(Box::new(mailbox.clone()));
        reg(Box::new(restarts.clone()));
        reg(Box::new(commands.clone()));
        reg(Box::new(cluster.clone()));
        Metrics {
            registry,
            frames_in,
            frames_out: frames_out_by_type,
            deliveries,
            errors,
            rate_limited_frames,
            refused,
            ack_latency,
            batch_size,
            commit_seconds,
            connections,
            channels,
            mailbox,
            restarts,
            commands,
            cluster,
        }
    }

    /// Counts one client frame of type `FRAME_TYPES[index]`.
    #[inline]
    pub fn frame_in(&self, index: usize) {
        if let Some(c) = self.frames_in.get(index) {
            c.inc();
        }
    }

    /// Counts one server frame a session writes, by the type it begins with
    /// (`{"type":"…"`, as every encoded frame does).
    #[inline]
    pub fn frame_out(&self, frame: &str) {
        let kind = frame
            .strip_prefix(r#"{"type":""#)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("");
        let last = SERVER_FRAME_TYPES.len() - 1;
        let i = SERVER_FRAME_TYPES[..last]
            .iter()
            .position(|t| *t == kind)
            .unwrap_or(last);
        if let Some(c) = self.frames_out.get(i) {
            c.inc();
        }
    }

    /// Counts one error answered with `code`.
    #[inline]
    pub fn error(&self, code: ErrorCode, via: ErrorVia) {
        if let Some(c) = self.errors.get(code as usize) {
            c[via as usize].inc();
        }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The wire name of `code`.
fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::UnknownType => "unknown_type",
        ErrorCode::TooLarge => "too_large",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Conflict => "conflict",
        ErrorCode::NotConfigured => "not_configured",
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Internal => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_listed_in_variant_order() {
        for (i, c) in ERROR_CODES.iter().enumerate() {
            assert_eq!(*c as usize, i);
            let json = serde_json::to_string(c).expect("json");
            assert_eq!(json, format!("\"{}\"", code_name(*c)));
        }
    }

    #[test]
    fn counts_show_in_the_exposition() {
        let m = metrics();
        m.frame_in(2);
        m.error(ErrorCode::Forbidden, ErrorVia::Rest);
        let text = m.encode();
        assert!(
            text.contains("switchboard_frames_in_total{type=\"chat_message\"}"),
            "{text}"
        );
        assert!(text.contains("switchboard_errors_total{code=\"forbidden\",via=\"rest\"}"));
    }
}
