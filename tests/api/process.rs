//! The built binary as operators run it: acked messages survive `kill -9`, and SIGTERM
//! shuts down cleanly (guarantee 1, contract section 9).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{chat, Ended, WsClient, WAIT};

const SECRET: &str = "process-test-secret";

/// A broker process, the port it bound, and its log so far.
struct Broker {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    /// The broker's resident memory, from `/proc/<pid>/status`, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// `GET /status`.
    async fn status(&self) -> Value {
        awc::Client::default()
            .get(format!("http://127.0.0.1:{}/status", self.port))
            .send()
            .await
            .expect("status")
            .json()
            .await
            .expect("json")
    }

    /// Log lines that contain `needle`.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().expect("log");
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

fn start_broker(data_dir: &Path) -> Broker {
    start_broker_with(data_dir, &[])
}

/// Starts the binary on `data_dir` with the test settings and `env` on top.
fn start_broker_with(data_dir: &Path, env: &[(&str, &str)]) -> Broker {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .env("SWITCHBOARD__SERVER__PORT", "0")
        .env("SWITCHBOARD__SERVER__DATA_DIR", data_dir)
        .env("SWITCHBOARD__AUTH__JWT_SECRET", SECRET)
        .env("SWITCHBOARD__LIMITS__FRAMES_PER_SECOND", "100000")
        .env("SWITCHBOARD__LIMITS__FRAMES_BURST", "100000")
        .env("SWITCHBOARD__LIMITS__UPGRADES_PER_IP_PER_SECOND", "0")
        .env("SWITCHBOARD__SERVER__SHUTDOWN_TIMEOUT", "5s")
        .env("SWITCHBOARD__LOG__FILTER", "info")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("broker binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::new()));
    let kept = log.clone();
    // Keep draining the log so the broker never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                    let port: u16 = rest
                        .split_whitespace()
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                    let _ = tx.send(port);
                    sent = true;
                }
            }
            if let Ok(mut log) = kept.lock() {
                log.push(line);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("broker reports its port");
    Broker { child, port, log }
}

fn token(user: &str) -> String {
    token_with_roles(user, &[])
}

fn token_with_roles(user: &str, roles: &[&str]) -> String {
    let mut s = crate::helpers::test_settings(Path::new("/nonexistent"));
    s.auth.jwt_secret = SECRET.into();
    let auth = switchboard::auth::Authority::from_settings(&s).expect("keys");
    let roles = roles.iter().map(|r| r.to_string()).collect();
    auth.mint(user, roles, Duration::from_secs(600), None, false)
        .expect("mint")
        .token
}

/// Ends a broker that a test is done with.
fn stop(mut broker: Broker) {
    let _ = broker.child.kill();
    let _ = broker.child.wait();
}

async fn connect(port: u16, user: &str) -> WsClient {
    let (_, framed) = awc::Client::builder()
        .timeout(WAIT)
        .finish()
        .ws(format!("ws://127.0.0.1:{port}/ws"))
        .bearer_auth(token(user))
        .connect()
        .await
        .expect("upgrade");
    let mut c = WsClient::from_framed(framed);
    assert_eq!(c.recv().await["type"], "connected");
    c
}

async fn history(port: u16, user: &str, with: &str) -> Vec<Value> {
    let client = awc::Client::builder().timeout(WAIT).finish();
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let mut resp = client
            .get(format!(
                "http://127.0.0.1:{port}/api/messages/user/{with}?after_seq={after}&limit=200"
            ))
            .bearer_auth(token(user))
            .send()
            .await
            .expect("history");
        let page: Value = resp.json().limit(16 << 20).await.expect("json");
        let msgs = page["messages"].as_array().expect("messages").clone();
        if let Some(last) = msgs.last() {
            after = last["meta"]["seq"].as_u64().expect("seq");
        }
        all.extend(msgs);
        if page["has_more"] != true {
            return all;
        }
    }
}

#[actix_web::test]
async fn acked_messages_survive_kill_9_and_come_back_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path());
    let mut alice = connect(broker.port, "alice").await;
    let n = 500;
    for i in 0..n {
        alice
            .send(chat("bob", &format!("d{i}"), &format!("durable {i}")))
            .await;
    }
    let mut acks: HashMap<String, (String, u64)> = HashMap::new();
    while acks.len() < n {
        let f = alice.recv().await;
        assert_eq!(f["type"], "ack", "{f}");
        let p = &f["payload"];
        acks.insert(
            p["ref_id"].as_str().expect("ref").to_owned(),
            (
                p["message_id"].as_str().expect("id").to_owned(),
                p["seq"].as_u64().expect("seq"),
            ),
        );
    }
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");

    let mut broker = start_broker(dir.path());
    let stored = history(broker.port, "bob", "alice").await;
    assert_eq!(stored.len(), n, "messages after restart");
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m["meta"]["seq"], i as u64 + 1);
        let content = m["payload"]["content"].as_str().expect("content");
        let k: usize = content
            .trim_start_matches("durable ")
            .parse()
            .expect("index");
        let (id, seq) = &acks[&format!("d{k}")];
        assert_eq!(m["id"].as_str(), Some(id.as_str()));
        assert_eq!(m["meta"]["seq"].as_u64(), Some(*seq));
    }
    // Seqs continue after the restart with no reuse.
    let mut alice = connect(broker.port, "alice").await;
    assert_eq!(
        alice.dm("bob", "after", "after restart").await["seq"],
        n as u64 + 1
    );
    // A resend of a frame acked before the crash still gets its original ack.
    let again = alice.dm("bob", "d7", "durable 7").await;
    assert_eq!(again["message_id"].as_str(), Some(acks["d7"].0.as_str()));
    broker.child.kill().expect("SIGKILL");
    let _ = broker.child.wait();
}

#[actix_web::test]
async fn sigterm_closes_clients_with_1012_flushes_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path());
    let mut alice = connect(broker.port, "alice").await;
    let ack = alice.dm("bob", "before", "before shutdown").await;
    assert_eq!(ack["seq"], 1);
    // A connection still waiting to authenticate is closed too.
    let (_, framed) = awc::Client::builder()
        .timeout(WAIT)
        .finish()
        .ws(format!("ws://127.0.0.1:{}/ws", broker.port))
        .connect()
        .await
        .expect("upgrade");
    let mut pending = WsClient::from_framed(framed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_at = std::time::Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &broker.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    assert_eq!(
        alice.ended(Duration::from_secs(10)).await,
        Ended::Closed(1012)
    );
    assert_eq!(
        pending.ended(Duration::from_secs(10)).await,
        Ended::Closed(1012)
    );
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = broker.child.try_wait().expect("wait") {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exit = exited.expect("broker exited within 10 s");
    assert_eq!(exit.code(), Some(0));
    // shutdown_timeout is 5 s in these tests.
    assert!(
        sent_at.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        sent_at.elapsed()
    );
    let broker = start_broker(dir.path());
    let stored = history(broker.port, "alice", "bob").await;
    assert_eq!(stored.len(), 1);
    let mut child = broker.child;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

fn run_cli(args: &[&str], env: &[(&str, &str)], data_dir: &Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args)
        .arg("--config")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .env("SWITCHBOARD__SERVER__PORT", "0")
        .env("SWITCHBOARD__SERVER__DATA_DIR", data_dir)
        .env_remove("SWITCHBOARD__AUTH__JWT_SECRET")
        .env_remove("SWITCHBOARD__ENVIRONMENT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cli runs")
}

#[test]
fn invalid_config_or_unusable_database_exits_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_cli(
        &["serve"],
        &[("SWITCHBOARD__SERVER__PORT", "eighty")],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SWITCHBOARD__SERVER__PORT"), "{err}");

    let out = run_cli(
        &["serve"],
        &[("SWITCHBOARD__ENVIRONMENT", "production")],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("jwt_secret"));

    let out = run_cli(
        &["serve"],
        &[("SWITCHBOARD__DATABASE__URL", "/proc/no/such/dir/db.sqlite")],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/proc/no/such/dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_taken_port_is_a_clean_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_cli(
        &["serve"],
        &[("SWITCHBOARD__SERVER__PORT", &port)],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[actix_web::test]
async fn a_second_broker_on_the_same_database_is_refused_and_the_first_serves_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path());
    let mut alice = connect(broker.port, "alice").await;
    assert_eq!(alice.dm("bob", "m1", "one").await["seq"], 1);

    let out = run_cli(
        &["serve"],
        &[("SWITCHBOARD__AUTH__JWT_SECRET", SECRET)],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another broker process"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    assert_eq!(alice.dm("bob", "m2", "two").await["seq"], 2);
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");
    // The lock goes with the process, however it ended.
    let mut broker = start_broker(dir.path());
    assert_eq!(history(broker.port, "bob", "alice").await.len(), 2);
    broker.child.kill().expect("SIGKILL");
    let _ = broker.child.wait();
}

#[test]
fn migrate_and_token_commands_work_on_a_fresh_data_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run_cli(&["migrate"], &[], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("switchboard.db").exists());

    // Development mode: the token command generates (then reuses) the secret in the data dir.
    let out = run_cli(
        &["token", "alice", "--admin", "--ttl", "2h"],
        &[],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let secret = std::fs::read_to_string(dir.path().join("jwt_secret")).expect("secret written");
    let mut s = crate::helpers::test_settings(dir.path());
    s.auth.jwt_secret = secret.trim().to_owned();
    let claims = switchboard::auth::Authority::from_settings(&s)
        .expect("keys")
        .verify(&token)
        .expect("token verifies with the generated secret");
    assert_eq!(claims.sub, "alice");
    assert!(claims.is_admin());
    let ttl = claims.exp - claims.iat.expect("iat");
    assert_eq!(ttl, 7200);
    let out = run_cli(&["token", "not valid"], &[], dir.path());
    assert!(!out.status.success());
}

/// Opens a raw WebSocket on `port` (token-less unless `token` is given).
async fn raw_socket(port: u16, token: Option<&str>) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("upgrade request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("upgrade response");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// The probe's memory blow-up: frames declared far over the limit and streamed, and many
/// connections each holding a frame just under the limit. The broker refuses the first at
/// their header, and holds at most one limit's worth of the others each.
#[actix_web::test]
async fn frames_over_the_limit_or_left_unfinished_keep_memory_bounded() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker_with(
        dir.path(),
        &[
            ("SWITCHBOARD__LIMITS__FRAME_TIMEOUT", "3s"),
            ("SWITCHBOARD__LIMITS__MAX_PENDING_PER_IP", "0"),
        ],
    );
    let before = broker.rss_kib();

    // Ten token-less sockets each declare 2^63-1 bytes and try to stream 64 MiB.
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..10 {
        let mut s = raw_socket(broker.port, None).await;
        let mut header = vec![0x81, 0xFF];
        header.extend_from_slice(&((1u64 << 63) - 1).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]);
        s.write_all(&header).await.expect("header");
        let mut sent = 0usize;
        for _ in 0..64 {
            let w = tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await;
            match w {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        // The broker closed the socket at the header: only what the kernel buffered got in.
        assert!(sent < 32 << 20, "{sent} bytes accepted");
    }
    let after_huge = broker.rss_kib();
    assert!(
        after_huge < before + 32 * 1024,
        "RSS {before} KiB → {after_huge} KiB after oversized frames"
    );

    // 200 authenticated sockets each send 60 KiB of a 64 KiB frame, and stop.
    let mut held = Vec::new();
    for i in 0..200 {
        let mut s = raw_socket(broker.port, Some(&token(&format!("user{i}")))).await;
        let mut f = vec![0x81, 0xFE];
        f.extend_from_slice(&65_000u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&vec![b' '; 60 * 1024]);
        s.write_all(&f).await.expect("partial frame");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_partials = broker.rss_kib();
    // At most the frame limit each, plus the broker's own growth.
    assert!(
        with_partials < after_huge + 200 * 64 + 32 * 1024,
        "RSS {after_huge} KiB → {with_partials} KiB with 200 half frames"
    );
    eprintln!(
        "broker RSS (KiB): {before} at start, {after_huge} after oversized frames, \
         {with_partials} holding 200 half frames"
    );
    // The frame timeout closes them all (each stops once its close frame is written).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = broker.status().await;
    assert_eq!(stats["connections"]["admitted"], 0, "{stats}");
    drop(held);
    stop(broker);
}

/// Subscribe to and leave many channels, let them go idle, and again: the broker's memory
/// stays flat, and an idle stop is not a restart.
#[actix_web::test]
async fn channels_that_go_idle_leave_no_memory_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker_with(
        dir.path(),
        &[
            ("SWITCHBOARD__CHANNELS__IDLE_TIMEOUT", "300ms"),
            ("SWITCHBOARD__LIMITS__MAX_SUBSCRIPTIONS", "100000"),
        ],
    );
    let mut c = connect(broker.port, "alice").await;
    let channels = 4000;
    let mut rss = Vec::new();
    for _round in 0..5 {
        // In steps that fit the outbound queue (1,024 frames).
        for step in (0..channels).collect::<Vec<_>>().chunks(500) {
            for i in step {
                c.send(serde_json::json!({"type": "subscribe",
                    "payload": {"channel": format!("broadcast:ch{i}")}}))
                    .await;
            }
            for _ in step {
                assert_eq!(c.recv().await["type"], "subscribed");
            }
            for i in step {
                c.send(serde_json::json!({"type": "unsubscribe",
                    "payload": {"channel": format!("broadcast:ch{i}")}}))
                    .await;
            }
            for _ in step {
                assert_eq!(c.recv().await["type"], "unsubscribed");
            }
        }
        // Past the idle timeout and a sweep: every channel actor is gone.
        let mut gone = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s = broker.status().await;
            if s["channels"]["active"] == 0 && s["channels"]["actors"] == 0 {
                gone = true;
                break;
            }
        }
        assert!(gone, "channel actors still alive");
        rss.push(broker.rss_kib());
    }
    // The first round grows the allocator's pools; later rounds reuse them.
    assert!(rss[4] < rss[1] + 4 * 1024, "RSS per round (KiB): {rss:?}");
    assert!(broker.log_lines("restarting").is_empty());
    stop(broker);
}

/// Client mistakes are logged at debug or info, never as errors; a slow client closed with
/// 1013 is logged as operators are told to watch for.
#[actix_web::test]
async fn client_mistakes_are_not_logged_as_errors_and_a_1013_close_is_logged() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker_with(dir.path(), &[("SWITCHBOARD__LIMITS__OUTBOUND_QUEUE", "16")]);
    // A fragmented ping, bad opcodes, reserved bits, an unmasked frame.
    for bytes in [
        vec![0x09, 0x80, 0, 0, 0, 0],
        vec![0x83, 0x80, 0, 0, 0, 0],
        vec![0xC1, 0x80, 0, 0, 0, 0],
        vec![0x81, 0x00],
    ] {
        let mut s = raw_socket(broker.port, Some(&token("alice"))).await;
        s.write_all(&bytes).await.expect("frame");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A subscriber that never reads, and large messages published to it.
    let mut reader = raw_socket(broker.port, Some(&token("slow"))).await;
    let sub = serde_json::json!({"type": "subscribe", "payload": {"channel": "broadcast:big"}})
        .to_string();
    let mut f = vec![0x81, 0x80 | sub.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(sub.as_bytes());
    reader.write_all(&f).await.expect("subscribe");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = awc::Client::default();
    let admin = token_with_roles("admin", &["admin"]);
    for i in 0..400 {
        let _ = client
            .post(format!(
                "http://127.0.0.1:{}/api/admin/publish",
                broker.port
            ))
            .bearer_auth(&admin)
            .send_json(&serde_json::json!({"channel": "broadcast:big",
                "payload": {"n": i, "pad": "x".repeat(60_000)}}))
            .await;
        if !broker.log_lines("closing with 1013").is_empty() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        broker
            .log_lines("outbound queue full, closing with 1013")
            .len(),
        1
    );
    let loud: Vec<String> = broker
        .log_lines("")
        .into_iter()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    assert!(loud.is_empty(), "{loud:#?}");
    drop(reader);
    stop(broker);
}

#[test]
fn migrate_applies_the_postgres_schema_and_serve_runs_on_it() {
    let pg = crate::helpers::PgDatabase::create();
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [("SWITCHBOARD__DATABASE__URL", pg.url.as_str())];
    let out = run_cli(&["migrate"], &env, dir.path());
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("20261204000001"), "{stdout}");
    let tables = pg.query_texts(
        "SELECT table_name::text AS v FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY 1",
    );
    for t in [
        "channels",
        "messages",
        "resend_keys",
        "groups",
        "group_members",
        "revoked_tokens",
    ] {
        assert!(tables.iter().any(|x| x == t), "{t} missing from {tables:?}");
    }
    // The database enforces one message per (channel, seq).
    let keys = pg.query_texts(
        "SELECT string_agg(a.attname, ',' ORDER BY a.attnum)::text AS v FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = 'messages'::regclass AND i.indisprimary",
    );
    assert_eq!(keys, ["channel,seq"]);
    // Again, over TLS (the bundled libpq has OpenSSL): nothing pending.
    let tls = format!("{}?sslmode=require", pg.url);
    let out = run_cli(
        &["migrate"],
        &[("SWITCHBOARD__DATABASE__URL", &tls)],
        dir.path(),
    );
    let server_tls = pg.query_texts("SELECT current_setting('ssl') AS v");
    if server_tls == ["on"] {
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("none pending"));
    } else {
        // A server without TLS: refused with libpq's reason, not a crash.
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("SSL"),
            "{out:?}"
        );
        let out = run_cli(&["migrate"], &env, dir.path());
        assert!(String::from_utf8_lossy(&out.stdout).contains("none pending"));
    }
    // A broker serves from it, and what it acks is in the database.
    let rt = actix_web::rt::System::new();
    rt.block_on(async {
        let mut broker = start_broker_with(dir.path(), &env);
        let mut alice = connect(broker.port, "alice").await;
        let ack = alice.dm("bob", "pg-1", "stored in postgres").await;
        assert_eq!(ack["seq"], 1);
        let status = broker.status().await;
        assert_eq!(status["database"]["backend"], "postgres", "{status}");
        broker.child.kill().expect("SIGKILL");
        let _ = broker.child.wait();
    });
    let rows = pg.query_texts("SELECT channel || ':' || seq AS v FROM messages");
    assert_eq!(rows, ["dm:alice:bob:1"]);
}

/// Two broker processes on one PostgreSQL database, a sender on each writing into one
/// group at full speed: every seq is given out once, history holds every message once
/// under the seq its ack named, and a resend through the other node gets the original ack.
#[test]
fn two_brokers_on_one_postgres_database_give_out_each_seq_once() {
    let pg = crate::helpers::PgDatabase::create();
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("temp dir"),
        tempfile::tempdir().expect("temp dir"),
    );
    let env = [("SWITCHBOARD__DATABASE__URL", pg.url.as_str())];
    actix_web::rt::System::new().block_on(async {
        let mut a = start_broker_with(dir_a.path(), &env);
        let mut b = start_broker_with(dir_b.path(), &env);
        let admin = token_with_roles("admin", &["admin"]);
        let resp = awc::Client::default()
            .post(format!("http://127.0.0.1:{}/api/groups", a.port))
            .bearer_auth(&admin)
            .send_json(&serde_json::json!({"id": "team", "name": "Team",
                "members": ["alice", "bob"]}))
            .await
            .expect("create group");
        assert_eq!(resp.status().as_u16(), 201);
        let n = 300;
        let send = |port: u16, user: &'static str| async move {
            let mut c = connect(port, user).await;
            for i in 0..n {
                c.send(crate::helpers::group_msg(
                    "team",
                    &format!("{user}-{i}"),
                    "x",
                ))
                .await;
            }
            let mut acks = HashMap::new();
            while acks.len() < n {
                let f = c.recv().await;
                if f["type"] == "ack" {
                    let p = &f["payload"];
                    let id = p["ref_id"].as_str().expect("ref_id").to_owned();
                    acks.insert(
                        id,
                        (p["seq"].as_u64().expect("seq"), p["message_id"].clone()),
                    );
                }
            }
            acks
        };
        let (from_a, from_b) = tokio::join!(send(a.port, "alice"), send(b.port, "bob"));
        let mut seqs: Vec<u64> = from_a
            .values()
            .chain(from_b.values())
            .map(|v| v.0)
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=2 * n as u64).collect::<Vec<_>>());
        // History, read through node B, holds every message once under its acked seq.
        let client = awc::Client::builder().timeout(WAIT).finish();
        let mut stored = HashMap::new();
        let mut after = 0;
        loop {
            let page: Value = client
                .get(format!(
                    "http://127.0.0.1:{}/api/messages/group/team?after_seq={after}&limit=200",
                    b.port
                ))
                .bearer_auth(token("alice"))
                .send()
                .await
                .expect("history")
                .json()
                .limit(16 << 20)
                .await
                .expect("json");
            for m in page["messages"].as_array().expect("messages") {
                let seq = m["meta"]["seq"].as_u64().expect("seq");
                assert!(
                    stored.insert(seq, m["id"].clone()).is_none(),
                    "seq {seq} twice"
                );
                after = seq;
            }
            if page["has_more"] != true {
                break;
            }
        }
        assert_eq!(stored.len(), 2 * n);
        for (seq, id) in from_a.values().chain(from_b.values()) {
            assert_eq!(stored.get(seq), Some(id), "seq {seq}");
        }
        // Alice resends her first frame through node B: the original ack comes back.
        let mut again = connect(b.port, "alice").await;
        again
            .send(crate::helpers::group_msg("team", "alice-0", "x"))
            .await;
        let ack = again.recv_type("ack").await;
        let (seq, id) = &from_a["alice-0"];
        assert_eq!(ack["payload"]["seq"].as_u64(), Some(*seq));
        assert_eq!(&ack["payload"]["message_id"], id);
        for broker in [&mut a, &mut b] {
            let _ = broker.child.kill();
            let _ = broker.child.wait();
        }
    });
}
