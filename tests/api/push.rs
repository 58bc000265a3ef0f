//! The push hook: a message stored for a user with no connection is POSTed to the
//! configured webhook (retried when it fails); a connected user gets no push.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::Value;

use crate::helpers::spawn_app_with;

/// A webhook receiver on a random port: what it was sent, and how many calls to fail
/// with 500 before it accepts.
struct Hook {
    url: String,
    got: Arc<Mutex<Vec<Value>>>,
    calls: Arc<Mutex<u32>>,
}

fn hook(fail_first: u32) -> Hook {
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let calls: Arc<Mutex<u32>> = Arc::default();
    let (g, c) = (got.clone(), calls.clone());
    let server = HttpServer::new(move || {
        let (g, c) = (g.clone(), c.clone());
        App::new().route(
            "/hook",
            web::post().to(move |body: web::Json<Value>| {
                let (g, c) = (g.clone(), c.clone());
                async move {
                    let mut n = c.lock().expect("calls");
                    *n += 1;
                    if *n <= fail_first {
                        return HttpResponse::InternalServerError().finish();
                    }
                    g.lock().expect("got").push(body.into_inner());
                    HttpResponse::NoContent().finish()
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind hook");
    let port = server.addrs()[0].port();
    actix_web::rt::spawn(server.run());
    Hook {
        url: format!("http://127.0.0.1:{port}/hook"),
        got,
        calls,
    }
}

async fn wait_for(got: &Arc<Mutex<Vec<Value>>>, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = got.lock().expect("got").clone();
        if now.len() >= n || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn messages_for_offline_users_are_posted_and_retried_and_online_users_get_none() {
    let hook = hook(1);
    let url = hook.url.clone();
    let app = spawn_app_with(move |s| s.push.webhook_url = url).await;
    let mut alice = app.ws("alice").await;

    // Bob has no connection: one event per message, the first after a failed try.
    alice.dm("bob", "p1", "are you up?").await;
    let got = wait_for(&hook.got, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["event"], "message");
    assert_eq!(got[0]["user_id"], "bob");
    assert_eq!(got[0]["message"]["type"], "chat_message");
    assert_eq!(got[0]["message"]["payload"]["content"], "are you up?");
    assert_eq!(got[0]["message"]["meta"]["seq"], 1);
    assert_eq!(
        *hook.calls.lock().expect("calls"),
        2,
        "failed once, then accepted"
    );

    // Bob connected: no push for him (and never one for alice, who sent it).
    let mut bob = app.ws("bob").await;
    alice.dm("bob", "p2", "there you are").await;
    bob.recv_type("chat_message").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hook.got.lock().expect("got").len(), 1);

    let (_, status) = app.get("/status", &app.admin_token()).await;
    assert_eq!(status["push"]["sent"], 1, "{status}");
    assert_eq!(status["push"]["dropped"], 0);
}

#[actix_web::test]
async fn with_an_ack_delay_a_connected_user_is_pushed_what_no_device_marked_delivered_in_time() {
    let hook = hook(0);
    let url = hook.url.clone();
    let app = spawn_app_with(move |s| {
        s.push.webhook_url = url;
        s.push.ack_delay = Duration::from_millis(300);
    })
    .await;
    let mut alice = app.ws("alice").await;
    let mut bob = app.ws_as("bob", "client_id=phone").await;

    // Delivered to bob's phone, which never says so: pushed once the delay has passed.
    let sent = Instant::now();
    alice.dm("bob", "q1", "unseen").await;
    bob.recv_type("chat_message").await;
    let got = wait_for(&hook.got, 1).await;
    assert!(sent.elapsed() >= Duration::from_millis(250));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["message"]["payload"]["content"], "unseen");

    // Marked delivered at once: no push.
    alice.dm("bob", "q2", "seen").await;
    let m = bob.recv_type("chat_message").await;
    bob.send(serde_json::json!({"type": "delivered",
        "payload": {"channel": "dm:alice:bob", "up_to_seq": m["meta"]["seq"]}}))
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(hook.got.lock().expect("got").len(), 1);
}

/// In a cluster a user connected to another node is not offline: only users connected to
/// no node are pushed, once (by the node that stored the message).
#[actix_web::test]
async fn in_a_cluster_users_connected_to_another_node_are_not_pushed() {
    if crate::helpers::on_postgres() {
        return; // the cluster runs on PostgreSQL in either pass: once is enough
    }
    let hook = hook(0);
    let url = hook.url.clone();
    let nodes = crate::helpers::spawn_cluster_on(&crate::helpers::redis_url(), 2, move |s| {
        s.push.webhook_url = url.clone();
    })
    .await;
    let mut alice = nodes[0].ws("alice").await;
    let mut bob = nodes[1].ws("bob").await;
    // Node 0 hears that bob is online on node 1 before alice writes.
    let token = nodes[0].token("alice");
    crate::helpers::wait_until("node 0 to hear of bob", || async {
        nodes[0].get("/api/users/bob/status", &token).await.1["status"] == "online"
    })
    .await;
    alice.dm("bob", "c1", "you are on another node").await;
    bob.recv_type("chat_message").await;
    alice.dm("carol", "c2", "you are nowhere").await;
    let got = wait_for(&hook.got, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_then = hook.got.lock().expect("got").clone();
    assert_eq!(got_then.len(), 1, "{got_then:?}");
    assert_eq!(got[0]["user_id"], "carol");
}
