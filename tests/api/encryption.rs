//! Encryption at rest (`[encryption]`): payloads and state documents are sealed in the
//! database and read back as sent; search is off while it is on.

use serde_json::{json, Value};

use crate::helpers::spawn_app_with;

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn state_put(key: &str, value: Value, base: u64, id: &str) -> Value {
    json!({"type": "state_sync", "id": id, "payload":
        {"collection": "settings", "key": key, "value": value, "base_version": base}})
}

#[actix_web::test]
async fn the_database_holds_no_content_and_clients_read_it_as_sent() {
    let app = spawn_app_with(|s| s.encryption.key = KEY.into()).await;
    let mut alice = app.ws_as("alice", "client_id=laptop").await;
    let mut bob = app.ws("bob").await;

    alice.dm("bob", "m1", "the launch code is 0000").await;
    let live = bob.recv_type("chat_message").await;
    assert_eq!(live["payload"]["content"], "the launch code is 0000");
    alice
        .send(state_put("vault", json!({"pin": "4321"}), 0, "s1"))
        .await;
    let r = alice.recv_type("state_sync_result").await;
    assert_eq!(r["payload"]["status"], "applied", "{r}");

    // On disk: sealed with key k1, nothing of the content.
    let payloads = app.query_texts("SELECT payload AS v FROM messages");
    assert_eq!(payloads.len(), 1);
    assert!(payloads[0].starts_with("sb1:k1:"), "{payloads:?}");
    assert!(!payloads[0].contains("launch"));
    let docs = app.query_texts("SELECT value AS v FROM state_documents");
    assert!(
        docs[0].starts_with("sb1:k1:") && !docs[0].contains("4321"),
        "{docs:?}"
    );

    // Read back as sent: history, a new device's undelivered messages, state, a conflict.
    let token = app.token("bob");
    let (code, page) = app.get("/api/messages/user/alice", &token).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        page["messages"][0]["payload"]["content"],
        "the launch code is 0000"
    );
    let (code, undelivered) = app
        .get("/api/messages/undelivered?client_id=new-phone", &token)
        .await;
    assert_eq!(code, 200);
    assert!(
        undelivered.to_string().contains("the launch code is 0000"),
        "{undelivered}"
    );
    let (code, state) = app.get("/api/state/settings", &app.token("alice")).await;
    assert_eq!(code, 200);
    assert_eq!(state["documents"][0]["value"], json!({"pin": "4321"}));
    alice
        .send(state_put("vault", json!({"pin": "9"}), 0, "s2"))
        .await;
    let r = alice.recv_type("state_sync_result").await;
    assert_eq!(r["payload"]["status"], "conflict");
    assert_eq!(r["payload"]["current"]["value"], json!({"pin": "4321"}));

    // A resend is recognised as before.
    let again = alice.dm("bob", "m1", "the launch code is 0000").await;
    assert_eq!(again["seq"], 1);

    // Search would need the plain text: off, and it says so.
    let (code, body) = app.get("/api/messages/search?q=launch", &token).await;
    assert_eq!(code, 501, "{body}");
    assert_eq!(body["error"]["code"], "not_configured");
}

#[test]
fn unusable_keys_are_refused_with_the_configuration() {
    let config = include_str!("../../config.toml");
    for env in [
        vec![("SWITCHBOARD__ENCRYPTION__KEY", "c2hvcnQ=")],
        vec![("SWITCHBOARD__ENCRYPTION__KEY", "not base64!")],
        vec![
            ("SWITCHBOARD__ENCRYPTION__KEY", KEY),
            ("SWITCHBOARD__ENCRYPTION__OLD_KEYS", r#"["no-colon"]"#),
        ],
    ] {
        let pairs = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let err = switchboard::Settings::from_sources(config, pairs).expect_err("refused");
        assert!(err.to_string().contains("encryption"), "{err}");
    }
    let on = [("SWITCHBOARD__ENCRYPTION__KEY".to_owned(), KEY.to_owned())];
    let s = switchboard::Settings::from_sources(config, on.into_iter()).expect("valid");
    assert!(
        !format!("{:?}", s.encryption).contains(KEY),
        "the key is never printed"
    );
}
