//! Operations: health, readiness, the actor tree's health, and supervised restarts.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{group_msg, on_postgres, spawn_app, spawn_app_with};

fn actor<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no actor {name} in {status}"))
}

#[actix_web::test]
async fn health_ready_and_status_describe_the_running_broker() {
    let app = spawn_app().await;
    assert_eq!(
        app.call("GET", "/health", None, None).await,
        (200, serde_json::json!({"status": "ok"}))
    );
    let (code, ready) = app.call("GET", "/ready", None, None).await;
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["database"], "ok");

    let _a = app.ws_as("alice", "device=web").await;
    let _b = app.ws_as("bob", "device=mobile").await;
    let _c = app.ws("carol").await;
    let (code, status) = app.call("GET", "/status", None, None).await;
    assert_eq!(code, 200);
    assert_eq!(status["status"], "ok");
    for name in [
        "router",
        "write_batcher",
        "store_writer",
        "store_reader",
        "presence_tracker",
        "offline_queue",
        "sync_engine",
    ] {
        let a = actor(&status, name);
        assert_eq!(a["state"], "running", "{a}");
        assert_eq!(a["restarts"], 0);
        assert!(a["mailbox"].is_u64(), "{a}");
        assert!(a["uptime_s"].is_u64());
        assert!(a["last_error"].is_null());
    }
    assert_eq!(status["connections"]["total"], 3);
    assert_eq!(status["connections"]["by_device"]["web"], 1);
    assert_eq!(status["connections"]["by_device"]["mobile"], 1);
    assert_eq!(status["connections"]["by_device"]["unknown"], 1);
    let backend = if on_postgres() { "postgres" } else { "sqlite" };
    assert_eq!(status["database"]["backend"], backend);
}

#[actix_web::test]
async fn ready_reports_redis_when_configured() {
    let app = spawn_app_with(|s| s.redis.url = "redis://127.0.0.1:1".into()).await;
    let (code, ready) = app.call("GET", "/ready", None, None).await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["database"], "ok");
    assert!(ready["redis"]["error"].is_string());
}

#[actix_web::test]
async fn a_failed_actor_is_restarted_and_the_broker_keeps_serving() {
    let app = spawn_app().await;
    app.group("g", "alice", &["bob"]).await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    let admin = app.admin_token();

    for name in ["presence_tracker", "write_batcher", "router"] {
        let (code, body) = app
            .call(
                "POST",
                &format!("/api/admin/debug/crash/{name}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(code, 202, "{body}");
        let mut restarted = None;
        for _ in 0..50 {
            let (_, status) = app.call("GET", "/status", None, None).await;
            let a = actor(&status, name).clone();
            if a["restarts"] == 1 && a["state"] == "running" {
                restarted = Some(a);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let a = restarted.unwrap_or_else(|| panic!("{name} was not restarted"));
        assert_eq!(a["last_error"], "fault injection");
        // Still serving: a message goes through end to end.
        let ack = alice
            .request(group_msg("g", &format!("after-{name}"), name))
            .await;
        assert_eq!(ack["type"], "ack", "after crashing {name}: {ack}");
        assert_eq!(
            bob.recv_type("group_message").await["payload"]["content"],
            name
        );
    }
    let (code, _) = app
        .call("POST", "/api/admin/debug/crash/nope", Some(&admin), None)
        .await;
    assert_eq!(code, 404);
    let (code, _) = app
        .call(
            "POST",
            "/api/admin/debug/crash/router",
            Some(&app.token("bob")),
            None,
        )
        .await;
    assert_eq!(code, 403);
}

#[actix_web::test]
async fn fault_injection_is_off_unless_configured() {
    let app = spawn_app_with(|s| s.debug.fault_injection = false).await;
    let (code, _) = app
        .call(
            "POST",
            "/api/admin/debug/crash/router",
            Some(&app.admin_token()),
            None,
        )
        .await;
    assert_eq!(code, 404);
}

#[actix_web::test]
async fn unknown_paths_answer_in_the_error_shape() {
    let app = spawn_app().await;
    let (code, body) = app.call("GET", "/api/nothing", None, None).await;
    assert_eq!(code, 404);
    assert_eq!(body["error"]["code"], "not_found");
}

#[actix_web::test]
async fn writes_that_arrive_together_are_committed_together() {
    let app = spawn_app_with(crate::helpers::without_rate_limit).await;
    let mut alice = app.ws("alice").await;
    let n = 300;
    for i in 0..n {
        alice
            .send(crate::helpers::chat("bob", &format!("m{i}"), "burst"))
            .await;
    }
    let mut acks = 0;
    while acks < n {
        if alice.recv().await["type"] == "ack" {
            acks += 1;
        }
    }
    let (_, status) = app.call("GET", "/status", None, None).await;
    let w = &status["database"]["writes"];
    let (batches, writes) = (
        w["batches"].as_u64().expect("batches"),
        w["writes"].as_u64().expect("writes"),
    );
    assert!(writes >= n, "{w}");
    assert!(
        batches < writes && w["largest_batch"].as_u64() > Some(1),
        "no group commit: {w}"
    );
    if on_postgres() {
        return; // What follows is SQLite's writer memory; PostgreSQL keeps none.
    }
    // The resend keys of those messages are in memory or already moved to the database.
    let held = status["database"]["resend_keys_in_memory"].as_u64();
    assert!(held.is_some_and(|k| k <= n), "{}", status["database"]);
    let keys = &status["database"]["resend_keys"];
    assert_eq!(keys["in_memory"].as_u64(), held, "{keys}");
    let in_runs = keys["keys_in_runs"].as_u64().expect("keys in runs");
    assert!(
        held.unwrap_or_default() + in_runs >= n,
        "every key is somewhere: {keys}"
    );
    assert_eq!(keys["merging_stopped"], false, "{keys}");
    // So are their places in their channels.
    let places = status["database"]["channel_places_in_memory"].as_u64();
    assert!(places.is_some_and(|p| p <= n), "{}", status["database"]);
}

/// Polls `/status` until its WAL checkpoint counters satisfy `done`.
async fn wal_checkpoints_until(
    app: &crate::helpers::TestApp,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (_, status) = app.call("GET", "/status", None, None).await;
        last = status["database"]["wal_checkpoints"].clone();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("WAL checkpoints never got there: {last}");
}

#[actix_web::test]
async fn commits_are_copied_from_the_wal_by_the_checkpointer_not_by_the_writer() {
    if on_postgres() {
        return; // The WAL checkpointer is SQLite's.
    }
    // Commits would checkpoint only past a million pages: every copy below is the
    // checkpointer's.
    let app = spawn_app_with(|s| {
        s.database.sqlite_wal_autocheckpoint = 1_000_000;
        s.database.sqlite_checkpoint_after = Duration::from_millis(10);
    })
    .await;
    let mut alice = app.ws("alice").await;
    for i in 0..20 {
        alice.dm("bob", &format!("m{i}"), "to the WAL").await;
    }
    wal_checkpoints_until(&app, |c| {
        c["passes"].as_u64() >= Some(1) && c["wal_frames"].as_i64() > Some(0)
    })
    .await;
    let (_, status) = app.call("GET", "/status", None, None).await;
    assert_eq!(actor(&status, "wal_checkpointer")["state"], "running");
    // Writes pause after the last message, so a pass finds every frame committed and copies
    // them all (and the next commit starts the WAL over).
    let c = wal_checkpoints_until(&app, |c| c["wal_frames_copied"] == c["wal_frames"]).await;
    assert!(c["wal_frames"].as_i64() > Some(0), "{c}");

    // An idle broker runs no passes, once the writes that follow messages (delivery
    // cursors, device records) are in.
    let passes = || async {
        let (_, status) = app.call("GET", "/status", None, None).await;
        status["database"]["wal_checkpoints"]["passes"].as_u64()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = passes().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(passes().await, settled);
    // Messages came through the copies whole.
    let (code, page) = app
        .get("/api/messages/user/alice?limit=50", &app.token("bob"))
        .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        page["messages"].as_array().map(Vec::len),
        Some(20),
        "{page}"
    );
}

#[actix_web::test]
async fn without_the_checkpointer_commits_checkpoint_by_themselves() {
    if on_postgres() {
        return; // The WAL checkpointer is SQLite's.
    }
    let app = spawn_app_with(|s| s.database.sqlite_checkpoint_after = Duration::ZERO).await;
    let mut alice = app.ws("alice").await;
    alice.dm("bob", "m1", "hello").await;
    let (_, status) = app.call("GET", "/status", None, None).await;
    let names: Vec<&Value> = status["actors"]
        .as_array()
        .expect("actors")
        .iter()
        .collect();
    assert!(
        names.iter().all(|a| a["name"] != "wal_checkpointer"),
        "{status}"
    );
    assert_eq!(status["database"]["wal_checkpoints"]["passes"], 0);
}

#[actix_web::test]
async fn idle_channel_actors_stop_for_good_and_start_again_on_use() {
    let app = spawn_app_with(|s| s.channels.idle_timeout = Duration::from_millis(400)).await;
    let mut alice = app.ws("alice").await;
    let counts = |s: &Value| {
        (
            s["channels"]["active"].as_u64(),
            s["channels"]["actors"].as_u64(),
        )
    };
    for round in 0..3 {
        let seq = alice.dm("bob", &format!("m{round}"), "wake up").await["seq"].clone();
        // It starts again from the store: seqs continue.
        assert_eq!(seq, round + 1);
        let (_, status) = app.call("GET", "/status", None, None).await;
        assert_eq!(counts(&status), (Some(1), Some(1)), "{status}");
        // Stopped for idleness, the actor is gone, not restarted beside the registry.
        let mut last = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            last = Some(counts(&app.call("GET", "/status", None, None).await.1));
            if last == Some((Some(0), Some(0))) {
                break;
            }
        }
        assert_eq!(last, Some((Some(0), Some(0))), "round {round}");
    }
}

#[actix_web::test]
async fn database_errors_reach_clients_as_a_reference_not_as_database_text() {
    use diesel::connection::SimpleConnection;
    let app = spawn_app().await;
    let token = app.token("alice");
    let mut alice = app.ws("alice").await;
    // Break the store from outside: the group tables are gone.
    match app.pg() {
        Some(pg) => pg.execute("DROP TABLE group_members; DROP TABLE groups;"),
        None => {
            let pool =
                switchboard::startup::open_store(&app.settings, Default::default()).expect("store");
            let mut c = pool.get().expect("conn");
            c.batch_execute("DROP TABLE group_members; DROP TABLE groups;")
                .expect("drop");
        }
    }
    let (status, body) = app
        .call("GET", "/api/messages/group/g1", Some(&token), None)
        .await;
    assert_eq!(status, 500, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("internal error (ref "), "{body}");
    assert!(!message.contains("table"), "{body}");
    // The same over the WebSocket.
    alice.send(group_msg("g1", "m1", "hello")).await;
    let e = alice.recv().await;
    assert_eq!(e["type"], "error", "{e}");
    let message = e["payload"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains("table") && !message.contains("database"),
        "{e}"
    );
}
