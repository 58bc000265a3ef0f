//! Every row of the bad-input table (contract section 8).

use std::time::Duration;

use serde_json::json;

use crate::helpers::{chat, spawn_app, spawn_app_with, Ended};

#[actix_web::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_open() {
    let app = spawn_app().await;
    let mut c = app.ws("alice").await;
    let cases = [
        "not json at all".to_string(),
        "[1,2,3]".to_string(),
        json!({"id": "no-type"}).to_string(),
        json!({"type": "chat_message", "id": "m1", "payload": {"content": "x"}}).to_string(),
        json!({"type": "chat_message", "id": "m2", "payload": {"content": 42}, "meta": {"target_id": "bob"}}).to_string(),
        json!({"type": "chat_message", "id": "m3", "payload": {"content": ""}, "meta": {"target_id": "bob"}}).to_string(),
        json!({"type": "chat_message", "id": "m4", "payload": {"content": "x"}, "meta": {"target_id": "not valid!"}}).to_string(),
        json!({"type": "subscribe", "id": "s1", "payload": {"since_seq": 1}}).to_string(),
        json!({"type": "subscribe", "id": "s2", "payload": {"channel": "dm:a:b", "since_seq": "one"}}).to_string(),
        json!({"type": "read_receipt", "id": "r1", "payload": {"channel": "dm:a:b", "up_to_seq": -1}}).to_string(),
        json!({"type": "heartbeat", "id": 7}).to_string(),
    ];
    for text in &cases {
        c.send_text(text).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "for {text}: {e}");
        assert_eq!(e["payload"]["code"], "bad_request", "for {text}: {e}");
        assert!(e["payload"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // The ref_id comes back whenever the id could be read.
    c.send(json!({"type": "chat_message", "id": "ref-me", "payload": {}, "meta": {"target_id": "bob"}})).await;
    assert_eq!(c.recv().await["payload"]["ref_id"], "ref-me");
    // Nothing was stored, and the connection still works.
    let ack = c.dm("bob", "ok-1", "still here").await;
    assert_eq!(ack["seq"], 1);
}

#[actix_web::test]
async fn unknown_types_get_unknown_type_and_the_connection_stays_open() {
    let app = spawn_app().await;
    let mut c = app.ws("alice").await;
    c.send(json!({"type": "dance", "id": "d1"})).await;
    let e = c.recv().await;
    assert_eq!(e["payload"]["code"], "unknown_type");
    assert_eq!(e["payload"]["ref_id"], "d1");
    c.send(json!({"type": "heartbeat"})).await;
    assert_eq!(c.recv().await["type"], "heartbeat");
}

#[actix_web::test]
async fn binary_frames_are_refused_without_closing() {
    let app = spawn_app().await;
    let mut c = app.ws("alice").await;
    c.send_raw(actix_http::ws::Message::Binary(bytes::Bytes::from_static(
        b"\x00\x01",
    )))
    .await;
    assert_eq!(c.recv().await["payload"]["code"], "bad_request");
    c.send(json!({"type": "heartbeat"})).await;
    assert_eq!(c.recv().await["type"], "heartbeat");
}

#[actix_web::test]
async fn a_frame_over_max_frame_bytes_closes_with_1009() {
    let app = spawn_app_with(|s| s.limits.max_frame_bytes = 4096).await;
    let mut c = app.ws("alice").await;
    let big = "x".repeat(5000);
    c.send(chat("bob", "big", &big)).await;
    assert_eq!(c.ended(Duration::from_secs(5)).await, Ended::Closed(1009));
    // A frame just under the limit is fine.
    let mut d = app.ws("dave").await;
    assert_eq!(d.dm("bob", "fits", &"y".repeat(3900)).await["seq"], 1);
}

#[actix_web::test]
async fn invalid_utf8_closes_with_1007() {
    let app = spawn_app().await;
    let mut single = app.ws("alice").await;
    single.send_invalid_utf8().await;
    assert_eq!(
        single.ended(Duration::from_secs(5)).await,
        Ended::Closed(1007)
    );
    let mut fragmented = app.ws("bob").await;
    fragmented.send_invalid_utf8_fragmented().await;
    assert_eq!(
        fragmented.ended(Duration::from_secs(5)).await,
        Ended::Closed(1007)
    );
}

#[actix_web::test]
async fn over_the_rate_limit_frames_get_rate_limited_then_1008() {
    let app = spawn_app_with(|s| {
        s.limits.frames_per_second = 2.0;
        s.limits.frames_burst = 5.0;
        s.limits.max_rejected_frames = 10;
    })
    .await;
    let mut c = app.ws("alice").await;
    // The bucket is per user: a second connection shares it.
    let mut c2 = app.ws("alice").await;
    for i in 0..5 {
        c2.send(json!({"type": "heartbeat", "id": format!("ok{i}")}))
            .await;
        assert_eq!(c2.recv_type("heartbeat").await["type"], "heartbeat");
    }
    c.send(json!({"type": "heartbeat", "id": "limited"})).await;
    let e = c.recv_type("error").await;
    assert_eq!(e["payload"]["code"], "rate_limited");
    assert_eq!(e["payload"]["ref_id"], "limited");
    let retry = e["payload"]["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!(retry > 0 && retry <= 1000, "retry_after_ms {retry}");
    // Waiting as told makes room again.
    tokio::time::sleep(Duration::from_millis(retry + 50)).await;
    c.send(json!({"type": "heartbeat", "id": "after-wait"}))
        .await;
    assert_eq!(c.recv_type("heartbeat").await["id"], "after-wait");
    // Hammering past max_rejected_frames closes with 1008.
    for i in 0..30 {
        c.send(json!({"type": "heartbeat", "id": format!("flood{i}")}))
            .await;
    }
    assert_eq!(c.ended(Duration::from_secs(5)).await, Ended::Closed(1008));
}

#[actix_web::test]
async fn connection_limits_answer_503_and_429_at_upgrade() {
    let app = spawn_app_with(|s| {
        s.limits.max_connections = 3;
        s.limits.max_connections_per_user = 2;
    })
    .await;
    let _a1 = app.ws("alice").await;
    let _a2 = app.ws("alice").await;
    assert_eq!(
        app.ws_connect("/ws", Some(&app.token("alice"))).await.err(),
        Some(429)
    );
    let _b1 = app.ws("bob").await;
    assert_eq!(
        app.ws_connect("/ws", Some(&app.token("carol"))).await.err(),
        Some(503)
    );
    // A closed connection frees its place.
    drop(_b1);
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(c) = app.ws_connect("/ws", Some(&app.token("carol"))).await {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok.is_some(), "place was not freed");
}

#[actix_web::test]
async fn frames_before_authentication_and_binary_frames_are_rate_limited_too() {
    let app = spawn_app_with(|s| {
        s.limits.frames_per_second = 1.0;
        s.limits.frames_burst = 3.0;
        s.limits.max_rejected_frames = 5;
    })
    .await;
    let mut c = app.ws_connect("/ws", None).await.expect("upgrade");
    for _ in 0..3 {
        c.send(json!({"type": "heartbeat"})).await;
        assert_eq!(c.recv().await["payload"]["code"], "unauthorized");
    }
    c.send_raw(actix_http::ws::Message::Binary(bytes::Bytes::from_static(
        b"x",
    )))
    .await;
    assert_eq!(c.recv().await["payload"]["code"], "rate_limited");
    for _ in 0..10 {
        c.send_text("garbage").await;
    }
    assert_eq!(c.ended(Duration::from_secs(5)).await, Ended::Closed(1008));
}

#[actix_web::test]
async fn a_connection_subscribes_to_a_bounded_number_of_channels() {
    let app = spawn_app_with(|s| s.limits.max_subscriptions = 2).await;
    let mut c = app.ws("alice").await;
    for ch in ["broadcast:a", "broadcast:b"] {
        c.send(json!({"type": "subscribe", "payload": {"channel": ch}}))
            .await;
        assert_eq!(c.recv_type("subscribed").await["payload"]["channel"], ch);
    }
    c.send(json!({"type": "subscribe", "id": "third", "payload": {"channel": "broadcast:c"}}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(
        (
            e["payload"]["code"].as_str(),
            e["payload"]["ref_id"].as_str()
        ),
        (Some("forbidden"), Some("third"))
    );
    // Re-subscribing to one already held is fine; leaving one makes room.
    c.send(json!({"type": "subscribe", "payload": {"channel": "broadcast:a"}}))
        .await;
    c.recv_type("subscribed").await;
    c.send(json!({"type": "unsubscribe", "payload": {"channel": "broadcast:a"}}))
        .await;
    c.recv_type("unsubscribed").await;
    c.send(json!({"type": "subscribe", "payload": {"channel": "broadcast:c"}}))
        .await;
    assert_eq!(
        c.recv_type("subscribed").await["payload"]["channel"],
        "broadcast:c"
    );
}
