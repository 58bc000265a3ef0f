//! Tokens over REST (contract sections 1 and 10): refresh with rotation, revocation that
//! also closes the connections holding a token (on every node), and validation.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{another_node, spawn_app, spawn_app_with, Ended, TestApp};

/// Mints `{access_token, refresh_token, expires_at}` for `user` through the admin API.
async fn pair(app: &TestApp, user: &str) -> Value {
    let body = json!({"user_id": user, "roles": ["tester"], "device": "mobile"});
    let (code, pair) = app
        .call(
            "POST",
            "/api/auth/token",
            Some(&app.admin_token()),
            Some(body),
        )
        .await;
    assert_eq!(code, 200, "{pair}");
    pair
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no `{field}` in {v}"))
}

async fn refresh(app: &TestApp, refresh_token: &str) -> (u16, Value) {
    let body = json!({ "refresh_token": refresh_token });
    app.call("POST", "/api/auth/refresh", None, Some(body))
        .await
}

async fn validate(app: &TestApp, token: &str) -> (u16, Value) {
    app.call("GET", "/api/auth/validate", Some(token), None)
        .await
}

async fn revoke(app: &TestApp, as_token: &str, body: Value) -> (u16, Value) {
    app.call("POST", "/api/auth/revoke", Some(as_token), Some(body))
        .await
}

#[actix_web::test]
async fn a_refresh_token_works_once_and_gives_a_new_pair() {
    let app = spawn_app().await;
    let first = pair(&app, "alice").await;

    let (code, second) = refresh(&app, text(&first, "refresh_token")).await;
    assert_eq!(code, 200, "{second}");
    let (code, v) = validate(&app, text(&second, "access_token")).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["kind"], "token");
    assert_eq!(v["user_id"], "alice");
    assert_eq!(v["roles"], json!(["tester"]));
    assert_eq!(v["device"], "mobile");
    assert_eq!(v["exp"], second["expires_at"]);
    assert_eq!(v["expires_at"], second["expires_at"]);

    // The used refresh token is spent; the new one works, once.
    let (code, body) = refresh(&app, text(&first, "refresh_token")).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (code, third) = refresh(&app, text(&second, "refresh_token")).await;
    assert_eq!(code, 200, "{third}");
    assert_ne!(third["refresh_token"], second["refresh_token"]);

    // The kinds do not mix: an access token does not refresh, a refresh token is no access.
    let (code, _) = refresh(&app, text(&third, "access_token")).await;
    assert_eq!(code, 401);
    let (code, _) = validate(&app, text(&third, "refresh_token")).await;
    assert_eq!(code, 401);
    assert_eq!(
        app.ws_connect("/ws", Some(text(&third, "refresh_token")))
            .await
            .err(),
        Some(401)
    );
    // The access token from before the refreshes still works until it expires.
    let (code, _) = validate(&app, text(&first, "access_token")).await;
    assert_eq!(code, 200);

    for bad in [
        json!({}),
        json!({"refresh_token": 5}),
        json!({"refresh_token": "x.y.z"}),
    ] {
        let (code, body) = app
            .call("POST", "/api/auth/refresh", None, Some(bad.clone()))
            .await;
        assert!(code == 400 || code == 401, "{bad}: {code} {body}");
    }
    let (code, _) = app.call("GET", "/api/auth/validate", None, None).await;
    assert_eq!(code, 401);
}

#[actix_web::test]
async fn a_revoked_token_is_refused_and_its_connections_close_with_4001() {
    let app = spawn_app().await;
    let doomed = app.token("alice");
    let other = app.token("alice");
    let mut doomed_ws = app.ws_connect("/ws", Some(&doomed)).await.expect("upgrade");
    assert_eq!(doomed_ws.recv().await["type"], "connected");
    let mut other_ws = app.ws_connect("/ws", Some(&other)).await.expect("upgrade");
    assert_eq!(other_ws.recv().await["type"], "connected");

    // Another user may not revoke alice's token.
    let (code, _) = revoke(&app, &app.token("bob"), json!({ "token": doomed })).await;
    assert_eq!(code, 403);

    let (code, body) = revoke(&app, &other, json!({ "token": doomed })).await;
    assert_eq!(code, 204, "{body}");
    assert_eq!(
        doomed_ws.ended(Duration::from_secs(5)).await,
        Ended::Closed(4001)
    );
    // The connection on the other token stays.
    other_ws.send(json!({"type": "heartbeat", "id": "h"})).await;
    assert_eq!(other_ws.recv_type("heartbeat").await["id"], "h");

    assert_eq!(app.ws_connect("/ws", Some(&doomed)).await.err(), Some(401));
    let (code, _) = validate(&app, &doomed).await;
    assert_eq!(code, 401);
    let (code, _) = app.get("/api/messages/unread", &doomed).await;
    assert_eq!(code, 401);

    // Again: nothing new, the same answer. By jti: one's own current token, or any as an
    // admin.
    let (code, body) = revoke(&app, &app.admin_token(), json!({ "token": doomed })).await;
    assert_eq!(code, 204, "{body}");
    let (_, v) = validate(&app, &other).await;
    let own_jti = text(&v, "jti").to_owned();
    let (code, _) = revoke(&app, &app.token("bob"), json!({ "jti": own_jti })).await;
    assert_eq!(code, 403, "bob may not revoke alice's token id");
    let (code, body) = revoke(&app, &other, json!({ "jti": own_jti })).await;
    assert_eq!(code, 204, "{body}");
    assert_eq!(
        other_ws.ended(Duration::from_secs(5)).await,
        Ended::Closed(4001)
    );
    let third = app.token("alice");
    let (_, v) = validate(&app, &third).await;
    let (code, _) = revoke(&app, &app.admin_token(), json!({ "jti": v["jti"] })).await;
    assert_eq!(code, 204);
    assert_eq!(validate(&app, &third).await.0, 401);

    // A revoked refresh token does not refresh.
    let p = pair(&app, "carol").await;
    let (code, _) = revoke(
        &app,
        text(&p, "access_token"),
        json!({ "token": p["refresh_token"] }),
    )
    .await;
    assert_eq!(code, 204);
    assert_eq!(refresh(&app, text(&p, "refresh_token")).await.0, 401);

    let fresh = app.token("alice");
    for bad in [
        json!({}),
        json!({"token": fresh, "jti": "x"}),
        json!({"token": "not-a-jwt"}),
        json!({"jti": ""}),
    ] {
        let (code, body) = revoke(&app, &app.admin_token(), bad.clone()).await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
}

/// Several nodes share a database on PostgreSQL only (on SQLite, `session.rs` checks that a
/// broker reads the revocations stored before it started).
#[actix_web::test]
async fn a_revocation_reaches_the_other_nodes_and_those_started_later() {
    if !crate::helpers::on_postgres() {
        return;
    }
    let first = spawn_app_with(|s| s.auth.revocation_poll = Duration::from_millis(200)).await;
    let second = another_node(&first).await;
    let token = first.token("alice");
    let mut on_second = second
        .ws_connect("/ws", Some(&token))
        .await
        .expect("upgrade");
    assert_eq!(on_second.recv().await["type"], "connected");

    let revoked_at = Instant::now();
    let (code, _) = revoke(&first, &first.admin_token(), json!({ "token": token })).await;
    assert_eq!(code, 204);
    assert_eq!(
        on_second.ended(Duration::from_secs(5)).await,
        Ended::Closed(4001)
    );
    assert!(revoked_at.elapsed() < Duration::from_secs(3));
    assert_eq!(
        second.ws_connect("/ws", Some(&token)).await.err(),
        Some(401)
    );

    // A node that starts after a revocation reads it before it serves.
    let later_token = first.token("bob");
    let (code, _) = revoke(
        &first,
        &first.admin_token(),
        json!({ "token": later_token }),
    )
    .await;
    assert_eq!(code, 204);
    let third = another_node(&first).await;
    assert_eq!(
        third.ws_connect("/ws", Some(&later_token)).await.err(),
        Some(401)
    );
    third.ws("bob").await;
}

/// A test key pair (tests/fixtures, made with openssl for these tests only): an identity
/// provider signs with the private key, the broker verifies with the public one.
const ES256_PRIVATE: &str = include_str!("../fixtures/es256-private.pem");

/// An RSA key pair made with openssl for these tests only, as above.
const RS256_PRIVATE: &str = include_str!("../fixtures/rs256-private.pem");

/// A broker that verifies `algorithm` tokens with the public key in fixture `public`, and
/// the time now (s).
async fn verifying_only(algorithm: &str, public: &str) -> (TestApp, u64) {
    let file = format!("{}/tests/fixtures/{public}", env!("CARGO_MANIFEST_DIR"));
    let app = spawn_app_with(|s| {
        s.auth.jwt_algorithm = algorithm.into();
        s.auth.jwt_public_key_file = file;
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    (app, now)
}

#[actix_web::test]
async fn tokens_signed_elsewhere_with_rs256_are_verified_with_the_public_key() {
    let (app, now) = verifying_only("RS256", "rs256-public.pem").await;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).expect("key");
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "alice", "exp": now + 600, "iat": now, "jti": "idp-rsa"}),
        &key,
    )
    .expect("sign");
    let mut ws = app.ws_connect("/ws", Some(&token)).await.expect("upgrade");
    assert_eq!(ws.recv().await["payload"]["user_id"], "alice");
    let (code, v) = validate(&app, &token).await;
    assert_eq!((code, v["jti"].clone()), (200, json!("idp-rsa")), "{v}");
    // Signed with the ES256 key instead: refused.
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).expect("key");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &json!({"sub": "alice", "exp": now + 600}),
        &ec,
    )
    .expect("sign");
    assert_eq!(app.ws_connect("/ws", Some(&forged)).await.err(), Some(401));
}

#[actix_web::test]
async fn tokens_signed_elsewhere_with_es256_are_verified_with_the_public_key() {
    let (app, now) = verifying_only("ES256", "es256-public.pem").await;
    let key = jsonwebtoken::EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).expect("key");
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    let sign = |claims: Value| jsonwebtoken::encode(&header, &claims, &key).expect("sign");
    let token = sign(json!({"sub": "alice", "exp": now + 600, "iat": now, "jti": "idp-1"}));
    let admin = sign(json!({"sub": "root", "exp": now + 600, "roles": ["admin"]}));

    let mut ws = app.ws_connect("/ws", Some(&token)).await.expect("upgrade");
    assert_eq!(ws.recv().await["payload"]["user_id"], "alice");
    let (code, v) = validate(&app, &token).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["jti"], "idp-1");
    // An HS256 token is not this broker's kind of token, whatever its secret.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(b"test-secret-do-not-use"),
    )
    .expect("sign");
    assert_eq!(app.ws_connect("/ws", Some(&hs)).await.err(), Some(401));
    // It verifies, it cannot mint; revocation still works by jti.
    let (code, body) = app
        .call(
            "POST",
            "/api/auth/token",
            Some(&admin),
            Some(json!({"user_id": "bob"})),
        )
        .await;
    assert_eq!(code, 501, "{body}");
    assert_eq!(body["error"]["code"], "not_configured");
    let (code, _) = revoke(&app, &token, json!({ "jti": "idp-1" })).await;
    assert_eq!(code, 204);
    assert_eq!(validate(&app, &token).await.0, 401);
}
