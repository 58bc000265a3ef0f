//! The one way tests start the broker: a real server on a random port, a fresh SQLite file
//! in a temp dir, real WebSocket and HTTP clients.

use std::time::Duration;

use actix_http::ws::{Codec, Frame, Item, Message};
use awc::error::WsClientError;
use awc::BoxedSocket;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::auth::Authority;
use switchboard::{Application, Settings};
use switchboard_actors::store::postgres as pg;

mod cluster;
pub use cluster::{redis_url, spawn_cluster, spawn_cluster_on, PrivateRedis};

/// How long any single expected frame may take to arrive.
pub const WAIT: Duration = Duration::from_secs(10);

/// How a REST call authenticates.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// Not at all.
    None,
    /// `Authorization: Bearer`.
    Bearer(&'a str),
    /// `X-Api-Key`.
    ApiKey(&'a str),
    /// Both headers.
    Both(&'a str, &'a str),
}

/// A running broker.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `ws://127.0.0.1:PORT`
    pub ws_base: String,
    /// The settings it runs with.
    pub settings: Settings,
    auth: Authority,
    /// Removed when the first node of the data dir stops (a second node shares it).
    _dir: Option<tempfile::TempDir>,
    /// With `SWITCHBOARD_TEST_BACKEND=postgres`: the broker's own database.
    _pg: Option<PgDatabase>,
}

/// Whether the suite runs on PostgreSQL (`SWITCHBOARD_TEST_BACKEND=postgres`) rather than
/// the embedded SQLite.
pub fn on_postgres() -> bool {
    std::env::var("SWITCHBOARD_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// Settings every test starts from: the shipped config.toml with a port of 0, a temp data
/// dir, a fixed secret and fault injection on.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::from_sources(include_str!("../../config.toml"), std::iter::empty())
        .expect("config.toml is valid");
    s.server.port = 0;
    s.server.workers = 1;
    s.server.data_dir = dir.to_path_buf();
    s.auth.jwt_secret = "test-secret-do-not-use".into();
    s.debug.fault_injection = true;
    s.database.sqlite_synchronous = switchboard_actors::store::Synchronous::Normal;
    // Every test client comes from 127.0.0.1; the tests of the address limits set them.
    s.limits.upgrades_per_ip_per_second = 0.0;
    s.limits.requests_per_ip_per_second = 0.0;
    // Tests open connections and call routes as one user faster than anyone should; the
    // tests of the per-user rates set them.
    s.limits.connects_per_user_per_second = 0.0;
    s.limits.requests_per_user_per_second = 0.0;
    s
}

/// Raises the frame rate limit out of the way, for tests that pipeline many frames.
pub fn without_rate_limit(s: &mut Settings) {
    s.limits.frames_per_second = 1_000_000.0;
    s.limits.frames_burst = 1_000_000.0;
}

/// Starts a broker with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a broker with settings adjusted by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("temp dir"), adjust).await
}

/// Starts a broker on an existing data dir (e.g. one a test prepared).
pub async fn spawn_app_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut settings = test_settings(dir.path());
    let pg = on_postgres().then(PgDatabase::create);
    if let Some(pg) = &pg {
        settings.database.url = pg.url.clone();
    }
    adjust(&mut settings);
    serve(settings, Some(dir), pg).await
}

/// Builds and runs a broker with `settings`, keeping `dir` and `pg` as long as it lives.
async fn serve(
    settings: Settings,
    dir: Option<tempfile::TempDir>,
    pg: Option<PgDatabase>,
) -> TestApp {
    let auth = Authority::from_settings(&settings).expect("keys");
    let app = Application::build(settings.clone())
        .await
        .expect("app builds");
    let port = app.port();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        base: format!("http://127.0.0.1:{port}"),
        ws_base: format!("ws://127.0.0.1:{port}"),
        settings,
        auth,
        _dir: dir,
        _pg: pg,
    }
}

/// A second broker on the same database as `first` (another node of one deployment: on
/// SQLite, another server on the same file).
pub async fn another_node(first: &TestApp) -> TestApp {
    serve(first.settings.clone(), None, None).await
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after [`WAIT`].
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "not in time: {what}");
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestApp {
    /// Runs `sql` on the broker's own database (SQLite file or PostgreSQL); its one text
    /// column `v` of each row. For checking what is on disk.
    pub fn query_texts(&self, sql: &str) -> Vec<String> {
        if let Some(pg) = self.pg() {
            return pg.query_texts(sql);
        }
        use diesel::{Connection, RunQueryDsl};
        #[derive(diesel::QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            v: String,
        }
        let file = self.settings.server.data_dir.join("switchboard.db");
        let mut c = diesel::SqliteConnection::establish(&file.to_string_lossy()).expect("open");
        let rows: Vec<Row> = diesel::sql_query(sql).load(&mut c).expect("query");
        rows.into_iter().map(|r| r.v).collect()
    }

    /// The broker's PostgreSQL database, when the suite runs on PostgreSQL.
    pub fn pg(&self) -> Option<&PgDatabase> {
        self._pg.as_ref()
    }

    /// A token for `user` with `roles`, valid for `ttl`.
    pub fn token_with(&self, user: &str, roles: &[&str], ttl: Duration) -> String {
        let roles = roles.iter().map(|r| r.to_string()).collect();
        self.auth
            .mint(user, roles, ttl, None, false)
            .expect("mint")
            .token
    }

    /// A one-hour token for `user`.
    pub fn token(&self, user: &str) -> String {
        self.token_with(user, &[], Duration::from_secs(3600))
    }

    /// A one-hour admin token.
    pub fn admin_token(&self) -> String {
        self.token_with("admin", &["admin"], Duration::from_secs(3600))
    }

    /// Connects as `user` (bearer header) and reads the `connected` frame.
    pub async fn ws(&self, user: &str) -> WsClient {
        self.ws_as(user, "").await
    }

    /// Connects as `user` with extra query text (e.g. `client_id=phone&device=mobile`).
    pub async fn ws_as(&self, user: &str, query: &str) -> WsClient {
        let mut c = self
            .ws_connect(&format!("/ws?{query}"), Some(&self.token(user)))
            .await
            .expect("upgrade");
        let f = c.recv().await;
        assert_eq!(f["type"], "connected", "first frame: {f}");
        assert_eq!(f["payload"]["user_id"], user);
        c.connected = f;
        c
    }

    /// Opens `/ws…` with an optional bearer token; the HTTP status on refusal.
    pub async fn ws_connect(&self, path: &str, bearer: Option<&str>) -> Result<WsClient, u16> {
        let mut req = awc::Client::builder()
            .timeout(WAIT)
            .finish()
            .ws(format!("{}{path}", self.ws_base))
            .max_frame_size(4 << 20);
        if let Some(t) = bearer {
            req = req.bearer_auth(t);
        }
        match req.connect().await {
            Ok((_, framed)) => Ok(WsClient {
                framed,
                connected: Value::Null,
            }),
            Err(WsClientError::InvalidResponseStatus(s)) => Err(s.as_u16()),
            Err(e) => panic!("ws connect failed: {e}"),
        }
    }

    /// An HTTP call; the status and the JSON body (`null` when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let auth = token.map_or(Credential::None, Credential::Bearer);
        self.call_as(method, path, auth, body).await
    }

    /// A REST call with an API key: the status and the JSON body.
    pub async fn call_key(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.call_as(method, path, Credential::ApiKey(key), body)
            .await
    }

    /// A REST call with `auth`: the status and the JSON body (`null` when empty).
    pub async fn call_as(
        &self,
        method: &str,
        path: &str,
        auth: Credential<'_>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = awc::Client::builder().timeout(WAIT).finish();
        let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = client.request(method, format!("{}{path}", self.base));
        match auth {
            Credential::None => {}
            Credential::Bearer(t) => req = req.bearer_auth(t),
            Credential::ApiKey(k) => req = req.insert_header(("X-Api-Key", k)),
            Credential::Both(t, k) => req = req.bearer_auth(t).insert_header(("X-Api-Key", k)),
        }
        let mut resp = match body {
            Some(b) => req.send_json(&b).await,
            None => req.send().await,
        }
        .expect("http request");
        let bytes = resp.body().limit(16 << 20).await.expect("body");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (resp.status().as_u16(), json)
    }

    /// GET with a token.
    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call("GET", path, Some(token), None).await
    }

    /// POST JSON with a token.
    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(token), Some(body)).await
    }

    /// Creates group `id` owned by `owner` with `members`.
    pub async fn group(&self, id: &str, owner: &str, members: &[&str]) {
        let (status, body) = self
            .post(
                "/api/groups",
                &self.token(owner),
                json!({"id": id, "name": format!("group {id}"), "members": members}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
}

/// A WebSocket client speaking the contract's JSON frames.
pub struct WsClient {
    framed: actix_codec::Framed<BoxedSocket, Codec>,
    /// The `connected` frame, once read.
    pub connected: Value,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Closed(u16),
    /// The stream ended without a close frame.
    Dropped,
}

impl WsClient {
    /// Wraps a connected socket.
    pub fn from_framed(framed: actix_codec::Framed<BoxedSocket, Codec>) -> Self {
        WsClient {
            framed,
            connected: Value::Null,
        }
    }

    /// Sends a JSON frame.
    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends a text frame as is.
    pub async fn send_text(&mut self, text: &str) {
        self.framed
            .send(Message::Text(ByteString::from(text)))
            .await
            .expect("send");
    }

    /// Sends a raw WebSocket message (for malformed input).
    pub async fn send_raw(&mut self, m: Message) {
        self.framed.send(m).await.expect("send raw");
    }

    async fn next_frame(&mut self, wait: Duration) -> Option<Result<Frame, ()>> {
        match tokio::time::timeout(wait, self.framed.next()).await {
            Err(_) => None,
            Ok(None) => Some(Err(())),
            Ok(Some(Err(_))) => Some(Err(())),
            Ok(Some(Ok(f))) => Some(Ok(f)),
        }
    }

    /// The next JSON frame (control frames skipped; pings answered). Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("a frame within the wait")
    }

    /// The next JSON frame within `wait`, or `None`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match self.next_frame(wait).await? {
                Ok(Frame::Text(b)) => return Some(serde_json::from_slice(&b).expect("JSON frame")),
                Ok(Frame::Ping(p)) => {
                    let _ = self.framed.send(Message::Pong(p)).await;
                }
                Ok(Frame::Close(c)) => panic!("connection closed while waiting for a frame: {c:?}"),
                Ok(_) => {}
                Err(()) => panic!("connection dropped while waiting for a frame"),
            }
        }
    }

    /// The next JSON frame, or how the connection ended.
    pub async fn try_recv_or_end(&mut self, wait: Duration) -> Result<Value, Ended> {
        loop {
            match self.next_frame(wait).await {
                None => panic!("nothing within {wait:?}"),
                Some(Ok(Frame::Text(b))) => {
                    return Ok(serde_json::from_slice(&b).expect("JSON frame"))
                }
                Some(Ok(Frame::Close(c))) => {
                    return Err(Ended::Closed(c.map(|r| u16::from(r.code)).unwrap_or(1005)))
                }
                Some(Ok(_)) => {}
                Some(Err(())) => return Err(Ended::Dropped),
            }
        }
    }

    /// The next frame of type `ty`, skipping others (connection events, receipts…).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f["type"] == ty {
                return f;
            }
        }
    }

    /// Reads until the connection ends (text frames are dropped); how it ended.
    pub async fn ended(&mut self, wait: Duration) -> Ended {
        loop {
            match self.next_frame(wait).await {
                None => panic!("connection still open after {wait:?}"),
                Some(Ok(Frame::Close(c))) => {
                    return Ended::Closed(c.map(|r| u16::from(r.code)).unwrap_or(1005))
                }
                Some(Ok(_)) => {}
                Some(Err(())) => return Ended::Dropped,
            }
        }
    }

    /// How the connection ended, if it did within `wait` (frames meanwhile are skipped).
    pub async fn end_within(&mut self, wait: Duration) -> Option<Ended> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                None => return None,
                Some(Ok(Frame::Close(c))) => {
                    return Some(Ended::Closed(c.map(|r| u16::from(r.code)).unwrap_or(1005)))
                }
                Some(Ok(_)) => {}
                Some(Err(())) => return Some(Ended::Dropped),
            }
        }
    }

    /// Asserts that no JSON frame arrives within `wait` (pings are fine).
    pub async fn silent_for(&mut self, wait: Duration) {
        if let Some(f) = self.try_recv(wait).await {
            panic!("expected nothing, got {f}");
        }
    }

    /// Sends a frame and returns the first `ack` or `error` answer.
    pub async fn request(&mut self, v: Value) -> Value {
        self.send(v).await;
        loop {
            let f = self.recv().await;
            if f["type"] == "ack" || f["type"] == "error" {
                return f;
            }
        }
    }

    /// Sends a DM and returns its ack payload.
    pub async fn dm(&mut self, to: &str, id: &str, content: &str) -> Value {
        let f = self.request(chat(to, id, content)).await;
        assert_eq!(f["type"], "ack", "{f}");
        f["payload"].clone()
    }

    /// Sends invalid UTF-8 as a single text frame.
    pub async fn send_invalid_utf8(&mut self) {
        // SAFETY: deliberately not UTF-8; only the codec sees these bytes.
        let bad =
            unsafe { ByteString::from_bytes_unchecked(Bytes::from_static(&[0xc3, 0x28, 0xff])) };
        self.send_raw(Message::Text(bad)).await;
    }

    /// Sends invalid UTF-8 as a fragmented text message.
    pub async fn send_invalid_utf8_fragmented(&mut self) {
        self.send_raw(Message::Continuation(Item::FirstText(Bytes::from_static(
            b"{\"type\":",
        ))))
        .await;
        self.send_raw(Message::Continuation(Item::Last(Bytes::from_static(&[
            0xff, 0xfe,
        ]))))
        .await;
    }
}

/// A `chat_message` frame.
pub fn chat(to: &str, id: &str, content: &str) -> Value {
    json!({"type": "chat_message", "id": id, "payload": {"content": content}, "meta": {"target_id": to}})
}

/// A `group_message` frame.
pub fn group_msg(group: &str, id: &str, content: &str) -> Value {
    json!({"type": "group_message", "id": id, "payload": {"content": content}, "meta": {"target_id": group}})
}

/// A WebSocket client on a bare TCP socket, for what a well-behaved client library will not
/// send: crafted headers, half frames, reserved bits, HTTP/1.0 upgrades.
pub struct RawWs {
    /// The socket.
    pub stream: tokio::net::TcpStream,
    /// The HTTP response head to the upgrade request.
    pub head: String,
    buf: bytes::BytesMut,
}

/// Why a [`RawWs`] read ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEnd {
    /// The server sent a close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame.
    Dropped,
    /// Nothing within the wait.
    TimedOut,
}

impl TestApp {
    /// Sends an upgrade request by hand (`extra` header lines end with `\r\n`); the HTTP
    /// status, and the socket when it was upgraded.
    pub async fn raw_upgrade(&self, query: &str, version: &str, extra: &str) -> (u16, RawWs) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("tcp connect");
        let req = format!(
            "GET /ws{query} {version}\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("request");
        let mut buf = bytes::BytesMut::with_capacity(4096);
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::time::timeout(WAIT, stream.read_buf(&mut buf))
                .await
                .expect("response in time")
                .expect("read");
            assert!(n > 0, "closed before a response");
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let _ = buf.split_to(head_end);
        (status, RawWs { stream, head, buf })
    }
}

impl RawWs {
    /// A masked client frame: `first` is the FIN/RSV/opcode byte; the length is declared
    /// as `declared` (which may differ from what is sent), then `payload` follows.
    pub fn frame(first: u8, declared: u64, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match declared {
            0..=125 => f.push(0x80 | declared as u8),
            126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(declared as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&declared.to_be_bytes());
            }
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// A whole masked text frame.
    pub fn text(text: &str) -> Vec<u8> {
        Self::frame(0x81, text.len() as u64, text.as_bytes())
    }

    /// Writes bytes; false once the server has closed the connection.
    pub async fn write(&mut self, bytes: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next server frame: `Ok((opcode, payload))`, or how the connection ended.
    pub async fn next_frame(&mut self, wait: Duration) -> Result<(u8, Vec<u8>), RawEnd> {
        use actix_http::ws::{OpCode, Parser};
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match Parser::parse(&mut self.buf, false, 16 << 20) {
                Ok(Some((_, op, payload))) => {
                    let payload = payload.map(|p| p.to_vec()).unwrap_or_default();
                    if op == OpCode::Close {
                        let code = payload
                            .get(..2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .unwrap_or(1005);
                        return Err(RawEnd::Closed(code));
                    }
                    let code = match op {
                        OpCode::Text => 1,
                        OpCode::Ping => 9,
                        OpCode::Pong => 10,
                        _ => 0,
                    };
                    return Ok((code, payload));
                }
                Ok(None) => {}
                Err(_) => return Err(RawEnd::Dropped),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(RawEnd::TimedOut),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(RawEnd::Dropped),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next text frame as JSON (pings skipped).
    pub async fn recv(&mut self) -> Result<Value, RawEnd> {
        loop {
            let (op, payload) = self.next_frame(WAIT).await?;
            if op == 1 {
                return Ok(serde_json::from_slice(&payload).expect("JSON frame"));
            }
        }
    }

    /// How the connection ends within `wait`, skipping text frames and pings.
    pub async fn end(&mut self, wait: Duration) -> RawEnd {
        loop {
            match self.next_frame(wait).await {
                Ok(_) => continue,
                Err(end) => return end,
            }
        }
    }
}

/// Where the PostgreSQL server of the tests is: `SWITCHBOARD_TEST_PG` (a URL to a database
/// the tests may create databases from), or the local one CI starts.
pub fn pg_admin_url() -> String {
    std::env::var("SWITCHBOARD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database of its own on the test PostgreSQL server, dropped when this is dropped.
pub struct PgDatabase {
    /// Its URL.
    pub url: String,
    name: String,
}

impl PgDatabase {
    /// Creates an empty database with a fresh name.
    pub fn create() -> Self {
        use diesel::RunQueryDsl;
        let admin = pg_admin_url();
        let name = format!("sb_test_{}", uuid::Uuid::new_v4().simple());
        let mut c = pg::connect(&admin)
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} (CI starts it): {e}"));
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut c)
            .expect("create database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Runs `sql` (statements separated by `;`) on this database.
    pub fn execute(&self, sql: &str) {
        use diesel::connection::SimpleConnection;
        let mut c = pg::connect(&self.url).expect("connect");
        c.batch_execute(sql).expect("sql");
    }

    /// Runs `sql` on this database and returns the first column of each row as text.
    pub fn query_texts(&self, sql: &str) -> Vec<String> {
        pg_query_texts(&self.url, sql)
    }
}

/// Runs `sql` on the PostgreSQL database at `url`; its one text column `v` of each row.
pub fn pg_query_texts(url: &str, sql: &str) -> Vec<String> {
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    let mut c = pg::connect(url).expect("connect");
    diesel::sql_query(sql)
        .load::<Row>(&mut c)
        .expect("query")
        .into_iter()
        .map(|r| r.v)
        .collect()
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        use diesel::RunQueryDsl;
        if let Ok(mut c) = pg::connect(&pg_admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&mut c);
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// `event:`
    pub event: String,
    /// `id:`
    pub id: String,
    /// `data:`, parsed.
    pub data: Value,
}

/// A reader of `GET /sse`.
pub struct SseClient {
    body: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>>>,
    >,
    buf: String,
    /// Comment lines (`: …`) read so far.
    pub comments: Vec<String>,
}

impl TestApp {
    /// Opens `GET /sse?{query}` with a bearer token and, when given, `Last-Event-ID`;
    /// the status and JSON body when it is refused.
    pub async fn sse(
        &self,
        query: &str,
        token: Option<&str>,
        last_event_id: Option<&str>,
    ) -> Result<SseClient, (u16, Value)> {
        let client = awc::Client::builder().disable_timeout().finish();
        let mut req = client.get(format!("{}/sse?{query}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(id) = last_event_id {
            req = req.insert_header(("Last-Event-ID", id));
        }
        let mut resp = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE answers in time")
            .expect("SSE request");
        if resp.status() != 200 {
            let body = resp.body().await.expect("body");
            let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err((resp.status().as_u16(), json));
        }
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        Ok(SseClient {
            body: Box::pin(resp),
            buf: String::new(),
            comments: Vec::new(),
        })
    }

    /// `GET /poll?{query}`: the status and JSON body.
    pub async fn poll(&self, query: &str, token: &str) -> (u16, Value) {
        let client = awc::Client::builder().timeout(WAIT * 13).finish();
        let mut resp = client
            .get(format!("{}/poll?{query}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("poll request");
        let bytes = resp.body().limit(16 << 20).await.expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (resp.status().as_u16(), json)
    }
}

impl SseClient {
    /// The next event (comments and the `retry:` field skipped), or `None` when the
    /// stream ends or nothing comes within `wait`.
    pub async fn try_next(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (String::new(), String::new(), None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    } else if let Some(v) = line.strip_prefix(':') {
                        self.comments.push(v.trim().to_owned());
                    }
                }
                match data {
                    Some(data) => return Some(SseEvent { event, id, data }),
                    None => continue,
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await;
            match chunk {
                Ok(Some(Ok(bytes))) => self
                    .buf
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8")),
                _ => return None,
            }
        }
    }

    /// The next event; fails the test after `WAIT`.
    pub async fn next(&mut self) -> SseEvent {
        self.try_next(WAIT).await.expect("an SSE event in time")
    }

    /// The next event of type `event`, skipping others.
    pub async fn next_of(&mut self, event: &str) -> SseEvent {
        loop {
            let e = self.next().await;
            if e.event == event {
                return e;
            }
        }
    }
}
