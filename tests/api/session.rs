//! Connecting and staying connected: the three ways to authenticate, auth timeout, token
//! expiry and refresh, heartbeats (contract sections 2 and 8).

use std::time::Duration;

use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, Ended};

#[actix_web::test]
async fn token_in_header_query_or_first_frame_all_authenticate() {
    let app = spawn_app().await;
    let mut by_header = app
        .ws_connect("/ws", Some(&app.token("h")))
        .await
        .expect("upgrade");
    assert_eq!(by_header.recv().await["payload"]["user_id"], "h");

    let mut by_query = app
        .ws_connect(
            &format!("/ws?token={}&client_id=cli-1&device=cli", app.token("q")),
            None,
        )
        .await
        .expect("upgrade");
    let c = by_query.recv().await;
    assert_eq!(c["type"], "connected");
    assert_eq!(c["payload"]["user_id"], "q");
    assert_eq!(c["payload"]["client_id"], "cli-1");
    assert_eq!(c["payload"]["heartbeat_interval_s"], 30);
    assert!(c["payload"]["conn_id"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert!(c["payload"]["server_time"].as_i64().is_some());

    let mut by_frame = app.ws_connect("/ws", None).await.expect("upgrade");
    // Anything but auth is refused until then, and the connection stays.
    by_frame
        .send(json!({"type": "heartbeat", "id": "early"}))
        .await;
    let e = by_frame.recv().await;
    assert_eq!(
        (
            e["payload"]["code"].as_str(),
            e["payload"]["ref_id"].as_str()
        ),
        (Some("unauthorized"), Some("early"))
    );
    by_frame
        .send(json!({"type": "auth", "payload": {"token": "forged.token.here"}}))
        .await;
    assert_eq!(by_frame.recv().await["payload"]["code"], "unauthorized");
    by_frame
        .send(json!({"type": "auth", "payload": {"token": app.token("f")}}))
        .await;
    let c = by_frame.recv().await;
    assert_eq!(
        (c["type"].as_str(), c["payload"]["user_id"].as_str()),
        (Some("connected"), Some("f"))
    );
}

#[actix_web::test]
async fn bad_tokens_at_upgrade_get_401_without_upgrade() {
    let app = spawn_app_with(|s| s.auth.leeway = Duration::ZERO).await;
    let expired = app.token_with("alice", &[], Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let forged = {
        let other = switchboard::auth::Authority::from_settings(&{
            let mut s = app.settings.clone();
            s.auth.jwt_secret = "another-secret".into();
            s
        })
        .expect("keys");
        other
            .mint("alice", vec![], Duration::from_secs(60), None, false)
            .expect("mint")
            .token
    };
    for bad in ["garbage", forged.as_str(), expired.as_str()] {
        assert_eq!(app.ws_connect("/ws", Some(bad)).await.err(), Some(401));
        assert_eq!(
            app.ws_connect(&format!("/ws?token={bad}"), None)
                .await
                .err(),
            Some(401)
        );
    }
    assert_eq!(
        app.ws_connect("/ws?device=toaster", Some(&app.token("a")))
            .await
            .err(),
        Some(400)
    );
}

#[actix_web::test]
async fn no_auth_frame_within_auth_timeout_closes_with_4001() {
    let app = spawn_app_with(|s| s.auth.auth_timeout = Duration::from_millis(500)).await;
    let mut c = app.ws_connect("/ws", None).await.expect("upgrade");
    assert_eq!(c.ended(Duration::from_secs(5)).await, Ended::Closed(4001));
}

#[actix_web::test]
async fn expired_token_closes_with_4001_unless_refreshed_by_an_auth_frame() {
    let app = spawn_app_with(|s| s.auth.leeway = Duration::ZERO).await;
    // Refreshed before exp: still open after the first token expired.
    let mut kept = app
        .ws_connect(
            "/ws",
            Some(&app.token_with("alice", &[], Duration::from_secs(2))),
        )
        .await
        .expect("upgrade");
    kept.recv().await;
    let mut lapsed = app
        .ws_connect(
            "/ws",
            Some(&app.token_with("bob", &[], Duration::from_secs(2))),
        )
        .await
        .expect("upgrade");
    lapsed.recv().await;
    kept.send(json!({"type": "auth", "payload": {"token": app.token_with("alice", &[], Duration::from_secs(60))}}))
        .await;
    // A token for someone else is refused and changes nothing.
    kept.send(json!({"type": "auth", "id": "swap", "payload": {"token": app.token("mallory")}}))
        .await;
    assert_eq!(kept.recv().await["payload"]["code"], "forbidden");

    assert_eq!(
        lapsed.ended(Duration::from_secs(6)).await,
        Ended::Closed(4001)
    );
    kept.send(json!({"type": "heartbeat"})).await;
    assert_eq!(kept.recv().await["type"], "heartbeat");
}

#[actix_web::test]
async fn silent_connections_are_dropped_after_heartbeat_timeout() {
    let app = spawn_app_with(|s| {
        s.session.heartbeat_interval = Duration::from_millis(200);
        s.session.heartbeat_timeout = Duration::from_millis(1000);
    })
    .await;
    // The helper's reader answers pings only while it is reading; a client that reads
    // nothing sends nothing.
    let mut silent = app
        .ws_connect("/ws", Some(&app.token("quiet")))
        .await
        .expect("upgrade");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut lively = app.ws("lively").await;
    for _ in 0..6 {
        lively.send(json!({"type": "heartbeat"})).await;
        assert_eq!(lively.recv_type("heartbeat").await["type"], "heartbeat");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        silent.ended(Duration::from_secs(5)).await,
        Ended::Closed(1001)
    );
    lively.send(json!({"type": "heartbeat"})).await;
    assert_eq!(lively.recv_type("heartbeat").await["type"], "heartbeat");
}

#[actix_web::test]
async fn revoked_tokens_get_401_at_upgrade() {
    if crate::helpers::on_postgres() {
        return; // Writes the SQLite file; tokens.rs covers PostgreSQL through the revoke API.
    }
    use diesel::prelude::*;
    use switchboard_actors::store::sqlite::schema::revoked_tokens;

    let dir = tempfile::tempdir().expect("temp dir");
    let settings = crate::helpers::test_settings(dir.path());
    let auth = switchboard::auth::Authority::from_settings(&settings).expect("keys");
    let revoked = auth
        .mint("alice", vec![], Duration::from_secs(600), None, false)
        .expect("mint");
    let jti = auth
        .verify(&revoked.token)
        .expect("valid")
        .jti
        .expect("jti");
    {
        let pool = switchboard::startup::open_store(&settings, Default::default()).expect("store");
        let mut c = pool.get().expect("conn");
        diesel::insert_into(revoked_tokens::table)
            .values((
                revoked_tokens::jti.eq(&jti),
                revoked_tokens::expires_at.eq(i64::MAX),
                revoked_tokens::revoked_at.eq(0_i64),
            ))
            .execute(&mut c)
            .expect("revoke");
    }
    let app = crate::helpers::spawn_app_in(dir, |_| {}).await;
    assert_eq!(
        app.ws_connect("/ws", Some(&revoked.token)).await.err(),
        Some(401)
    );
    let (code, _) = app
        .call("GET", "/api/groups/x", Some(&revoked.token), None)
        .await;
    assert_eq!(code, 401);
    // Another token of the same user is fine.
    app.ws("alice").await;
}

#[actix_web::test]
async fn expiry_later_than_one_heartbeat_interval_still_closes_on_time() {
    let app = spawn_app_with(|s| {
        s.auth.leeway = Duration::ZERO;
        s.session.heartbeat_interval = Duration::from_millis(300);
    })
    .await;
    let started = std::time::Instant::now();
    let mut c = app
        .ws_connect(
            "/ws",
            Some(&app.token_with("alice", &[], Duration::from_secs(3))),
        )
        .await
        .expect("upgrade");
    assert_eq!(c.ended(Duration::from_secs(8)).await, Ended::Closed(4001));
    let after = started.elapsed();
    // exp is whole seconds: the token lapses 2 to 3 s after it was minted.
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_millis(3700),
        "closed after {after:?}"
    );
}

/// Upgrade request head for `path`, as a raw client would write it.
fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A masked client text frame (payload under 126 bytes).
fn masked_text(payload: &str) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let bytes = payload.as_bytes();
    assert!(bytes.len() < 126);
    let mut frame = vec![0x81, 0x80 | bytes.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(bytes.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Reads from `s` until `needle` has been seen (or the wait runs out); returns what it read.
async fn read_until(s: &mut tokio::net::TcpStream, needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[actix_web::test]
async fn frames_sent_together_with_the_upgrade_request_are_served() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let path = format!("/ws?token={}", app.token("alice"));
    // One write: the upgrade request and a first frame right behind it.
    let mut bytes = upgrade_request(&path).into_bytes();
    bytes.extend(masked_text(r#"{"type":"heartbeat","id":"early"}"#));
    s.write_all(&bytes).await.expect("write");
    let seen = read_until(&mut s, r#""id":"early""#).await;
    assert!(seen.starts_with("HTTP/1.1 101"), "{seen}");
    assert!(seen.contains(r#""type":"connected""#), "{seen}");
    assert!(
        seen.contains(r#""type":"heartbeat","id":"early""#),
        "{seen}"
    );
}

#[actix_web::test]
async fn upgrades_elsewhere_than_ws_get_404_and_plain_gets_of_ws_get_400() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(upgrade_request("/elsewhere").as_bytes())
        .await
        .expect("write");
    let seen = read_until(&mut s, "not_found").await;
    assert!(seen.starts_with("HTTP/1.1 404"), "{seen}");
    assert!(seen.contains(r#""code":"not_found""#), "{seen}");
    let (code, body) = app.call("GET", "/ws", None, None).await;
    assert_eq!(code, 400);
    assert_eq!(body["error"]["code"], "bad_request");
}
