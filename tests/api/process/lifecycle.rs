//! One broker process on SQLite: crashes, shutdown, startup errors, the CLI, memory
//! under abuse, and what it logs.

use super::*;

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
    // Bob's first sync after the crash brings every acked message, in order, once.
    let mut bob = connect(broker.port, "bob").await;
    bob.send(serde_json::json!({"type": "sync", "payload": {}}))
        .await;
    let mut synced = Vec::new();
    loop {
        let f = bob.recv().await;
        match f["type"].as_str() {
            Some("chat_message") => synced.push(f["id"].as_str().unwrap_or("").to_owned()),
            Some("sync_complete") => {
                assert_eq!(f["payload"]["cursors"]["dm:alice:bob"], n as u64, "{f}");
                break;
            }
            _ => {}
        }
    }
    let in_order: Vec<String> = stored
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(synced, in_order);
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
    broker.terminate();
    assert_eq!(
        alice.ended(Duration::from_secs(10)).await,
        Ended::Closed(1012)
    );
    assert_eq!(
        pending.ended(Duration::from_secs(10)).await,
        Ended::Closed(1012)
    );
    let exit = broker.exited().await;
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

#[actix_web::test]
async fn sigterm_spreads_the_closes_over_the_drain_window_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let drain = [("SWITCHBOARD__SERVER__DRAIN_WINDOW", "2s")];
    let mut broker = start_broker_with(dir.path(), &drain);
    let mut open = Vec::new();
    for i in 0..40 {
        let user = format!("u{i}");
        open.push((user.clone(), connect(broker.port, &user).await));
    }
    let sent_at = std::time::Instant::now();
    broker.terminate();
    // Every client closes with 1012, at times spread over the window; one still open
    // half-way through writes, and its ack holds.
    let mut closed_at = Vec::new();
    let mut late_writer = None;
    while !open.is_empty() {
        let mut still = Vec::new();
        for (user, mut c) in open {
            match c.end_within(Duration::from_millis(5)).await {
                Some(end) => {
                    assert_eq!(end, Ended::Closed(1012), "{user}");
                    closed_at.push(sent_at.elapsed());
                }
                None => still.push((user, c)),
            }
        }
        if late_writer.is_none() && sent_at.elapsed() > Duration::from_millis(1000) {
            // A client may get its turn while it writes: then the next one tries.
            let mut left = Vec::new();
            for (user, mut c) in still {
                if late_writer.is_some() {
                    left.push((user, c));
                    continue;
                }
                c.send(chat("late", "late-1", "written while draining"))
                    .await;
                loop {
                    match c.try_recv_or_end(Duration::from_secs(5)).await {
                        Ok(f) if f["type"] == "ack" => {
                            late_writer = Some(user.clone());
                            left.push((user, c));
                            break;
                        }
                        Ok(_) => {}
                        Err(end) => {
                            assert_eq!(end, Ended::Closed(1012), "{user}");
                            closed_at.push(sent_at.elapsed());
                            break;
                        }
                    }
                }
            }
            still = left;
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(5),
            "closes took too long"
        );
        open = still;
    }
    let late_writer = late_writer.expect("a client still open half-way through the window");
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[closed_at.len() - 1]);
    assert!(
        first < Duration::from_millis(500),
        "first close after {first:?}"
    );
    assert!(
        last >= Duration::from_millis(1500),
        "last close after {last:?}"
    );
    let exit = broker.exited().await;
    assert_eq!(exit.code(), Some(0));
    assert!(
        sent_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent_at.elapsed()
    );
    let broker = start_broker(dir.path());
    let stored = history(broker.port, &late_writer, "late").await;
    let kept: Vec<_> = stored.iter().map(|m| &m["payload"]["content"]).collect();
    assert_eq!(kept, ["written while draining"]);
    let mut child = broker.child;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

#[actix_web::test]
async fn systemd_hears_ready_watchdog_pings_and_stopping_and_health_answers() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("temp dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let path = socket_path.to_string_lossy().into_owned();
    let env = [
        ("NOTIFY_SOCKET", path.as_str()),
        ("WATCHDOG_USEC", "400000"),
    ];
    let mut broker = start_broker_with(&dir.path().join("data"), &env);
    let mut heard: Vec<String> = Vec::new();
    let read_until = |heard: &mut Vec<String>, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 512];
        while !heard.iter().any(|h| h.contains(what)) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {what}; heard {heard:?}"
            );
            if let Ok(n) = socket.recv(&mut buf) {
                heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    read_until(&mut heard, "READY=1");
    heard.clear();
    read_until(&mut heard, "WATCHDOG=1");
    heard.clear();
    read_until(&mut heard, "WATCHDOG=1");

    // `switchboard health` asks the running broker; it fails where none listens.
    let port = broker.port.to_string();
    let out = run_cli(
        &["health"],
        &[("SWITCHBOARD__SERVER__PORT", &port)],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = unused.local_addr().expect("addr").port().to_string();
    drop(unused);
    let out = run_cli(
        &["health"],
        &[("SWITCHBOARD__SERVER__PORT", &closed)],
        dir.path(),
    );
    assert!(!out.status.success());

    broker.terminate();
    heard.clear();
    read_until(&mut heard, "STOPPING=1");
    let exit = broker.exited().await;
    assert_eq!(exit.code(), Some(0));
}

/// The Dockerfile's HEALTHCHECK runs `switchboard health`: against a broker serving TLS
/// itself it asks over TLS, trusting the configured certificate (whatever name it names),
/// and fails if another certificate answers.
#[actix_web::test]
async fn health_asks_a_broker_that_serves_tls_over_tls() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let cert = format!("{fixtures}/tls-cert.pem");
    let key = format!("{fixtures}/tls-key.pem");
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = [
        ("SWITCHBOARD__SERVER__TLS_CERT_FILE", cert.as_str()),
        ("SWITCHBOARD__SERVER__TLS_KEY_FILE", key.as_str()),
    ];
    let broker = start_broker_with(dir.path(), &tls);
    let port = broker.port.to_string();
    let mut env = tls.to_vec();
    env.push(("SWITCHBOARD__SERVER__PORT", &port));
    let out = run_cli(&["health"], &env, dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another certificate configured than the one served: refused.
    let other = format!("{fixtures}/tls-ca.pem");
    env[0] = ("SWITCHBOARD__SERVER__TLS_CERT_FILE", other.as_str());
    let out = run_cli(&["health"], &env, dir.path());
    assert!(!out.status.success());
    // Plain HTTP to a TLS port: no answer that counts as healthy.
    let out = run_cli(
        &["health"],
        &[("SWITCHBOARD__SERVER__PORT", &port)],
        dir.path(),
    );
    assert!(!out.status.success());
    stop(broker);
}

/// Rotating the encryption key: a broker restarted with a new `encryption.key` and the old
/// one in `old_keys` reads what was sealed before and seals what comes under the new id.
#[actix_web::test]
async fn an_encryption_key_rotates_across_a_restart_with_the_old_one_kept_to_read() {
    const OLD: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const NEW: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker_with(
        dir.path(),
        &[
            ("SWITCHBOARD__ENCRYPTION__KEY", OLD),
            ("SWITCHBOARD__ENCRYPTION__KEY_ID", "k1"),
        ],
    );
    let mut alice = connect(broker.port, "alice").await;
    alice.dm("bob", "before", "sealed under k1").await;
    stop(broker);

    let old_keys = format!("k1:{OLD}");
    let broker = start_broker_with(
        dir.path(),
        &[
            ("SWITCHBOARD__ENCRYPTION__KEY", NEW),
            ("SWITCHBOARD__ENCRYPTION__KEY_ID", "k2"),
            ("SWITCHBOARD__ENCRYPTION__OLD_KEYS", old_keys.as_str()),
        ],
    );
    let mut alice = connect(broker.port, "alice").await;
    alice.dm("bob", "after", "sealed under k2").await;
    let read: Vec<Value> = history(broker.port, "bob", "alice").await;
    let contents: Vec<&str> = read
        .iter()
        .filter_map(|m| m["payload"]["content"].as_str())
        .collect();
    assert_eq!(contents, ["sealed under k1", "sealed under k2"]);
    stop(broker);

    // On disk: each row under the key id it was sealed with, no content.
    use diesel::{Connection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        payload: String,
    }
    let file = dir.path().join("switchboard.db");
    let mut db = diesel::SqliteConnection::establish(&file.to_string_lossy()).expect("open");
    let rows: Vec<Row> = diesel::sql_query("SELECT payload FROM messages ORDER BY seq")
        .load(&mut db)
        .expect("rows");
    assert_eq!(rows.len(), 2);
    assert!(
        rows[0].payload.starts_with("sb1:k1:"),
        "{}",
        rows[0].payload
    );
    assert!(
        rows[1].payload.starts_with("sb1:k2:"),
        "{}",
        rows[1].payload
    );
    assert!(rows.iter().all(|r| !r.payload.contains("sealed under")));
}

#[actix_web::test]
async fn json_logs_are_one_object_per_line_with_request_and_connection_ids() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("SWITCHBOARD__LOG__FORMAT", "json"),
        (
            "SWITCHBOARD__LOG__FILTER",
            "info,switchboard::access=debug,switchboard::session=debug",
        ),
    ];
    let mut broker = start_broker_with(dir.path(), &env);
    let resp = awc::Client::default()
        .get(format!("http://127.0.0.1:{}/health", broker.port))
        .insert_header(("X-Request-Id", "probe-42"))
        .send()
        .await
        .expect("health");
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("probe-42")
    );
    let resp = awc::Client::default()
        .get(format!("http://127.0.0.1:{}/nope", broker.port))
        .send()
        .await
        .expect("404");
    assert!(
        resp.headers().contains_key("x-request-id"),
        "a new id when none came"
    );
    // A frame with reserved bits set: the session logs the client's mistake with its conn.
    let mut s = raw_socket(broker.port, Some(&token("alice"))).await;
    s.write_all(&[0xC1, 0x80, 0, 0, 0, 0]).await.expect("frame");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = broker.log_lines("");
        let parsed: Vec<Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let access = parsed.iter().any(|v| {
            v["target"] == "switchboard::access"
                && v["request_id"] == "probe-42"
                && v["status"] == 200
        });
        let conn = parsed
            .iter()
            .any(|v| v["conn"].as_str().is_some_and(|c| c.starts_with('c')));
        if access && conn {
            break parsed;
        }
        assert!(std::time::Instant::now() < deadline, "{lines:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for v in &lines {
        for key in ["ts", "level", "target", "msg"] {
            assert!(v[key].is_string(), "{key} in {v}");
        }
    }
    broker.child.kill().expect("SIGKILL");
    let _ = broker.child.wait();
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

/// `GET /poll?{query}` on `port` as `user`: the JSON answer.
async fn poll(port: u16, user: &str, query: &str) -> Value {
    let mut resp = awc::Client::builder()
        .timeout(WAIT * 3)
        .finish()
        .get(format!("http://127.0.0.1:{port}/poll?{query}"))
        .bearer_auth(token(user))
        .send()
        .await
        .expect("poll");
    assert_eq!(resp.status(), 200);
    resp.json().limit(16 << 20).await.expect("json")
}

fn polled(answer: &Value) -> Vec<String> {
    answer["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["payload"]["content"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[actix_web::test]
async fn a_poller_resumes_from_its_cursor_on_a_broker_restarted_after_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path());
    let mut alice = connect(broker.port, "alice").await;
    alice.dm("bob", "m1", "one").await;
    alice.dm("bob", "m2", "two").await;
    let first = poll(broker.port, "bob", "client_id=bob-cli&timeout_s=5").await;
    assert_eq!(polled(&first), ["one", "two"]);
    alice.dm("bob", "m3", "three").await;
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");

    // The new process knows nothing of the poller but what the cursor and the store say.
    let broker = start_broker(dir.path());
    let cursor = first["cursor"].as_str().expect("cursor");
    let next = poll(broker.port, "bob", &format!("cursor={cursor}&timeout_s=5")).await;
    assert_eq!(polled(&next), ["three"]);
    stop(broker);
}
