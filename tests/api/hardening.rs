//! What an attacker or a careless client may send (contract section 8): frames declared
//! over the limit, half frames, reserved bits, sockets that never authenticate, floods of
//! upgrades from one address, JSON that breaks parsers, lists where objects belong, and
//! frames whose order matters. Memory under such load is measured on the real process in
//! `process.rs`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, RawEnd, RawWs, TestApp};

/// A token-less raw upgrade that must succeed.
async fn pending(app: &TestApp) -> RawWs {
    let (status, ws) = app.raw_upgrade("", "HTTP/1.1", "").await;
    assert_eq!(status, 101, "{}", ws.head);
    ws
}

/// A raw upgrade with a bearer token, past its `connected` frame.
async fn authed(app: &TestApp, user: &str) -> RawWs {
    let auth = format!("Authorization: Bearer {}\r\n", app.token(user));
    let (status, mut ws) = app.raw_upgrade("", "HTTP/1.1", &auth).await;
    assert_eq!(status, 101, "{}", ws.head);
    assert_eq!(ws.recv().await.expect("connected")["type"], "connected");
    ws
}

#[actix_web::test]
async fn a_header_declaring_more_than_the_limit_is_closed_with_1009_before_its_payload() {
    let app = spawn_app().await;
    let huge = (1u64 << 63) - 1;
    for (first, declared, sent) in [
        (0x81, huge, 0),       // text, 2^63-1 bytes, no token
        (0x82, huge, 4096),    // binary
        (0x81, 100_000, 1000), // over 64 KiB, a little sent
        (0x89, huge, 0),       // a ping declaring a huge length
        (0x89, 126, 0),        // a ping over 125 bytes
    ] {
        let mut ws = pending(&app).await;
        let started = Instant::now();
        assert!(
            ws.write(&RawWs::frame(first, declared, &vec![b'x'; sent]))
                .await
        );
        assert_eq!(
            ws.end(Duration::from_secs(5)).await,
            RawEnd::Closed(1009),
            "{first:#x} declaring {declared}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

#[actix_web::test]
async fn a_fragmented_message_growing_past_the_limit_is_closed_with_1009() {
    let app = spawn_app().await;
    let mut ws = authed(&app, "alice").await;
    // 40 KiB, not final; then a continuation declaring 30 KiB more (of 64 KiB allowed).
    assert!(ws.write(&RawWs::frame(0x01, 40_960, &[b'a'; 40_960])).await);
    assert!(ws.write(&RawWs::frame(0x80, 30_720, &[])).await);
    assert_eq!(ws.end(Duration::from_secs(5)).await, RawEnd::Closed(1009));

    // Fragments within the limit still make one message.
    let mut ws = authed(&app, "alice").await;
    let text = json!({"type": "heartbeat", "id": "h1"}).to_string();
    let (a, b) = text.as_bytes().split_at(10);
    assert!(ws.write(&RawWs::frame(0x01, a.len() as u64, a)).await);
    assert!(ws.write(&RawWs::frame(0x80, b.len() as u64, b)).await);
    assert_eq!(ws.recv().await.expect("heartbeat")["type"], "heartbeat");
}

#[actix_web::test]
async fn a_frame_that_stalls_half_sent_is_closed_after_the_frame_timeout() {
    let app = spawn_app_with(|s| s.limits.frame_timeout = Duration::from_millis(400)).await;
    let mut ws = authed(&app, "alice").await;
    let frame = RawWs::text(&json!({"type": "heartbeat", "pad": "x".repeat(2000)}).to_string());
    let started = Instant::now();
    assert!(ws.write(&frame[..frame.len() / 2]).await);
    assert_eq!(ws.end(Duration::from_secs(5)).await, RawEnd::Closed(1008));
    assert!(started.elapsed() >= Duration::from_millis(350));

    // A frame that keeps coming, however slowly, is not cut.
    let mut ws = authed(&app, "bob").await;
    for chunk in frame.chunks(frame.len() / 4 + 1) {
        assert!(ws.write(chunk).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(ws.recv().await.expect("answered")["type"], "heartbeat");
}

#[actix_web::test]
async fn reserved_bits_and_fragmented_control_frames_are_closed_with_1002() {
    let app = spawn_app().await;
    for first in [0x81 | 0x40, 0x81 | 0x20, 0x81 | 0x10, 0x09, 0x0A] {
        let mut ws = authed(&app, "alice").await;
        assert!(ws.write(&RawWs::frame(first, 2, b"{}")).await);
        assert_eq!(
            ws.end(Duration::from_secs(5)).await,
            RawEnd::Closed(1002),
            "first byte {first:#x}"
        );
    }
}

#[actix_web::test]
async fn an_upgrade_over_http_1_0_is_refused() {
    let app = spawn_app().await;
    let (status, ws) = app.raw_upgrade("", "HTTP/1.0", "").await;
    assert_eq!(status, 400, "{}", ws.head);
}

#[actix_web::test]
async fn sockets_waiting_to_authenticate_cannot_take_the_places_of_real_users() {
    // 50 places, a tenth of them for connections not yet authenticated.
    let app = spawn_app_with(|s| {
        s.limits.max_connections = 50;
        s.limits.max_pending_per_ip = 0;
    })
    .await;
    let mut waiting: Vec<RawWs> = Vec::new();
    for _ in 0..5 {
        waiting.push(pending(&app).await);
    }
    let (status, _) = app.raw_upgrade("", "HTTP/1.1", "").await;
    assert_eq!(status, 503);
    // Users with tokens still get in, all 45 of the rest.
    let mut users = Vec::new();
    for i in 0..45 {
        users.push(app.ws(&format!("user{i}")).await);
    }
    assert_eq!(
        app.ws_connect("/ws", Some(&app.token("late"))).await.err(),
        Some(503)
    );
    drop(users);
    // A waiting socket that authenticates gives its waiting place back.
    let token = app.token("carol");
    assert!(
        waiting[0]
            .write(&RawWs::text(
                &json!({"type": "auth", "payload": {"token": token}}).to_string()
            ))
            .await
    );
    assert_eq!(
        waiting[0].recv().await.expect("connected")["type"],
        "connected"
    );
    let (_, status) = app.call("GET", "/status", None, None).await;
    assert_eq!(status["connections"]["pending"], 4, "{status}");
    let _fresh = pending(&app).await;
}

#[actix_web::test]
async fn one_address_may_hold_only_so_many_sockets_waiting_to_authenticate() {
    let app = spawn_app_with(|s| s.limits.max_pending_per_ip = 3).await;
    let _held: Vec<RawWs> = [
        pending(&app).await,
        pending(&app).await,
        pending(&app).await,
    ]
    .into();
    let (status, ws) = app.raw_upgrade("", "HTTP/1.1", "").await;
    assert_eq!(status, 429, "{}", ws.head);
    // Upgrades with a token are not waiting, and not counted.
    app.ws("alice").await;
}

#[actix_web::test]
async fn upgrades_are_rate_limited_per_address_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.limits.upgrades_per_ip_per_second = 1.0;
        s.limits.upgrades_per_ip_burst = 3.0;
    })
    .await;
    for _ in 0..3 {
        app.ws("alice").await;
    }
    let auth = format!("Authorization: Bearer {}\r\n", app.token("alice"));
    let (status, ws) = app.raw_upgrade("", "HTTP/1.1", &auth).await;
    assert_eq!(status, 429, "{}", ws.head);
    assert!(
        ws.head.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        ws.head
    );
    // Without a trusted proxy, X-Forwarded-For is the client's own word: ignored.
    let forged = format!("{auth}X-Forwarded-For: 203.0.113.7\r\n");
    assert_eq!(app.raw_upgrade("", "HTTP/1.1", &forged).await.0, 429);
}

#[actix_web::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limits() {
    let app = spawn_app_with(|s| {
        s.limits.upgrades_per_ip_per_second = 1.0;
        s.limits.upgrades_per_ip_burst = 1.0;
        s.server.trusted_proxies = vec!["127.0.0.0/8".parse().expect("range")];
    })
    .await;
    let auth = format!("Authorization: Bearer {}\r\n", app.token("alice"));
    let from = |ip: &str| format!("{auth}X-Forwarded-For: {ip}\r\n");
    for ip in ["203.0.113.1", "203.0.113.2", "2001:db8::1"] {
        let (status, ws) = app.raw_upgrade("", "HTTP/1.1", &from(ip)).await;
        assert_eq!(status, 101, "{ip}: {}", ws.head);
    }
    assert_eq!(
        app.raw_upgrade("", "HTTP/1.1", &from("203.0.113.1"))
            .await
            .0,
        429
    );
    // The same /64.
    assert_eq!(
        app.raw_upgrade("", "HTTP/1.1", &from("2001:db8::2"))
            .await
            .0,
        429
    );
}

/// Payloads valid as JSON that common parsers refuse.
const POISON: [&str; 3] = [
    r#"{"content":"deep","x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
    r#"{"content":"huge","n":1e999999}"#,
    r#"{"content":"\ud800"}"#,
];

#[actix_web::test]
async fn payloads_that_break_json_parsers_are_refused_and_not_stored() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    for (i, payload) in POISON.iter().enumerate() {
        alice
            .send_text(&format!(
                r#"{{"type":"chat_message","id":"p{i}","payload":{payload},"meta":{{"target_id":"bob"}}}}"#
            ))
            .await;
        let e = alice.recv().await;
        assert_eq!(e["payload"]["code"], "bad_request", "{payload}: {e}");
        assert_eq!(e["payload"]["ref_id"], format!("p{i}"));
    }
    // Nesting up to the limit is fine; nothing before was stored.
    let ok = format!(
        r#"{{"type":"chat_message","id":"fine","payload":{{"content":"ok","x":{}1{}}},"meta":{{"target_id":"bob"}}}}"#,
        "[".repeat(31),
        "]".repeat(31)
    );
    alice.send_text(&ok).await;
    assert_eq!(alice.recv().await["payload"]["seq"], 1);
    let (status, page) = app
        .call(
            "GET",
            "/api/messages/user/bob",
            Some(&app.token("alice")),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");

    // The same for REST bodies.
    for payload in POISON {
        let body =
            format!(r#"{{"channel":"broadcast:news","type":"notification","payload":{payload}}}"#);
        let resp = awc::Client::default()
            .post(format!("{}/api/admin/publish", app.base))
            .bearer_auth(app.admin_token())
            .insert_header(("Content-Type", "application/json"))
            .send_body(body)
            .await
            .expect("publish");
        assert_eq!(resp.status().as_u16(), 400, "{payload}");
    }
    let (status, _) = app
        .call(
            "POST",
            "/api/admin/publish",
            Some(&app.admin_token()),
            Some(json!(["broadcast:news", "notification", {}])),
        )
        .await;
    assert_eq!(status, 400);
}

#[actix_web::test]
async fn a_group_of_the_documented_maximum_fits_the_body_limit() {
    let app = spawn_app().await;
    let members: Vec<String> = (0..10_000).map(|i| format!("member-{i:05}")).collect();
    let (status, body) = app
        .call(
            "POST",
            "/api/groups",
            Some(&app.admin_token()),
            Some(json!({"id": "everyone", "name": "Everyone", "members": members})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["members"].as_array().map(Vec::len), Some(10_001));
    // One more is refused by the count, not by the body limit.
    let members: Vec<String> = (0..10_001).map(|i| format!("member-{i:05}")).collect();
    let (status, body) = app
        .call(
            "POST",
            "/api/groups",
            Some(&app.admin_token()),
            Some(json!({"name": "x", "members": members})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[actix_web::test]
async fn lists_are_not_read_as_objects() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    for text in [
        r#"{"type":"chat_message","id":"a1","payload":{"content":"hi"},"meta":["bob"]}"#,
        r#"{"type":"subscribe","id":"a2","payload":["broadcast:news",0]}"#,
        r#"{"type":"typing_indicator","id":"a3","payload":[true],"meta":{"target_id":"bob"}}"#,
        r#"{"type":"read_receipt","id":"a4","payload":["dm:alice:bob",1]}"#,
        r#"["heartbeat"]"#,
    ] {
        alice.send_text(text).await;
        let e = alice.recv().await;
        assert_eq!(e["payload"]["code"], "bad_request", "{text}: {e}");
    }
    assert_eq!(alice.dm("bob", "real", "now").await["seq"], 1);
    let mut ws = pending(&app).await;
    let token = app.token("bob");
    assert!(
        ws.write(&RawWs::text(
            &json!({"type": "auth", "payload": [token]}).to_string()
        ))
        .await
    );
    assert_eq!(
        ws.recv().await.expect("error")["payload"]["code"],
        "bad_request"
    );
}

#[actix_web::test]
async fn frames_of_one_connection_take_effect_in_the_order_sent() {
    let app = spawn_app().await;
    let mut ws = authed(&app, "alice").await;
    let sub = json!({"type": "subscribe", "payload": {"channel": "broadcast:news"}});
    let unsub = json!({"type": "unsubscribe", "payload": {"channel": "broadcast:news"}});
    let mut both = RawWs::text(&sub.to_string());
    both.extend(RawWs::text(&unsub.to_string()));
    assert!(ws.write(&both).await);
    assert_eq!(ws.recv().await.expect("first")["type"], "subscribed");
    assert_eq!(ws.recv().await.expect("second")["type"], "unsubscribed");
    // And it is not subscribed: a publish does not reach it.
    let (status, _) = app
        .call(
            "POST",
            "/api/admin/publish",
            Some(&app.admin_token()),
            Some(json!({"channel": "broadcast:news", "payload": {"text": "hello"}})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(ws.write(&RawWs::text(r#"{"type":"heartbeat"}"#)).await);
    assert_eq!(ws.recv().await.expect("next")["type"], "heartbeat");
}

#[actix_web::test]
async fn since_seq_beyond_the_channel_replays_nothing_and_reports_the_last_seq() {
    let app = spawn_app().await;
    for i in 0..3 {
        let (status, _) = app
            .call(
                "POST",
                "/api/admin/publish",
                Some(&app.admin_token()),
                Some(json!({"channel": "broadcast:news", "payload": {"n": i}})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let mut c = app.ws("alice").await;
    for since in [
        json!(9_223_372_036_854_775_808u64),
        json!(1_000_000_000_000u64),
        json!(3),
    ] {
        c.send(json!({"type": "subscribe", "payload": {"channel": "broadcast:news", "since_seq": since}}))
            .await;
        let s = c.recv().await;
        assert_eq!(s["type"], "subscribed", "{s}");
        assert_eq!(s["payload"]["seq"], 3, "since {since}: {s}");
        assert_eq!(s["payload"]["recovered"], true);
        c.send(json!({"type": "heartbeat"})).await;
        assert_eq!(
            c.recv().await["type"],
            "heartbeat",
            "nothing replayed after {since}"
        );
    }
    for since in [
        json!(-1),
        json!(1.5),
        json!("2"),
        json!(18_446_744_073_709_551_616.0),
    ] {
        c.send(json!({"type": "subscribe", "payload": {"channel": "broadcast:news", "since_seq": since}}))
            .await;
        let e: Value = c.recv().await;
        assert_eq!(e["payload"]["code"], "bad_request", "since {since}: {e}");
    }
}

#[actix_web::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let token = app.token("alice");
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let resp = awc::Client::default()
            .get(format!("{}/api/messages/user/bob", app.base))
            .insert_header(("Authorization", format!("{scheme} {token}")))
            .send()
            .await
            .expect("history");
        assert_eq!(resp.status().as_u16(), 200, "{scheme}");
        let auth = format!("authorization: {scheme} {token}\r\n");
        let (status, mut ws) = app.raw_upgrade("", "HTTP/1.1", &auth).await;
        assert_eq!(status, 101, "{scheme}");
        assert_eq!(ws.recv().await.expect("connected")["type"], "connected");
    }
}
