//! The fallback transports (contract section 2) driven against each other: SSE readers,
//! long pollers and HTTP senders meet WebSocket clients, and resume from their cursor
//! after a drop, on the node that served them or another.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{
    another_node, chat, spawn_app, spawn_app_with, wait_until, without_rate_limit, SseClient,
    TestApp, WAIT,
};

/// Contents of the chat messages among `events`.
fn contents(events: &[crate::helpers::SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "chat_message")
        .map(|e| {
            e.data["payload"]["content"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

/// Reads events until `sync_complete`; returns those before it.
async fn until_synced(sse: &mut SseClient) -> Vec<crate::helpers::SseEvent> {
    let mut got = Vec::new();
    loop {
        let e = sse.next().await;
        if e.event == "sync_complete" {
            return got;
        }
        got.push(e);
    }
}

/// Contents of the chat messages of a poll answer.
fn polled(body: &Value) -> Vec<String> {
    body["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter(|f| f["type"] == "chat_message")
        .map(|f| f["payload"]["content"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Sends a client frame over HTTP as `user`: the status and the answer.
async fn http_send(app: &TestApp, user: &str, frame: Value) -> (u16, Value) {
    app.post("/api/messages", &app.token(user), frame).await
}

/// Open connections of `transport` that `/status` counts (0 when it lists none).
async fn open_of(app: &TestApp, transport: &str) -> u64 {
    let (_, status) = app.get("/status", &app.admin_token()).await;
    status["connections"]["by_transport"][transport]
        .as_u64()
        .unwrap_or(0)
}

#[actix_web::test]
async fn an_sse_reader_gets_what_a_websocket_writer_sent_one_event_per_frame() {
    let app = spawn_app().await;
    let mut bob = app
        .sse("client_id=bob-web", Some(&app.token("bob")), None)
        .await
        .expect("stream opens");
    let connected = bob.next().await;
    assert_eq!(connected.event, "connected");
    assert_eq!(connected.data["payload"]["client_id"], "bob-web");
    assert_eq!(connected.id, "bob-web/", "nothing received yet");
    assert!(until_synced(&mut bob).await.is_empty());

    let mut alice = app.ws("alice").await;
    for i in 1..=3 {
        alice.dm("bob", &format!("m{i}"), &format!("hi {i}")).await;
    }
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(bob.next_of("chat_message").await);
    }
    assert_eq!(contents(&events), ["hi 1", "hi 2", "hi 3"]);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.data["type"], "chat_message", "data is the delivery frame");
        assert_eq!(e.data["meta"]["seq"], i as u64 + 1);
        assert_eq!(e.id, format!("bob-web/dm:alice:bob~{}", i + 1));
    }
    let (_, status) = app.get("/status", &app.admin_token()).await;
    assert_eq!(status["connections"]["by_transport"]["sse"], 1);
    assert_eq!(status["connections"]["by_transport"]["websocket"], 1);
}

#[actix_web::test]
async fn last_event_id_resumes_after_a_drop_with_nothing_lost_or_doubled() {
    let app = spawn_app().await;
    let bob_token = app.token("bob");
    let mut alice = app.ws("alice").await;
    let mut bob = app
        .sse("client_id=bob-web", Some(&bob_token), None)
        .await
        .expect("opens");
    until_synced(&mut bob).await;
    alice.dm("bob", "m1", "one").await;
    alice.dm("bob", "m2", "two").await;
    bob.next_of("chat_message").await;
    let last = bob.next_of("chat_message").await;
    drop(bob);

    // While bob is away: two more, and a message in a group he is in.
    alice.dm("bob", "m3", "three").await;
    alice.dm("bob", "m4", "four").await;
    app.group("team", "alice", &["alice", "bob"]).await;
    alice
        .request(crate::helpers::group_msg("team", "g1", "team one"))
        .await;

    let mut bob = app
        .sse("", Some(&bob_token), Some(&last.id))
        .await
        .expect("resumes");
    let connected = bob.next().await;
    assert_eq!(
        connected.data["payload"]["client_id"], "bob-web",
        "the device comes from the cursor"
    );
    let missed = until_synced(&mut bob).await;
    assert_eq!(contents(&missed), ["three", "four"]);
    let group: Vec<_> = missed
        .iter()
        .filter(|e| e.event == "group_message")
        .collect();
    assert_eq!(group.len(), 1);
    let last = missed.last().expect("events").id.clone();
    assert!(last.contains("dm:alice:bob~4") && last.contains("group:team~1"));

    // Live again after the sync, then a third stream from the last id gets nothing twice.
    alice.dm("bob", "m5", "five").await;
    let live = bob.next_of("chat_message").await;
    assert_eq!(live.data["payload"]["content"], "five");
    drop(bob);
    let mut bob = app
        .sse("", Some(&bob_token), Some(&live.id))
        .await
        .expect("resumes");
    let again = until_synced(&mut bob).await;
    assert!(
        contents(&again).is_empty(),
        "nothing doubled: {:?}",
        contents(&again)
    );
}

/// Two brokers on one PostgreSQL database (one SQLite file serves one broker; on SQLite
/// `process::lifecycle` resumes a poller on a restarted broker instead).
#[actix_web::test]
async fn a_cursor_resumes_on_another_node() {
    if !crate::helpers::on_postgres() {
        return;
    }
    let app = spawn_app().await;
    let bob_token = app.token("bob");
    let mut alice = app.ws("alice").await;
    alice.dm("bob", "m1", "one").await;
    let (status, first) = app.poll("client_id=bob-cli&timeout_s=5", &bob_token).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(polled(&first), ["one"]);
    alice.dm("bob", "m2", "two").await;

    // The next poll and a resumed SSE stream go to a node that never saw bob.
    let node2 = another_node(&app).await;
    let cursor = first["cursor"].as_str().expect("cursor");
    let (status, next) = node2
        .poll(&format!("cursor={cursor}&timeout_s=5"), &bob_token)
        .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(polled(&next), ["two"]);
    let mut sse = node2
        .sse(
            "",
            Some(&bob_token),
            Some(next["cursor"].as_str().expect("cursor")),
        )
        .await
        .expect("opens");
    assert!(contents(&until_synced(&mut sse).await).is_empty());
}

#[actix_web::test]
async fn a_poller_gets_what_waits_at_once_and_then_waits_for_the_next_frame() {
    let app = spawn_app().await;
    let bob = app.token("bob");
    let mut alice = app.ws("alice").await;

    // Nothing waits: an empty list after the timeout, and a cursor naming the device.
    let (status, empty) = app.poll("client_id=bob-cli&timeout_s=1", &bob).await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["frames"], json!([]));
    assert_eq!(empty["cursor"], "bob-cli/");

    for i in 1..=3 {
        alice.dm("bob", &format!("m{i}"), &format!("m {i}")).await;
    }
    let started = std::time::Instant::now();
    let (_, first) = app.poll("cursor=bob-cli/&timeout_s=20", &bob).await;
    assert_eq!(polled(&first), ["m 1", "m 2", "m 3"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered at once"
    );
    let cursor = first["cursor"].as_str().expect("cursor").to_owned();
    assert_eq!(cursor, "bob-cli/dm:alice:bob~3");

    // A gap: two more while the poller is away; then the same cursor twice (an answer
    // lost on the way is asked for again), then the next.
    alice.dm("bob", "m4", "m 4").await;
    alice.dm("bob", "m5", "m 5").await;
    let (_, second) = app
        .poll(&format!("cursor={cursor}&timeout_s=20"), &bob)
        .await;
    assert_eq!(polled(&second), ["m 4", "m 5"]);
    let (_, repeated) = app
        .poll(&format!("cursor={cursor}&timeout_s=20"), &bob)
        .await;
    assert_eq!(polled(&repeated), ["m 4", "m 5"], "nothing lost");

    // Nothing waits now: the poll holds until the next message comes.
    let cursor = second["cursor"].as_str().expect("cursor").to_owned();
    let waiting = {
        let app_base = app.base.clone();
        let bob = bob.clone();
        actix_web::rt::spawn(async move {
            let client = awc::Client::builder().timeout(WAIT * 3).finish();
            let mut resp = client
                .get(format!("{app_base}/poll?cursor={cursor}&timeout_s=20"))
                .bearer_auth(bob)
                .send()
                .await
                .expect("poll");
            let body: Value = resp.json().await.expect("json");
            body
        })
    };
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    alice.dm("bob", "m6", "m 6").await;
    let third = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting poll answers when the message comes")
        .expect("task");
    assert_eq!(polled(&third), ["m 6"]);
}

#[actix_web::test]
async fn an_http_senders_messages_reach_websocket_and_sse_readers_in_seq_order() {
    let app = spawn_app().await;
    let mut bob_ws = app.ws("bob").await;
    let mut bob_sse = app
        .sse("client_id=bob-tab", Some(&app.token("bob")), None)
        .await
        .expect("opens");
    until_synced(&mut bob_sse).await;
    for i in 1..=5u64 {
        let (status, ack) = http_send(
            &app,
            "alice",
            chat("bob", &format!("h{i}"), &format!("http {i}")),
        )
        .await;
        assert_eq!(status, 200, "{ack}");
        assert_eq!(ack["type"], "ack");
        assert_eq!(ack["payload"]["ref_id"], format!("h{i}"));
        assert_eq!(ack["payload"]["seq"], i);
    }
    for i in 1..=5u64 {
        let f = bob_ws.recv_type("chat_message").await;
        assert_eq!(f["meta"]["seq"], i);
        assert_eq!(f["payload"]["content"], format!("http {i}"));
        let e = bob_sse.next_of("chat_message").await;
        assert_eq!(e.data["meta"]["seq"], i);
    }

    // Idempotent by frame id, like the WebSocket: the original ack, nothing stored.
    let (status, again) = http_send(&app, "alice", chat("bob", "h3", "http 3")).await;
    assert_eq!(status, 200);
    assert_eq!(again["payload"]["seq"], 3);
    bob_ws.silent_for(Duration::from_millis(300)).await;
    let (_, history) = app
        .get("/api/messages/user/alice?limit=50", &app.token("bob"))
        .await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(5));
}

#[actix_web::test]
async fn http_send_answers_each_frame_as_a_connection_would() {
    let app = spawn_app().await;
    let mut bob = app.ws("bob").await;

    // No answer on success: 204, and the effect happens.
    let typing = json!({"type": "typing_indicator", "id": "t1", "payload": {"typing": true},
        "meta": {"target_id": "bob"}});
    let (status, body) = http_send(&app, "alice", typing).await;
    assert_eq!((status, body), (204, Value::Null));
    let t = bob.recv_type("typing_indicator").await;
    assert_eq!(t["meta"]["sender_id"], "alice");

    let hb = json!({"type": "heartbeat", "id": "hb"});
    let (status, body) = http_send(&app, "alice", hb).await;
    assert_eq!(status, 200);
    assert_eq!(body["type"], "heartbeat");

    let doc = json!({"type": "state_sync", "id": "s1", "payload": {"collection": "settings",
        "key": "theme", "value": "dark", "base_version": 0}});
    let (status, body) = http_send(&app, "alice", doc).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "state_sync_result");
    assert_eq!(body["payload"]["status"], "applied");

    // Errors are error frames with the status of their code.
    let (status, body) = http_send(&app, "alice", json!({"type": "nope", "id": "x"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["type"], "error");
    assert_eq!(body["payload"]["code"], "unknown_type");
    assert_eq!(body["payload"]["ref_id"], "x");
    app.group("closed", "carol", &["carol"]).await;
    let (status, body) = http_send(
        &app,
        "alice",
        crate::helpers::group_msg("closed", "g", "hi"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["payload"]["code"], "forbidden");
    let sub = json!({"type": "subscribe", "id": "s", "payload": {"channel": "broadcast:news"}});
    let (status, body) = http_send(&app, "alice", sub).await;
    assert_eq!(status, 400);
    assert_eq!(body["payload"]["code"], "bad_request");
    let (status, body) = app
        .call(
            "POST",
            "/api/messages",
            None,
            Some(chat("bob", "n", "no token")),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    bob.silent_for(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn fallback_transports_share_the_websockets_rate_limit() {
    let app = spawn_app_with(|s| {
        s.limits.frames_per_second = 1.0;
        s.limits.frames_burst = 3.0;
    })
    .await;
    let mut codes = Vec::new();
    for i in 0..6 {
        let (status, body) = http_send(&app, "alice", chat("bob", &format!("r{i}"), "x")).await;
        codes.push((status, body["payload"]["code"].clone()));
    }
    let limited = codes.iter().filter(|(s, _)| *s == 429).count();
    assert!(limited >= 2, "{codes:?}");
    assert!(codes.iter().any(|(s, c)| *s == 429 && *c == "rate_limited"));
}

#[actix_web::test]
async fn a_websocket_and_an_http_sender_of_one_user_draw_from_one_frame_bucket() {
    // A bucket that does not refill within the test: five frames for the user in all.
    let app = spawn_app_with(|s| {
        s.limits.frames_per_second = 0.001;
        s.limits.frames_burst = 5.0;
    })
    .await;
    let mut alice = app.ws("alice").await;
    alice.dm("bob", "w1", "ws 1").await;
    alice.dm("bob", "w2", "ws 2").await;
    for i in 1..=3 {
        let (status, ack) = http_send(&app, "alice", chat("bob", &format!("h{i}"), "http")).await;
        assert_eq!(status, 200, "token {} of 5: {ack}", i + 2);
    }
    // The WebSocket took two and HTTP three: both are refused now.
    let (status, body) = http_send(&app, "alice", chat("bob", "h4", "http")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["payload"]["code"], "rate_limited");
    let refused = alice.request(chat("bob", "w3", "ws 3")).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["payload"]["code"], "rate_limited");
    assert_eq!(refused["payload"]["ref_id"], "w3");
}

#[actix_web::test]
async fn sse_streams_and_polls_take_the_users_connection_places() {
    let app = spawn_app_with(|s| s.limits.max_connections_per_user = 2).await;
    let bob = app.token("bob");
    let mut sse = app
        .sse("client_id=bob-web", Some(&bob), None)
        .await
        .expect("first place");
    until_synced(&mut sse).await;
    let _ws = app.ws("bob").await;

    // Both places are taken: every transport gets the documented 429.
    let (status, body) = app.poll("client_id=bob-cli&timeout_s=0", &bob).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    match app.sse("client_id=bob-tab", Some(&bob), None).await {
        Err((status, body)) => assert_eq!(status, 429, "{body}"),
        Ok(_) => panic!("a third connection opened a stream"),
    }
    assert_eq!(app.ws_connect("/ws", Some(&bob)).await.err(), Some(429));
    assert_eq!(
        app.call("GET", "/api/messages/unread", Some(&bob), None)
            .await
            .0,
        200,
        "the REST API is not a connection"
    );

    // The stream's end frees its place, for a poll as for anything else.
    drop(sse);
    wait_until("a poll to take the stream's place", || async {
        app.poll("client_id=bob-cli&timeout_s=0", &bob).await.0 == 200
    })
    .await;
}

#[actix_web::test]
async fn an_http_send_is_not_refused_because_the_users_places_are_taken() {
    let app = spawn_app_with(|s| s.limits.max_connections_per_user = 1).await;
    let mut bob = app.ws_as("bob", "client_id=bob-phone").await;
    assert_eq!(
        app.ws_connect("/ws", Some(&app.token("bob"))).await.err(),
        Some(429),
        "bob's one place is taken"
    );

    // Bob's phone is connected; his laptop's script still sends, and the phone gets it.
    let (status, ack) = http_send(&app, "bob", chat("alice", "s1", "from the laptop")).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["type"], "ack");
    let own = bob.recv_type("chat_message").await;
    assert_eq!(own["payload"]["content"], "from the laptop");

    // The send took no place and left none taken.
    assert_eq!(
        app.ws_connect("/ws", Some(&app.token("bob"))).await.err(),
        Some(429)
    );
    drop(bob);
    wait_until("bob to connect again once his phone is gone", || async {
        app.ws_connect("/ws", Some(&app.token("bob"))).await.is_ok()
    })
    .await;
}

#[actix_web::test]
async fn a_poll_whose_client_goes_away_ends_long_before_its_timeout() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|s| {
        s.limits.max_connections_per_user = 1;
        s.presence.offline_grace = Duration::from_millis(100);
    })
    .await;
    let bob = app.token("bob");
    let carol = app.token("carol");
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut raw = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("tcp connect");
    let request = format!(
        "GET /poll?client_id=bob-cli&timeout_s=120 HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {bob}\r\n\r\n"
    );
    raw.write_all(request.as_bytes()).await.expect("request");
    wait_until("the poll to wait", || async {
        open_of(&app, "poll").await == 1
    })
    .await;
    let (_, presence) = app.get("/api/users/bob/status", &carol).await;
    assert_eq!(presence["status"], "online", "{presence}");
    let (status, _) = app.poll("client_id=bob-cli&timeout_s=0", &bob).await;
    assert_eq!(status, 429, "the waiting poll holds bob's one place");

    // The client goes; its poll ends, though 120 s are far from over.
    drop(raw);
    wait_until("the abandoned poll to end", || async {
        open_of(&app, "poll").await == 0
    })
    .await;
    wait_until("bob to be offline", || async {
        let (_, presence) = app.get("/api/users/bob/status", &carol).await;
        presence["status"] == "offline"
    })
    .await;
    wait_until("bob's place to be free again", || async {
        app.poll("client_id=bob-cli&timeout_s=0", &bob).await.0 == 200
    })
    .await;
}

#[actix_web::test]
async fn a_poll_answer_is_capped_and_the_rest_comes_with_the_next_polls() {
    // Answers of at most 4 frames (half the outbound queue).
    let app = spawn_app_with(|s| {
        without_rate_limit(s);
        s.limits.outbound_queue = 8;
    })
    .await;
    let bob = app.token("bob");
    let mut alice = app.ws("alice").await;
    for i in 1..=10 {
        alice.dm("bob", &format!("m{i}"), &format!("m {i}")).await;
    }

    // What waits comes in capped answers, each at once, the cursor covering exactly it.
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    let mut more = Vec::new();
    let mut query = "client_id=bob-cli&timeout_s=5".to_owned();
    while got.len() < 10 {
        let (status, answer) = app.poll(&query, &bob).await;
        assert_eq!(status, 200, "{answer}");
        let frames = polled(&answer);
        assert!(
            !frames.is_empty(),
            "a poll with frames waiting answers them"
        );
        sizes.push(frames.len());
        more.push(answer["has_more"].as_bool().expect("has_more"));
        got.extend(frames);
        let cursor = answer["cursor"].as_str().expect("cursor");
        query = format!("cursor={cursor}&timeout_s=5");
    }
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(
        more,
        [true, true, false],
        "has_more marks the answers cut at the cap"
    );
    let expected: Vec<String> = (1..=10).map(|i| format!("m {i}")).collect();
    assert_eq!(got, expected, "nothing lost or doubled, in order");

    // Live frames past the cap wait for the next poll the same way.
    let waiting = {
        let (base, bob, query) = (app.base.clone(), bob.clone(), query.clone());
        actix_web::rt::spawn(async move {
            let client = awc::Client::builder().timeout(WAIT * 3).finish();
            let mut resp = client
                .get(format!("{base}/poll?{query}"))
                .bearer_auth(bob)
                .send()
                .await
                .expect("poll");
            resp.json::<Value>().limit(1 << 20).await.expect("json")
        })
    };
    wait_until("the poll to wait", || async {
        open_of(&app, "poll").await == 1
    })
    .await;
    for i in 11..=16 {
        alice
            .send(chat("bob", &format!("m{i}"), &format!("m {i}")))
            .await;
    }
    let mut answer = waiting.await.expect("task");
    let mut live = Vec::new();
    for round in 0.. {
        let frames = polled(&answer);
        assert!(frames.len() <= 4, "{frames:?}");
        live.extend(frames);
        if live.len() >= 6 {
            break;
        }
        assert!(round < 6, "only {live:?} came");
        let cursor = answer["cursor"].as_str().expect("cursor");
        answer = app
            .poll(&format!("cursor={cursor}&timeout_s=5"), &bob)
            .await
            .1;
    }
    let expected: Vec<String> = (11..=16).map(|i| format!("m {i}")).collect();
    assert_eq!(live, expected, "nothing lost or doubled, in order");
}

#[actix_web::test]
async fn an_sse_reader_that_stops_reading_is_dropped_not_buffered() {
    let app = spawn_app_with(|s| {
        without_rate_limit(s);
        s.limits.outbound_queue = 16;
    })
    .await;
    let bob = app.token("bob");
    let mut stalled = app
        .sse("client_id=stalled", Some(&bob), None)
        .await
        .expect("opens");
    let mut alice = app.ws("alice").await;
    let big = "x".repeat(32 * 1024);
    // Far more than the socket buffers hold, while the stalled reader reads nothing.
    for round in 0..50 {
        for i in 0..8 {
            alice
                .send(chat("bob", &format!("b{round}-{i}"), &big))
                .await;
        }
        for _ in 0..8 {
            alice.recv_type("ack").await;
        }
    }
    // Its stream was ended with a close event (1013); reading now finds that end.
    let mut closed = None;
    while let Some(e) = stalled.try_next(WAIT).await {
        if e.event == "close" {
            closed = Some(e);
        }
    }
    let closed = closed.expect("a close event before the end of the stream");
    assert_eq!(closed.data["code"], 1013);
    let (_, status) = app.get("/status", &app.admin_token()).await;
    assert!(status["connections"]["by_transport"]["sse"].is_null());
}

#[actix_web::test]
async fn fallback_transports_refuse_bad_requests_clearly() {
    let app = spawn_app().await;
    let bob = app.token("bob");
    let (status, body) = app.poll("timeout_s=1000", &bob).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, body) = app.poll("cursor=no-mark", &bob).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = app.poll("cursor=a/&client_id=b", &bob).await;
    assert_eq!(status, 400, "the cursor's device and client_id differ");
    let (status, _) = app.poll("subscribe=group:x", &bob).await;
    assert_eq!(status, 400, "only broadcast channels are subscribed to");
    match app.sse("", None, None).await {
        Err((401, body)) => assert_eq!(body["error"]["code"], "unauthorized"),
        other => panic!("expected 401, got {:?}", other.err()),
    }
    match app.sse("", Some("forged"), None).await {
        Err((status, _)) => assert_eq!(status, 401),
        Ok(_) => panic!("a forged token opened a stream"),
    }
}

#[actix_web::test]
async fn broadcast_subscriptions_resume_from_the_cursor() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let publish =
        |n: u64| json!({"channel": "broadcast:news", "type": "notification", "payload": {"n": n}});
    let mut reader = app
        .sse(
            "client_id=r1&subscribe=broadcast:news",
            Some(&app.token("bob")),
            None,
        )
        .await
        .expect("opens");
    reader.next_of("subscribed").await;
    app.post("/api/admin/publish", &admin, publish(1)).await;
    let first = reader.next_of("notification").await;
    assert!(first.id.contains("broadcast:news~1"), "{}", first.id);
    drop(reader);
    app.post("/api/admin/publish", &admin, publish(2)).await;
    app.post("/api/admin/publish", &admin, publish(3)).await;
    let mut reader = app
        .sse(
            "subscribe=broadcast:news",
            Some(&app.token("bob")),
            Some(&first.id),
        )
        .await
        .expect("resumes");
    let a = reader.next_of("notification").await;
    let b = reader.next_of("notification").await;
    assert_eq!(
        (
            a.data["payload"]["n"].clone(),
            b.data["payload"]["n"].clone()
        ),
        (json!(2), json!(3))
    );
}

#[actix_web::test]
async fn idle_sse_streams_are_kept_alive_and_a_poller_counts_as_online() {
    let app = spawn_app_with(|s| s.session.heartbeat_interval = Duration::from_millis(300)).await;
    let bob = app.token("bob");
    let mut sse = app
        .sse("client_id=bob-web", Some(&bob), None)
        .await
        .expect("opens");
    until_synced(&mut sse).await;
    assert!(
        sse.try_next(Duration::from_millis(1000)).await.is_none(),
        "no event"
    );
    assert!(
        sse.comments.iter().any(|c| c == "keep-alive"),
        "{:?}",
        sse.comments
    );
    drop(sse);

    let carol = app.token("carol");
    let base = app.base.clone();
    let poll = actix_web::rt::spawn(async move {
        let client = awc::Client::builder().timeout(WAIT).finish();
        client
            .get(format!("{base}/poll?client_id=carol-cli&timeout_s=2"))
            .bearer_auth(carol)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let (_, presence) = app.get("/api/users/carol/status", &bob).await;
    assert_eq!(presence["status"], "online", "{presence}");
    let (_, status) = app.get("/status", &app.admin_token()).await;
    assert_eq!(status["connections"]["by_transport"]["poll"], 1);
    assert_eq!(poll.await.expect("task").expect("poll"), 200);
}
