//! Direct messages, typing, read receipts, heartbeat (contract sections 5 and 7).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{chat, spawn_app};

#[actix_web::test]
async fn dm_is_acked_to_sender_and_delivered_to_every_other_connection() {
    let app = spawn_app().await;
    let mut alice = app.ws_as("alice", "client_id=laptop&device=desktop").await;
    let mut alice_phone = app.ws_as("alice", "client_id=phone&device=mobile").await;
    let mut bob = app.ws("bob").await;
    // alice's laptop learns that her phone connected.
    let ev = alice.recv_type("connection_event").await;
    assert_eq!(ev["payload"]["event"], "connected");
    assert_eq!(ev["payload"]["client_id"], "phone");
    assert_eq!(ev["payload"]["device"], "mobile");

    let ack = alice.dm("bob", "m-1", "hi bob").await;
    assert_eq!(ack["ref_id"], "m-1");
    assert_eq!(ack["channel"], "dm:alice:bob");
    assert_eq!(ack["seq"], 1);
    let message_id = ack["message_id"].as_str().expect("message id");
    assert_eq!(
        uuid::Uuid::parse_str(message_id)
            .expect("uuid")
            .get_version_num(),
        7
    );

    for conn in [&mut bob, &mut alice_phone] {
        let m = conn.recv_type("chat_message").await;
        assert_eq!(m["id"], message_id);
        assert_eq!(m["payload"]["content"], "hi bob");
        let meta = &m["meta"];
        assert_eq!(meta["sender_id"], "alice");
        assert_eq!(meta["target_id"], "bob");
        assert_eq!(meta["client_id"], "laptop");
        assert_eq!(meta["channel"], "dm:alice:bob");
        assert_eq!(meta["seq"], 1);
        assert_eq!(meta["timestamp"], ack["timestamp"]);
    }
    // Own echo: the sending connection got the ack, not the message.
    alice.silent_for(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn unknown_payload_fields_are_kept_and_attachments_allowed() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    let frame = json!({"type": "chat_message", "id": "x1",
        "payload": {"content": "see file", "attachments": [{"url": "https://e.x/a.png"}], "format": "md"},
        "meta": {"target_id": "bob"}});
    assert_eq!(alice.request(frame).await["type"], "ack");
    let m = bob.recv_type("chat_message").await;
    assert_eq!(m["payload"]["attachments"][0]["url"], "https://e.x/a.png");
    assert_eq!(m["payload"]["format"], "md");
}

#[actix_web::test]
async fn resending_an_acked_id_returns_the_original_ack_and_stores_nothing_new() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    let first = alice.dm("bob", "same-id", "once").await;
    let again = alice.dm("bob", "same-id", "once").await;
    assert_eq!(first, again);
    bob.recv_type("chat_message").await;
    bob.silent_for(Duration::from_millis(300)).await;
    let (status, page) = app.get("/api/messages/user/bob", &app.token("alice")).await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"].as_array().expect("list").len(), 1);
    // Another user may use the same frame id: it is a different message.
    let mut carol = app.ws("carol").await;
    let other = carol.dm("bob", "same-id", "mine").await;
    assert_ne!(other["message_id"], first["message_id"]);
}

#[actix_web::test]
async fn a_resend_pipelined_behind_its_original_is_acked_alike_and_delivered_once() {
    let app = spawn_app_fast().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    // Without waiting in between, so that originals and resends share write batches.
    for i in 0..10 {
        for _ in 0..2 {
            alice.send(chat("bob", &format!("p{i}"), "twice")).await;
        }
    }
    let mut acks: HashMap<String, Vec<Value>> = HashMap::new();
    while acks.values().map(Vec::len).sum::<usize>() < 20 {
        let f = alice.recv_type("ack").await;
        let id = f["payload"]["ref_id"].as_str().expect("ref_id").to_owned();
        acks.entry(id).or_default().push(f["payload"].clone());
    }
    assert_eq!(acks.len(), 10);
    for (id, pair) in &acks {
        assert_eq!(pair[0], pair[1], "both acks of {id} name the same message");
    }
    let mut seqs = HashSet::new();
    for _ in 0..10 {
        let m = bob.recv_type("chat_message").await;
        assert!(seqs.insert(m["meta"]["seq"].as_u64().expect("seq")));
    }
    bob.silent_for(Duration::from_millis(300)).await;
    assert_eq!(seqs, (1..=10).collect::<HashSet<_>>());
}

#[actix_web::test]
async fn resends_of_a_stored_frame_arriving_together_are_all_acked_with_the_original() {
    let app = spawn_app_fast().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    let first = alice.dm("bob", "again", "once").await;
    bob.recv_type("chat_message").await;
    // Without waiting in between, so that the resends share a write batch.
    for _ in 0..4 {
        alice.send(chat("bob", "again", "once")).await;
    }
    for _ in 0..4 {
        assert_eq!(alice.recv_type("ack").await["payload"], first);
    }
    bob.silent_for(Duration::from_millis(300)).await;
    let (_, page) = app.get("/api/messages/user/bob", &app.token("alice")).await;
    assert_eq!(page["messages"].as_array().expect("list").len(), 1);
}

#[actix_web::test]
async fn seqs_have_no_gaps_and_arrive_in_order_under_concurrent_senders() {
    let app = spawn_app_fast().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    let mut watcher = app.ws_as("bob", "client_id=watcher").await;
    let n = 60;
    for i in 0..n {
        alice
            .send(chat("bob", &format!("a{i}"), "from alice"))
            .await;
        bob.send(chat("alice", &format!("b{i}"), "from bob")).await;
    }
    let mut acked = HashSet::new();
    for conn in [&mut alice, &mut bob] {
        let mut got = 0;
        while got < n {
            let f = conn.recv().await;
            if f["type"] == "ack" {
                assert!(acked.insert(f["payload"]["seq"].as_u64().expect("seq")));
                got += 1;
            }
        }
    }
    assert_eq!(acked, (1..=2 * n as u64).collect::<HashSet<_>>());
    // A connection receiving both directions sees every seq once, in order.
    let mut last = 0;
    while last < 2 * n as u64 {
        let f = watcher.recv_type("chat_message").await;
        let seq = f["meta"]["seq"].as_u64().expect("seq");
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
    }
}

#[actix_web::test]
async fn each_party_gets_the_others_messages_of_a_commit_and_acks_for_its_own() {
    // Both write into one channel at once, so commits hold messages of both senders: each
    // connection gets an ack for its own frames and a delivery for each of the other's,
    // in order, and never a delivery of its own.
    let app = spawn_app_fast().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    let n = 40;
    for i in 0..n {
        alice
            .send(chat("bob", &format!("a{i}"), "from alice"))
            .await;
        bob.send(chat("alice", &format!("b{i}"), "from bob")).await;
    }
    for (conn, me, other) in [(&mut alice, "alice", "bob"), (&mut bob, "bob", "alice")] {
        let (mut acks, mut got, mut last) = (0, 0, 0);
        while acks < n || got < n {
            let f = conn.recv().await;
            match f["type"].as_str() {
                Some("ack") => acks += 1,
                Some("chat_message") => {
                    assert_eq!(f["meta"]["sender_id"], other, "{me} got its own message");
                    let seq = f["meta"]["seq"].as_u64().expect("seq");
                    assert!(seq > last, "{me}: seq {seq} after {last}");
                    last = seq;
                    got += 1;
                }
                _ => {}
            }
        }
        conn.silent_for(Duration::from_millis(200)).await;
    }
}

async fn spawn_app_fast() -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(crate::helpers::without_rate_limit).await
}

#[actix_web::test]
async fn typing_indicator_reaches_online_recipients_and_is_never_stored() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    alice
        .send(json!({"type": "typing_indicator", "payload": {"typing": true}, "meta": {"target_id": "bob"}}))
        .await;
    let t = bob.recv_type("typing_indicator").await;
    assert_eq!(t["payload"]["typing"], true);
    assert_eq!(t["meta"]["sender_id"], "alice");
    assert_eq!(t["meta"]["channel"], "dm:alice:bob");
    let (_, page) = app.get("/api/messages/user/bob", &app.token("alice")).await;
    assert_eq!(page["messages"], json!([]));
    // Typing without `typing` is bad input.
    alice
        .send(json!({"type": "typing_indicator", "meta": {"target_id": "bob"}}))
        .await;
    assert_eq!(
        alice.recv_type("error").await["payload"]["code"],
        "bad_request"
    );
}

#[actix_web::test]
async fn read_receipt_is_stored_and_sent_to_the_other_party() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    alice.dm("bob", "m1", "one").await;
    alice.dm("bob", "m2", "two").await;
    bob.send(
        json!({"type": "read_receipt", "payload": {"channel": "dm:alice:bob", "up_to_seq": 2}}),
    )
    .await;
    let r = alice.recv_type("read_receipt").await;
    assert_eq!(
        r["payload"],
        json!({"channel": "dm:alice:bob", "up_to_seq": 2, "user_id": "bob"})
    );
    // A cursor never moves back: an older receipt still reports 2.
    bob.send(
        json!({"type": "read_receipt", "payload": {"channel": "dm:alice:bob", "up_to_seq": 1}}),
    )
    .await;
    assert_eq!(
        alice.recv_type("read_receipt").await["payload"]["up_to_seq"],
        2
    );
    // Beyond the last message, or someone else's channel: refused.
    bob.send(json!({"type": "read_receipt", "id": "r9", "payload": {"channel": "dm:alice:bob", "up_to_seq": 9}}))
        .await;
    let e = bob.recv_type("error").await;
    assert_eq!(e["payload"]["code"], "bad_request");
    assert_eq!(e["payload"]["ref_id"], "r9");
    bob.send(json!({"type": "read_receipt", "id": "r10", "payload": {"channel": "dm:alice:carol", "up_to_seq": 1}}))
        .await;
    assert_eq!(bob.recv_type("error").await["payload"]["code"], "forbidden");
}

#[actix_web::test]
async fn heartbeat_frame_is_answered_with_server_time() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    alice.send(json!({"type": "heartbeat", "id": "hb1"})).await;
    let h = alice.recv().await;
    assert_eq!(h["type"], "heartbeat");
    assert_eq!(h["id"], "hb1");
    assert!(h["payload"]["server_time"].as_i64().expect("time") > 1_600_000_000_000);
}

#[actix_web::test]
async fn a_note_to_self_reaches_each_other_connection_once() {
    let app = spawn_app().await;
    let mut laptop = app.ws_as("alice", "client_id=laptop").await;
    let mut phone = app.ws_as("alice", "client_id=phone").await;
    let ack = laptop.dm("alice", "n1", "remember milk").await;
    assert_eq!(ack["channel"], "dm:alice:alice");
    let m = phone.recv_type("chat_message").await;
    assert_eq!(m["payload"]["content"], "remember milk");
    phone.silent_for(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn read_over_rest_moves_the_cursor_and_tells_the_other_party_and_the_readers_devices() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    alice.dm("bob", "m1", "one").await;
    alice.dm("bob", "m2", "two").await;
    bob.recv_type("chat_message").await;
    bob.recv_type("chat_message").await;

    let bob_token = app.token("bob");
    let (status, body) = app
        .post(
            "/api/messages/read",
            &bob_token,
            json!({"channel": "dm:alice:bob", "up_to_seq": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"channel": "dm:alice:bob", "up_to_seq": 2}));
    for conn in [&mut alice, &mut bob] {
        let r = conn.recv_type("read_receipt").await;
        assert_eq!(r["payload"]["user_id"], "bob");
        assert_eq!(r["payload"]["up_to_seq"], 2);
    }

    // The cursor never moves back; beyond the last message, or a channel the caller may
    // not read, is refused.
    let (_, body) = app
        .post(
            "/api/messages/read",
            &bob_token,
            json!({"channel": "dm:alice:bob", "up_to_seq": 1}),
        )
        .await;
    assert_eq!(body["up_to_seq"], 2);
    let (status, _) = app
        .post(
            "/api/messages/read",
            &bob_token,
            json!({"channel": "dm:alice:bob", "up_to_seq": 3}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post(
            "/api/messages/read",
            &app.token("carol"),
            json!({"channel": "dm:alice:bob", "up_to_seq": 1}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .post(
            "/api/messages/read",
            &bob_token,
            json!({"channel": "nonsense", "up_to_seq": 1}),
        )
        .await;
    assert_eq!(status, 400);
}
