//! `storm`: C clients (`storm-i`, each from its own source address) receive DMs from one
//! sender (`storm-src`).
//!
//! 1. All connect; the sender sends K messages to each and every client receives them.
//! 2. All clients drop at once (sockets closed without a close frame); the sender sends
//!    `--away` more messages to each while they are gone.
//! 3. All reconnect (retrying refused connects) and send `subscribe` with their DM channel
//!    and `since_seq` = the last seq they saw. Measured: time from the start of the
//!    reconnect until every client has every message the sender got an ack for, and loss
//!    (acked messages a client never received), which must be 0.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{dropped, join_all, open_many, spawn_drive, Finished, Setup};
use crate::common::{
    connect, content, frame_type, now_ns, run_id, seq_field, source_ip, wait_for, ws_path,
    BenchError, Mode, Progress, WaitEnd,
};
use crate::conn::{drive, Incoming, Opts, Recv, SendPlan};
use crate::report::{round3, Report};
use crate::stats::Latency;
use crate::Common;

/// The sender's user id.
const SENDER: &str = "storm-src";

/// Options of `storm`.
#[derive(Args, Debug)]
pub struct StormArgs {
    /// Common options.
    #[command(flatten)]
    pub common: Common,
    /// Clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Messages sent to each client before the drop.
    #[arg(long, default_value_t = 5)]
    pub messages: u64,
    /// Messages sent to each client while it is away.
    #[arg(long, default_value_t = 3)]
    pub away: u64,
    /// Content size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Most unacknowledged messages of the sender.
    #[arg(long, default_value_t = 256)]
    pub window: u64,
}

/// The DM channel of `a` and `b`.
fn dm(a: &str, b: &str) -> String {
    if a <= b {
        format!("dm:{a}:{b}")
    } else {
        format!("dm:{b}:{a}")
    }
}

/// A client: which seqs of its DM channel it has seen.
#[derive(Default)]
struct Client {
    seen: HashSet<u64>,
    last_seq: u64,
    duplicates: u64,
    out_of_order: u64,
    errors: u64,
    first_error: Option<String>,
    /// Phase 1: how many distinct messages to wait for.
    need_count: u64,
    /// Phase 3: exactly these seqs (the sender's acks).
    need_seqs: Option<HashSet<u64>>,
    found: usize,
    complete_ns: Option<u64>,
}

impl Client {
    fn is_complete(&self) -> bool {
        match &self.need_seqs {
            Some(s) => self.found >= s.len(),
            None => self.seen.len() as u64 >= self.need_count,
        }
    }
}

impl Recv for Client {
    fn on_text(&mut self, text: &str, now: u64) -> Incoming {
        match frame_type(text) {
            Some("chat_message") => {
                let Some(seq) = seq_field(text) else {
                    return Incoming::Other;
                };
                if !self.seen.insert(seq) {
                    self.duplicates += 1;
                } else if self.need_seqs.as_ref().is_some_and(|s| s.contains(&seq)) {
                    self.found += 1;
                }
                if seq <= self.last_seq {
                    self.out_of_order += 1;
                }
                self.last_seq = self.last_seq.max(seq);
                if self.complete_ns.is_none() && self.is_complete() {
                    self.complete_ns = Some(now);
                }
                Incoming::Other
            }
            Some("subscribed") => Incoming::Ack(0),
            Some("error") => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| text.to_owned());
                Incoming::Nack(text.to_owned())
            }
            _ => Incoming::Other,
        }
    }

    fn complete(&self) -> bool {
        self.is_complete()
    }
}

/// The sender: the seq of every acked message, per client.
struct Sender {
    prefix: String,
    clients: usize,
    acked: Vec<Vec<u64>>,
}

impl Recv for Sender {
    fn on_text(&mut self, text: &str, _: u64) -> Incoming {
        match crate::conn::classify_ack(text, &self.prefix) {
            Incoming::Ack(i) => {
                if let (Some(seq), Some(list)) = (
                    seq_field(text),
                    self.acked.get_mut(i as usize % self.clients),
                ) {
                    list.push(seq);
                }
                Incoming::Ack(i)
            }
            other => other,
        }
    }
}

/// Sends `per_client` messages to each client from a new sender connection; returns the
/// acked seqs per client.
async fn send_round(
    s: &Setup,
    phase: &str,
    per_client: u64,
    a: &StormArgs,
    sender_src: std::net::IpAddr,
    acked: Vec<Vec<u64>>,
) -> Result<(Vec<Vec<u64>>, u64, Option<String>, Latency), BenchError> {
    let c = a.clients;
    let path = ws_path(Mode::Contract, &s.minter, SENDER, None)?;
    let ws = connect(
        &s.target,
        sender_src,
        &path,
        Mode::Contract,
        s.common.connect_timeout(),
    )
    .await
    .map_err(|e| format!("{phase}: sender cannot connect: {e}"))?;
    let prefix = format!("{}-{phase}-", run_id());
    let (fp, size) = (prefix.clone(), a.size);
    let plan = SendPlan {
        total: per_client * c as u64,
        window: a.window,
        interval_ns: None,
        send_until_ns: None,
        credit: None,
        frame: Box::new(move |idx, t| {
            let to = format!("storm-{}", idx as usize % c);
            Message::text(format!(
                r#"{{"type":"chat_message","id":"{fp}{idx}","payload":{{"content":"{}"}},"meta":{{"target_id":"{to}"}}}}"#,
                content(idx, t, size)
            ))
        }),
    };
    let mut recv = Sender {
        prefix,
        clients: c,
        acked,
    };
    let stop = CancellationToken::new();
    let progress = Progress::default();
    let timer = {
        let stop = stop.clone();
        let left = s.remaining();
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            stop.cancel();
        })
    };
    let (end, st) = drive(
        ws,
        Some(plan),
        &mut recv,
        Opts {
            stop: &stop,
            progress: &progress,
            exit_when_complete: true,
            graceful: true,
        },
    )
    .await;
    timer.abort();
    let problem = match end {
        crate::conn::End::Complete => None,
        other => Some(format!("{phase}: sender ended: {other}")),
    }
    .or_else(|| {
        st.first_error
            .clone()
            .map(|e| format!("{phase}: sender refused: {e}"))
    });
    Ok((recv.acked, st.acked, problem, st.ack_latency))
}

/// Runs `storm`.
pub async fn run(a: &StormArgs) -> Result<Report, BenchError> {
    let s = Setup::new(&a.common, Mode::Contract).await?;
    let c = a.clients;
    if c == 0 || a.messages == 0 {
        return Err("--clients and --messages must be at least 1".into());
    }
    let mut report = Report::new("storm");
    report
        .param("clients", c)
        .param("messages_per_client", a.messages)
        .param("away_per_client", a.away)
        .param("concurrency", a.common.concurrency);
    let users: Vec<String> = (0..c).map(|i| format!("storm-{i}")).collect();
    let sender_src = source_ip(c);

    // Phase 1: connect, receive K each.
    let opened = open_many(&s, Mode::Contract, c, source_ip, |i| {
        ws_path(Mode::Contract, &s.minter, &users[i], None)
    })
    .await?;
    report.result("connect_s", round3(opened.elapsed_s));
    if opened.failed > 0 {
        return Err(format!(
            "{} of {c} clients failed to connect; first: {}",
            opened.failed,
            opened.first_error.unwrap_or_default()
        ));
    }
    let p1 = Arc::new(Progress::default());
    let drop_all = CancellationToken::new();
    let mut tasks = Vec::with_capacity(c);
    for ws in opened.conns.into_iter() {
        let ws = ws.ok_or("client connection missing")?;
        let recv = Client {
            need_count: a.messages,
            ..Client::default()
        };
        tasks.push(spawn_drive(
            ws,
            None,
            recv,
            p1.clone(),
            drop_all.clone(),
            false,
            false,
        ));
    }
    let t1 = now_ns();
    let (acked, acked1, problem, _) =
        send_round(&s, "before", a.messages, a, sender_src, vec![Vec::new(); c]).await?;
    if let Some(p) = problem {
        report.fail(p);
    }
    let w1 = wait_for(&p1, s.deadline, s.common.stall(), || {
        p1.receivers_done.load(Ordering::Relaxed) >= c
    })
    .await;
    report
        .result("before.acked", acked1)
        .result("before.delivered_s", round3((now_ns() - t1) as f64 / 1e9))
        .result("before.wait", w1);

    // Phase 2: everyone drops at once; more messages while they are away.
    drop_all.cancel();
    let phase1: Vec<Finished<Client>> = join_all(tasks).await?;
    let (dropped1, first_drop1) = dropped(&phase1);
    if dropped1 > 0 {
        report.fail(format!(
            "{dropped1} clients were disconnected before the drop; first: {}",
            first_drop1.unwrap_or_default()
        ));
    }
    let (acked, acked2, problem, _) = if a.away > 0 {
        send_round(&s, "away", a.away, a, sender_src, acked).await?
    } else {
        (acked, 0, None, Latency::default())
    };
    if let Some(p) = problem {
        report.fail(p);
    }
    report.result("away.acked", acked2);

    // Phase 3: all reconnect and resume with subscribe + since_seq.
    let paths: Vec<String> = users
        .iter()
        .map(|u| ws_path(Mode::Contract, &s.minter, u, None))
        .collect::<Result<_, _>>()?;
    let p3 = Arc::new(Progress::default());
    let stop3 = CancellationToken::new();
    let gate = Arc::new(Semaphore::new(a.common.concurrency.max(1)));
    let retries = Arc::new(AtomicUsize::new(0));
    let t3 = now_ns();
    let mut tasks = Vec::with_capacity(c);
    for (i, (f, path)) in phase1.into_iter().zip(paths).enumerate() {
        let mut recv = f.recv;
        recv.need_seqs = Some(acked[i].iter().copied().collect());
        recv.found = recv.seen.iter().filter(|q| acked[i].contains(q)).count();
        recv.complete_ns = None;
        let since = recv.last_seq;
        let channel = dm(&users[i], SENDER);
        let (target, gate, retries, p3, stop3) = (
            s.target.clone(),
            gate.clone(),
            retries.clone(),
            p3.clone(),
            stop3.clone(),
        );
        let (deadline, connect_timeout) = (s.deadline, s.common.connect_timeout());
        tasks.push(tokio::spawn(async move {
            let ws = loop {
                let permit = gate.acquire().await;
                let r = tokio::select! {
                    r = connect(&target, source_ip(i), &path, Mode::Contract, connect_timeout) => r,
                    _ = stop3.cancelled() => return (recv, None, Some("stopped while connecting".to_owned())),
                };
                drop(permit);
                match r {
                    Ok(ws) => break ws,
                    Err(e) => {
                        retries.fetch_add(1, Ordering::Relaxed);
                        if tokio::time::Instant::now() + Duration::from_millis(100)
                            >= deadline.into()
                        {
                            return (recv, None, Some(e.to_string()));
                        }
                        tokio::time::sleep(Duration::from_millis(50 + (i % 50) as u64)).await;
                    }
                }
            };
            p3.events.fetch_add(1, Ordering::Relaxed);
            let connected_ns = now_ns();
            if recv.is_complete() {
                recv.complete_ns = Some(connected_ns);
            }
            let frame = format!(
                r#"{{"type":"subscribe","id":"sub-{i}","payload":{{"channel":"{channel}","since_seq":{since}}}}}"#
            );
            let plan = SendPlan {
                total: 1,
                window: 1,
                interval_ns: None,
                send_until_ns: None,
                credit: None,
                frame: Box::new(move |_, _| Message::text(frame.clone())),
            };
            let opts = Opts {
                stop: &stop3,
                progress: &p3,
                exit_when_complete: false,
                graceful: true,
            };
            let (end, _) = drive(ws, Some(plan), &mut recv, opts).await;
            let problem = end.dropped().then(|| end.to_string());
            (recv, Some(connected_ns), problem)
        }));
    }
    let w3 = wait_for(
        &p3,
        s.deadline,
        s.common.stall().max(s.common.connect_timeout()),
        || p3.receivers_done.load(Ordering::Relaxed) >= c,
    )
    .await;
    stop3.cancel();
    let resumed = join_all(tasks).await?;

    let mut resume = Latency::default();
    let (mut all_connected, mut all_resumed) = (t3, t3);
    let (mut lost, mut dups, mut ooo, mut errors, mut not_resumed, mut not_connected) =
        (0u64, 0u64, 0u64, 0u64, 0usize, 0usize);
    let mut first_problem = None;
    let mut first_error = None;
    for (i, (client, connected, problem)) in resumed.iter().enumerate() {
        match connected {
            Some(t) => all_connected = all_connected.max(*t),
            None => not_connected += 1,
        }
        match client.complete_ns {
            Some(t) => {
                all_resumed = all_resumed.max(t);
                resume.record_ns(t.saturating_sub(t3));
            }
            None => not_resumed += 1,
        }
        lost += acked[i].iter().filter(|q| !client.seen.contains(q)).count() as u64;
        dups += client.duplicates;
        ooo += client.out_of_order;
        errors += client.errors;
        if first_problem.is_none() {
            first_problem = problem.clone();
        }
        if first_error.is_none() {
            first_error = client.first_error.clone();
        }
    }
    let expected: u64 = acked.iter().map(|v| v.len() as u64).sum();
    report
        .result("resume.reconnect_retries", retries.load(Ordering::Relaxed))
        .result(
            "resume.all_connected_s",
            round3((all_connected - t3) as f64 / 1e9),
        )
        .result(
            "resume.all_resumed_s",
            round3((all_resumed - t3) as f64 / 1e9),
        )
        .result("resume.per_client", resume.summary())
        .result("resume.not_connected", not_connected)
        .result("resume.not_resumed", not_resumed)
        .result("resume.wait", w3)
        .result("expected", expected)
        .result("lost", lost)
        .result("duplicated", dups)
        .result("out_of_order", ooo)
        .result("error_frames", errors);
    if lost > 0 {
        report.fail(format!(
            "{lost} of {expected} acked messages never reached their client"
        ));
    }
    if dups > 0 {
        report.fail(format!("{dups} deliveries duplicated"));
    }
    if ooo > 0 {
        report.fail(format!("{ooo} deliveries out of order"));
    }
    if not_connected > 0 || not_resumed > 0 {
        report.fail(format!(
            "{not_connected} clients did not reconnect, {not_resumed} did not resume; first problem: {}",
            first_problem.unwrap_or_default()
        ));
    }
    if errors > 0 {
        report.fail(format!(
            "{errors} error frames; first: {}",
            first_error.unwrap_or_default()
        ));
    }
    if w3 == WaitEnd::TimedOut || w1 == WaitEnd::TimedOut {
        report.fail("hit --timeout");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::dm;

    #[test]
    fn dm_names_sort() {
        assert_eq!(dm("storm-1", "storm-src"), "dm:storm-1:storm-src");
        assert_eq!(dm("zed", "amy"), "dm:amy:zed");
    }
}
