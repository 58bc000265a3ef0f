//! The built binary as operators run it, one process per broker: [`lifecycle`] (acked
//! messages survive `kill -9`, SIGTERM shuts down cleanly, memory stays bounded; guarantee 1,
//! contract section 9), [`operations`] (systemd, the health check, startup errors, the
//! CLI, logs, key rotation), [`postgres`] (migrations, several brokers on one database, the
//! database restarted under load) and [`cluster`] (three nodes on one PostgreSQL and one
//! Redis: a node killed under load, a node drained by SIGTERM).

mod cluster;
mod lifecycle;
mod operations;
mod postgres;

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
    /// Sends SIGTERM (a graceful shutdown).
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits up to 10 s for the process to exit; its status.
    async fn exited(&mut self) -> std::process::ExitStatus {
        for _ in 0..100 {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the broker did not exit within 10 s");
    }

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
        .env("SWITCHBOARD__LIMITS__REQUESTS_PER_IP_PER_SECOND", "0")
        .env("SWITCHBOARD__LIMITS__CONNECTS_PER_USER_PER_SECOND", "0")
        .env("SWITCHBOARD__LIMITS__REQUESTS_PER_USER_PER_SECOND", "0")
        .env("SWITCHBOARD__SERVER__SHUTDOWN_TIMEOUT", "5s")
        .env("SWITCHBOARD__SERVER__DRAIN_WINDOW", "0s")
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
