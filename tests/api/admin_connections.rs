//! `/api/admin/connections` (contract section 10): admins list the broker's connections
//! and close one.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{spawn_app, Ended};

fn conn_ids(list: &Value) -> Vec<String> {
    list["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .map(|c| c["conn_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[actix_web::test]
async fn admins_list_connections_by_user_and_close_one() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let mut laptop = app.ws_as("alice", "client_id=laptop&device=desktop").await;
    let mut phone = app.ws_as("alice", "client_id=phone&device=mobile").await;
    let _bob = app.ws("bob").await;
    let laptop_id = laptop.connected["payload"]["conn_id"]
        .as_str()
        .expect("id")
        .to_owned();

    let (code, all) = app.get("/api/admin/connections", &admin).await;
    assert_eq!(code, 200, "{all}");
    assert_eq!(all["total"], 3);
    let (code, alice) = app
        .get("/api/admin/connections?user_id=alice", &admin)
        .await;
    assert_eq!(code, 200);
    assert_eq!(alice["total"], 2);
    let first = &alice["connections"][0];
    assert_eq!(
        first["conn_id"],
        laptop_id.as_str(),
        "oldest first: {alice}"
    );
    assert_eq!(first["user_id"], "alice");
    assert_eq!(first["client_id"], "laptop");
    assert_eq!(first["device"], "desktop");
    assert_eq!(first["transport"], "websocket");
    assert!(first["connected_at"].as_i64().is_some_and(|t| t > 0));
    let (_, one) = app.get("/api/admin/connections?limit=1", &admin).await;
    assert_eq!((conn_ids(&one).len(), one["total"].as_u64()), (1, Some(3)));

    // Closing one: that socket closes, the user's other one stays.
    let path = format!("/api/admin/connections/{laptop_id}");
    let (code, closed) = app.call("DELETE", &path, Some(&admin), None).await;
    assert_eq!(code, 200, "{closed}");
    assert_eq!(closed["client_id"], "laptop");
    assert_eq!(
        laptop.ended(Duration::from_secs(5)).await,
        Ended::Closed(1008)
    );
    phone
        .send(serde_json::json!({"type": "heartbeat", "id": "h"}))
        .await;
    assert_eq!(phone.recv_type("heartbeat").await["id"], "h");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, alice) = app
            .get("/api/admin/connections?user_id=alice", &admin)
            .await;
        if alice["total"] == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{alice}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Gone, unknown, malformed; not for users.
    let (code, _) = app.call("DELETE", &path, Some(&admin), None).await;
    assert_eq!(code, 404);
    let (code, _) = app
        .call("DELETE", "/api/admin/connections/zzz", Some(&admin), None)
        .await;
    assert_eq!(code, 404);
    for bad in ["?limit=0", "?limit=5000", "?user_id=a%20b"] {
        let (code, _) = app
            .get(&format!("/api/admin/connections{bad}"), &admin)
            .await;
        assert_eq!(code, 400, "{bad}");
    }
    let user = app.token("alice");
    let (code, _) = app.get("/api/admin/connections", &user).await;
    assert_eq!(code, 403);
    let (code, _) = app.call("DELETE", &path, Some(&user), None).await;
    assert_eq!(code, 403);
}

#[actix_web::test]
async fn an_admin_closes_an_sse_stream_like_a_websocket() {
    let app = spawn_app().await;
    let admin = app.admin_token();
    let mut stream = app
        .sse("client_id=carol-web", Some(&app.token("carol")), None)
        .await
        .expect("stream");
    let connected = stream
        .try_next(Duration::from_secs(5))
        .await
        .expect("connected");
    assert_eq!(connected.event, "connected");
    let conn_id = connected.data["payload"]["conn_id"]
        .as_str()
        .expect("conn_id")
        .to_owned();
    let (_, carol) = app
        .get("/api/admin/connections?user_id=carol", &admin)
        .await;
    assert_eq!(carol["connections"][0]["transport"], "sse", "{carol}");
    assert_eq!(conn_ids(&carol), vec![conn_id.clone()]);

    let path = format!("/api/admin/connections/{conn_id}");
    let (code, _) = app.call("DELETE", &path, Some(&admin), None).await;
    assert_eq!(code, 200);
    // The stream says why and ends.
    let mut events = Vec::new();
    while let Some(e) = stream.try_next(Duration::from_secs(5)).await {
        events.push(e);
    }
    let last = events.last().expect("a close event");
    assert_eq!(last.event, "close", "{events:?}");
    assert_eq!(last.data["code"], 1008, "{events:?}");
}
