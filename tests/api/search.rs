//! `GET /api/messages/search` (contract section 10): words in message contents, over what
//! the caller may read only, newest first, with channel and date filters and paging.

use serde_json::{json, Value};

use crate::helpers::{group_msg, spawn_app, TestApp};

async fn search(app: &TestApp, user: &str, query: &str) -> (u16, Value) {
    app.get(&format!("/api/messages/search?{query}"), &app.token(user))
        .await
}

fn contents(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["payload"]["content"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[actix_web::test]
async fn search_finds_words_in_what_the_caller_may_read_and_nothing_else() {
    let app = spawn_app().await;
    app.group("team", "alice", &["alice", "carol"]).await;
    let mut alice = app.ws("alice").await;
    let mut carol = app.ws("carol").await;
    alice.dm("bob", "a1", "lunch at noon?").await;
    alice.dm("bob", "a2", "dinner tonight").await;
    carol.dm("dave", "c1", "lunch with dave, just us").await;
    let ack = carol
        .request(group_msg("team", "c2", "Lunch plans for the team"))
        .await;
    assert_eq!(ack["type"], "ack");
    let (status, _) = app
        .post(
            "/api/admin/publish",
            &app.admin_token(),
            json!({"channel": "broadcast:news", "payload": {"content": "the lunch menu"}}),
        )
        .await;
    assert_eq!(status, 200);

    let (status, body) = search(&app, "alice", "q=lunch").await;
    assert_eq!(status, 200, "{body}");
    // Newest first; case does not matter; carol's DM with dave is not alice's to read.
    assert_eq!(
        contents(&body),
        [
            "the lunch menu",
            "Lunch plans for the team",
            "lunch at noon?"
        ]
    );
    assert_eq!(body["has_more"], false);
    assert_eq!(body["complete"], true);
    let first = &body["messages"][2];
    assert_eq!(first["type"], "chat_message");
    assert_eq!(first["meta"]["channel"], "dm:alice:bob");
    assert_eq!(first["meta"]["seq"], 1);

    // Every word must be there.
    let (_, body) = search(&app, "alice", "q=lunch%20noon").await;
    assert_eq!(contents(&body), ["lunch at noon?"]);
    // One channel only, and only one the caller may read.
    let (_, body) = search(&app, "alice", "q=lunch&channel=group:team").await;
    assert_eq!(contents(&body), ["Lunch plans for the team"]);
    let (status, _) = search(&app, "alice", "q=lunch&channel=dm:carol:dave").await;
    assert_eq!(status, 403);
    let (_, body) = search(&app, "dave", "q=lunch").await;
    assert_eq!(
        contents(&body),
        ["the lunch menu", "lunch with dave, just us"]
    );
    let (_, body) = search(&app, "bob", "q=team").await;
    assert_eq!(
        contents(&body),
        Vec::<String>::new(),
        "bob is not in the group"
    );
}

#[actix_web::test]
async fn messages_stored_after_a_search_are_found_by_the_next_and_pages_do_not_repeat() {
    let app = spawn_app().await;
    let mut alice = app.ws("alice").await;
    for i in 0..5 {
        alice
            .dm("bob", &format!("m{i}"), &format!("report number {i}"))
            .await;
    }
    let (_, body) = search(&app, "bob", "q=report").await;
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(5));
    alice.dm("bob", "m5", "report number 5").await;

    // Two at a time, newest first, each page starting below the last.
    let mut seen = Vec::new();
    let mut query = "q=report&limit=2".to_owned();
    loop {
        let (status, page) = search(&app, "bob", &query).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(contents(&page));
        if page["has_more"] != true {
            break;
        }
        let next = page["next_before"].as_str().expect("next_before");
        query = format!("q=report&limit=2&before={}", urlencode(next));
    }
    let expected: Vec<String> = (0..6).rev().map(|i| format!("report number {i}")).collect();
    assert_eq!(seen, expected);

    // Dates: nothing stored before the epoch's first second, everything after it.
    let (_, none) = search(&app, "bob", "q=report&to=1000").await;
    assert_eq!(none["messages"], json!([]));
    let (_, all) = search(&app, "bob", "q=report&from=1000&limit=100").await;
    assert_eq!(all["messages"].as_array().map(Vec::len), Some(6));
}

#[actix_web::test]
async fn bad_searches_get_400_and_anonymous_ones_401() {
    let app = spawn_app().await;
    for query in [
        "q=",
        "q=%20%20",
        "limit=5",
        "q=x&limit=0",
        "q=x&limit=101",
        "q=x&before=nope",
    ] {
        let (status, body) = search(&app, "alice", query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, _) = app
        .call("GET", "/api/messages/search?q=x", None, None)
        .await;
    assert_eq!(status, 401);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
