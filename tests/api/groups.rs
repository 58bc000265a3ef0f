//! Groups over WebSocket and REST (contract sections 4, 5 and 10).

use std::time::Duration;

use serde_json::json;

use crate::helpers::{group_msg, spawn_app};

#[actix_web::test]
async fn group_message_reaches_every_member_connection_and_no_one_else() {
    let app = spawn_app().await;
    app.group("team", "alice", &["bob", "carol"]).await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    let mut bob2 = app.ws_as("bob", "client_id=tablet").await;
    let mut carol = app.ws("carol").await;
    let mut mallory = app.ws("mallory").await;

    let ack = alice
        .request(group_msg("group:team", "g1", "standup"))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["payload"]["channel"], "group:team");
    assert_eq!(ack["payload"]["seq"], 1);
    for conn in [&mut bob, &mut bob2, &mut carol] {
        let m = conn.recv_type("group_message").await;
        assert_eq!(m["payload"]["content"], "standup");
        assert_eq!(m["meta"]["channel"], "group:team");
        assert_eq!(m["meta"]["target_id"], "group:team");
        assert_eq!(m["meta"]["sender_id"], "alice");
    }
    // The bare id works as a target too.
    let ack = carol.request(group_msg("team", "g2", "ok")).await;
    assert_eq!(ack["payload"]["seq"], 2);
    assert_eq!(
        alice.recv_type("group_message").await["payload"]["content"],
        "ok"
    );
    mallory.silent_for(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn writing_to_a_group_needs_membership_and_an_existing_group() {
    let app = spawn_app().await;
    app.group("team", "alice", &["bob"]).await;
    let mut mallory = app.ws("mallory").await;
    let e = mallory.request(group_msg("team", "x1", "let me in")).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["payload"]["code"], "forbidden");
    assert_eq!(e["payload"]["ref_id"], "x1");
    let e = mallory.request(group_msg("nosuch", "x2", "hello?")).await;
    assert_eq!(e["payload"]["code"], "not_found");
    // Typing into a group one is not in is refused as well.
    mallory
        .send(json!({"type": "typing_indicator", "id": "t1", "payload": {"typing": true}, "meta": {"target_id": "group:team"}}))
        .await;
    assert_eq!(
        mallory.recv_type("error").await["payload"]["code"],
        "forbidden"
    );
}

#[actix_web::test]
async fn group_typing_reaches_other_members_only() {
    let app = spawn_app().await;
    app.group("team", "alice", &["bob"]).await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws("bob").await;
    alice
        .send(json!({"type": "typing_indicator", "payload": {"typing": true}, "meta": {"target_id": "group:team"}}))
        .await;
    let t = bob.recv_type("typing_indicator").await;
    assert_eq!(t["meta"]["channel"], "group:team");
    assert_eq!(t["meta"]["sender_id"], "alice");
    alice.silent_for(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn group_rest_lifecycle_and_membership_changes_take_effect_live() {
    let app = spawn_app().await;
    let owner = app.token("alice");
    let (status, g) = app
        .post(
            "/api/groups",
            &owner,
            json!({"id": "proj", "name": "Project", "members": ["bob"]}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        g,
        json!({"id": "proj", "name": "Project", "owner_id": "alice", "members": ["alice", "bob"]})
    );
    let (status, _) = app
        .post(
            "/api/groups",
            &owner,
            json!({"id": "proj", "name": "Again"}),
        )
        .await;
    assert_eq!(status, 409);
    let (status, body) = app.post("/api/groups", &owner, json!({"name": ""})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, generated) = app
        .post("/api/groups", &owner, json!({"name": "No id"}))
        .await;
    assert_eq!(status, 201);
    assert!(generated["id"].as_str().is_some_and(|id| !id.is_empty()));

    assert_eq!(app.get("/api/groups/proj", &app.token("bob")).await.0, 200);
    assert_eq!(
        app.get("/api/groups/proj", &app.token("carol")).await.0,
        403
    );
    assert_eq!(app.get("/api/groups/proj", &app.admin_token()).await.0, 200);
    let (status, body) = app.get("/api/groups/nope", &owner).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Only the owner or an admin changes members.
    let (status, _) = app
        .call(
            "PUT",
            "/api/groups/proj/members/carol",
            Some(&app.token("bob")),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let mut carol = app.ws("carol").await;
    let mut bob = app.ws("bob").await;
    let mut alice = app.ws("alice").await;
    // The channel actor is running (a message was sent) before carol joins.
    alice.request(group_msg("proj", "p1", "before carol")).await;
    bob.recv_type("group_message").await;
    let (status, g) = app
        .call("PUT", "/api/groups/proj/members/carol", Some(&owner), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(g["members"], json!(["alice", "bob", "carol"]));
    let ack = alice
        .request(group_msg("proj", "p2", "welcome carol"))
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(
        carol.recv_type("group_message").await["payload"]["content"],
        "welcome carol"
    );
    let ack = carol.request(group_msg("proj", "p3", "thanks")).await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let (status, g) = app
        .call(
            "DELETE",
            "/api/groups/proj/members/bob",
            Some(&app.admin_token()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(g["members"], json!(["alice", "carol"]));
    bob.recv_type("group_message").await; // "welcome carol"
    bob.recv_type("group_message").await; // "thanks"
    let e = bob.request(group_msg("proj", "p4", "still here?")).await;
    assert_eq!(e["payload"]["code"], "forbidden");
    alice.request(group_msg("proj", "p5", "bye bob")).await;
    bob.silent_for(Duration::from_millis(300)).await;
}

#[actix_web::test]
async fn rest_calls_without_a_valid_token_are_unauthorized() {
    let app = spawn_app().await;
    let (status, body) = app
        .call("POST", "/api/groups", None, Some(json!({"name": "x"})))
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = app
        .call("GET", "/api/groups/x", Some("not-a-jwt"), None)
        .await;
    assert_eq!(status, 401);
    let (status, body) = app
        .call(
            "POST",
            "/api/groups",
            Some(&app.token("a")),
            Some(json!({"nme": 1})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_request");
}

#[actix_web::test]
async fn under_pipelined_load_every_member_receives_every_seq_in_order() {
    let app = crate::helpers::spawn_app_with(|s| {
        crate::helpers::without_rate_limit(s);
        // Receivers read only after everything is sent.
        s.limits.outbound_queue = 100_000;
    })
    .await;
    let senders = ["s0", "s1", "s2", "s3"];
    app.group("load", "s0", &["s1", "s2", "s3", "r0", "r1"])
        .await;
    let mut receivers = [app.ws("r0").await, app.ws("r1").await];
    let mut conns = Vec::new();
    for s in senders {
        conns.push(app.ws(s).await);
    }
    let per_sender = 1500;
    for i in 0..per_sender {
        for (k, c) in conns.iter_mut().enumerate() {
            c.send(group_msg("load", &format!("{k}-{i}"), "x")).await;
        }
    }
    let total = (per_sender * senders.len()) as u64;
    for r in receivers.iter_mut() {
        for expected in 1..=total {
            let m = r.recv_type("group_message").await;
            assert_eq!(
                m["meta"]["seq"].as_u64(),
                Some(expected),
                "out of order or gap"
            );
        }
    }
}

#[actix_web::test]
async fn group_changes_are_written_through_the_write_batcher() {
    let app = spawn_app().await;
    let writes = |s: &serde_json::Value| s["database"]["writes"]["writes"].as_u64();
    let (_, before) = app.call("GET", "/status", None, None).await;
    let admin = app.admin_token();
    let (status, _) = app
        .call(
            "POST",
            "/api/groups",
            Some(&admin),
            Some(json!({"id": "g1", "name": "G", "members": ["bob"]})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = app
        .call("PUT", "/api/groups/g1/members/carol", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .call("DELETE", "/api/groups/g1/members/bob", Some(&admin), None)
        .await;
    assert_eq!(status, 200);
    // A second create of the same id is a conflict, found inside the write's transaction.
    let (status, _) = app
        .call(
            "POST",
            "/api/groups",
            Some(&admin),
            Some(json!({"id": "g1", "name": "again", "members": []})),
        )
        .await;
    assert_eq!(status, 409);
    let (_, after) = app.call("GET", "/status", None, None).await;
    assert!(
        writes(&after).unwrap_or(0) >= writes(&before).unwrap_or(0) + 4,
        "{before} → {after}"
    );
    let (_, g) = app.call("GET", "/api/groups/g1", Some(&admin), None).await;
    assert_eq!(g["members"], json!(["admin", "carol"]));
}
