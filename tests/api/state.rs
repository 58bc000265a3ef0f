//! State sync (contract sections 5, 10 and 11): per-key versions with optimistic
//! concurrency, `state_changed` to the user's other devices, incremental fetch by
//! revision, over WebSocket and REST.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, WsClient};

fn put(collection: &str, key: &str, value: Value, base: u64, id: &str) -> Value {
    json!({"type": "state_sync", "id": id, "payload":
        {"collection": collection, "key": key, "value": value, "base_version": base}})
}

async fn result(ws: &mut WsClient, frame: Value) -> Value {
    ws.send(frame).await;
    ws.recv_type("state_sync_result").await["payload"].clone()
}

#[actix_web::test]
async fn writes_apply_on_their_base_version_conflict_otherwise_and_reach_other_devices() {
    let app = spawn_app().await;
    let mut laptop = app.ws_as("alice", "client_id=laptop").await;
    let mut phone = app.ws_as("alice", "client_id=phone").await;
    laptop.recv_type("connection_event").await;

    let r = result(
        &mut laptop,
        put("settings", "theme", json!({"mode": "dark"}), 0, "s1"),
    )
    .await;
    assert_eq!(r["status"], "applied");
    assert_eq!(
        (r["version"].as_i64(), r["revision"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(r["ref_id"], "s1");
    let changed = phone.recv_type("state_changed").await["payload"].clone();
    assert_eq!(changed["key"], "theme");
    assert_eq!(changed["value"], json!({"mode": "dark"}));
    assert_eq!(changed["version"], 1);
    assert_eq!(changed["updated_by"], "laptop");

    // The phone had not seen version 1: a conflict with what is stored; nothing written.
    let r = result(
        &mut phone,
        put("settings", "theme", json!({"mode": "light"}), 0, "s2"),
    )
    .await;
    assert_eq!(r["status"], "conflict");
    assert_eq!(
        r["current"],
        json!({"value": {"mode": "dark"}, "version": 1})
    );

    // On the version it now knows, the phone's write applies and the laptop hears of it.
    let r = result(
        &mut phone,
        put("settings", "theme", json!({"mode": "light"}), 1, "s3"),
    )
    .await;
    assert_eq!(
        (r["status"].as_str(), r["version"].as_i64()),
        (Some("applied"), Some(2))
    );
    let changed = laptop.recv_type("state_changed").await["payload"].clone();
    assert_eq!(changed["value"], json!({"mode": "light"}));
    assert_eq!(changed["version"], 2);

    // A key the writer thinks exists but does not: conflict with version 0 and no value.
    let r = result(&mut phone, put("settings", "ghost", json!(1), 4, "s4")).await;
    assert_eq!(r["status"], "conflict");
    assert_eq!(r["current"], json!({"value": null, "version": 0}));

    let token = app.token("alice");
    let (status, body) = app.get("/api/state/settings", &token).await;
    assert_eq!(status, 200);
    assert_eq!(body["documents"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["documents"][0]["value"], json!({"mode": "light"}));
    assert_eq!(body["documents"][0]["version"], 2);
    assert_eq!(body["documents"][0]["updated_by"], "phone");
    assert_eq!(body["revision"], 2);
}

#[actix_web::test]
async fn rest_writes_conflict_with_409_and_fetches_are_incremental_by_revision() {
    let app = spawn_app().await;
    let token = app.token("alice");
    let mut laptop = app.ws("alice").await;
    let write = |key: &'static str, value: Value, base: u64| {
        let (app, token) = (&app, token.clone());
        async move {
            app.call(
                "PUT",
                &format!("/api/state/tasks/{key}"),
                Some(&token),
                Some(json!({"value": value, "base_version": base})),
            )
            .await
        }
    };
    let (s, r) = write("t1", json!("buy milk"), 0).await;
    assert_eq!(
        (s, r["version"].as_i64(), r["revision"].as_i64()),
        (200, Some(1), Some(1))
    );
    assert_eq!(
        laptop.recv_type("state_changed").await["payload"]["key"],
        "t1"
    );
    let (s, _) = write("t2", json!("call bob"), 0).await;
    assert_eq!(s, 200);
    let (s, r) = write("t1", json!("buy oat milk"), 1).await;
    assert_eq!((s, r["revision"].as_i64()), (200, Some(3)));

    let (s, r) = write("t1", json!("stale"), 1).await;
    assert_eq!(s, 409);
    assert_eq!(r["error"]["code"], "conflict");
    assert_eq!(r["current"], json!({"value": "buy oat milk", "version": 2}));

    // Since revision 1: t2 (revision 2) and t1 (revision 3), oldest first.
    let (_, page) = app.get("/api/state/tasks?since_version=1", &token).await;
    let keys: Vec<&str> = page["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .filter_map(|d| d["key"].as_str())
        .collect();
    assert_eq!(keys, ["t2", "t1"]);
    assert_eq!(
        (page["revision"].as_i64(), page["has_more"].as_bool()),
        (Some(3), Some(false))
    );
    // Paging: one at a time, each page's revision is the next since_version.
    let (_, first) = app
        .get("/api/state/tasks?since_version=1&limit=1", &token)
        .await;
    assert_eq!(
        (first["revision"].as_i64(), first["has_more"].as_bool()),
        (Some(2), Some(true))
    );
    let (_, none) = app.get("/api/state/tasks?since_version=3", &token).await;
    assert_eq!(none["documents"], json!([]));
    assert_eq!(none["revision"], 3);

    // Another user's collection of the same name is their own.
    let (_, bobs) = app.get("/api/state/tasks", &app.token("bob")).await;
    assert_eq!(
        (bobs["documents"].clone(), bobs["revision"].as_i64()),
        (json!([]), Some(0))
    );

    let (s, _) = app
        .call(
            "PUT",
            "/api/state/tasks/t9",
            Some(&token),
            Some(json!({"value": 1})),
        )
        .await;
    assert_eq!(s, 400, "base_version is required");
    let (s, _) = app.call("GET", "/api/state/tasks", None, None).await;
    assert_eq!(s, 401);
}

#[actix_web::test]
async fn bad_state_sync_frames_get_bad_request_naming_the_field() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    for (payload, names) in [
        (
            json!({"collection": "c", "key": "k", "base_version": 0}),
            "value",
        ),
        (
            json!({"collection": "c", "key": "k", "value": 1, "base_version": "x"}),
            "base_version",
        ),
        (
            json!({"collection": "c", "key": "k", "value": 1, "base_version": -1}),
            "base_version",
        ),
        (
            json!({"collection": "c", "key": "k", "value": 1}),
            "base_version",
        ),
        (
            json!({"collection": "no spaces", "key": "k", "value": 1, "base_version": 0}),
            "collection",
        ),
        (
            json!({"collection": "c", "key": "", "value": 1, "base_version": 0}),
            "key",
        ),
    ] {
        let frame = json!({"type": "state_sync", "id": "b", "payload": payload});
        let e = alice.request(frame.clone()).await;
        assert_eq!(e["payload"]["code"], "bad_request", "{frame}");
        let message = e["payload"]["message"].as_str().unwrap_or("");
        assert!(message.contains(names), "{frame}: {message}");
    }
    let (_, body) = app.get("/api/state/c", &app.token("alice")).await;
    assert_eq!(body["documents"], json!([]), "nothing stored");
}
