//! The built binary as operators run it: acked messages survive `kill -9`, and SIGTERM
//! shuts down cleanly (guarantee 1, contract section 9).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{chat, Ended, WsClient, WAIT};

const SECRET: &str = "process-test-secret";

/// A broker process and the port it bound.
struct Broker {
    child: Child,
    port: u16,
}

fn start_broker(data_dir: &Path) -> Broker {
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
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("broker binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
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
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("broker reports its port");
    Broker { child, port }
}

fn token(user: &str) -> String {
    let mut s = crate::helpers::test_settings(Path::new("/nonexistent"));
    s.auth.jwt_secret = SECRET.into();
    let auth = switchboard::auth::Authority::from_settings(&s).expect("keys");
    auth.mint(user, vec![], Duration::from_secs(600), None, false)
        .expect("mint")
        .token
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
