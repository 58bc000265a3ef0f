//! `durable`: P publishers (`dur-i`), each sending DMs to a user who is not connected
//! (`dur-sink`), so what is measured is persist + ack: acked messages/s and ack latency.
//! Either as fast as a window per publisher allows, or at a fixed total `--rate`.

use std::sync::atomic::Ordering;

use clap::Args;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{dropped, join_all, open_many, per_second, spawn_drive, Setup};
use crate::common::{
    content, now_ns, run_id, source_ip, wait_for, BenchError, FrameId, Mode, WaitEnd,
};
use crate::conn::{AckOnly, SendPlan, SendStats};
use crate::report::{round3, Report};
use crate::{secs, Common};

/// Options of `durable`.
#[derive(Args, Debug)]
pub struct DurableArgs {
    /// Common options.
    #[command(flatten)]
    pub common: Common,
    /// Publishers (one connection and one DM channel each).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Messages per publisher.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Size, window, rate, duration.
    #[command(flatten)]
    pub load: super::Load,
}

/// Runs `durable`.
pub async fn run(a: &DurableArgs) -> Result<Report, BenchError> {
    let s = Setup::new(&a.common, Mode::Contract).await?;
    let p = a.publishers;
    let m = a.messages;
    if p == 0 || m == 0 {
        return Err("--publishers and --messages must be at least 1".into());
    }
    let window = a.load.window_or(64);
    let mut report = Report::new("durable");
    report
        .param("publishers", p)
        .param("messages_per_publisher", m)
        .param("size_bytes", a.load.size)
        .param("window", window)
        .param("rate_total", a.load.rate)
        .param("threads", a.common.threads);
    let opened = open_many(&s, Mode::Contract, p, source_ip, |i| {
        crate::common::ws_path(Mode::Contract, &s.minter, &format!("dur-{i}"), None)
    })
    .await?;
    if opened.failed > 0 {
        return Err(format!(
            "{} of {p} connections failed; first: {}",
            opened.failed,
            opened.first_error.unwrap_or_default()
        ));
    }
    let stop = CancellationToken::new();
    let send_until = a
        .load
        .duration
        .map(|d| now_ns() + secs(d).as_nanos() as u64);
    let mut tasks = Vec::with_capacity(p);
    for (i, ws) in opened.conns.into_iter().enumerate() {
        let ws = ws.ok_or("connection missing")?;
        let prefix = format!("{}-{i}-", run_id());
        let (fp, size, random) = (prefix.clone(), a.load.size, a.load.random_ids);
        let plan = SendPlan {
            total: m,
            window,
            interval_ns: a.load.rate.map(|r| (1e9 * p as f64 / r.max(0.001)) as u64),
            send_until_ns: send_until,
            credit: None,
            frame: Box::new(move |idx, t| {
                Message::text(format!(
                    r#"{{"type":"chat_message","id":"{}","payload":{{"content":"{}"}},"meta":{{"target_id":"dur-sink"}}}}"#,
                    FrameId {
                        prefix: &fp,
                        idx,
                        random
                    },
                    content(idx, t, size)
                ))
            }),
        };
        tasks.push(spawn_drive(
            ws,
            Some(plan),
            AckOnly::new(prefix),
            s.progress.clone(),
            stop.clone(),
            false,
            true,
        ));
    }
    let progress = s.progress.clone();
    let wait = wait_for(&progress, s.deadline, a.common.stall(), || {
        progress.senders_done.load(Ordering::Relaxed) >= p
    })
    .await;
    stop.cancel();
    let done = join_all(tasks).await?;

    let mut total = SendStats::default();
    for f in &done {
        total.absorb(&f.sent);
    }
    let SendStats {
        sent,
        acked,
        nacked,
        first_error,
        first_send_ns,
        last_ack_ns: last_ns,
        ack_latency: lat,
    } = total;
    let first_ns = first_send_ns.unwrap_or(u64::MAX);
    let (dropped_n, first_drop) = dropped(&done);
    report
        .result("sent", sent)
        .result("acked", acked)
        .result("refused", nacked)
        .result("acked_per_s", per_second(acked, first_ns, last_ns))
        .result(
            "duration_s",
            round3(last_ns.saturating_sub(first_ns) as f64 / 1e9),
        )
        .result("ack_latency", lat.summary())
        .result("dropped_connections", dropped_n)
        .result("wait", wait);
    let unanswered = sent.saturating_sub(acked + nacked);
    if unanswered > 0 {
        report.fail(format!("{unanswered} of {sent} messages never answered"));
    }
    if nacked > 0 {
        report.fail(format!(
            "{nacked} messages refused; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    if dropped_n > 0 {
        report.fail(format!(
            "{dropped_n} connections closed; first: {}",
            first_drop.unwrap_or_default()
        ));
    }
    if wait == WaitEnd::TimedOut {
        report.fail("hit --timeout before every ack arrived");
    }
    if sent < p as u64 * m && a.load.duration.is_none() {
        report.fail(format!(
            "only {sent} of {} messages were sent",
            p as u64 * m
        ));
    }
    Ok(report)
}
