//! What a browser page on another origin may do (`server.allowed_origins`: CORS and the
//! `Origin` of upgrades, SSE streams, polls and HTTP sends), and the per-address request
//! limit.

use std::time::Duration;

use awc::error::WsClientError;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example";

/// The status of a WebSocket upgrade sent with `Origin: origin` (101 when it upgrades).
async fn upgrade_with_origin(app: &TestApp, origin: Option<&str>) -> u16 {
    let mut req = awc::Client::new()
        .ws(format!("{}/ws", app.ws_base))
        .bearer_auth(app.token("alice"));
    if let Some(o) = origin {
        req = req.origin(o);
    }
    match req.connect().await {
        Ok(_) => 101,
        Err(WsClientError::InvalidResponseStatus(s)) => s.as_u16(),
        Err(e) => panic!("upgrade: {e}"),
    }
}

/// A request with `Origin` and extra headers: its status and response headers.
async fn with_origin(
    app: &TestApp,
    method: &str,
    path: &str,
    origin: &str,
    headers: &[(&str, &str)],
) -> (u16, awc::http::header::HeaderMap) {
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = awc::Client::new()
        .request(method, format!("{}{path}", app.base))
        .insert_header(("Origin", origin));
    for h in headers {
        req = req.insert_header(*h);
    }
    let resp = req.send().await.expect("request");
    (resp.status().as_u16(), resp.headers().clone())
}

fn header<'a>(h: &'a awc::http::header::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[actix_web::test]
async fn only_the_allowed_origins_get_cors_and_may_open_connections() {
    let app = spawn_app_with(|s| s.server.allowed_origins = vec![APP.into()]).await;
    assert_eq!(upgrade_with_origin(&app, Some(APP)).await, 101);
    assert_eq!(upgrade_with_origin(&app, Some(EVIL)).await, 403);
    assert_eq!(
        upgrade_with_origin(&app, None).await,
        101,
        "non-browser clients"
    );

    let sse = format!("/sse?token={}", app.token("alice"));
    let (code, _) = with_origin(&app, "GET", &sse, EVIL, &[]).await;
    assert_eq!(code, 403);

    // Preflight and the request itself, from the app's origin.
    let preflight = [
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "authorization,content-type",
        ),
    ];
    let (code, h) = with_origin(&app, "OPTIONS", "/api/messages", APP, &preflight).await;
    assert_eq!(code, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    let methods = header(&h, "access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("POST"), "{methods}");
    let bearer = format!("Bearer {}", app.token("alice"));
    let auth = [("Authorization", bearer.as_str())];
    let (code, h) = with_origin(&app, "GET", "/api/messages/unread", APP, &auth).await;
    assert_eq!(code, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    let exposed = header(&h, "access-control-expose-headers")
        .unwrap_or("")
        .to_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");

    // Another origin gets no CORS grant, so its page cannot read the answer.
    let (_, h) = with_origin(&app, "OPTIONS", "/api/messages", EVIL, &preflight).await;
    assert_eq!(header(&h, "access-control-allow-origin"), None);
}

/// `POST /api/messages` of `frame` as alice with `Origin: origin` (none when `None`): the
/// status, the CORS grant and the answer.
async fn send_with_origin(
    app: &TestApp,
    origin: Option<&str>,
    frame: Value,
) -> (u16, Option<String>, Value) {
    let mut req = awc::Client::new()
        .post(format!("{}/api/messages", app.base))
        .bearer_auth(app.token("alice"));
    if let Some(o) = origin {
        req = req.insert_header(("Origin", o));
    }
    let mut resp = req.send_json(&frame).await.expect("request");
    let grant = header(resp.headers(), "access-control-allow-origin").map(str::to_owned);
    let body = resp.body().await.expect("body");
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (resp.status().as_u16(), grant, json)
}

#[actix_web::test]
async fn polls_and_http_sends_check_the_origin_as_streams_do() {
    let app = spawn_app_with(|s| s.server.allowed_origins = vec![APP.into()]).await;
    let poll = format!(
        "/poll?client_id=alice-tab&timeout_s=0&token={}",
        app.token("alice")
    );
    let (code, _) = with_origin(&app, "GET", &poll, EVIL, &[]).await;
    assert_eq!(
        code, 403,
        "a page elsewhere may not poll with a token it got hold of"
    );
    let (code, h) = with_origin(&app, "GET", &poll, APP, &[]).await;
    assert_eq!(code, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(APP));
    let (code, _) = app
        .poll("client_id=alice-cli&timeout_s=0", &app.token("alice"))
        .await;
    assert_eq!(code, 200, "clients that send no Origin");

    let frame = |id: &str| {
        serde_json::json!({"type": "chat_message", "id": id,
        "payload": {"content": "hi"}, "meta": {"target_id": "bob"}})
    };
    let (code, grant, body) = send_with_origin(&app, Some(EVIL), frame("e1")).await;
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(grant, None);
    let (code, grant, body) = send_with_origin(&app, Some(APP), frame("a1")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["type"], "ack");
    assert_eq!(grant.as_deref(), Some(APP));
    let (code, _, body) = send_with_origin(&app, None, frame("n1")).await;
    assert_eq!(code, 200, "{body}");
    // Nothing the refused page sent was stored.
    let (_, history) = app
        .get("/api/messages/user/alice?limit=50", &app.token("bob"))
        .await;
    let stored = history["messages"].as_array().map(Vec::len);
    assert_eq!(stored, Some(2), "{history}");
}

#[actix_web::test]
async fn without_allowed_origins_there_is_no_cors_and_any_origin_connects() {
    let app = spawn_app().await;
    assert_eq!(upgrade_with_origin(&app, Some(EVIL)).await, 101);
    let poll = format!("/poll?timeout_s=0&token={}", app.token("alice"));
    let (code, h) = with_origin(&app, "GET", &poll, EVIL, &[]).await;
    assert_eq!(code, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    let bearer = format!("Bearer {}", app.token("alice"));
    let auth = [("Authorization", bearer.as_str())];
    let (code, h) = with_origin(&app, "GET", "/api/messages/unread", EVIL, &auth).await;
    assert_eq!(code, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    assert!(header(&h, "x-request-id").is_some());
}

/// `GET path` as `token`, which must be refused with 429: its `Retry-After`, seconds.
async fn retry_after(app: &TestApp, path: &str, token: &str) -> u64 {
    let resp = awc::Client::new()
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 429);
    header(resp.headers(), "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After")
}

#[actix_web::test]
async fn requests_over_the_per_address_rate_get_429_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.limits.requests_per_ip_per_second = 1.0;
        s.limits.requests_per_ip_burst = 3.0;
    })
    .await;
    let token = app.token("alice");
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(app.get("/api/messages/unread", &token).await.0);
    }
    assert_eq!(codes, [200, 200, 200, 429]);
    let retry = retry_after(&app, "/api/messages/unread", &token).await;
    assert!((1..=2).contains(&retry), "{retry}");
    // Polls count too; the operations endpoints do not.
    let (code, _) = app.poll("timeout_s=0", &token).await;
    assert_eq!(code, 429);
    for path in ["/health", "/ready", "/status", "/metrics"] {
        let resp = awc::Client::new()
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .expect("ops");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, body): (u16, Value) = app.get("/api/messages/unread", &token).await;
    assert_eq!(code, 200, "{body}");
}

#[actix_web::test]
async fn each_caller_has_a_request_rate_of_its_own_on_rest() {
    let app = spawn_app_with(|s| {
        s.limits.requests_per_user_per_second = 1.0;
        s.limits.requests_per_user_burst = 3.0;
    })
    .await;
    let (alice, bob) = (app.token("alice"), app.token("bob"));
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(app.get("/api/messages/unread", &alice).await.0);
    }
    assert_eq!(codes, [200, 200, 200, 429]);
    // Another token of the same user shares the bucket; another user does not.
    assert_eq!(
        app.get("/api/messages/unread", &app.token("alice")).await.0,
        429
    );
    assert_eq!(app.get("/api/messages/unread", &bob).await.0, 200);
    let retry = retry_after(&app, "/api/groups/none", &alice).await;
    assert!((1..=2).contains(&retry), "{retry}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.get("/api/messages/unread", &alice).await.0, 200);
}

#[actix_web::test]
async fn each_user_has_a_connection_attempt_rate_on_every_transport() {
    let app = spawn_app_with(|s| {
        s.limits.connects_per_user_per_second = 1.0;
        s.limits.connects_per_user_burst = 2.0;
    })
    .await;
    let alice = app.token("alice");
    let _first = app.ws_connect("/ws", Some(&alice)).await.expect("upgrade");
    let _second = app.ws_connect("/ws", Some(&alice)).await.expect("upgrade");
    assert_eq!(app.ws_connect("/ws", Some(&alice)).await.err(), Some(429));
    // The same bucket for a stream or a poll; bob has his own.
    let (code, _) = app.poll("timeout_s=0", &alice).await;
    assert_eq!(code, 429);
    let _bob = app
        .ws_connect("/ws", Some(&app.token("bob")))
        .await
        .expect("bob");
    // An `auth` frame after a token-less upgrade counts too: refused and closed.
    let mut late = app.ws_connect("/ws", None).await.expect("upgrade");
    late.send(json!({"type": "auth", "payload": {"token": alice}}))
        .await;
    assert_eq!(
        late.recv_type("error").await["payload"]["code"],
        "rate_limited"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, _) = app.poll("timeout_s=0", &alice).await;
    assert_eq!(code, 200);
}

#[actix_web::test]
async fn small_routes_refuse_large_bodies_early() {
    let app = spawn_app().await;
    let big = serde_json::json!({ "refresh_token": "x".repeat(20 * 1024) });
    let (code, body) = app.call("POST", "/api/auth/refresh", None, Some(big)).await;
    assert_eq!(code, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_large");
    let big =
        serde_json::json!({ "channel": "dm:a:b", "up_to_seq": 1, "pad": "x".repeat(20 * 1024) });
    let (code, _) = app
        .call(
            "POST",
            "/api/messages/read",
            Some(&app.token("a")),
            Some(big),
        )
        .await;
    assert_eq!(code, 413);
}
