//! Offline delivery (contract sections 5, 7.4 and 11): `sync` sends each device what it has
//! not marked `delivered`, in seq order per channel, then `sync_complete`; devices drain
//! their backlogs independently; a device never seen gets a bounded backlog.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, WsClient};

/// Sends `sync` and collects the messages up to `sync_complete`; answers (contents in
/// order, the sync_complete payload).
async fn sync(ws: &mut WsClient, payload: Value) -> (Vec<String>, Value) {
    ws.send(json!({"type": "sync", "id": "s", "payload": payload}))
        .await;
    let mut got = Vec::new();
    loop {
        let f = ws.recv().await;
        match f["type"].as_str() {
            Some("sync_complete") => return (got, f["payload"].clone()),
            Some("chat_message" | "group_message" | "notification") => {
                got.push(f["payload"]["content"].as_str().unwrap_or("").to_owned())
            }
            Some("connection_event") => {}
            _ => panic!("unexpected frame during sync: {f}"),
        }
    }
}

#[actix_web::test]
async fn each_device_gets_what_it_has_not_marked_delivered_in_order_and_once() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    for i in 1..=3 {
        alice.dm("bob", &format!("m{i}"), &format!("dm {i}")).await;
    }
    app.group("team", "alice", &["alice", "bob"]).await;
    let ack = alice
        .request(crate::helpers::group_msg("team", "g1", "group 1"))
        .await;
    assert_eq!(ack["type"], "ack");

    let mut phone = app.ws_as("bob", "client_id=phone").await;
    let (got, done) = sync(&mut phone, json!({})).await;
    assert_eq!(got, ["dm 1", "dm 2", "dm 3", "group 1"]);
    assert_eq!(done["cursors"], json!({"dm:alice:bob": 3, "group:team": 1}));
    assert_eq!(done["has_more"], false);
    assert_eq!(done["ref_id"], "s");

    // The phone marks the DM delivered: its next sync has only the group message.
    phone
        .send(json!({"type": "delivered", "payload": {"channel": "dm:alice:bob", "up_to_seq": 3}}))
        .await;
    let (got, _) = sync(&mut phone, json!({})).await;
    assert_eq!(got, ["group 1"]);

    // The laptop drains its own backlog, whatever the phone did.
    let mut laptop = app.ws_as("bob", "client_id=laptop").await;
    let (got, _) = sync(&mut laptop, json!({})).await;
    assert_eq!(got, ["dm 1", "dm 2", "dm 3", "group 1"]);

    // What the device says it has counts too.
    let (got, done) = sync(
        &mut laptop,
        json!({"cursors": {"dm:alice:bob": 2, "group:team": 1}}),
    )
    .await;
    assert_eq!(got, ["dm 3"]);
    assert_eq!(done["cursors"]["dm:alice:bob"], 3);
}

#[actix_web::test]
async fn a_new_device_gets_a_bounded_backlog_and_a_long_one_comes_in_rounds() {
    let app = spawn_app_with(|s| {
        s.sync.new_device_backlog = 2;
        s.sync.max_per_sync = 3;
    })
    .await;
    let mut alice = app.ws("alice").await;
    for i in 1..=8 {
        alice.dm("bob", &format!("m{i}"), &format!("dm {i}")).await;
    }
    let mut tablet = app.ws_as("bob", "client_id=tablet").await;
    let (got, done) = sync(&mut tablet, json!({})).await;
    assert_eq!(got, ["dm 7", "dm 8"], "the newest two only");
    assert_eq!(done["cursors"]["dm:alice:bob"], 8);

    // A device that has marked something delivered is known: it gets everything after its
    // cursor, at most three per sync.
    tablet
        .send(json!({"type": "delivered", "payload": {"channel": "dm:alice:bob", "up_to_seq": 1}}))
        .await;
    let (first, done) = sync(&mut tablet, json!({})).await;
    assert_eq!(first, ["dm 2", "dm 3", "dm 4"]);
    assert_eq!(done["has_more"], true);
    let (second, done) = sync(&mut tablet, json!({"cursors": done["cursors"].clone()})).await;
    assert_eq!(second, ["dm 5", "dm 6", "dm 7"]);
    let (third, done) = sync(&mut tablet, json!({"cursors": done["cursors"].clone()})).await;
    assert_eq!(third, ["dm 8"]);
    assert_eq!(done["has_more"], false);
}

#[actix_web::test]
async fn a_connection_dropped_mid_burst_resumes_with_nothing_lost_or_repeated() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws_as("bob", "client_id=phone").await;
    for i in 1..=20 {
        alice
            .dm("bob", &format!("b{i}"), &format!("burst {i}"))
            .await;
    }
    // Bob has read fifteen when his connection drops; five more were on their way.
    let mut seen = Vec::new();
    while seen.len() < 15 {
        let m = bob.recv_type("chat_message").await;
        seen.push(m["meta"]["seq"].as_i64().expect("seq"));
    }
    drop(bob);
    for i in 21..=40 {
        alice
            .dm("bob", &format!("b{i}"), &format!("burst {i}"))
            .await;
    }
    let mut bob = app.ws_as("bob", "client_id=phone").await;
    let last = *seen.last().expect("seen");
    let (got, done) = sync(&mut bob, json!({"cursors": {"dm:alice:bob": last}})).await;
    let expected: Vec<String> = (16..=40).map(|i| format!("burst {i}")).collect();
    assert_eq!(got, expected);
    assert_eq!(done["cursors"]["dm:alice:bob"], 40);
}

#[actix_web::test]
async fn bad_sync_and_delivered_frames_are_refused_and_the_connection_stays_open() {
    let app = spawn_app().await;
    let mut bob = app.ws("bob").await;
    for (frame, code, names) in [
        (
            json!({"type": "delivered", "id": "d1", "payload": {"up_to_seq": 1}}),
            "bad_request",
            "channel",
        ),
        (
            json!({"type": "delivered", "id": "d2", "payload": {"channel": "dm:alice:bob", "up_to_seq": "x"}}),
            "bad_request",
            "up_to_seq",
        ),
        (
            json!({"type": "sync", "id": "s1", "payload": {"cursors": [1]}}),
            "bad_request",
            "cursors",
        ),
        (
            json!({"type": "sync", "id": "s2", "payload": {"cursors": {"nope": 1}}}),
            "bad_request",
            "cursors",
        ),
        (
            json!({"type": "delivered", "id": "d3", "payload": {"channel": "dm:alice:carol", "up_to_seq": 1}}),
            "forbidden",
            "",
        ),
    ] {
        let e = bob.request(frame.clone()).await;
        assert_eq!(e["payload"]["code"], code, "{frame}");
        let message = e["payload"]["message"].as_str().unwrap_or("");
        assert!(message.contains(names), "{frame}: {message}");
    }
    let (got, _) = sync(&mut bob, Value::Null).await;
    assert!(got.is_empty());
}

#[actix_web::test]
async fn undelivered_over_rest_is_what_the_next_sync_would_send_and_unread_counts_follow_reads() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    for i in 1..=3 {
        alice.dm("bob", &format!("m{i}"), &format!("dm {i}")).await;
    }
    let bob = app.token("bob");
    let (status, body) = app
        .get("/api/messages/undelivered?client_id=phone", &bob)
        .await;
    assert_eq!(status, 200, "{body}");
    let contents: Vec<&str> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["payload"]["content"].as_str())
        .collect();
    assert_eq!(contents, ["dm 1", "dm 2", "dm 3"]);
    assert_eq!(body["cursors"], json!({"dm:alice:bob": 3}));
    assert_eq!(body["has_more"], false);

    let mut phone = app.ws_as("bob", "client_id=phone").await;
    phone
        .send(json!({"type": "delivered", "payload": {"channel": "dm:alice:bob", "up_to_seq": 2}}))
        .await;
    // The cursor is held by the offline queue, and counted at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, body) = app
            .get("/api/messages/undelivered?client_id=phone", &bob)
            .await;
        if body["messages"].as_array().map(Vec::len) == Some(1) {
            assert_eq!(body["messages"][0]["payload"]["content"], "dm 3");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, body) = app
        .get("/api/messages/undelivered?client_id=laptop&limit=1", &bob)
        .await;
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["has_more"], true);
    let (status, _) = app.get("/api/messages/undelivered", &bob).await;
    assert_eq!(status, 400, "client_id is required");

    let (status, body) = app.get("/api/messages/unread", &bob).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["channels"],
        json!([{"channel": "dm:alice:bob", "last_seq": 3, "read_up_to": 0, "unread": 3}])
    );
    let (status, _) = app
        .post(
            "/api/messages/read",
            &bob,
            json!({"channel": "dm:alice:bob", "up_to_seq": 2}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = app.get("/api/messages/unread", &bob).await;
    assert_eq!(body["channels"][0]["unread"], 1);
    let (_, body) = app.get("/api/messages/unread", &app.token("carol")).await;
    assert_eq!(body["channels"], json!([]));
}
