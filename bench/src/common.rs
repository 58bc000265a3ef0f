//! What every scenario shares: the target address, tokens, the clock, connecting, a tiny
//! HTTP client, the message content format and fast field scanning of server frames.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use jsonwebtoken::{EncodingKey, Header};
use memchr::memmem::{Finder, FinderRev};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client WebSocket over a plain TCP stream.
pub type Ws = WebSocketStream<TcpStream>;

/// An error of the tool, already phrased for the user.
pub type BenchError = String;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's clock reference (monotonic, shared by every task).
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The [`Instant`] of a [`now_ns`] value.
pub fn instant_of(ns: u64) -> Instant {
    *START.get_or_init(Instant::now) + Duration::from_nanos(ns)
}

/// A short id unique to this run (client frame ids must not repeat across runs: the broker
/// deduplicates by sender and frame id).
pub fn run_id() -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    RUN.get_or_init(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("r{:x}{:x}", ms, std::process::id())
    })
    .clone()
}

/// Which server the tool talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Switchboard: tokens, envelopes, acks, groups.
    Contract,
    /// The floor server: no auth, every text frame is broadcast to the other connections.
    Floor,
}

/// Where the server is.
#[derive(Clone, Debug)]
pub struct Target {
    /// Socket address of the server.
    pub addr: SocketAddr,
    /// `host:port` as given, for the `Host` header.
    pub host: String,
}

impl Target {
    /// Parses `ws://host:port` (also `http://`); only loopback addresses are accepted.
    pub async fn parse(url: &str) -> Result<Target, BenchError> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("--url `{url}`: expected ws://HOST:PORT"))?;
        let host = rest.split('/').next().unwrap_or(rest).to_owned();
        let hostport = if host.contains(':') {
            host.clone()
        } else {
            format!("{host}:80")
        };
        let addr = tokio::net::lookup_host(&hostport)
            .await
            .map_err(|e| format!("--url `{url}`: cannot resolve `{hostport}`: {e}"))?
            .find(|a| a.is_ipv4())
            .ok_or_else(|| format!("--url `{url}`: `{hostport}` has no IPv4 address"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "--url `{url}`: {} is not a loopback address; this tool only loads 127.0.0.0/8",
                addr.ip()
            ));
        }
        Ok(Target { addr, host })
    }

    /// Checks that something accepts TCP connections there.
    pub async fn reachable(&self, timeout: Duration) -> Result<(), BenchError> {
        match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "server unreachable at {}: {e} (is it running?)",
                self.addr
            )),
            Err(_) => Err(format!(
                "server unreachable at {}: connect timed out",
                self.addr
            )),
        }
    }
}

/// Mints HS256 tokens with the broker's secret.
pub struct Minter {
    key: EncodingKey,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    jti: String,
    roles: &'a [&'a str],
}

impl Minter {
    /// A minter for `secret`.
    pub fn new(secret: &str) -> Self {
        Minter {
            key: EncodingKey::from_secret(secret.as_bytes()),
        }
    }

    /// A token for `user`, valid for a day, with `roles`.
    pub fn token(&self, user: &str, roles: &[&str]) -> Result<String, BenchError> {
        static JTI: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: user,
            exp: now + 86_400,
            iat: now,
            jti: format!("{}-{}", run_id(), JTI.fetch_add(1, Ordering::Relaxed)),
            roles,
        };
        jsonwebtoken::encode(&Header::default(), &claims, &self.key)
            .map_err(|e| format!("cannot mint a token: {e}"))
    }
}

/// The source address for connection number `i`: 127.0.0.2 … 127.0.0.250, round robin, so
/// that ephemeral ports do not run out with many connections.
pub fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 249) as u8))
}

/// WebSocket settings for many mostly idle connections: small read buffers.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024 * 1024)
}

/// How a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP connect failed (refused, timed out…).
    Tcp(String),
    /// The upgrade was refused or the handshake broke.
    Upgrade(String),
    /// The first frame was not `connected`.
    Hello(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Tcp(e) => write!(f, "tcp: {e}"),
            ConnectError::Upgrade(e) => write!(f, "upgrade: {e}"),
            ConnectError::Hello(e) => write!(f, "hello: {e}"),
        }
    }
}

/// Connects from source address `src` to `path_and_query` (e.g. `/ws?token=…`); in contract
/// mode waits for the `connected` frame.
pub async fn connect(
    target: &Target,
    src: IpAddr,
    path_and_query: &str,
    mode: Mode,
    timeout: Duration,
) -> Result<Ws, ConnectError> {
    let attempt = async {
        let socket = TcpSocket::new_v4().map_err(|e| ConnectError::Tcp(e.to_string()))?;
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|e| ConnectError::Tcp(format!("bind {src}: {e}")))?;
        let stream = socket
            .connect(target.addr)
            .await
            .map_err(|e| ConnectError::Tcp(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| ConnectError::Tcp(e.to_string()))?;
        let url = format!("ws://{}{}", target.host, path_and_query);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
                .await
                .map_err(|e| ConnectError::Upgrade(e.to_string()))?;
        if mode == Mode::Contract {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if frame_type(&t) == Some("connected") {
                            break;
                        }
                        return Err(ConnectError::Hello(format!(
                            "expected `connected`, got {}",
                            truncate(&t, 200)
                        )));
                    }
                    Some(Ok(Message::Close(c))) => {
                        return Err(ConnectError::Hello(format!("closed: {c:?}")))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(ConnectError::Hello(e.to_string())),
                    None => return Err(ConnectError::Hello("connection closed".into())),
                }
            }
        }
        Ok(ws)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Tcp(format!(
            "connect timed out after {timeout:?}"
        ))),
    }
}

/// The `/ws` path for `user` in contract mode (token in the query), or the floor's path.
pub fn ws_path(
    mode: Mode,
    minter: &Minter,
    user: &str,
    room: Option<&str>,
) -> Result<String, BenchError> {
    match mode {
        Mode::Contract => Ok(format!("/ws?token={}", minter.token(user, &[])?)),
        Mode::Floor => Ok(match room {
            Some(r) => format!("/ws?room={r}"),
            None => "/ws".to_owned(),
        }),
    }
}

/// Sends one HTTP/1.1 request and returns the status code and body (no keep-alive, no
/// chunked bodies expected: enough for the broker's small JSON replies).
pub async fn http_request(
    target: &Target,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), BenchError> {
    let exchange = async {
        let mut s = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("server unreachable at {}: {e}", target.addr))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            target.host
        );
        if let Some(t) = bearer {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| {
                format!(
                    "{method} {path}: not an HTTP reply: {}",
                    truncate(&text, 200)
                )
            })?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{method} {path}: no reply within {timeout:?}"))?
}

/// At most `n` characters of `s`, for error messages.
pub fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Message content of about `size` bytes that carries the message index and its send time:
/// `"<idx> <send_ns> xxxx…"`.
/// A bench frame id: `{prefix}{idx}`, or with `random`, `{prefix}{16 hex digits}.{idx}`
/// where the hex digits are a bijective scramble of `idx`. Random ids spread over the key
/// space as clients' own ids (UUIDs) do, which is what an index on them sees; the tool still
/// reads its index back from an ack's `ref_id` ([`frame_index`]).
pub struct FrameId<'a> {
    /// Per-connection prefix.
    pub prefix: &'a str,
    /// The frame's index within its connection.
    pub idx: u64,
    /// Spread the ids over the key space.
    pub random: bool,
}

impl std::fmt::Display for FrameId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.random {
            // splitmix64's finaliser: a bijection, so ids stay unique.
            let mut z = self.idx.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            write!(f, "{}{:016x}.{}", self.prefix, z ^ (z >> 31), self.idx)
        } else {
            write!(f, "{}{}", self.prefix, self.idx)
        }
    }
}

/// The index in what follows the prefix of a [`FrameId`].
pub fn frame_index(rest: &str) -> Option<u64> {
    rest.rsplit('.').next()?.parse().ok()
}

pub fn content(idx: u64, send_ns: u64, size: usize) -> String {
    let mut s = format!("{idx} {send_ns} ");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// Reads `(idx, send_ns)` back from a frame that carries [`content`].
pub fn parse_content(frame: &str) -> Option<(u64, u64)> {
    static CONTENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"content\":\""));
    let i = CONTENT.find(frame.as_bytes())?;
    let rest = frame.get(i + CONTENT.needle().len()..)?;
    let (idx, rest) = leading_u64(rest)?;
    let (ns, _) = leading_u64(rest.strip_prefix(' ')?)?;
    Some((idx, ns))
}

fn after<'a>(s: &'a str, pat: &str) -> Option<&'a str> {
    // `pat` is ASCII, so the byte after it is a char boundary.
    memchr::memmem::find(s.as_bytes(), pat.as_bytes()).and_then(|i| s.get(i + pat.len()..))
}

fn leading_u64(s: &str) -> Option<(u64, &str)> {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    s[..end].parse().ok().map(|v| (v, &s[end..]))
}

/// The first string value of `"key":"…"` (pattern given with quotes and colon), without
/// unescaping: for ids and types, which never need it.
pub fn str_field<'a>(frame: &'a str, pat: &str) -> Option<&'a str> {
    let rest = after(frame, pat)?.trim_start().strip_prefix('"')?;
    memchr::memchr(b'"', rest.as_bytes()).map(|end| &rest[..end])
}

/// The delivery's `meta.seq` (searched from the end, where the broker writes `meta`).
pub fn seq_field(frame: &str) -> Option<u64> {
    static SEQ: LazyLock<FinderRev<'static>> = LazyLock::new(|| FinderRev::new("\"seq\":"));
    let i = SEQ.rfind(frame.as_bytes())?;
    leading_u64(frame.get(i + SEQ.needle().len()..)?.trim_start()).map(|(v, _)| v)
}

/// The frame's `type` (the broker writes it first, which makes the common case cheap).
pub fn frame_type(frame: &str) -> Option<&str> {
    match frame.strip_prefix("{\"type\":\"") {
        Some(rest) => memchr::memchr(b'"', rest.as_bytes()).map(|end| &rest[..end]),
        None => str_field(frame, "\"type\":"),
    }
}

/// Shared counters the coordinator watches while connections run.
#[derive(Default)]
pub struct Progress {
    /// Frames handled by all connections (deliveries, acks), to see whether anything moves.
    pub events: AtomicU64,
    /// Connections whose receiving part is complete (one that expects nothing counts at once).
    pub receivers_done: AtomicUsize,
    /// Connections whose sending part is complete.
    pub senders_done: AtomicUsize,
    /// Connections that closed or failed before being told to stop.
    pub dropped: AtomicUsize,
    /// Messages sent by all connections.
    pub sent: AtomicU64,
    /// Distinct deliveries counted by receivers that track them.
    pub delivered: AtomicU64,
}

/// Why the coordinator stopped waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitEnd {
    /// The condition held.
    Done,
    /// Nothing moved for the stall period.
    Stalled,
    /// The hard deadline passed.
    TimedOut,
}

/// Waits until `done()` holds, nothing has moved for `stall`, or `deadline`.
pub async fn wait_for(
    progress: &Progress,
    deadline: Instant,
    stall: Duration,
    mut done: impl FnMut() -> bool,
) -> WaitEnd {
    let mut last = progress.events.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        if done() {
            return WaitEnd::Done;
        }
        let now = Instant::now();
        if now >= deadline {
            return WaitEnd::TimedOut;
        }
        let ev = progress.events.load(Ordering::Relaxed);
        if ev != last {
            last = ev;
            last_change = now;
        } else if now.duration_since(last_change) >= stall {
            return WaitEnd::Stalled;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `f(i)` for `i in 0..n` with at most `limit` running at once, in order of `i`;
/// returns the results by index.
pub async fn bounded<T, F, Fut>(n: usize, limit: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    futures_util::stream::iter((0..n).map(f))
        .buffered(limit.max(1))
        .collect()
        .await
}

/// Resident set size of process `pid` in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("{path}: no VmRSS line"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn frame_ids_of_both_styles_give_their_index_back() {
        for random in [false, true] {
            let id = super::FrameId {
                prefix: "run-1-",
                idx: 42,
                random,
            }
            .to_string();
            let rest = id.strip_prefix("run-1-").expect("prefix");
            assert_eq!(super::frame_index(rest), Some(42), "{id}");
        }
        let a = super::FrameId {
            prefix: "",
            idx: 1,
            random: true,
        }
        .to_string();
        let b = super::FrameId {
            prefix: "",
            idx: 2,
            random: true,
        }
        .to_string();
        assert_ne!(a[..4], b[..4], "neighbours land far apart");
    }

    use super::*;

    #[test]
    fn content_round_trip() {
        let c = content(42, 123_456_789, 100);
        assert_eq!(c.len(), 100);
        let frame = format!(
            r#"{{"type":"group_message","payload":{{"content":"{c}"}},"meta":{{"seq":7}}}}"#
        );
        assert_eq!(parse_content(&frame), Some((42, 123_456_789)));
        assert_eq!(seq_field(&frame), Some(7));
        assert_eq!(leading_u64("18446744073709551616"), None);
        assert_eq!(frame_type(&frame), Some("group_message"));
    }

    #[test]
    fn fields() {
        assert_eq!(frame_type(r#"{ "type" : "x"}"#), None);
        assert_eq!(
            frame_type(r#"{"id":"1","type":"heartbeat"}"#),
            Some("heartbeat")
        );
        let f = r#"{"type":"ack","payload":{"ref_id":"r1-9","seq": 12}}"#;
        assert_eq!(str_field(f, "\"ref_id\":"), Some("r1-9"));
        assert_eq!(seq_field(f), Some(12));
        assert_eq!(str_field(f, "\"nope\":"), None);
    }

    #[test]
    fn sources_stay_in_range() {
        for i in 0..1000 {
            let IpAddr::V4(v4) = source_ip(i) else {
                panic!("v4 expected")
            };
            let last = v4.octets()[3];
            assert!((2..=250).contains(&last));
        }
    }
}
