//! The scenarios, and what they share: setup, opening many connections, running them.

pub mod conns;
pub mod durable;
pub mod fanout;
pub mod pairs;
pub mod storm;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::common::{connect, now_ns, BenchError, Minter, Mode, Progress, Target, Ws};
use crate::conn::{drive, End, Opts, Recv, SendPlan, SendStats};
use crate::stats::Latency;
use crate::Common;

/// How the sending scenarios (fanout, pairs, durable) send: size, window, rate, duration.
#[derive(clap::Args, Debug, Clone)]
pub struct Load {
    /// Content size in bytes.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Most unacknowledged messages per sender (the scenario's default when absent;
    /// practically unbounded with --rate).
    #[arg(long)]
    pub window: Option<u64>,
    /// Fixed rate in messages/s instead of "as fast as the window allows" (fanout: the
    /// publisher's; pairs: each user's; durable: the total, shared by the publishers).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Stop sending after this many seconds even if the message count is not reached.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Frame ids spread over the key space, as clients' random ids (UUIDs) are, instead of
    /// counting up (`{prefix}{n}`).
    #[arg(long)]
    pub random_ids: bool,
}

impl Load {
    /// The window: as given, else `default`, else (with a fixed rate) practically unbounded.
    pub fn window_or(&self, default: u64) -> u64 {
        self.window.unwrap_or(if self.rate.is_some() {
            1_000_000
        } else {
            default
        })
    }
}

/// Records one delivery of a bench message (latency, loss, duplicates, order) and, in floor
/// mode, gives its sender's window one credit back.
pub(crate) fn record_delivery(
    text: &str,
    now: u64,
    mode: Mode,
    tracker: &mut crate::stats::Tracker,
    progress: &Progress,
    credit: Option<&Arc<crate::conn::Credit>>,
) {
    let Some((idx, sent)) = crate::common::parse_content(text) else {
        return;
    };
    let key = match mode {
        Mode::Contract => crate::common::seq_field(text).unwrap_or(0),
        Mode::Floor => idx,
    };
    if tracker.record(idx, key, sent, now) {
        progress
            .delivered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(c) = credit {
        c.add();
    }
}

/// Everything a scenario run holds on to.
pub struct Setup {
    /// The server.
    pub target: Target,
    /// Token minting.
    pub minter: Minter,
    /// Shared counters.
    pub progress: Arc<Progress>,
    /// The run's hard deadline.
    pub deadline: Instant,
    /// The common options.
    pub common: Common,
}

impl Setup {
    /// Resolves and probes the server; fails with a clear message when it is unreachable.
    pub async fn new(common: &Common, mode: Mode) -> Result<Setup, BenchError> {
        common.need_secret(mode)?;
        let target = Target::parse(&common.url).await?;
        target.reachable(common.connect_timeout()).await?;
        Ok(Setup {
            target,
            minter: Minter::new(&common.secret),
            progress: Arc::new(Progress::default()),
            deadline: Instant::now() + common.timeout(),
            common: common.clone(),
        })
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Connections opened in bulk.
pub struct Opened {
    /// One entry per requested connection.
    pub conns: Vec<Option<Ws>>,
    /// Attempts that failed.
    pub failed: usize,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Wall time of the whole batch, in seconds.
    pub elapsed_s: f64,
    /// Time of each successful attempt.
    pub latency: Latency,
}

/// Opens `n` connections, at most `--concurrency` at once; connection `i` comes from
/// `src(i)` and asks for `path(i)`.
pub async fn open_many(
    s: &Setup,
    mode: Mode,
    n: usize,
    src: impl Fn(usize) -> IpAddr,
    path: impl Fn(usize) -> Result<String, BenchError>,
) -> Result<Opened, BenchError> {
    open_many_at(
        s,
        std::slice::from_ref(&s.target),
        |_| 0,
        mode,
        n,
        src,
        path,
    )
    .await
}

/// [`open_many`] over several servers (the nodes of a cluster): connection `i` goes to
/// `targets[node(i)]`.
pub async fn open_many_at(
    s: &Setup,
    targets: &[Target],
    node: impl Fn(usize) -> usize,
    mode: Mode,
    n: usize,
    src: impl Fn(usize) -> IpAddr,
    path: impl Fn(usize) -> Result<String, BenchError>,
) -> Result<Opened, BenchError> {
    let paths: Vec<String> = (0..n).map(&path).collect::<Result<_, _>>()?;
    let started = Instant::now();
    let timeout = s.common.connect_timeout().min(s.remaining());
    let results = crate::common::bounded(n, s.common.concurrency, |i| {
        let target = targets.get(node(i)).unwrap_or(&s.target);
        let (p, ip) = (&paths[i], src(i));
        async move {
            let t = now_ns();
            let r = connect(target, ip, p, mode, timeout).await;
            (r, now_ns().saturating_sub(t))
        }
    })
    .await;
    let elapsed_s = started.elapsed().as_secs_f64();
    let mut out = Opened {
        conns: Vec::with_capacity(n),
        failed: 0,
        first_error: None,
        elapsed_s,
        latency: Latency::default(),
    };
    for (r, ns) in results {
        match r {
            Ok(ws) => {
                out.latency.record_ns(ns);
                out.conns.push(Some(ws));
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
                out.conns.push(None);
            }
        }
    }
    Ok(out)
}

/// What a finished connection task hands back.
pub struct Finished<R> {
    /// Its receiving state.
    pub recv: R,
    /// How it ended.
    pub end: End,
    /// Its sending statistics.
    pub sent: SendStats,
}

/// Runs [`drive`] on its own task.
pub fn spawn_drive<R: Recv + 'static>(
    ws: Ws,
    plan: Option<SendPlan>,
    mut recv: R,
    progress: Arc<Progress>,
    stop: CancellationToken,
    exit_when_complete: bool,
    graceful: bool,
) -> tokio::task::JoinHandle<Finished<R>> {
    tokio::spawn(async move {
        let opts = Opts {
            stop: &stop,
            progress: &progress,
            exit_when_complete,
            graceful,
        };
        let (end, sent) = drive(ws, plan, &mut recv, opts).await;
        Finished { recv, end, sent }
    })
}

/// Waits for every task; a task that panicked is reported as an error.
pub async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Result<Vec<T>, BenchError> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(
            h.await
                .map_err(|e| format!("a connection task failed: {e}"))?,
        );
    }
    Ok(out)
}

/// Counts ends that were not asked for, with the first reason.
pub fn dropped<R>(done: &[Finished<R>]) -> (usize, Option<String>) {
    let mut n = 0;
    let mut first = None;
    for f in done {
        if f.end.dropped() {
            n += 1;
            first.get_or_insert_with(|| f.end.to_string());
        }
    }
    (n, first)
}

/// Messages per second over `count` events between two [`now_ns`] instants.
pub fn per_second(count: u64, from_ns: u64, to_ns: u64) -> f64 {
    let span = to_ns.saturating_sub(from_ns);
    if span == 0 {
        return 0.0;
    }
    crate::report::round3(count as f64 * 1e9 / span as f64)
}
