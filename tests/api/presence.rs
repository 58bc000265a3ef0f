//! Presence (contract sections 5, 7.5, 10 and 11): online while any connection lives, a
//! grace period before `offline`, no flap for second devices or quick reconnects, status
//! texts, invisibility, watching, and the REST view.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, TestApp, WsClient};

const GRACE: Duration = Duration::from_millis(800);

async fn app() -> TestApp {
    spawn_app_with(|s| s.presence.offline_grace = GRACE).await
}

/// `watcher` watches `users`; answers the status_update of each, in order.
async fn watch(watcher: &mut WsClient, users: &[&str]) -> Vec<Value> {
    watcher
        .send(json!({"type": "presence_subscribe", "payload": {"user_ids": users}}))
        .await;
    let mut out = Vec::new();
    for _ in users {
        out.push(watcher.recv_type("status_update").await["payload"].clone());
    }
    out
}

#[actix_web::test]
async fn watchers_see_online_at_first_join_and_offline_only_after_the_grace_period() {
    let app = app().await;
    let mut carol = app.ws("carol").await;
    let now = watch(&mut carol, &["bob"]).await;
    assert_eq!(now[0]["user_id"], "bob");
    assert_eq!(now[0]["status"], "offline", "a user never seen is offline");

    let bob_laptop = app.ws_as("bob", "client_id=laptop").await;
    let online = carol.recv_type("status_update").await;
    assert_eq!(online["payload"]["status"], "online");
    assert!(online["payload"].get("last_seen").is_none());

    // A second device, then closing one of two: nothing for watchers.
    let bob_phone = app.ws_as("bob", "client_id=phone").await;
    drop(bob_phone);
    carol.silent_for(GRACE * 2).await;

    // The last one: offline after the grace period, with last_seen.
    let closed = std::time::Instant::now();
    drop(bob_laptop);
    let offline = carol.recv_type("status_update").await;
    assert!(closed.elapsed() >= GRACE - Duration::from_millis(50));
    assert_eq!(offline["payload"]["status"], "offline");
    assert!(offline["payload"]["last_seen"].as_i64().is_some());
}

#[actix_web::test]
async fn a_reconnect_within_the_grace_period_shows_no_flap() {
    let app = app().await;
    let mut carol = app.ws("carol").await;
    let bob = app.ws("bob").await;
    assert_eq!(watch(&mut carol, &["bob"]).await[0]["status"], "online");
    drop(bob);
    tokio::time::sleep(GRACE / 4).await;
    let _bob_again = app.ws("bob").await;
    carol.silent_for(GRACE * 2).await;
    let (status, body) = app.get("/api/users/bob/status", &app.token("carol")).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "online");
}

#[actix_web::test]
async fn status_texts_reach_watchers_and_invisible_users_look_offline_but_receive_everything() {
    let app = app().await;
    let mut carol = app.ws("carol").await;
    let mut bob = app.ws("bob").await;
    watch(&mut carol, &["bob"]).await;

    bob.send(
        json!({"type": "status_update", "payload": {"status": "busy", "text": "in a meeting"}}),
    )
    .await;
    let busy = carol.recv_type("status_update").await;
    assert_eq!(busy["payload"]["status"], "busy");
    assert_eq!(busy["payload"]["text"], "in a meeting");

    bob.send(json!({"type": "status_update", "payload": {"status": "invisible"}}))
        .await;
    let hidden = carol.recv_type("status_update").await;
    assert_eq!(hidden["payload"]["status"], "offline");
    assert!(hidden["payload"].get("text").is_none());
    let (_, rest) = app.get("/api/users/bob/status", &app.token("carol")).await;
    assert_eq!(rest["status"], "offline");

    // Invisible, yet connected: messages still arrive.
    carol.dm("bob", "c-1", "are you there?").await;
    let m = bob.recv_type("chat_message").await;
    assert_eq!(m["payload"]["content"], "are you there?");

    // Closing while invisible shows watchers nothing new.
    drop(bob);
    carol.silent_for(GRACE * 2).await;
}

#[actix_web::test]
async fn following_lists_are_stored_and_report_each_users_presence() {
    let app = app().await;
    let carol = app.token("carol");
    let _alice = app.ws("alice").await;
    let (status, _) = app
        .call(
            "PUT",
            "/api/users/me/following",
            Some(&carol),
            Some(json!({"user_ids": ["bob", "alice", "bob"]})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = app.get("/api/users/following/status", &carol).await;
    assert_eq!(status, 200);
    let users: Vec<(&str, &str)> = body["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| {
            (
                u["user_id"].as_str().unwrap_or(""),
                u["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(users, [("alice", "online"), ("bob", "offline")]);

    // Replaced, not added to.
    let (status, _) = app
        .call(
            "PUT",
            "/api/users/me/following",
            Some(&carol),
            Some(json!({"user_ids": ["dave"]})),
        )
        .await;
    assert_eq!(status, 204);
    let (_, body) = app.get("/api/users/following/status", &carol).await;
    assert_eq!(body["users"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["users"][0]["user_id"], "dave");

    // A user never seen is offline (200, not 404); bad input is 400.
    let (status, body) = app.get("/api/users/nobody/status", &carol).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("offline")));
    let (status, body) = app
        .call(
            "PUT",
            "/api/users/me/following",
            Some(&carol),
            Some(json!({"user_ids": "bob"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = app.call("GET", "/api/users/bob/status", None, None).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn bad_presence_frames_get_bad_request_naming_the_field_and_the_connection_stays_open() {
    let app = app().await;
    let mut bob = app.ws("bob").await;
    for (frame, names) in [
        (
            json!({"type": "status_update", "id": "s1", "payload": {}}),
            "status",
        ),
        (
            json!({"type": "status_update", "id": "s2", "payload": {"status": "asleep"}}),
            "asleep",
        ),
        (
            json!({"type": "status_update", "id": "s3", "payload": {"status": "away", "text": 5}}),
            "text",
        ),
        (
            json!({"type": "presence_subscribe", "id": "p1", "payload": {"user_ids": "alice"}}),
            "user_ids",
        ),
        (
            json!({"type": "presence_subscribe", "id": "p2", "payload": {"user_ids": ["ok", "no spaces"]}}),
            "user_ids",
        ),
        (
            json!({"type": "presence_subscribe", "id": "p3", "payload": {}}),
            "user_ids",
        ),
    ] {
        let e = bob.request(frame.clone()).await;
        assert_eq!(e["type"], "error", "{frame}");
        assert_eq!(e["payload"]["code"], "bad_request", "{frame}");
        assert_eq!(e["payload"]["ref_id"], frame["id"]);
        let message = e["payload"]["message"].as_str().unwrap_or("");
        assert!(message.contains(names), "{frame}: {message}");
    }
    bob.send(json!({"type": "heartbeat", "id": "h"})).await;
    assert_eq!(bob.recv_type("heartbeat").await["id"], "h");
}

#[actix_web::test]
async fn a_connection_watches_a_bounded_number_of_users() {
    let app = spawn_app_with(|s| s.presence.max_watched = 3).await;
    let mut carol = app.ws("carol").await;
    watch(&mut carol, &["a", "b"]).await;
    let e = carol
        .request(
            json!({"type": "presence_subscribe", "id": "w", "payload": {"user_ids": ["c", "d"]}}),
        )
        .await;
    assert_eq!(e["payload"]["code"], "bad_request");
    assert_eq!(e["payload"]["ref_id"], "w");
    // Watching someone again costs nothing, and the limit is not yet reached.
    let again = watch(&mut carol, &["c"]).await;
    assert_eq!(again[0]["user_id"], "c");
}
