//! `GET /metrics` (contract section 9): the Prometheus text format, with counters that
//! move with what clients do. Metrics are the process's, and tests share one process, so
//! counters are compared before and after, and gauges read for this broker's own state.

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

/// The text of `/metrics`.
async fn scrape(app: &TestApp) -> String {
    let client = awc::Client::default();
    let mut resp = client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200);
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let body = resp.body().limit(1 << 20).await.expect("body");
    String::from_utf8(body.to_vec()).expect("utf-8")
}

/// The value of the sample named exactly `series` (name and labels), 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[actix_web::test]
async fn metrics_count_frames_deliveries_acks_errors_and_commits() {
    let app = spawn_app().await;
    let mut alice = app
        .ws_as("alice", "device=mobile&client_id=alice-phone")
        .await;
    let mut bob = app.ws_as("bob", "device=desktop").await;
    let before = scrape(&app).await;

    for i in 0..3 {
        alice.dm("bob", &format!("m{i}"), "hello").await;
        bob.recv_type("chat_message").await;
    }
    alice.send_text("not json").await;
    alice.recv_type("error").await;
    alice
        .send(json!({"type": "typing_indicator", "payload": {"typing": true}, "meta": {"target_id": "bob"}}))
        .await;
    bob.recv_type("typing_indicator").await;
    bob.send(json!({"type": "heartbeat", "id": "hb"})).await;
    bob.recv_type("heartbeat").await;
    let (code, _) = app
        .call("GET", "/api/groups/nope", Some(&app.token("alice")), None)
        .await;
    assert_eq!(code, 404);
    let after = scrape(&app).await;

    let grew = |series: &str| value(&after, series) - value(&before, series);
    assert!(grew("switchboard_frames_in_total{type=\"chat_message\"}") >= 3.0);
    assert!(grew("switchboard_frames_in_total{type=\"invalid\"}") >= 1.0);
    assert!(grew("switchboard_frames_out_total{type=\"delivery\"}") >= 3.0);
    assert!(grew("switchboard_frames_out_total{type=\"ack\"}") >= 3.0);
    for kind in ["error", "typing_indicator", "heartbeat"] {
        let series = format!("switchboard_frames_out_total{{type=\"{kind}\"}}");
        assert!(grew(&series) >= 1.0, "{series}");
    }
    assert!(grew("switchboard_errors_total{code=\"bad_request\",via=\"frame\"}") >= 1.0);
    assert!(grew("switchboard_errors_total{code=\"not_found\",via=\"rest\"}") >= 1.0);
    assert!(grew("switchboard_ack_latency_seconds_count") >= 3.0);
    assert!(grew("switchboard_batch_writes_count") >= 1.0);
    assert!(grew("switchboard_commit_seconds_count") >= 1.0);
    assert!(value(&after, "switchboard_ack_latency_seconds_sum") > 0.0);

    // Gauges describe this broker now.
    let mobile = "switchboard_connections{device=\"mobile\",transport=\"websocket\"}";
    assert_eq!(value(&after, mobile), 1.0, "{after}");
    assert!(value(&after, "switchboard_channels_active") >= 1.0);
    assert!(after.contains("switchboard_actor_mailbox{actor=\"router\"}"));
    assert!(after.contains("switchboard_actor_restarts_total{actor=\"write_batcher\"}"));
    for help in [
        "# HELP switchboard_frames_in_total",
        "# TYPE switchboard_ack_latency_seconds histogram",
    ] {
        assert!(after.contains(help), "{help}");
    }

    // A crash shows as a restart.
    let (code, _) = app
        .call(
            "POST",
            "/api/admin/debug/crash/presence_tracker",
            Some(&app.admin_token()),
            Some(json!({})),
        )
        .await;
    assert!(code == 200 || code == 202, "{code}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = scrape(&app).await;
        if value(
            &now,
            "switchboard_actor_restarts_total{actor=\"presence_tracker\"}",
        ) >= 1.0
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{now}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn refusals_are_counted_by_the_limit_that_refused() {
    let app = spawn_app_with(|s| {
        s.limits.frames_per_second = 1.0;
        s.limits.frames_burst = 2.0;
        s.limits.max_connections_per_user = 1;
    })
    .await;
    let before = scrape(&app).await;
    let mut alice = app.ws("alice").await;
    for i in 0..4 {
        alice
            .send(json!({"type": "heartbeat", "id": format!("h{i}")}))
            .await;
    }
    alice.recv_type("error").await;
    // A second connection of a user allowed one.
    assert_eq!(
        app.ws_connect("/ws", Some(&app.token("alice"))).await.err(),
        Some(429)
    );
    let after = scrape(&app).await;
    let grew = |series: &str| value(&after, series) - value(&before, series);
    assert!(grew("switchboard_refused_total{limit=\"frame_rate\"}") >= 1.0);
    assert!(grew("switchboard_refused_total{limit=\"user_connections\"}") >= 1.0);
}

#[actix_web::test]
async fn the_grafana_dashboard_reads_only_metrics_the_broker_exports() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    alice.dm("bob", "m1", "hi").await;
    let text = scrape(&app).await;
    let dashboard = include_str!("../../deploy/grafana-dashboard.json");
    let mut names: Vec<&str> = dashboard
        .match_indices("switchboard_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard reads {name}, which /metrics does not export"
        );
    }
}
