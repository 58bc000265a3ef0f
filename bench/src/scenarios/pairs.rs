//! `pairs`: K pairs of users (`pa-i`, `pb-i`), each user sending M DMs to its partner within
//! a window of unacked ones (floor mode: one room per pair, the window is opened by what the
//! partner received). Reports messages/s delivered and delivery latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::Args;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::fanout::check;
use super::{dropped, join_all, open_many, per_second, spawn_drive, Setup};
use crate::common::{
    content, frame_type, now_ns, run_id, source_ip, wait_for, BenchError, FrameId, Mode,
};
use crate::conn::{classify_ack, Credit, Incoming, Recv, SendPlan, SendStats};
use crate::report::{round3, Report};
use crate::stats::{Delivery, Latency, Tracker};
use crate::{secs, Common};

/// Options of `pairs`.
#[derive(Args, Debug)]
pub struct PairsArgs {
    /// Common options.
    #[command(flatten)]
    pub common: Common,
    /// Which server: the broker (contract) or the floor.
    #[arg(long, value_enum, default_value = "contract")]
    pub mode: Mode,
    /// Pairs of users.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Messages each user sends to its partner.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Size, window, rate, duration.
    #[command(flatten)]
    pub load: super::Load,
}

/// One user: acks of its own messages, deliveries of its partner's.
struct User {
    mode: Mode,
    prefix: String,
    tracker: Tracker,
    expected: u64,
    /// Floor mode: what this user receives opens its partner's window.
    credit_out: Option<Arc<Credit>>,
    errors: u64,
    progress: Arc<crate::common::Progress>,
}

impl Recv for User {
    fn on_text(&mut self, text: &str, now: u64) -> Incoming {
        let kind = frame_type(text);
        if self.mode == Mode::Contract {
            match kind {
                Some("ack") | Some("error") => {
                    let r = classify_ack(text, &self.prefix);
                    if matches!(r, Incoming::Other) && kind == Some("error") {
                        self.errors += 1;
                    }
                    return r;
                }
                Some("chat_message") => {}
                _ => return Incoming::Other,
            }
        }
        super::record_delivery(
            text,
            now,
            self.mode,
            &mut self.tracker,
            &self.progress,
            self.credit_out.as_ref(),
        );
        Incoming::Other
    }

    fn complete(&self) -> bool {
        self.tracker.unique >= self.expected
    }
}

/// Runs `pairs`.
pub async fn run(a: &PairsArgs) -> Result<Report, BenchError> {
    let s = Setup::new(&a.common, a.mode).await?;
    let k = a.pairs;
    let m = a.messages;
    if k == 0 || m == 0 {
        return Err("--pairs and --messages must be at least 1".into());
    }
    let window = a.load.window_or(16);
    let mut report = Report::new("pairs");
    report
        .param("mode", a.mode)
        .param("pairs", k)
        .param("messages_per_user", m)
        .param("size_bytes", a.load.size)
        .param("window", window)
        .param("rate_per_user", a.load.rate)
        .param("threads", a.common.threads);
    // Connection 2i is pa-i, 2i+1 is pb-i.
    let user = |j: usize| format!("{}-{}", if j & 1 == 0 { "pa" } else { "pb" }, j / 2);
    let opened = open_many(&s, a.mode, 2 * k, source_ip, |j| {
        let room = format!("pair-{}", j / 2);
        crate::common::ws_path(a.mode, &s.minter, &user(j), Some(&room))
    })
    .await?;
    report.result("connect_s", round3(opened.elapsed_s));
    if opened.failed > 0 {
        return Err(format!(
            "{} of {} connections failed; first: {}",
            opened.failed,
            2 * k,
            opened.first_error.unwrap_or_default()
        ));
    }

    let stop = CancellationToken::new();
    let credits: Vec<Arc<Credit>> = (0..2 * k).map(|_| Arc::new(Credit::default())).collect();
    let send_until = a
        .load
        .duration
        .map(|d| now_ns() + secs(d).as_nanos() as u64);
    let mut tasks = Vec::with_capacity(2 * k);
    for (j, ws) in opened.conns.into_iter().enumerate() {
        let ws = ws.ok_or("connection missing")?;
        let partner = j ^ 1;
        let prefix = format!("{}-{}-", run_id(), user(j));
        let (frame_prefix, to, size) = (prefix.clone(), user(partner), a.load.size);
        let random = a.load.random_ids;
        let floor = a.mode == Mode::Floor;
        let plan = SendPlan {
            total: m,
            window,
            interval_ns: a.load.rate.map(|r| (1e9 / r.max(0.001)) as u64),
            send_until_ns: send_until,
            // My window is opened by what my partner received from me.
            credit: floor.then(|| credits[partner].clone()),
            frame: Box::new(move |idx, t| {
                Message::text(format!(
                    r#"{{"type":"chat_message","id":"{}","payload":{{"content":"{}"}},"meta":{{"target_id":"{to}"}}}}"#,
                    FrameId {
                        prefix: &frame_prefix,
                        idx,
                        random
                    },
                    content(idx, t, size)
                ))
            }),
        };
        let recv = User {
            mode: a.mode,
            prefix,
            tracker: Tracker::new(m),
            expected: m,
            credit_out: floor.then(|| credits[j].clone()),
            errors: 0,
            progress: s.progress.clone(),
        };
        tasks.push(spawn_drive(
            ws,
            Some(plan),
            recv,
            s.progress.clone(),
            stop.clone(),
            false,
            true,
        ));
    }

    let progress = s.progress.clone();
    let wait = wait_for(&progress, s.deadline, a.common.stall(), || {
        progress.senders_done.load(Ordering::Relaxed) >= 2 * k
            && (progress.receivers_done.load(Ordering::Relaxed) >= 2 * k
                || progress.delivered.load(Ordering::Relaxed)
                    >= progress.sent.load(Ordering::Relaxed))
    })
    .await;
    stop.cancel();
    let done = join_all(tasks).await?;

    let mut delivery = Delivery::default();
    let mut latency = Latency::default();
    let mut sent = SendStats::default();
    let (mut last_ns, mut errors) = (0, 0);
    for (j, f) in done.iter().enumerate() {
        let partner_sent = done[j ^ 1].sent.sent;
        delivery.add(&f.recv.tracker, partner_sent);
        latency.merge(&f.recv.tracker.latency);
        last_ns = last_ns.max(f.recv.tracker.last_ns);
        errors += f.recv.errors;
        sent.absorb(&f.sent);
    }
    let first_ns = sent.first_send_ns.unwrap_or(u64::MAX);
    let (sent_total, acked, nacked) = (sent.sent, sent.acked, sent.nacked);
    let (ack_latency, first_error) = (sent.ack_latency, sent.first_error);
    let (dropped_n, first_drop) = dropped(&done);
    report
        .result("messages_sent", sent_total)
        .result(
            "messages_per_s",
            per_second(delivery.received, first_ns, last_ns),
        )
        .result(
            "duration_s",
            round3(last_ns.saturating_sub(first_ns) as f64 / 1e9),
        )
        .result("latency", latency.summary())
        .result("expected", delivery.expected)
        .result("received", delivery.received)
        .result("lost", delivery.lost)
        .result("duplicated", delivery.duplicated)
        .result("out_of_order", delivery.out_of_order)
        .result("dropped_connections", dropped_n)
        .result("wait", wait);
    if a.mode == Mode::Contract {
        report
            .result("acked", acked)
            .result("send_errors", nacked)
            .result("ack_latency", ack_latency.summary());
    }
    check(&mut report, &delivery, wait, dropped_n, first_drop);
    if nacked > 0 {
        report.fail(format!(
            "{nacked} messages were refused; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    if errors > 0 {
        report.fail(format!("{errors} error frames received"));
    }
    if sent_total < 2 * k as u64 * m && a.load.duration.is_none() {
        report.fail(format!(
            "only {sent_total} of {} messages were sent",
            2 * k as u64 * m
        ));
    }
    Ok(report)
}
