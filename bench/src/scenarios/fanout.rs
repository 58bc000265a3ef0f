//! `fanout`: N subscribers in one group, one publisher, M messages of B bytes.
//!
//! Contract mode: the publisher (`bench-pub`, admin) creates the group over REST with members
//! `sub-0 … sub-N-1` and itself, then sends `group_message`s within a window of unacked ones
//! (or at `--rate`). Floor mode: everyone joins the floor's room; the publisher's window is
//! opened by the deliveries that subscriber 0 sees. Each subscriber reads the send time from
//! the content and records latency; deliveries/s = all deliveries / (first send → last
//! delivery).
//!
//! With `--nodes` (contract mode) the subscribers are spread round robin over the nodes of
//! a cluster and the publisher is on the first node; latency is also reported apart for
//! the deliveries on the publisher's node and those that crossed to another node.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use clap::Args;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{dropped, join_all, open_many_at, per_second, spawn_drive, Setup};
use crate::common::{
    content, frame_type, http_request, now_ns, run_id, source_ip, wait_for, BenchError, FrameId,
    Mode, Target,
};
use crate::conn::{classify_ack, Credit, Incoming, Recv, SendPlan};
use crate::report::Report;
use crate::stats::{Delivery, Latency, Tracker};
use crate::{secs, Common};

/// Options of `fanout`.
#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// Common options.
    #[command(flatten)]
    pub common: Common,
    /// Which server: the broker (contract) or the floor.
    #[arg(long, value_enum, default_value = "contract")]
    pub mode: Mode,
    /// Subscribers (group members that receive every message).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Messages the publisher sends.
    #[arg(long, default_value_t = 1000)]
    pub messages: u64,
    /// Size, window, rate, duration.
    #[command(flatten)]
    pub load: super::Load,
    /// Group id (default: a new id per run, so a reused broker does not answer 409).
    #[arg(long)]
    pub group: Option<String>,
    /// Every subscriber sends `delivered` for the newest seq it has, after every this many
    /// deliveries and after the last (contract mode; 0: never).
    #[arg(long, default_value_t = 0)]
    pub delivered_every: u64,
    /// The nodes of a cluster (`ws://127.0.0.1:8081,ws://127.0.0.1:8082,…`; contract mode;
    /// replaces `--url`): subscriber i connects to node i mod the number of nodes, the
    /// publisher (and the group's creation) to the first.
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
}

/// A subscriber: records every delivery of the publisher's messages.
struct Subscriber {
    mode: Mode,
    tracker: Tracker,
    expected: u64,
    credit: Option<Arc<Credit>>,
    errors: u64,
    progress: Arc<crate::common::Progress>,
    /// `Some(channel)`: send `delivered` in it every `delivered_every` deliveries.
    delivered: Option<String>,
    delivered_every: u64,
    received: u64,
}

impl Recv for Subscriber {
    fn on_text(&mut self, text: &str, now: u64) -> Incoming {
        let kind = frame_type(text);
        if kind == Some("error") {
            self.errors += 1;
            return Incoming::Other;
        }
        if self.mode == Mode::Contract && kind != Some("group_message") {
            return Incoming::Other;
        }
        super::record_delivery(
            text,
            now,
            self.mode,
            &mut self.tracker,
            &self.progress,
            self.credit.as_ref(),
        );
        self.received += 1;
        let due = self.received.is_multiple_of(self.delivered_every.max(1)) || self.complete();
        match (&self.delivered, seq_of(text)) {
            (Some(channel), Some(seq)) if due => Incoming::Reply(format!(
                r#"{{"type":"delivered","payload":{{"channel":"{channel}","up_to_seq":{seq}}}}}"#
            )),
            _ => Incoming::Other,
        }
    }

    fn complete(&self) -> bool {
        self.tracker.unique >= self.expected
    }
}

/// The `seq` of a delivery frame (`"seq":N` in its meta).
fn seq_of(text: &str) -> Option<u64> {
    let rest = &text[text.rfind("\"seq\":")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The publisher in contract mode reads acks; in floor mode nothing comes back.
struct Publisher {
    prefix: String,
}

impl Recv for Publisher {
    fn on_text(&mut self, text: &str, _: u64) -> Incoming {
        classify_ack(text, &self.prefix)
    }
}

/// Runs `fanout`.
pub async fn run(a: &FanoutArgs) -> Result<Report, BenchError> {
    if !a.nodes.is_empty() && a.mode != Mode::Contract {
        return Err("--nodes needs --mode contract (the floor has no cluster)".into());
    }
    let mut common = a.common.clone();
    if let Some(first) = a.nodes.first() {
        common.url.clone_from(first);
    }
    let s = Setup::new(&common, a.mode).await?;
    let mut targets = Vec::with_capacity(a.nodes.len().max(1));
    for url in &a.nodes {
        let t = Target::parse(url).await?;
        t.reachable(common.connect_timeout()).await?;
        targets.push(t);
    }
    if targets.is_empty() {
        targets.push(s.target.clone());
    }
    let k = targets.len();
    let n = a.subscribers;
    let m = a.messages;
    if n == 0 || m == 0 {
        return Err("--subscribers and --messages must be at least 1".into());
    }
    let group = a
        .group
        .clone()
        .unwrap_or_else(|| format!("bench-{}", run_id()));
    let publisher = "bench-pub";
    let subs: Vec<String> = (0..n).map(|i| format!("sub-{i}")).collect();

    let mut report = Report::new("fanout");
    let window = a.load.window_or(64);
    report
        .param("mode", a.mode)
        .param("subscribers", n)
        .param("messages", m)
        .param("size_bytes", a.load.size)
        .param("window", window)
        .param("rate", a.load.rate)
        .param("threads", a.common.threads)
        .param("delivered_every", a.delivered_every)
        .param("nodes", k);

    if a.mode == Mode::Contract {
        let token = s.minter.token(publisher, &["admin"])?;
        let mut members = subs.clone();
        members.push(publisher.to_owned());
        let body = serde_json::json!({"id": group, "name": group, "members": members}).to_string();
        let (status, reply) = http_request(
            &s.target,
            "POST",
            "/api/groups",
            Some(&token),
            Some(&body),
            a.common.connect_timeout(),
        )
        .await?;
        match status {
            201 => {}
            409 => report.note(format!(
                "group `{group}` already existed; members may differ"
            )),
            _ => {
                return Err(format!(
                    "POST /api/groups answered {status}: {}",
                    crate::common::truncate(&reply, 300)
                ))
            }
        }
    }

    // Subscriber i on node i mod k; the publisher (connection n) on the first node.
    let node_of = |i: usize| if i < n { i % k } else { 0 };
    let opened = open_many_at(&s, &targets, node_of, a.mode, n + 1, source_ip, |i| {
        let user = if i < n { subs[i].as_str() } else { publisher };
        crate::common::ws_path(a.mode, &s.minter, user, None)
    })
    .await?;
    report.result("connect_s", crate::report::round3(opened.elapsed_s));
    if opened.failed > 0 {
        return Err(format!(
            "{} of {} connections failed; first: {}",
            opened.failed,
            n + 1,
            opened.first_error.unwrap_or_default()
        ));
    }
    let mut conns = opened.conns;
    let pub_ws = conns
        .pop()
        .flatten()
        .ok_or("publisher connection missing")?;

    let stop = CancellationToken::new();
    let credit = (a.mode == Mode::Floor).then(|| Arc::new(Credit::default()));
    let mut subs_tasks = Vec::with_capacity(n);
    for (i, ws) in conns.into_iter().enumerate() {
        let ws = ws.ok_or("subscriber connection missing")?;
        let recv = Subscriber {
            mode: a.mode,
            tracker: Tracker::new(m),
            expected: m,
            credit: if i == 0 { credit.clone() } else { None },
            errors: 0,
            progress: s.progress.clone(),
            delivered: (a.delivered_every > 0 && a.mode == Mode::Contract)
                .then(|| format!("group:{group}")),
            delivered_every: a.delivered_every,
            received: 0,
        };
        subs_tasks.push(spawn_drive(
            ws,
            None,
            recv,
            s.progress.clone(),
            stop.clone(),
            false,
            true,
        ));
    }

    let prefix = format!("{}-", run_id());
    let (size, target) = (a.load.size, format!("group:{group}"));
    let frame_prefix = prefix.clone();
    let random = a.load.random_ids;
    let plan = SendPlan {
        total: m,
        window,
        interval_ns: a.load.rate.map(|r| (1e9 / r.max(0.001)) as u64),
        send_until_ns: a
            .load
            .duration
            .map(|d| now_ns() + secs(d).as_nanos() as u64),
        credit: credit.clone(),
        frame: Box::new(move |idx, t| {
            Message::text(format!(
                r#"{{"type":"group_message","id":"{}","payload":{{"content":"{}"}},"meta":{{"target_id":"{target}"}}}}"#,
                FrameId {
                    prefix: &frame_prefix,
                    idx,
                    random
                },
                content(idx, t, size)
            ))
        }),
    };
    let pub_task = spawn_drive(
        pub_ws,
        Some(plan),
        Publisher { prefix },
        s.progress.clone(),
        stop.clone(),
        false,
        true,
    );

    let progress = s.progress.clone();
    let wait = wait_for(&progress, s.deadline, a.common.stall(), || {
        progress.senders_done.load(Ordering::Relaxed) >= 1
            // The publisher's connection expects nothing, so it counts as complete too.
            && (progress.receivers_done.load(Ordering::Relaxed) > n
                || progress.delivered.load(Ordering::Relaxed)
                    >= n as u64 * progress.sent.load(Ordering::Relaxed))
    })
    .await;
    stop.cancel();
    let published = pub_task
        .await
        .map_err(|e| format!("publisher task failed: {e}"))?;
    let received = join_all(subs_tasks).await?;

    let sent = published.sent.sent;
    let first_ns = published.sent.first_send_ns.unwrap_or(0);
    let mut delivery = Delivery::default();
    let mut latency = Latency::default();
    let (mut same_node, mut cross_node) = (Latency::default(), Latency::default());
    let mut last_ns = 0;
    let mut errors = 0;
    for (i, f) in received.iter().enumerate() {
        delivery.add(&f.recv.tracker, sent);
        latency.merge(&f.recv.tracker.latency);
        if node_of(i) == 0 {
            same_node.merge(&f.recv.tracker.latency);
        } else {
            cross_node.merge(&f.recv.tracker.latency);
        }
        last_ns = last_ns.max(f.recv.tracker.last_ns);
        errors += f.recv.errors;
    }
    let (dropped_n, first_drop) = dropped(&received);
    report
        .result("messages_sent", sent)
        .result(
            "deliveries_per_s",
            per_second(delivery.received, first_ns, last_ns),
        )
        .result(
            "duration_s",
            crate::report::round3(last_ns.saturating_sub(first_ns) as f64 / 1e9),
        )
        .result("latency", latency.summary());
    if k > 1 {
        report
            .result("latency_same_node", same_node.summary())
            .result("latency_cross_node", cross_node.summary());
    }
    report
        .result("expected", delivery.expected)
        .result("received", delivery.received)
        .result("lost", delivery.lost)
        .result("duplicated", delivery.duplicated)
        .result("out_of_order", delivery.out_of_order)
        .result("dropped_connections", dropped_n)
        .result("wait", wait);
    if a.mode == Mode::Contract {
        report
            .result("acked", published.sent.acked)
            .result("publish_errors", published.sent.nacked)
            .result("ack_latency", published.sent.ack_latency.summary());
    }
    check(&mut report, &delivery, wait, dropped_n, first_drop);
    if published.end.dropped() {
        report.fail(format!("publisher connection ended: {}", published.end));
    }
    if published.sent.nacked > 0 {
        report.fail(format!(
            "{} publishes were refused; first: {}",
            published.sent.nacked,
            published.sent.first_error.unwrap_or_default()
        ));
    }
    if errors > 0 {
        report.fail(format!("subscribers received {errors} error frames"));
    }
    if sent < m && a.load.duration.is_none() {
        report.fail(format!("only {sent} of {m} messages were sent"));
    }
    Ok(report)
}

/// Marks the common failure conditions.
pub fn check(
    report: &mut Report,
    d: &Delivery,
    wait: crate::common::WaitEnd,
    dropped_n: usize,
    first_drop: Option<String>,
) {
    use crate::common::WaitEnd;
    if d.lost > 0 {
        report.fail(format!("{} of {} deliveries lost", d.lost, d.expected));
    }
    if d.duplicated > 0 {
        report.fail(format!("{} deliveries duplicated", d.duplicated));
    }
    if d.out_of_order > 0 {
        report.fail(format!("{} deliveries out of order", d.out_of_order));
    }
    if dropped_n > 0 {
        report.fail(format!(
            "{dropped_n} connections closed during the run; first: {}",
            first_drop.unwrap_or_default()
        ));
    }
    match wait {
        WaitEnd::Done => {}
        WaitEnd::Stalled => report.note("stopped waiting: nothing arrived for --stall seconds"),
        WaitEnd::TimedOut => report.fail("hit --timeout before every delivery arrived"),
    }
}
