//! Several brokers on one PostgreSQL database and one Redis act as one: a client may be on
//! any node (docs/CLUSTER.md). These tests run the nodes in this process, whatever backend
//! the rest of the suite runs on, Redis stopped and started included; a node killed or
//! stopped is in `process::cluster`.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{
    chat, group_msg, on_postgres, redis_url, spawn_cluster, spawn_cluster_on, wait_until,
    without_rate_limit, Ended, PrivateRedis, TestApp, WsClient, WAIT,
};

/// The cluster tests use PostgreSQL in either pass of the suite: the PostgreSQL pass
/// would repeat them word for word.
fn once_per_suite() -> bool {
    !on_postgres()
}

/// Reads `n` messages of type `ty` (skipping other frames), with their seqs.
async fn messages(c: &mut WsClient, ty: &str, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(c.recv_type(ty).await);
    }
    out
}

fn seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["meta"]["seq"].as_u64().expect("seq"))
        .collect()
}

#[actix_web::test]
async fn a_dm_reaches_the_recipient_and_the_senders_other_device_on_other_nodes() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster(3).await;
    let mut alice = nodes[0].ws_as("alice", "client_id=laptop").await;
    let mut bob = nodes[1].ws("bob").await;
    let mut alice_phone = nodes[2].ws_as("alice", "client_id=phone").await;

    let ack = alice.dm("bob", "m-1", "hi from node 0").await;
    let id = ack["message_id"].as_str().expect("id").to_owned();
    for c in [&mut bob, &mut alice_phone] {
        let m = c.recv_type("chat_message").await;
        assert_eq!(m["id"], id.as_str());
        assert_eq!(m["payload"]["content"], "hi from node 0");
        assert_eq!(m["meta"]["seq"], 1);
        assert_eq!(m["meta"]["client_id"], "laptop");
    }

    // A burst arrives in seq order, each message once.
    for i in 2..=40 {
        alice
            .send(chat("bob", &format!("m-{i}"), &format!("n{i}")))
            .await;
    }
    for c in [&mut bob, &mut alice_phone] {
        let got = seqs(&messages(c, "chat_message", 39).await);
        assert_eq!(got, (2..=40).collect::<Vec<u64>>());
        c.silent_for(Duration::from_millis(300)).await;
    }
    // The sender's own connection got acks, not its messages back.
    let mut acks = 0;
    while acks < 39 {
        let f = alice.recv().await;
        assert_ne!(f["type"], "chat_message", "echo: {f}");
        if f["type"] == "ack" {
            acks += 1;
        }
    }
}

#[actix_web::test]
async fn a_group_message_reaches_each_member_connection_once_across_nodes() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster(3).await;
    nodes[0].group("team", "alice", &["bob", "carol"]).await;
    let mut alice = nodes[0].ws("alice").await;
    let mut bob_here = nodes[0].ws_as("bob", "client_id=b1").await;
    let mut bob_there = nodes[1].ws_as("bob", "client_id=b2").await;
    let mut carol = nodes[2].ws("carol").await;

    for i in 1..=10 {
        let f = alice
            .request(group_msg("team", &format!("g-{i}"), "hello team"))
            .await;
        assert_eq!(f["type"], "ack", "{f}");
    }
    for c in [&mut bob_here, &mut bob_there, &mut carol] {
        let got = seqs(&messages(c, "group_message", 10).await);
        assert_eq!(got, (1..=10).collect::<Vec<u64>>());
        c.silent_for(Duration::from_millis(300)).await;
    }

    // A member added on one node is a member on the others at once.
    let admin = nodes[0].token("alice");
    let (code, body) = nodes[1]
        .call("PUT", "/api/groups/team/members/dave", Some(&admin), None)
        .await;
    assert!(code == 200 || code == 204, "{code} {body}");
    let mut dave = nodes[2].ws("dave").await;
    let f = dave.request(group_msg("team", "d-1", "dave here")).await;
    assert_eq!(f["type"], "ack", "{f}");
    let m = alice.recv_type("group_message").await;
    assert_eq!(m["payload"]["content"], "dave here");
}

#[actix_web::test]
async fn writers_on_two_nodes_in_one_channel_are_seen_in_seq_order_without_gaps() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster_on(&redis_url(), 2, without_rate_limit).await;
    let mut alice = nodes[0].ws("alice").await;
    let mut bob = nodes[1].ws("bob").await;
    // Both write at once; each then holds every seq once: its own as acks, the other's
    // as messages in increasing order.
    const EACH: usize = 200;
    for i in 0..EACH {
        alice.send(chat("bob", &format!("a-{i}"), "from a")).await;
        bob.send(chat("alice", &format!("b-{i}"), "from b")).await;
    }
    for c in [&mut alice, &mut bob] {
        let (mut acked, mut delivered) = (Vec::new(), Vec::new());
        while acked.len() < EACH || delivered.len() < EACH {
            let Some(f) = c.try_recv(WAIT).await else {
                panic!("stalled: acked {acked:?} delivered {delivered:?}");
            };
            match f["type"].as_str() {
                Some("ack") => acked.push(f["payload"]["seq"].as_u64().expect("seq")),
                Some("chat_message") => delivered.push(f["meta"]["seq"].as_u64().expect("seq")),
                _ => {}
            }
        }
        assert!(
            delivered.windows(2).all(|w| w[0] < w[1]),
            "out of order: {delivered:?}"
        );
        let all: HashSet<u64> = acked.iter().chain(&delivered).copied().collect();
        assert_eq!(all.len(), 2 * EACH, "a seq seen twice or missing");
        assert_eq!(all, (1..=2 * EACH as u64).collect());
        c.silent_for(Duration::from_millis(300)).await;
    }
}

#[actix_web::test]
async fn typing_receipts_and_connection_events_cross_nodes() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster(2).await;
    let mut alice = nodes[0].ws_as("alice", "client_id=laptop").await;
    let mut bob = nodes[1].ws("bob").await;

    alice
        .send(json!({"type": "typing_indicator", "payload": {"typing": true}, "meta": {"target_id": "bob"}}))
        .await;
    let t = bob.recv_type("typing_indicator").await;
    assert_eq!(t["meta"]["sender_id"], "alice");

    let ack = alice.dm("bob", "r-1", "read me").await;
    bob.recv_type("chat_message").await;
    bob.send(json!({"type": "read_receipt", "id": "rr-1",
        "payload": {"channel": ack["channel"], "up_to_seq": ack["seq"]}}))
        .await;
    let r = alice.recv_type("read_receipt").await;
    assert_eq!(r["payload"]["user_id"], "bob");
    assert_eq!(r["payload"]["up_to_seq"], ack["seq"]);

    // alice's laptop (node 0) hears of her phone connecting on node 1.
    let _phone = nodes[1].ws_as("alice", "client_id=phone").await;
    let ev = alice.recv_type("connection_event").await;
    assert_eq!(ev["payload"]["event"], "connected");
    assert_eq!(ev["payload"]["client_id"], "phone");
}

#[actix_web::test]
async fn every_node_lists_the_cluster_and_is_ready() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster(3).await;
    for node in &nodes {
        let c = node.cluster_status().await;
        let mut ids: Vec<String> = c["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["id"].as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        assert_eq!(ids, ["node-0", "node-1", "node-2"]);
        assert!(c["nodes"][0]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://")));
    }
    let (code, ready) = nodes[1].call("GET", "/ready", None, None).await;
    assert_eq!(code, 200, "{ready}");
    let metrics = awc::Client::default()
        .get(format!("{}/metrics", nodes[1].base))
        .send()
        .await
        .expect("metrics")
        .body()
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains("switchboard_cluster{what=\"redis_up\"} 1")
            && text.contains("switchboard_cluster{what=\"nodes\"} 3"),
        "{text}"
    );
}

#[actix_web::test]
async fn admins_list_and_close_connections_on_any_node_from_any_node() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster(3).await;
    let _alice = nodes[0].ws("alice").await;
    let mut bob = nodes[1].ws("bob").await;
    let _carol = nodes[2].ws("carol").await;
    let bob_conn = bob.connected["payload"]["conn_id"]
        .as_str()
        .expect("conn id")
        .to_owned();
    let admin = nodes[0].admin_token();

    let (code, all) = nodes[0].get("/api/admin/connections", &admin).await;
    assert_eq!(code, 200, "{all}");
    assert_eq!(all["total"], 3, "{all}");
    assert_eq!(all["nodes"]["asked"], 3);
    assert_eq!(all["nodes"]["answered"], 3);
    let mut on: Vec<(String, String)> = all["connections"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["user_id"].as_str().unwrap_or("").to_owned(),
                c["node_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    on.sort();
    let expected: Vec<(String, String)> =
        [("alice", "node-0"), ("bob", "node-1"), ("carol", "node-2")]
            .iter()
            .map(|(u, n)| (u.to_string(), n.to_string()))
            .collect();
    assert_eq!(on, expected);
    let (_, bobs) = nodes[2]
        .get("/api/admin/connections?user_id=bob", &admin)
        .await;
    assert_eq!(bobs["total"], 1);
    assert_eq!(bobs["connections"][0]["conn_id"], bob_conn.as_str());

    // Closed through node 2, on node 1: bob's socket really ends.
    let (code, closed) = nodes[2]
        .call(
            "DELETE",
            &format!("/api/admin/connections/{bob_conn}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 200, "{closed}");
    assert_eq!(closed["node_id"], "node-1");
    assert_eq!(closed["user_id"], "bob");
    assert_eq!(bob.ended(WAIT).await, Ended::Closed(1008));
    let (code, _) = nodes[0]
        .call(
            "DELETE",
            &format!("/api/admin/connections/{bob_conn}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 404, "gone from every node");
}

#[actix_web::test]
async fn a_revocation_on_one_node_closes_the_session_on_another_at_once() {
    if !once_per_suite() {
        return;
    }
    // The store poll is far off: only the bus can close the session in time.
    let nodes = spawn_cluster_on(&redis_url(), 2, |s| {
        s.auth.revocation_poll = Duration::from_secs(3600);
    })
    .await;
    let token = nodes[0].token("alice");
    let mut on_second = nodes[1]
        .ws_connect("/ws", Some(&token))
        .await
        .expect("upgrade");
    assert_eq!(on_second.recv().await["type"], "connected");
    let (code, _) = nodes[0]
        .call(
            "POST",
            "/api/auth/revoke",
            Some(&nodes[0].admin_token()),
            Some(json!({ "token": token })),
        )
        .await;
    assert_eq!(code, 204);
    assert_eq!(on_second.ended(WAIT).await, Ended::Closed(4001));
    // And the token is refused there from now on.
    wait_until("the revoked token refused on node 1", || async {
        nodes[1].ws_connect("/ws", Some(&token)).await.err() == Some(401)
    })
    .await;

    // An API key revoked on node 0 stops working on node 1 at once (its cache there
    // would otherwise keep it for minutes).
    let admin = nodes[0].admin_token();
    let (code, key) = nodes[0]
        .call(
            "POST",
            "/api/admin/api-keys",
            Some(&admin),
            Some(json!({"name": "backend", "scopes": ["read"]})),
        )
        .await;
    assert_eq!(code, 201, "{key}");
    let secret = key["key"].as_str().expect("secret").to_owned();
    let id = key["id"].as_str().expect("id").to_owned();
    let read = |n: usize| {
        let secret = secret.clone();
        let node = &nodes[n];
        async move {
            node.call_key("GET", "/api/admin/connections", &secret, None)
                .await
                .0
        }
    };
    assert_eq!(
        read(1).await,
        200,
        "the key works on node 1 (and is cached there)"
    );
    let (code, _) = nodes[0]
        .call(
            "DELETE",
            &format!("/api/admin/api-keys/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(code, 200);
    wait_until("the revoked key refused on node 1", || async {
        read(1).await == 401
    })
    .await;
}

#[actix_web::test]
async fn what_a_node_stored_but_never_published_reaches_readers_when_it_leaves_the_list() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster(1).await;
    let node = &nodes[0];
    // A node killed between its commit and its publish: stood in for by a broker on the
    // same database whose bus is elsewhere (another key prefix), and a node of that name
    // in this cluster's list until its heartbeat expires.
    let unheard = node
        .join_cluster_with("unheard", |s| s.cluster.key_prefix.push_str("-elsewhere"))
        .await;
    let mut bob = node.ws("bob").await;
    let mut alice_here = node.ws_as("alice", "client_id=laptop").await;
    let mut alice_there = unheard.ws_as("alice", "client_id=desk").await;
    let mut dave_there = unheard.ws("dave").await;
    alice_here.dm("bob", "heard", "over the bus").await;
    assert_eq!(bob.recv_type("chat_message").await["meta"]["seq"], 1);

    node.list_phantom_node("phantom", 1_500).await;
    node.wait_for_cluster(2).await;
    // Stored and acked, never published to this cluster: the DM channel's actor runs
    // here (seqs 2 and 3), dave's channel has none.
    alice_there.dm("bob", "unheard-1", "stored").await;
    alice_there.dm("bob", "unheard-2", "stored").await;
    dave_there.dm("bob", "unheard-3", "stored").await;
    bob.silent_for(Duration::from_millis(200)).await;

    // The phantom drops out of the list; what was stored since its last heartbeat is read
    // back: each message once, in seq order per channel.
    let got: Vec<(String, u64)> = messages(&mut bob, "chat_message", 3)
        .await
        .iter()
        .map(|m| {
            let meta = &m["meta"];
            (
                meta["channel"].as_str().expect("channel").to_owned(),
                meta["seq"].as_u64().expect("seq"),
            )
        })
        .collect();
    assert!(got.contains(&("dm:bob:dave".to_owned(), 1)), "{got:?}");
    let order: Vec<u64> = got
        .iter()
        .filter(|(c, _)| c == "dm:alice:bob")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(order, vec![2, 3], "{got:?}");
    bob.silent_for(Duration::from_millis(500)).await;
    assert_eq!(
        node.cluster_status().await["nodes"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[actix_web::test]
async fn a_device_that_caught_up_by_sync_gets_no_repeat_when_a_channel_starts_on_its_node() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster(2).await;
    let mut alice = nodes[0].ws("alice").await;
    alice.dm("bob", "m-1", "before bob came").await;
    alice.dm("bob", "m-2", "before bob came").await;
    // bob connects to the other node and catches up by sync at once: the messages are
    // within the late window, so the channel actor that the next message starts there
    // reads them from the store again.
    let mut bob = nodes[1].ws("bob").await;
    bob.send(json!({"type": "sync", "id": "s", "payload": {}}))
        .await;
    let synced = seqs(&messages(&mut bob, "chat_message", 2).await);
    assert_eq!(synced, vec![1, 2]);
    bob.recv_type("sync_complete").await;
    alice.dm("bob", "m-3", "after the sync").await;
    let live = bob.recv_type("chat_message").await;
    assert_eq!(live["meta"]["seq"], 3, "{live}");
    bob.silent_for(Duration::from_millis(500)).await;
}

#[actix_web::test]
async fn redis_stopped_under_load_loses_nothing_and_delivery_resumes_with_the_gap_filled() {
    if !once_per_suite() {
        return;
    }
    let mut redis = PrivateRedis::start().await;
    let nodes = spawn_cluster_on(&redis.url(), 2, without_rate_limit).await;
    let mut alice = nodes[0].ws_as("alice", "client_id=laptop").await;
    let mut alice_phone = nodes[0].ws_as("alice", "client_id=phone").await;
    let mut bob = nodes[1].ws("bob").await;
    alice.dm("bob", "before", "before the outage").await;
    assert_eq!(bob.recv_type("chat_message").await["meta"]["seq"], 1);
    alice_phone.recv_type("chat_message").await;

    redis.kill();
    for node in &nodes {
        wait_until("the node to see Redis down", || async {
            let (code, body) = node.call("GET", "/ready", None, None).await;
            code == 503 && body["redis"] != "ok"
        })
        .await;
        let (_, status) = node.call("GET", "/status", None, None).await;
        assert_eq!(status["redis"]["up"], false, "{status}");
    }
    // Each node keeps serving its own clients and storing: every message is acked, and
    // alice's phone on the same node gets each one live.
    const DURING: u64 = 50;
    for i in 0..DURING {
        alice
            .dm("bob", &format!("during-{i}"), "while redis is down")
            .await;
    }
    let got = seqs(&messages(&mut alice_phone, "chat_message", DURING as usize).await);
    assert_eq!(got, (2..2 + DURING).collect::<Vec<u64>>());

    redis.resume().await;
    for node in &nodes {
        node.wait_for_cluster(2).await;
    }
    // bob's node reads what it missed from the database: in order, once.
    let got = seqs(&messages(&mut bob, "chat_message", DURING as usize).await);
    assert_eq!(got, (2..2 + DURING).collect::<Vec<u64>>());
    // And cross-node delivery goes on live.
    alice.dm("bob", "after", "after the outage").await;
    assert_eq!(
        bob.recv_type("chat_message").await["meta"]["seq"],
        2 + DURING
    );
    bob.silent_for(Duration::from_millis(300)).await;
    let (code, _) = nodes[1].call("GET", "/ready", None, None).await;
    assert_eq!(code, 200);
}

#[actix_web::test]
async fn presence_is_one_across_nodes_first_join_and_last_leave_included() {
    if !once_per_suite() {
        return;
    }
    const GRACE: Duration = Duration::from_millis(500);
    let nodes = spawn_cluster_on(&redis_url(), 3, |s| s.presence.offline_grace = GRACE).await;
    let mut carol = nodes[2].ws("carol").await;
    carol
        .send(json!({"type": "presence_subscribe", "payload": {"user_ids": ["alice"]}}))
        .await;
    assert_eq!(
        carol.recv_type("status_update").await["payload"]["status"],
        "offline"
    );

    // First join, on node 0: carol on node 2 sees alice online.
    let alice_laptop = nodes[0].ws_as("alice", "client_id=laptop").await;
    assert_eq!(
        carol.recv_type("status_update").await["payload"]["status"],
        "online"
    );
    // A second device on node 1, then closing the first: still online, no flap.
    let mut alice_phone = nodes[1].ws_as("alice", "client_id=phone").await;
    drop(alice_laptop);
    carol.silent_for(GRACE * 3).await;
    let (_, rest) = nodes[0]
        .get("/api/users/alice/status", &nodes[0].token("carol"))
        .await;
    assert_eq!(
        rest["status"], "online",
        "node 0 counts alice's phone on node 1"
    );

    // A status set on node 1 is seen on every node.
    alice_phone
        .send(json!({"type": "status_update", "payload": {"status": "away", "text": "lunch"}}))
        .await;
    let away = carol.recv_type("status_update").await;
    assert_eq!(away["payload"]["status"], "away");
    assert_eq!(away["payload"]["text"], "lunch");
    let (_, rest) = nodes[0]
        .get("/api/users/alice/status", &nodes[0].token("carol"))
        .await;
    assert_eq!(rest["status"], "away");

    // Last leave: offline everywhere after the grace period, with last_seen.
    drop(alice_phone);
    let offline = carol.recv_type("status_update").await;
    assert_eq!(offline["payload"]["status"], "offline");
    assert!(offline["payload"]["last_seen"].as_i64().is_some());
    for node in &nodes {
        let (_, rest) = node
            .get("/api/users/alice/status", &node.token("carol"))
            .await;
        assert_eq!(rest["status"], "offline", "{}", node.base);
    }

    // A node that joins later learns who is online elsewhere.
    let _bob = nodes[0].ws("bob").await;
    wait_until("node 1 to see bob online", || {
        status_on(&nodes[1], "bob", "online")
    })
    .await;
    let late = nodes[0].join_cluster("node-late").await;
    late.wait_for_cluster(4).await;
    wait_until("the new node to see bob online", || {
        status_on(&late, "bob", "online")
    })
    .await;
}

/// Whether `node`'s REST API says `user` is `status`.
async fn status_on(node: &TestApp, user: &str, status: &str) -> bool {
    let token = node.token("carol");
    let (_, rest) = node.get(&format!("/api/users/{user}/status"), &token).await;
    rest["status"] == status
}

#[actix_web::test]
async fn a_users_frame_rate_is_limited_across_nodes_not_per_node() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster_on(&redis_url(), 2, |s| {
        s.limits.frames_per_second = 1.0;
        s.limits.frames_burst = 10.0;
        s.cluster.rate_share_every = Duration::from_millis(100);
    })
    .await;
    let mut on_first = nodes[0].ws_as("alice", "client_id=laptop").await;
    let mut on_second = nodes[1].ws_as("alice", "client_id=phone").await;
    // The burst is spent on the first node...
    for i in 0..10 {
        let f = on_first.request(chat("bob", &format!("a-{i}"), "x")).await;
        assert_eq!(f["type"], "ack", "{f}");
    }
    // ...and the second node hears of it: alice gets little there, not another burst.
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;
    let mut acked = 0;
    for i in 0..10 {
        let f = on_second.request(chat("bob", &format!("b-{i}"), "x")).await;
        if f["type"] == "ack" {
            acked += 1;
        } else {
            assert_eq!(f["payload"]["code"], "rate_limited", "{f}");
        }
    }
    assert!(acked <= 3, "{acked} of 10 acked on the second node");
}

#[actix_web::test]
async fn a_users_connection_places_are_counted_across_nodes_not_per_node() {
    if !once_per_suite() {
        return;
    }
    let nodes = spawn_cluster_on(&redis_url(), 2, |s| {
        s.limits.max_connections_per_user = 2;
        s.cluster.rate_share_every = Duration::from_millis(100);
    })
    .await;
    let _laptop = nodes[0].ws_as("alice", "client_id=laptop").await;
    let phone = nodes[1].ws_as("alice", "client_id=phone").await;
    // Each node hears of the other's place: a third connection is refused on both.
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;
    for node in &nodes {
        let third = node.ws_connect("/ws", Some(&node.token("alice"))).await;
        assert_eq!(third.err(), Some(429), "a third place on {}", node.base);
    }
    // bob is not alice: his places are his own.
    let _bob = nodes[0].ws_as("bob", "client_id=laptop").await;
    // A place freed on one node is free on the other once it is told.
    drop(phone);
    let mut admitted = None;
    for _ in 0..30 {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        if let Ok(c) = nodes[0]
            .ws_connect("/ws", Some(&nodes[0].token("alice")))
            .await
        {
            admitted = Some(c);
            break;
        }
    }
    assert!(
        admitted.is_some(),
        "the phone's place was not freed on the first node"
    );
}
