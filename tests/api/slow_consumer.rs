//! Isolation (guarantee 6): a reader that stops reading is closed with 1013 once its
//! outbound queue is full, and never delays anyone else.

use std::time::Duration;

use crate::helpers::{group_msg, spawn_app_with, Ended, TestApp};

/// Whether the broker has let go of the stuck reader (two connections left): it does so the
/// moment the queue overflows. The stuck reader then has `CLOSE_GRACE` (2 s) to read up to
/// the close frame, so the tests stop sending and read it at once.
async fn stuck_reader_let_go(app: &TestApp) -> bool {
    let (_, status) = app.call("GET", "/status", None, None).await;
    status["connections"]["total"] == 2
}

#[actix_web::test]
async fn a_stuck_reader_is_closed_with_1013_and_others_get_everything() {
    let app = spawn_app_with(|s| {
        s.limits.outbound_queue = 32;
        crate::helpers::without_rate_limit(s);
    })
    .await;
    app.group("room", "alice", &["stuck", "fast"]).await;
    let mut alice = app.ws("alice").await;
    let mut fast = app.ws("fast").await;
    // `stuck` never reads: once the socket buffers are full its queue fills up.
    let mut stuck = app.ws("stuck").await;

    // Large messages fill the kernel's socket buffers quickly.
    let body = "z".repeat(60_000);
    let total: u64 = 400;
    // Lockstep: each message must reach the fast reader before the next is sent, so the
    // stuck reader cannot hold anyone back without this test timing out.
    let run = async {
        let mut sent = 0;
        let mut let_go_at = None;
        for i in 0..total {
            alice.send(group_msg("room", &format!("m{i}"), &body)).await;
            let m = fast.recv_type("group_message").await;
            assert_eq!(
                m["meta"]["seq"].as_u64(),
                Some(i + 1),
                "fast reader saw a gap"
            );
            sent = i + 1;
            if let_go_at.is_none() && sent % 10 == 0 && stuck_reader_let_go(&app).await {
                let_go_at = Some(sent);
            }
            // A few more once it was let go: they reach the fast reader and not the stuck
            // one. (The message that overflowed its queue is still written to it, so when
            // that was the last one sent, it had every message so far.)
            if let_go_at.is_some_and(|at| sent >= at + 5) {
                break;
            }
        }
        let mut acks = 0;
        while acks < sent {
            if alice.recv().await["type"] == "ack" {
                acks += 1;
            }
        }
        sent
    };
    let sent = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("sender and fast reader were slowed down by the stuck one");

    // The stuck connection gets the messages that fit, then 1013.
    let mut got = 0;
    let ended = loop {
        match stuck.try_recv_or_end(Duration::from_secs(10)).await {
            Ok(f) => {
                if f["type"] == "group_message" {
                    got += 1;
                }
            }
            Err(e) => break e,
        }
    };
    assert_eq!(ended, Ended::Closed(1013));
    assert!(
        got < sent,
        "stuck reader received everything ({got} of {sent}); the queue never filled"
    );
    // It was dropped from the registry: the status shows two connections.
    let (_, status) = app.call("GET", "/status", None, None).await;
    assert_eq!(status["connections"]["total"], 2, "{status}");
}

#[actix_web::test]
async fn a_stuck_reader_is_closed_with_1013_when_whole_commits_arrive_at_once() {
    // Pipelined sends: commits hold many messages, and each recipient gets a commit's
    // messages as one item. The queue bound still counts frames.
    let app = spawn_app_with(|s| {
        s.limits.outbound_queue = 32;
        crate::helpers::without_rate_limit(s);
    })
    .await;
    app.group("room", "alice", &["stuck", "fast"]).await;
    let mut alice = app.ws("alice").await;
    let mut fast = app.ws("fast").await;
    let mut stuck = app.ws("stuck").await;

    let body = "y".repeat(20_000);
    let total: u64 = 600;
    let run = async {
        let (mut next, mut acked, mut sent) = (1, 0, 0);
        for i in 0..total {
            alice.send(group_msg("room", &format!("p{i}"), &body)).await;
            sent = i + 1;
            // Read while sending, in slices, so that neither the fast reader nor the sender
            // (its acks) ever falls 32 frames behind.
            if i % 16 == 15 {
                while next <= i + 1 - 8 {
                    let m = fast.recv_type("group_message").await;
                    assert_eq!(
                        m["meta"]["seq"].as_u64(),
                        Some(next),
                        "fast reader saw a gap"
                    );
                    next += 1;
                }
                while acked < i + 1 - 8 {
                    if alice.recv().await["type"] == "ack" {
                        acked += 1;
                    }
                }
                if stuck_reader_let_go(&app).await {
                    break;
                }
            }
        }
        while next <= sent {
            let m = fast.recv_type("group_message").await;
            assert_eq!(
                m["meta"]["seq"].as_u64(),
                Some(next),
                "fast reader saw a gap"
            );
            next += 1;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("sender and fast reader were slowed down by the stuck one");

    let ended = loop {
        match stuck.try_recv_or_end(Duration::from_secs(10)).await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(ended, Ended::Closed(1013));
}
