//! subscribe / unsubscribe, replay with since_seq, broadcast and user channels.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

fn subscribe(channel: &str, since: Option<u64>) -> serde_json::Value {
    match since {
        Some(s) => json!({"type": "subscribe", "payload": {"channel": channel, "since_seq": s}}),
        None => json!({"type": "subscribe", "payload": {"channel": channel}}),
    }
}

#[actix_web::test]
async fn subscribe_with_since_seq_replays_in_order_then_goes_live() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    for i in 1..=5 {
        alice.dm("bob", &format!("m{i}"), &format!("msg {i}")).await;
    }
    let mut bob = app.ws("bob").await;
    bob.send(subscribe("dm:alice:bob", Some(2))).await;
    let s = bob.recv_type("subscribed").await;
    assert_eq!(
        s["payload"],
        json!({"channel": "dm:alice:bob", "seq": 5, "recovered": true})
    );
    for seq in 3..=5 {
        let m = bob.recv().await;
        assert_eq!(m["type"], "chat_message");
        assert_eq!(m["meta"]["seq"], seq);
    }
    alice.dm("bob", "m6", "live").await;
    let m = bob.recv_type("chat_message").await;
    assert_eq!(
        (m["meta"]["seq"].as_u64(), m["payload"]["content"].as_str()),
        (Some(6), Some("live"))
    );
    bob.silent_for(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn replay_beyond_max_replay_says_not_recovered() {
    let app = spawn_app_with(|s| s.limits.max_replay = 3).await;
    let mut alice = app.ws("alice").await;
    for i in 1..=6 {
        alice.dm("bob", &format!("m{i}"), "x").await;
    }
    let mut bob = app.ws("bob").await;
    bob.send(subscribe("dm:alice:bob", Some(0))).await;
    let s = bob.recv_type("subscribed").await;
    assert_eq!(s["payload"]["recovered"], false);
    let seqs: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                bob.recv_type("chat_message").await["meta"]["seq"]
                    .as_u64()
                    .expect("seq"),
            );
        }
        v
    };
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[actix_web::test]
async fn broadcast_reaches_subscribers_only_and_unsubscribe_stops_it() {
    let app = spawn_app().await;
    let mut reader = app.ws("reader").await;
    let mut other = app.ws("other").await;
    reader.send(subscribe("broadcast:news", None)).await;
    let s = reader.recv_type("subscribed").await;
    assert_eq!(
        s["payload"],
        json!({"channel": "broadcast:news", "seq": 0, "recovered": false})
    );

    let admin = app.admin_token();
    let (status, ack) = app
        .post("/api/admin/publish", &admin, json!({"channel": "broadcast:news", "type": "notification", "payload": {"title": "v2 is out"}}))
        .await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["channel"], "broadcast:news");
    assert_eq!(ack["seq"], 1);
    let n = reader.recv_type("notification").await;
    assert_eq!(n["payload"]["title"], "v2 is out");
    assert_eq!(n["id"], ack["message_id"]);
    assert_eq!(n["meta"]["sender_id"], "admin");
    assert_eq!(n["meta"]["seq"], 1);
    other.silent_for(Duration::from_millis(300)).await;

    reader
        .send(json!({"type": "unsubscribe", "payload": {"channel": "broadcast:news"}}))
        .await;
    assert_eq!(
        reader.recv_type("unsubscribed").await["payload"]["channel"],
        "broadcast:news"
    );
    app.post(
        "/api/admin/publish",
        &admin,
        json!({"channel": "broadcast:news", "payload": {"title": "2"}}),
    )
    .await;
    reader.silent_for(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn user_channel_notifications_reach_all_of_that_users_connections() {
    let app = spawn_app().await;
    let mut bob = app.ws("bob").await;
    let mut bob2 = app.ws_as("bob", "client_id=second").await;
    let mut alice = app.ws("alice").await;
    let (status, ack) = app
        .post(
            "/api/admin/publish",
            &app.admin_token(),
            json!({"channel": "user:bob", "type": "invoice_paid", "payload": {"amount": 3}}),
        )
        .await;
    assert_eq!(status, 200);
    for c in [&mut bob, &mut bob2] {
        let n = c.recv_type("invoice_paid").await;
        assert_eq!(n["payload"]["amount"], 3);
        assert_eq!(n["meta"]["target_id"], "bob");
        assert_eq!(n["id"], ack["message_id"]);
    }
    alice.silent_for(Duration::from_millis(300)).await;
    // Retrying a publish with the same id returns the first ack.
    let body = json!({"channel": "user:bob", "id": "inv-1", "payload": {"amount": 4}});
    let (_, first) = app
        .post("/api/admin/publish", &app.admin_token(), body.clone())
        .await;
    let (_, again) = app
        .post("/api/admin/publish", &app.admin_token(), body)
        .await;
    assert_eq!(first, again);
}

#[actix_web::test]
async fn publish_is_for_admins_with_valid_channels_and_types() {
    let app = spawn_app().await;
    let body = json!({"channel": "broadcast:news", "payload": {}});
    let (status, e) = app
        .post("/api/admin/publish", &app.token("alice"), body)
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let admin = app.admin_token();
    let (status, _) = app
        .post(
            "/api/admin/publish",
            &admin,
            json!({"channel": "news", "payload": {}}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post(
            "/api/admin/publish",
            &admin,
            json!({"channel": "broadcast:x", "type": "ack", "payload": {}}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post(
            "/api/admin/publish",
            &admin,
            json!({"channel": "broadcast:x"}),
        )
        .await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn users_may_not_subscribe_to_or_write_into_others_channels() {
    let app = spawn_app().await;
    let mut mallory = app.ws("mallory").await;
    mallory
        .send(json!({"type": "subscribe", "id": "s1", "payload": {"channel": "dm:alice:bob"}}))
        .await;
    let e = mallory.recv_type("error").await;
    assert_eq!(
        (
            e["payload"]["code"].as_str(),
            e["payload"]["ref_id"].as_str()
        ),
        (Some("forbidden"), Some("s1"))
    );
    mallory
        .send(json!({"type": "subscribe", "payload": {"channel": "user:alice"}}))
        .await;
    assert_eq!(
        mallory.recv_type("error").await["payload"]["code"],
        "forbidden"
    );
    mallory
        .send(json!({"type": "subscribe", "payload": {"channel": "nonsense"}}))
        .await;
    assert_eq!(
        mallory.recv_type("error").await["payload"]["code"],
        "bad_request"
    );
    // Subscribing to one's own channels works.
    mallory
        .send(json!({"type": "subscribe", "payload": {"channel": "user:mallory"}}))
        .await;
    assert_eq!(
        mallory.recv_type("subscribed").await["payload"]["channel"],
        "user:mallory"
    );
}

#[actix_web::test]
async fn unsubscribing_a_dm_mutes_it_on_that_connection_until_resubscribed() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    bob.send(json!({"type": "unsubscribe", "payload": {"channel": "dm:alice:bob"}}))
        .await;
    bob.recv_type("unsubscribed").await;
    alice.dm("bob", "1", "muted").await;
    bob.silent_for(Duration::from_millis(300)).await;
    bob.send(subscribe("dm:alice:bob", Some(0))).await;
    bob.recv_type("subscribed").await;
    assert_eq!(
        bob.recv_type("chat_message").await["payload"]["content"],
        "muted"
    );
    alice.dm("bob", "2", "heard").await;
    assert_eq!(
        bob.recv_type("chat_message").await["payload"]["content"],
        "heard"
    );
}
