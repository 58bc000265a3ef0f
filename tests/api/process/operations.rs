//! The broker process as operators run it: systemd notification and the health check,
//! startup errors and the CLI, logs (JSON, and what is logged at which level), and an
//! encryption key rotated across a restart.

use super::*;

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
