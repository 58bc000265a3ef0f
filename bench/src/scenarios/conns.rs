//! `conns`: C idle connections, each from its own source address in 127.0.0.2–250, held for
//! `--hold` seconds with a `heartbeat` frame every `--heartbeat` seconds (a WebSocket ping
//! against the floor, which would broadcast a text frame). Reports the connect rate, the
//! failures, and the server's RSS before and after (`--server-pid`), per connection.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{dropped, join_all, open_many, spawn_drive, Setup};
use crate::common::{rss_kib, source_ip, BenchError, Mode};
use crate::conn::{Incoming, Recv, SendPlan};
use crate::report::{round3, Report};
use crate::{secs, Common};

/// Options of `conns`.
#[derive(Args, Debug)]
pub struct ConnsArgs {
    /// Common options.
    #[command(flatten)]
    pub common: Common,
    /// Which server: the broker (contract) or the floor.
    #[arg(long, value_enum, default_value = "contract")]
    pub mode: Mode,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Seconds to hold them once all are open.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    /// Seconds between heartbeats on each connection.
    #[arg(long, default_value_t = 30.0)]
    pub heartbeat: f64,
    /// The server's process id, to read its RSS from /proc/PID/status.
    #[arg(long)]
    pub server_pid: Option<u32>,
}

/// Counts heartbeat answers and error frames.
#[derive(Default)]
struct Idle {
    heartbeats: u64,
    errors: u64,
}

impl Recv for Idle {
    fn on_text(&mut self, text: &str, _: u64) -> Incoming {
        match crate::common::frame_type(text) {
            Some("heartbeat") => self.heartbeats += 1,
            Some("error") => self.errors += 1,
            _ => {}
        }
        Incoming::Other
    }
}

/// Runs `conns`.
pub async fn run(a: &ConnsArgs) -> Result<Report, BenchError> {
    let s = Setup::new(&a.common, a.mode).await?;
    let c = a.conns;
    let mut report = Report::new("conns");
    report
        .param("mode", a.mode)
        .param("conns", c)
        .param("hold_s", a.hold)
        .param("heartbeat_s", a.heartbeat)
        .param("concurrency", a.common.concurrency);
    let rss = |pid: Option<u32>| pid.map(rss_kib).transpose();
    let before = rss(a.server_pid)?;
    let tool_before = rss_kib(std::process::id()).ok();

    let opened = open_many(&s, a.mode, c, source_ip, |i| {
        crate::common::ws_path(a.mode, &s.minter, &format!("idle-{i}"), None)
    })
    .await?;
    let ok = c - opened.failed;
    report
        .result("connected", ok)
        .result("failed", opened.failed)
        .result("connect_s", round3(opened.elapsed_s))
        .result(
            "connects_per_s",
            round3(ok as f64 / opened.elapsed_s.max(1e-9)),
        )
        .result("connect_latency", opened.latency.summary());
    if let Some(e) = &opened.first_error {
        report.fail(format!("{} connections failed; first: {e}", opened.failed));
    }

    let stop = CancellationToken::new();
    let interval = secs(a.heartbeat).max(Duration::from_millis(100));
    let beats = (a.hold / interval.as_secs_f64()).ceil() as u64 + 1;
    let mut tasks = Vec::with_capacity(ok);
    for ws in opened.conns.into_iter().flatten() {
        let mode = a.mode;
        let plan = SendPlan {
            total: beats,
            window: u64::MAX,
            interval_ns: Some(interval.as_nanos() as u64),
            send_until_ns: None,
            credit: None,
            frame: Box::new(move |idx, _| match mode {
                Mode::Contract => {
                    Message::text(format!(r#"{{"type":"heartbeat","id":"hb{idx}"}}"#))
                }
                Mode::Floor => Message::Ping(Vec::new().into()),
            }),
        };
        tasks.push(spawn_drive(
            ws,
            Some(plan),
            Idle::default(),
            s.progress.clone(),
            stop.clone(),
            false,
            true,
        ));
    }

    let hold_until = (Instant::now() + secs(a.hold)).min(s.deadline);
    tokio::time::sleep_until(hold_until.into()).await;
    let after = rss(a.server_pid)?;
    let tool_after = rss_kib(std::process::id()).ok();
    let alive = ok - s.progress.dropped.load(Ordering::Relaxed);
    stop.cancel();
    let done = join_all(tasks).await?;
    let (dropped_n, first_drop) = dropped(&done);
    let heartbeats: u64 = done.iter().map(|f| f.recv.heartbeats).sum();
    let errors: u64 = done.iter().map(|f| f.recv.errors).sum();

    report
        .result("alive_after_hold", alive)
        .result("heartbeat_replies", heartbeats)
        .result("error_frames", errors);
    if let (Some(b), Some(af)) = (before, after) {
        report
            .result("server_rss_before_kib", b)
            .result("server_rss_after_kib", af)
            .result(
                "server_rss_per_conn_kib",
                round3(af.saturating_sub(b) as f64 / ok.max(1) as f64),
            );
    } else {
        report.note("no --server-pid: server RSS not measured");
    }
    if let (Some(b), Some(af)) = (tool_before, tool_after) {
        report.result(
            "tool_rss_per_conn_kib",
            round3(af.saturating_sub(b) as f64 / ok.max(1) as f64),
        );
    }
    if dropped_n > 0 {
        report.fail(format!(
            "{dropped_n} connections closed during the hold; first: {}",
            first_drop.unwrap_or_default()
        ));
    }
    if errors > 0 {
        report.fail(format!("{errors} error frames received"));
    }
    if Instant::now() >= s.deadline {
        report.fail("hit --timeout during the hold");
    }
    Ok(report)
}
