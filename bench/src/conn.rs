//! The connection driver: one task per WebSocket that sends numbered messages within a
//! window of unacknowledged ones (or at a fixed pace), reads every frame the server sends,
//! and stops when it is told to, when the server closes, or when both sides are complete.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::common::{instant_of, now_ns, Progress, Ws};
use crate::stats::Latency;

/// Acknowledgements that arrive somewhere else (floor mode has no acks: a chosen receiver
/// counts what it got, and that count opens the sender's window).
#[derive(Default)]
pub struct Credit {
    /// Messages confirmed so far.
    pub count: AtomicU64,
    /// Woken on each confirmation.
    pub notify: Notify,
}

impl Credit {
    /// Confirms one more message.
    pub fn add(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }
}

/// Builds message `idx` sent at `send_ns`.
pub type FrameFn = Box<dyn FnMut(u64, u64) -> Message + Send>;

/// What a connection sends.
pub struct SendPlan {
    /// Messages to send.
    pub total: u64,
    /// Most messages sent and not yet acknowledged.
    pub window: u64,
    /// Pace: one message every this many ns (None: as fast as the window allows).
    pub interval_ns: Option<u64>,
    /// No new message after this time ([`now_ns`]).
    pub send_until_ns: Option<u64>,
    /// Where acknowledgements come from when the server sends none.
    pub credit: Option<Arc<Credit>>,
    /// The frame for message `idx` sent at `send_ns`.
    pub frame: FrameFn,
}

/// What the sending side did.
#[derive(Default)]
pub struct SendStats {
    /// Messages sent.
    pub sent: u64,
    /// Positive acks received.
    pub acked: u64,
    /// `error` frames that answered one of our messages.
    pub nacked: u64,
    /// The first of those errors.
    pub first_error: Option<String>,
    /// When the first message went out.
    pub first_send_ns: Option<u64>,
    /// When the last ack arrived.
    pub last_ack_ns: u64,
    /// Time from send to ack.
    pub ack_latency: Latency,
}

impl SendStats {
    /// Adds another sender's figures to these (totals over several connections).
    pub fn absorb(&mut self, other: &SendStats) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.nacked += other.nacked;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.first_send_ns = match (self.first_send_ns, other.first_send_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_ack_ns = self.last_ack_ns.max(other.last_ack_ns);
        self.ack_latency.merge(&other.ack_latency);
    }
}

/// How the driver classified a frame.
pub enum Incoming {
    /// Positive ack of our message `idx`.
    Ack(u64),
    /// Error answering one of our messages (the error frame).
    Nack(String),
    /// Anything else (deliveries are counted by the receiver itself).
    Other,
    /// A frame to send back (a `delivered` for a delivery).
    Reply(String),
}

/// The receiving side of a connection.
pub trait Recv: Send {
    /// A text frame arrived at `now_ns`.
    fn on_text(&mut self, text: &str, now_ns: u64) -> Incoming;
    /// Whether everything this connection waits for has arrived.
    fn complete(&self) -> bool {
        true
    }
}

/// A receiver that only watches for acks of `<prefix><idx>` ids and `error` frames.
pub struct AckOnly {
    prefix: String,
}

impl AckOnly {
    /// Acks are matched by client frame ids `<prefix><idx>`.
    pub fn new(prefix: String) -> Self {
        AckOnly { prefix }
    }
}

impl Recv for AckOnly {
    fn on_text(&mut self, text: &str, _: u64) -> Incoming {
        classify_ack(text, &self.prefix)
    }
}

/// Recognises `ack` and `error` frames answering ids `<prefix><idx>`.
pub fn classify_ack(text: &str, prefix: &str) -> Incoming {
    use crate::common::{frame_type, str_field};
    let kind = frame_type(text);
    if kind != Some("ack") && kind != Some("error") {
        return Incoming::Other;
    }
    let idx = str_field(text, "\"ref_id\":")
        .and_then(|r| r.strip_prefix(prefix))
        .and_then(crate::common::frame_index);
    match (kind, idx) {
        (Some("ack"), Some(i)) => Incoming::Ack(i),
        (_, Some(_)) => Incoming::Nack(text.to_owned()),
        _ => Incoming::Other,
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum End {
    /// Told to stop.
    Stopped,
    /// Sent and received everything.
    Complete,
    /// The server closed the connection.
    Closed(String),
    /// Reading or writing failed.
    Failed(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Stopped => f.write_str("stopped"),
            End::Complete => f.write_str("complete"),
            End::Closed(why) | End::Failed(why) => f.write_str(why),
        }
    }
}

impl End {
    /// Whether the connection went away on its own (not told to stop, not complete).
    pub fn dropped(&self) -> bool {
        matches!(self, End::Closed(_) | End::Failed(_))
    }
}

/// How the driver behaves.
pub struct Opts<'a> {
    /// Stops the connection (closing it cleanly when `graceful`).
    pub stop: &'a CancellationToken,
    /// Shared counters.
    pub progress: &'a Progress,
    /// Return as soon as sending and receiving are complete (else wait for `stop`).
    pub exit_when_complete: bool,
    /// Send a close frame when stopped (else just drop the socket).
    pub graceful: bool,
}

/// Frames handled in one go before the driver looks at its send window again.
const READ_BATCH: usize = 128;
/// Frames written before one flush.
const SEND_BATCH: u64 = 256;

/// Runs one connection until it ends; see the module doc.
pub async fn drive<R: Recv>(
    ws: Ws,
    mut plan: Option<SendPlan>,
    recv: &mut R,
    opts: Opts<'_>,
) -> (End, SendStats) {
    let (mut sink, mut stream) = ws.split();
    let mut st = SendStats::default();
    let mut sent_at: Vec<u64> = Vec::new();
    let mut send_open = plan.is_some();
    let mut sender_reported = false;
    let mut receiver_reported = false;
    let start_ns = now_ns();

    let end = 'outer: loop {
        // 1. Send what the window and the pace allow.
        let mut next_due: Option<u64> = None;
        let mut window_full = false;
        let mut more_now = false;
        if let (Some(p), true) = (plan.as_mut(), send_open) {
            let mut batch = 0;
            loop {
                if batch >= SEND_BATCH {
                    // More may go at once: read what arrived, then come back without waiting.
                    more_now = true;
                    break;
                }
                let now = now_ns();
                if st.sent >= p.total || p.send_until_ns.is_some_and(|u| now >= u) {
                    send_open = false;
                    break;
                }
                let confirmed = match &p.credit {
                    Some(c) => c.count.load(Ordering::Relaxed),
                    None => st.acked + st.nacked,
                };
                if st.sent.saturating_sub(confirmed) >= p.window {
                    window_full = true;
                    break;
                }
                let t = match p.interval_ns {
                    Some(iv) => {
                        let due = start_ns + st.sent * iv;
                        if due > now {
                            next_due = Some(due);
                            break;
                        }
                        due
                    }
                    None => now,
                };
                let msg = (p.frame)(st.sent, t);
                if p.credit.is_none() {
                    sent_at.push(t);
                }
                if let Err(e) = sink.feed(msg).await {
                    break 'outer End::Failed(format!("send: {e}"));
                }
                st.first_send_ns.get_or_insert(t);
                st.sent += 1;
                batch += 1;
            }
            if batch > 0 {
                opts.progress.sent.fetch_add(batch, Ordering::Relaxed);
                if let Err(e) = sink.flush().await {
                    break 'outer End::Failed(format!("send: {e}"));
                }
            }
        }

        // 2. Report and maybe finish.
        let send_done = match &plan {
            None => true,
            Some(p) => !send_open && (p.credit.is_some() || st.acked + st.nacked >= st.sent),
        };
        if plan.is_some() && send_done && !sender_reported {
            sender_reported = true;
            opts.progress.senders_done.fetch_add(1, Ordering::Relaxed);
        }
        let recv_done = recv.complete();
        if recv_done && !receiver_reported {
            receiver_reported = true;
            opts.progress.receivers_done.fetch_add(1, Ordering::Relaxed);
        }
        if send_done && recv_done && opts.exit_when_complete {
            break End::Complete;
        }

        // 3. Wait for a frame, the pace, credit, or the stop signal.
        let credit = plan
            .as_ref()
            .and_then(|p| p.credit.clone())
            .filter(|_| window_full && send_open);
        let due = next_due.map(instant_of);
        let msg = tokio::select! {
            biased;
            _ = opts.stop.cancelled() => break End::Stopped,
            m = stream.next() => m,
            _ = async { if let Some(c) = &credit { c.notify.notified().await } }, if credit.is_some() => continue,
            _ = async { if let Some(d) = due { tokio::time::sleep_until(d.into()).await } }, if due.is_some() => continue,
            _ = tokio::task::yield_now(), if more_now => continue,
        };
        let mut next = Some(msg);
        let mut handled = 0;
        let mut replied = false;
        while let Some(msg) = next.take() {
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let now = now_ns();
                    match recv.on_text(t.as_str(), now) {
                        Incoming::Ack(i) => {
                            st.acked += 1;
                            st.last_ack_ns = now;
                            if let Some(&s) = sent_at.get(i as usize) {
                                st.ack_latency.record_ns(now.saturating_sub(s));
                            }
                        }
                        Incoming::Nack(e) => {
                            st.nacked += 1;
                            st.first_error.get_or_insert(e);
                        }
                        Incoming::Other => {}
                        Incoming::Reply(frame) => {
                            if let Err(e) = sink.feed(Message::Text(frame.into())).await {
                                break 'outer End::Failed(format!("send: {e}"));
                            }
                            replied = true;
                        }
                    }
                    opts.progress.events.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(Message::Close(c))) => {
                    break 'outer End::Closed(match c {
                        Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                        None => "closed by server".into(),
                    })
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break 'outer End::Failed(format!("read: {e}")),
                None => break 'outer End::Closed("connection closed by server".into()),
            }
            handled += 1;
            if handled < READ_BATCH {
                next = stream.next().now_or_never();
            }
        }
        if replied {
            if let Err(e) = sink.flush().await {
                break 'outer End::Failed(format!("send: {e}"));
            }
        }
    };

    if end.dropped() {
        opts.progress.dropped.fetch_add(1, Ordering::Relaxed);
    }
    if matches!(end, End::Stopped | End::Complete) && opts.graceful {
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    }
    (end, st)
}
