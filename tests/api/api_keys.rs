//! API keys (contract sections 1 and 10): made, listed and revoked by admins, stored as
//! hashes, and held to their scopes on every route that takes `X-Api-Key`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{another_node, chat, spawn_app, spawn_app_with, Credential, TestApp};

/// Makes a key with `scopes`; its listing fields and the key itself.
async fn make_key(app: &TestApp, name: &str, scopes: &[&str]) -> (Value, String) {
    let body = json!({"name": name, "scopes": scopes});
    let (code, made) = app
        .call(
            "POST",
            "/api/admin/api-keys",
            Some(&app.admin_token()),
            Some(body),
        )
        .await;
    assert_eq!(code, 201, "{made}");
    let key = made["key"].as_str().expect("key").to_owned();
    (made, key)
}

#[actix_web::test]
async fn admins_make_list_and_revoke_keys_and_the_secret_is_shown_once() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let (made, key) = make_key(&app, "billing backend", &["publish", "read"]).await;
    assert!(key.starts_with("sbk_"), "{key}");
    assert_eq!(made["name"], "billing backend");
    assert_eq!(made["scopes"], json!(["publish", "read"]));
    assert!(made["revoked_at"].is_null());
    let id = made["id"].as_str().expect("id").to_owned();

    let (code, list) = app.get("/api/admin/api-keys", &admin).await;
    assert_eq!(code, 200, "{list}");
    let listed = &list["keys"][0];
    assert_eq!(listed["id"], id.as_str());
    assert!(
        listed.get("key").is_none() && listed.get("key_hash").is_none(),
        "{listed}"
    );
    assert!(
        !list.to_string().contains(&key[4..]),
        "the secret is listed: {list}"
    );

    // The store holds a hash, not the key.
    let hashes = app.query_texts("SELECT key_hash AS v FROM api_keys");
    assert_eq!(hashes.len(), 1);
    assert!(hashes[0].starts_with("$argon2id$"), "{hashes:?}");
    assert!(!hashes[0].contains(&key[4..]));

    let (code, v) = app.call_key("GET", "/api/auth/validate", &key, None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["kind"], "api_key");
    assert_eq!(v["key_id"], id.as_str());
    assert_eq!(v["scopes"], json!(["publish", "read"]));

    // Only admins manage keys; bad requests say why.
    let user = app.token("alice");
    let body = json!({"name": "x", "scopes": ["read"]});
    let (code, _) = app
        .call("POST", "/api/admin/api-keys", Some(&user), Some(body))
        .await;
    assert_eq!(code, 403);
    let (code, _) = app.call_key("GET", "/api/admin/api-keys", &key, None).await;
    assert_eq!(code, 403, "a key without `admin` manages no keys");
    for bad in [
        json!({"name": "x", "scopes": ["root"]}),
        json!({"name": "x", "scopes": []}),
        json!({"name": "", "scopes": ["read"]}),
        json!({"name": "x"}),
    ] {
        let (code, body) = app
            .call(
                "POST",
                "/api/admin/api-keys",
                Some(&admin),
                Some(bad.clone()),
            )
            .await;
        assert_eq!(code, 400, "{bad}: {body}");
    }

    // Revoked: refused at once, listed with its time; unknown ids are 404.
    let path = format!("/api/admin/api-keys/{id}");
    let (code, gone) = app.call("DELETE", &path, Some(&admin), None).await;
    assert_eq!(code, 200, "{gone}");
    assert!(gone["revoked_at"].as_i64().is_some(), "{gone}");
    let (code, body) = app.call_key("GET", "/api/auth/validate", &key, None).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"]["message"], "API key revoked");
    let (code, _) = app.call("DELETE", &path, Some(&admin), None).await;
    assert_eq!(code, 200, "revoking again changes nothing");
    let (code, _) = app
        .call("DELETE", "/api/admin/api-keys/nope", Some(&admin), None)
        .await;
    assert_eq!(code, 404);

    // Keys that are not keys.
    let last = if key.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &key[..key.len() - 1]);
    for bad in ["", "sbk_", "nonsense", forged.as_str()] {
        let (code, _) = app.call_key("GET", "/api/auth/validate", bad, None).await;
        assert_eq!(code, 401, "{bad:?}");
    }
    let (_, live) = make_key(&app, "live", &["read"]).await;
    let both = Credential::Both(&user, &live);
    let (code, _) = app.call_as("GET", "/api/auth/validate", both, None).await;
    assert_eq!(code, 400);
}

#[actix_web::test]
async fn every_route_holds_a_key_to_its_scopes() {
    let app = spawn_app().await;
    let (_, publish) = make_key(&app, "notifier", &["publish"]).await;
    let (_, read) = make_key(&app, "dashboard", &["read"]).await;
    let (_, admin) = make_key(&app, "ops", &["admin"]).await;
    app.group("team", "carol", &["carol", "dave"]).await;
    let mut bob = app.ws("bob").await;

    // publish: server-side publish, and frames sent as a user.
    let note = json!({"channel": "user:bob", "payload": {"text": "invoice ready"}});
    let (code, ack) = app
        .call_key("POST", "/api/admin/publish", &publish, Some(note.clone()))
        .await;
    assert_eq!(code, 200, "{ack}");
    let got = bob.recv_type("notification").await;
    assert!(got["meta"]["sender_id"]
        .as_str()
        .unwrap_or("")
        .starts_with("api-key."));
    let (code, ack) = app
        .call_key(
            "POST",
            "/api/messages?user_id=alice",
            &publish,
            Some(chat("bob", "k1", "sent by the backend as alice")),
        )
        .await;
    assert_eq!(code, 200, "{ack}");
    assert_eq!(ack["type"], "ack");
    let got = bob.recv_type("chat_message").await;
    assert_eq!(got["meta"]["sender_id"], "alice");
    let (code, body) = app
        .call_key(
            "POST",
            "/api/messages",
            &publish,
            Some(chat("bob", "k2", "as whom?")),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = app
        .call_key(
            "POST",
            "/api/messages?user_id=alice",
            &read,
            Some(chat("bob", "k3", "no")),
        )
        .await;
    assert_eq!(code, 403);
    let (code, _) = app
        .call_key("POST", "/api/admin/publish", &read, Some(note.clone()))
        .await;
    assert_eq!(code, 403);

    // read: what an admin may read.
    for path in [
        "/api/groups/team",
        "/api/messages/group/team",
        "/api/users/carol/status",
        "/api/admin/connections",
    ] {
        let (code, body) = app.call_key("GET", path, &read, None).await;
        assert_eq!(code, 200, "{path}: {body}");
        let (code, _) = app.call_key("GET", path, &publish, None).await;
        assert_eq!(code, 403, "publish key on {path}");
    }
    let (code, _) = app
        .call_key("DELETE", "/api/admin/connections/c1", &read, None)
        .await;
    assert_eq!(code, 403);

    // admin: the admin API, tokens included.
    let mint = json!({"user_id": "erin"});
    let (code, _) = app
        .call_key("POST", "/api/auth/token", &publish, Some(mint.clone()))
        .await;
    assert_eq!(code, 403);
    let (code, pair) = app
        .call_key("POST", "/api/auth/token", &admin, Some(mint))
        .await;
    assert_eq!(code, 200, "{pair}");
    let (code, _) = app
        .call_key("PUT", "/api/groups/team/members/erin", &admin, None)
        .await;
    assert_eq!(code, 200);
    let (code, _) = app
        .call_key("PUT", "/api/groups/team/members/frank", &read, None)
        .await;
    assert_eq!(code, 403);

    // Routes that act as a user take no key.
    for (method, path) in [
        ("GET", "/api/messages/unread"),
        ("GET", "/api/messages/user/bob"),
        ("GET", "/api/messages/search?q=x"),
        ("GET", "/api/state/settings"),
        ("GET", "/api/users/following/status"),
    ] {
        let (code, body) = app.call_key(method, path, &admin, None).await;
        assert_eq!(code, 403, "{path}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("user's token"));
    }
}

/// Several nodes share a database on PostgreSQL only.
#[actix_web::test]
async fn a_key_revoked_on_one_node_stops_working_on_the_others() {
    if !crate::helpers::on_postgres() {
        return;
    }
    let first = spawn_app_with(|s| s.auth.revocation_poll = Duration::from_millis(200)).await;
    let second = another_node(&first).await;
    let (made, key) = make_key(&first, "cron", &["read"]).await;
    // The second node checks the key once and remembers it.
    let (code, _) = second
        .call_key("GET", "/api/auth/validate", &key, None)
        .await;
    assert_eq!(code, 200);
    let path = format!("/api/admin/api-keys/{}", made["id"].as_str().expect("id"));
    let (code, _) = first
        .call("DELETE", &path, Some(&first.admin_token()), None)
        .await;
    assert_eq!(code, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (code, _) = second
            .call_key("GET", "/api/auth/validate", &key, None)
            .await;
        if code == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still accepted on the second node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
