//! History over REST: paging rules (contract sections 10 and 11).

use serde_json::Value;

use crate::helpers::{group_msg, spawn_app};

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["meta"]["seq"].as_u64().expect("seq"))
        .collect()
}

#[actix_web::test]
async fn dm_history_pages_in_ascending_seq_with_exclusive_bounds() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    let mut ids = Vec::new();
    for i in 1..=7 {
        ids.push(
            alice
                .dm("bob", &format!("m{i}"), &format!("text {i}"))
                .await["message_id"]
                .clone(),
        );
    }
    let bob = app.token("bob");
    let (code, page) = app.get("/api/messages/user/alice?limit=3", &bob).await;
    assert_eq!(code, 200);
    assert_eq!(seqs(&page), vec![5, 6, 7]);
    assert_eq!(page["has_more"], true);
    // Each message is the delivery frame.
    let m = &page["messages"][0];
    assert_eq!(m["type"], "chat_message");
    assert_eq!(m["id"], ids[4]);
    assert_eq!(m["payload"]["content"], "text 5");
    assert_eq!(m["meta"]["sender_id"], "alice");
    assert_eq!(m["meta"]["channel"], "dm:alice:bob");

    let (_, page) = app
        .get("/api/messages/user/alice?limit=3&before_seq=5", &bob)
        .await;
    assert_eq!(
        (seqs(&page), page["has_more"].as_bool()),
        (vec![2, 3, 4], Some(true))
    );
    let (_, page) = app
        .get("/api/messages/user/alice?limit=3&before_seq=3", &bob)
        .await;
    assert_eq!(
        (seqs(&page), page["has_more"].as_bool()),
        (vec![1, 2], Some(false))
    );
    let (_, page) = app.get("/api/messages/user/alice?after_seq=4", &bob).await;
    assert_eq!(
        (seqs(&page), page["has_more"].as_bool()),
        (vec![5, 6, 7], Some(false))
    );
    let (_, page) = app
        .get("/api/messages/user/alice?after_seq=1&limit=2", &bob)
        .await;
    assert_eq!(
        (seqs(&page), page["has_more"].as_bool()),
        (vec![2, 3], Some(true))
    );
    let (_, page) = app
        .get("/api/messages/user/alice?after_seq=2&before_seq=5", &bob)
        .await;
    assert_eq!(seqs(&page), vec![3, 4]);
    // Both sides read the same channel; a stranger reads their own (empty) one.
    let (_, page) = app.get("/api/messages/user/bob", &app.token("alice")).await;
    assert_eq!(seqs(&page), (1..=7).collect::<Vec<_>>());
    let (_, page) = app
        .get("/api/messages/user/alice", &app.token("mallory"))
        .await;
    assert_eq!(seqs(&page), Vec::<u64>::new());
    assert_eq!(page["has_more"], false);

    let (code, e) = app.get("/api/messages/user/alice?limit=0", &bob).await;
    assert_eq!(
        (code, e["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (code, _) = app.get("/api/messages/user/alice?limit=abc", &bob).await;
    assert_eq!(code, 400);
    let (code, page) = app.get("/api/messages/user/alice?limit=100000", &bob).await;
    assert_eq!((code, seqs(&page).len()), (200, 7));
}

#[actix_web::test]
async fn group_history_is_for_members() {
    let app = spawn_app().await;
    app.group("g", "alice", &["bob"]).await;
    let mut alice = app.ws("alice").await;
    for i in 0..3 {
        alice.request(group_msg("g", &format!("g{i}"), "x")).await;
    }
    let (code, page) = app.get("/api/messages/group/g", &app.token("bob")).await;
    assert_eq!((code, seqs(&page)), (200, vec![1, 2, 3]));
    assert_eq!(page["messages"][0]["type"], "group_message");
    assert_eq!(
        app.get("/api/messages/group/g", &app.token("mallory"))
            .await
            .0,
        403
    );
    assert_eq!(
        app.get("/api/messages/group/g", &app.admin_token()).await.0,
        200
    );
    assert_eq!(
        app.get("/api/messages/group/none", &app.token("bob"))
            .await
            .0,
        404
    );
}

#[actix_web::test]
async fn stored_messages_read_back_name_their_sender_and_device_as_sent() {
    // One from a connection with a device id, one published by an admin (no device): the
    // history frame carries `client_id` for the first only, and every name as sent.
    let app = spawn_app().await;
    app.group("g", "alice", &["bob"]).await;
    let mut laptop = app.ws_as("alice", "client_id=laptop").await;
    laptop
        .request(group_msg("g", "m1", "from the laptop"))
        .await;
    let (code, _) = app
        .post(
            "/api/admin/publish",
            &app.admin_token(),
            serde_json::json!({"channel": "group:g", "type": "group_message", "payload": {"content": "from ops"}}),
        )
        .await;
    assert_eq!(code, 200);
    let (code, page) = app.get("/api/messages/group/g", &app.token("bob")).await;
    assert_eq!((code, seqs(&page)), (200, vec![1, 2]));
    let (first, second) = (&page["messages"][0], &page["messages"][1]);
    assert_eq!(first["type"], "group_message");
    assert_eq!(first["meta"]["sender_id"], "alice");
    assert_eq!(first["meta"]["target_id"], "group:g");
    assert_eq!(first["meta"]["channel"], "group:g");
    assert_eq!(first["meta"]["client_id"], "laptop");
    assert_eq!(second["type"], "group_message");
    assert_eq!(second["payload"]["content"], "from ops");
    assert_eq!(second["meta"]["channel"], "group:g");
    assert!(
        second["meta"].get("client_id").is_none(),
        "an admin publish has no device: {second}"
    );
}
