//! The command proxy (contract section 5): a `command` frame is POSTed to the configured
//! backend with the caller's identity and answered with `response`, or with an `error`
//! when there is no backend, the backend refuses, fails or is slow, or its breaker is open.
//! The backend is a real HTTP server the test starts.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp, WsClient};

/// A command backend on a random port. What it answers depends on the command's name;
/// while `down` is set it answers 503 to everything.
struct Backend {
    url: String,
    calls: Arc<AtomicU32>,
    down: Arc<AtomicBool>,
}

async fn answer(req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    let call = body.into_inner();
    let args = &call["args"];
    match call["name"].as_str().unwrap_or("") {
        "echo" => HttpResponse::Ok().json(json!({
            "args": args,
            "user_id": call["user_id"],
            "client_id": call["client_id"],
            "ref_id": call["ref_id"],
            "authorization": req.headers().get("authorization")
                .and_then(|h| h.to_str().ok()),
        })),
        "slow" => {
            let ms = args["ms"].as_u64().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            HttpResponse::Ok().json(json!({"slept_ms": ms}))
        }
        "nothing" => HttpResponse::NoContent().finish(),
        "forbidden" => HttpResponse::Forbidden().json(json!({"message": "not your project"})),
        "conflict" => HttpResponse::Conflict().json(json!({"error": "already archived"})),
        "invalid" => HttpResponse::UnprocessableEntity().body("no"),
        "crash" => HttpResponse::InternalServerError().body("boom"),
        "garbage" => HttpResponse::Ok().body("<html>not json</html>"),
        "huge" => HttpResponse::Ok().json(json!({"blob": "x".repeat(200_000)})),
        _ => HttpResponse::NotFound().json(json!({"message": "no such command"})),
    }
}

fn backend() -> Backend {
    let calls: Arc<AtomicU32> = Arc::default();
    let down: Arc<AtomicBool> = Arc::default();
    let (c, d) = (calls.clone(), down.clone());
    let server = HttpServer::new(move || {
        let (c, d) = (c.clone(), d.clone());
        App::new().route(
            "/commands",
            web::post().to(move |req: HttpRequest, body: web::Json<Value>| {
                let (c, d) = (c.clone(), d.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    if d.load(Ordering::SeqCst) {
                        return HttpResponse::ServiceUnavailable().finish();
                    }
                    answer(req, body).await
                }
            }),
        )
    })
    .workers(2)
    .bind("127.0.0.1:0")
    .expect("bind backend");
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    Backend {
        url: format!("http://127.0.0.1:{port}/commands"),
        calls,
        down,
    }
}

fn command(id: &str, name: &str, args: Value) -> Value {
    json!({"type": "command", "id": id, "payload": {"name": name, "args": args}})
}

/// Sends a command and returns its answer (`response` or `error`).
async fn call(ws: &mut WsClient, id: &str, name: &str, args: Value) -> Value {
    ws.send(command(id, name, args)).await;
    answer_to(ws, id).await
}

/// The next `response` or `error` frame, which must answer `id`.
async fn answer_to(ws: &mut WsClient, id: &str) -> Value {
    loop {
        let f = ws.recv().await;
        if f["type"] == "response" || f["type"] == "error" {
            assert_eq!(f["payload"]["ref_id"], id, "{f}");
            return f;
        }
    }
}

async fn command_status(app: &TestApp) -> Value {
    let (_, status) = app.call("GET", "/status", None, None).await;
    status["command"].clone()
}

fn error_code(f: &Value) -> &str {
    assert_eq!(f["type"], "error", "{f}");
    f["payload"]["code"].as_str().unwrap_or("")
}

#[actix_web::test]
async fn a_command_reaches_the_backend_as_the_caller_and_its_answer_comes_back() {
    let backend = backend();
    let url = backend.url.clone();
    let app = spawn_app_with(move |s| {
        s.command.backend_url = url;
        s.command.secret = "s3cret".into();
    })
    .await;
    let mut alice = app.ws_as("alice", "client_id=laptop-1").await;

    let f = call(
        &mut alice,
        "c1",
        "echo",
        json!({"project": 7, "tags": ["a"]}),
    )
    .await;
    assert_eq!(f["type"], "response", "{f}");
    let result = &f["payload"]["result"];
    assert_eq!(result["args"], json!({"project": 7, "tags": ["a"]}));
    assert_eq!(result["user_id"], "alice");
    assert_eq!(result["client_id"], "laptop-1");
    assert_eq!(result["ref_id"], "c1");
    assert_eq!(result["authorization"], "Bearer s3cret");

    // No args: the backend gets null; an empty answer is a null result.
    alice
        .send(json!({"type": "command", "id": "c2", "payload": {"name": "echo"}}))
        .await;
    let f = answer_to(&mut alice, "c2").await;
    assert_eq!(f["payload"]["result"]["args"], Value::Null);
    let f = call(&mut alice, "c3", "nothing", json!({})).await;
    assert_eq!(f["type"], "response", "{f}");
    assert_eq!(f["payload"]["result"], Value::Null);

    // A 4xx is the backend refusing: its code and message reach the caller.
    let f = call(&mut alice, "c4", "forbidden", json!({})).await;
    assert_eq!(error_code(&f), "forbidden");
    assert_eq!(f["payload"]["message"], "not your project");
    let f = call(&mut alice, "c5", "conflict", json!({})).await;
    assert_eq!(error_code(&f), "conflict");
    assert_eq!(f["payload"]["message"], "already archived");
    let f = call(&mut alice, "c6", "no-such", json!({})).await;
    assert_eq!(error_code(&f), "not_found");
    let f = call(&mut alice, "c7", "invalid", json!({})).await;
    assert_eq!(error_code(&f), "bad_request");

    // A failing backend or an unusable answer is `unavailable`.
    for (id, name) in [("c8", "crash"), ("c9", "garbage"), ("c10", "huge")] {
        let f = call(&mut alice, id, name, json!({})).await;
        assert_eq!(error_code(&f), "unavailable", "{name}: {f}");
    }

    // Over HTTP send, the answer is the reply, with the status of its code.
    let token = app.token("alice");
    let (status, body) = app
        .post(
            "/api/messages",
            &token,
            command("h1", "echo", json!([1, 2])),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "response");
    assert_eq!(body["payload"]["ref_id"], "h1");
    assert_eq!(body["payload"]["result"]["args"], json!([1, 2]));
    assert_eq!(body["payload"]["result"]["user_id"], "alice");
    let (status, body) = app
        .post(
            "/api/messages",
            &token,
            command("h2", "forbidden", json!({})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["payload"]["code"], "forbidden");

    let s = command_status(&app).await;
    assert_eq!(s["configured"], true);
    assert_eq!(s["breaker"], "closed");
    // 4 answers, 4 refusals (a backend working as meant), 3 failures in a row is
    // below the default 5, then 1 answer and 1 refusal over HTTP.
    assert_eq!(
        (s["ok"].as_u64(), s["failed"].as_u64()),
        (Some(4), Some(8)),
        "{s}"
    );
    assert_eq!(backend.calls.load(Ordering::SeqCst), 12);
}

#[actix_web::test]
async fn without_a_backend_a_command_is_not_configured_and_bad_frames_are_refused() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;

    let f = call(&mut alice, "c1", "echo", json!({})).await;
    assert_eq!(error_code(&f), "not_configured");
    let (status, body) = app
        .post(
            "/api/messages",
            &app.token("alice"),
            command("h1", "echo", json!({})),
        )
        .await;
    assert_eq!(status, 501, "{body}");
    assert_eq!(body["payload"]["code"], "not_configured");
    assert_eq!(command_status(&app).await, json!({"configured": false}));

    // Bad frames are refused before any backend is asked.
    let bad = [
        json!({"type": "command", "id": "b1", "payload": {"args": {}}}),
        json!({"type": "command", "id": "b2", "payload": {"name": ""}}),
        json!({"type": "command", "id": "b3", "payload": {"name": "x".repeat(129)}}),
        json!({"type": "command", "id": "b4", "payload": {"name": "a\u{7}b"}}),
        json!({"type": "command", "id": "b5", "payload": {"name": 5}}),
        json!({"type": "command", "id": "b6"}),
    ];
    for frame in bad {
        let f = alice.request(frame.clone()).await;
        assert_eq!(error_code(&f), "bad_request", "{frame}: {f}");
        assert_eq!(f["payload"]["ref_id"], frame["id"]);
    }
    let deep = format!(
        r#"{{"type":"command","id":"b7","payload":{{"name":"x","args":{}1{}}}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    alice.send_text(&deep).await;
    let f = answer_to(&mut alice, "b7").await;
    assert_eq!(error_code(&f), "bad_request");
    // The connection goes on.
    let f = alice
        .request(crate::helpers::chat("bob", "m1", "still here"))
        .await;
    assert_eq!(f["type"], "ack", "{f}");
}

#[actix_web::test]
async fn a_slow_backend_delays_only_its_own_response() {
    let backend = backend();
    let url = backend.url.clone();
    let app = spawn_app_with(move |s| {
        s.command.backend_url = url;
        s.command.timeout = Duration::from_millis(800);
    })
    .await;
    let mut alice = app.ws("alice").await;

    let sent = Instant::now();
    alice
        .send(command("slow", "slow", json!({"ms": 5000})))
        .await;
    alice.send(command("quick", "echo", json!("hi"))).await;
    alice.send(json!({"type": "heartbeat", "id": "hb"})).await;

    // The heartbeat and the quick call come back while the slow one is still out.
    let mut order = Vec::new();
    while order.len() < 3 {
        let f = alice.recv().await;
        match f["type"].as_str() {
            Some("heartbeat") => order.push("hb".to_owned()),
            Some("response") | Some("error") => {
                order.push(f["payload"]["ref_id"].as_str().unwrap_or("").to_owned());
                if f["payload"]["ref_id"] == "slow" {
                    assert_eq!(error_code(&f), "unavailable");
                    let message = f["payload"]["message"].as_str().unwrap_or("");
                    assert!(message.contains("did not answer"), "{f}");
                }
            }
            _ => {}
        }
    }
    assert_eq!(order.last().map(String::as_str), Some("slow"), "{order:?}");
    let waited = sent.elapsed();
    assert!(waited >= Duration::from_millis(800), "{waited:?}");

    // Another user's calls go through meanwhile too.
    alice
        .send(command("slow2", "slow", json!({"ms": 600})))
        .await;
    let mut bob = app.ws("bob").await;
    let f = call(&mut bob, "b1", "echo", json!(1)).await;
    assert_eq!(f["type"], "response", "{f}");
    let f = answer_to(&mut alice, "slow2").await;
    assert_eq!(f["type"], "response", "{f}");
    assert_eq!(f["payload"]["result"]["slept_ms"], 600);
}

#[actix_web::test]
async fn calls_beyond_max_in_flight_are_refused_at_once() {
    let backend = backend();
    let url = backend.url.clone();
    let app = spawn_app_with(move |s| {
        s.command.backend_url = url;
        s.command.max_in_flight = 1;
    })
    .await;
    let mut alice = app.ws("alice").await;
    alice
        .send(command("slow", "slow", json!({"ms": 1000})))
        .await;
    // The slow call is open once /status counts it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while command_status(&app).await["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the slow call never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let f = call(&mut alice, "busy", "echo", json!({})).await;
    assert_eq!(error_code(&f), "unavailable");
    assert_eq!(f["payload"]["retry_after_ms"], 100);
    let f = answer_to(&mut alice, "slow").await;
    assert_eq!(f["type"], "response", "{f}");
    let s = command_status(&app).await;
    assert_eq!(
        (s["rejected"].as_u64(), s["in_flight"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
}

#[actix_web::test]
async fn a_failing_backend_opens_the_breaker_and_a_trial_call_closes_it() {
    let backend = backend();
    let url = backend.url.clone();
    let app = spawn_app_with(move |s| {
        s.command.backend_url = url;
        s.command.breaker_failures = 3;
        s.command.breaker_cooldown = Duration::from_millis(700);
    })
    .await;
    let mut alice = app.ws("alice").await;
    backend.down.store(true, Ordering::SeqCst);

    for i in 0..3 {
        let f = call(&mut alice, &format!("f{i}"), "echo", json!({})).await;
        assert_eq!(error_code(&f), "unavailable");
        assert!(f["payload"]["retry_after_ms"].is_null(), "{f}");
    }
    let s = command_status(&app).await;
    assert_eq!(s["breaker"], "open", "{s}");
    assert_eq!(s["failed"], 3);

    // While open, calls are refused without reaching the backend, with a retry hint.
    let f = call(&mut alice, "r1", "echo", json!({})).await;
    assert_eq!(error_code(&f), "unavailable");
    let retry = f["payload"]["retry_after_ms"]
        .as_u64()
        .expect("retry_after_ms");
    assert!((1..=700).contains(&retry), "{f}");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 3);
    assert_eq!(command_status(&app).await["rejected"], 1);

    // After the cooldown a failed trial reopens it…
    tokio::time::sleep(Duration::from_millis(750)).await;
    let f = call(&mut alice, "t1", "echo", json!({})).await;
    assert_eq!(error_code(&f), "unavailable");
    assert_eq!(backend.calls.load(Ordering::SeqCst), 4);
    assert_eq!(command_status(&app).await["breaker"], "open");

    // …and a good one closes it.
    backend.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(750)).await;
    let f = call(&mut alice, "t2", "echo", json!({})).await;
    assert_eq!(f["type"], "response", "{f}");
    let s = command_status(&app).await;
    assert_eq!(s["breaker"], "closed", "{s}");
    assert_eq!(s["ok"], 1);
    let f = call(&mut alice, "after", "echo", json!({})).await;
    assert_eq!(f["type"], "response", "{f}");

    // The proxy's actor line in /status keeps the last backend failure.
    let (_, status) = app.call("GET", "/status", None, None).await;
    let line = status["actors"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == "command_proxy"))
        .cloned()
        .unwrap_or_default();
    let last = line["last_error"].as_str().unwrap_or("");
    assert!(last.contains("503"), "{line}");
}
