//! One broker process on SQLite: crashes, shutdown, a second broker on its database,
//! memory under abuse, and a poller resuming across a crash.

use super::*;

#[actix_web::test]
async fn acked_messages_survive_kill_9_and_come_back_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path());
    let mut alice = connect(broker.port, "alice").await;
    let n = 500;
    for i in 0..n {
        alice
            .send(chat("bob", &format!("d{i}"), &format!("durable {i}")))
            .await;
    }
    let mut acks: HashMap<String, (String, u64)> = HashMap::new();
    while acks.len() < n {
        let f = alice.recv().await;
        assert_eq!(f["type"], "ack", "{f}");
        let p = &f["payload"];
        acks.insert(
            p["ref_id"].as_str().expect("ref").to_owned(),
            (
                p["message_id"].as_str().expect("id").to_owned(),
                p["seq"].as_u64().expect("seq"),
            ),
        );
    }
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");

    let mut broker = start_broker(dir.path());
    let stored = history(broker.port, "bob", "alice").await;
    assert_eq!(stored.len(), n, "messages after restart");
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m["meta"]["seq"], i as u64 + 1);
        let content = m["payload"]["content"].as_str().expect("content");
        let k: usize = content
            .trim_start_matches("durable ")
            .parse()
            .expect("index");
        let (id, seq) = &acks[&format!("d{k}")];
        assert_eq!(m["id"].as_str(), Some(id.as_str()));
        assert_eq!(m["meta"]["seq"].as_u64(), Some(*seq));
    }
    // Bob's first sync after the crash brings every acked message, in order, once.
    let mut bob = connect(broker.port, "bob").await;
    bob.send(serde_json::json!({"type": "sync", "payload": {}}))
        .await;
    let mut synced = Vec::new();
    loop {
        let f = bob.recv().await;
        match f["type"].as_str() {
            Some("chat_message") => synced.push(f["id"].as_str().unwrap_or("").to_owned()),
            Some("sync_complete") => {
                assert_eq!(f["payload"]["cursors"]["dm:alice:bob"], n as u64, "{f}");
                break;
            }
            _ => {}
        }
    }
    let in_order: Vec<String> = stored
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(synced, in_order);
    // Seqs continue after the restart with no reuse.
    let mut alice = connect(broker.port, "alice").await;
    assert_eq!(
        alice.dm("bob", "after", "after restart").await["seq"],
        n as u64 + 1
    );
    // A resend of a frame acked before the crash still gets its original ack.
    let again = alice.dm("bob", "d7", "durable 7").await;
    assert_eq!(again["message_id"].as_str(), Some(acks["d7"].0.as_str()));
    broker.child.kill().expect("SIGKILL");
    let _ = broker.child.wait();
}

#[actix_web::test]
async fn sigterm_closes_clients_with_1012_flushes_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path());
    let mut alice = connect(broker.port, "alice").await;
    let ack = alice.dm("bob", "before", "before shutdown").await;
    assert_eq!(ack["seq"], 1);
    // A connection still waiting to authenticate is closed too.
    let (_, framed) = awc::Client::builder()
        .timeout(WAIT)
        .finish()
        .ws(format!("ws://127.0.0.1:{}/ws", broker.port))
        .connect()
        .await
        .expect("upgrade");
    let mut pending = WsClient::from_framed(framed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_at = std::time::Instant::now();
    broker.terminate();
    assert_eq!(
        alice.ended(Duration::from_secs(10)).await,
        Ended::Closed(1012)
    );
    assert_eq!(
        pending.ended(Duration::from_secs(10)).await,
        Ended::Closed(1012)
    );
    let exit = broker.exited().await;
    assert_eq!(exit.code(), Some(0));
    // shutdown_timeout is 5 s in these tests.
    assert!(
        sent_at.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        sent_at.elapsed()
    );
    let broker = start_broker(dir.path());
    let stored = history(broker.port, "alice", "bob").await;
    assert_eq!(stored.len(), 1);
    let mut child = broker.child;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

#[actix_web::test]
async fn sigterm_spreads_the_closes_over_the_drain_window_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let drain = [("SWITCHBOARD__SERVER__DRAIN_WINDOW", "2s")];
    let mut broker = start_broker_with(dir.path(), &drain);
    let mut open = Vec::new();
    for i in 0..40 {
        let user = format!("u{i}");
        open.push((user.clone(), connect(broker.port, &user).await));
    }
    let sent_at = std::time::Instant::now();
    broker.terminate();
    // Every client closes with 1012, at times spread over the window; one still open
    // half-way through writes, and its ack holds.
    let mut closed_at = Vec::new();
    let mut late_writer = None;
    while !open.is_empty() {
        let mut still = Vec::new();
        for (user, mut c) in open {
            match c.end_within(Duration::from_millis(5)).await {
                Some(end) => {
                    assert_eq!(end, Ended::Closed(1012), "{user}");
                    closed_at.push(sent_at.elapsed());
                }
                None => still.push((user, c)),
            }
        }
        if late_writer.is_none() && sent_at.elapsed() > Duration::from_millis(1000) {
            // A client may get its turn while it writes: then the next one tries.
            let mut left = Vec::new();
            for (user, mut c) in still {
                if late_writer.is_some() {
                    left.push((user, c));
                    continue;
                }
                c.send(chat("late", "late-1", "written while draining"))
                    .await;
                loop {
                    match c.try_recv_or_end(Duration::from_secs(5)).await {
                        Ok(f) if f["type"] == "ack" => {
                            late_writer = Some(user.clone());
                            left.push((user, c));
                            break;
                        }
                        Ok(_) => {}
                        Err(end) => {
                            assert_eq!(end, Ended::Closed(1012), "{user}");
                            closed_at.push(sent_at.elapsed());
                            break;
                        }
                    }
                }
            }
            still = left;
        }
        assert!(
            sent_at.elapsed() < Duration::from_secs(5),
            "closes took too long"
        );
        open = still;
    }
    let late_writer = late_writer.expect("a client still open half-way through the window");
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[closed_at.len() - 1]);
    assert!(
        first < Duration::from_millis(500),
        "first close after {first:?}"
    );
    assert!(
        last >= Duration::from_millis(1500),
        "last close after {last:?}"
    );
    let exit = broker.exited().await;
    assert_eq!(exit.code(), Some(0));
    assert!(
        sent_at.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent_at.elapsed()
    );
    let broker = start_broker(dir.path());
    let stored = history(broker.port, &late_writer, "late").await;
    let kept: Vec<_> = stored.iter().map(|m| &m["payload"]["content"]).collect();
    assert_eq!(kept, ["written while draining"]);
    let mut child = broker.child;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
}

#[actix_web::test]
async fn a_second_broker_on_the_same_database_is_refused_and_the_first_serves_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path());
    let mut alice = connect(broker.port, "alice").await;
    assert_eq!(alice.dm("bob", "m1", "one").await["seq"], 1);

    let out = run_cli(
        &["serve"],
        &[("SWITCHBOARD__AUTH__JWT_SECRET", SECRET)],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another broker process"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    assert_eq!(alice.dm("bob", "m2", "two").await["seq"], 2);
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");
    // The lock goes with the process, however it ended.
    let mut broker = start_broker(dir.path());
    assert_eq!(history(broker.port, "bob", "alice").await.len(), 2);
    broker.child.kill().expect("SIGKILL");
    let _ = broker.child.wait();
}

/// The probe's memory blow-up: frames declared far over the limit and streamed, and many
/// connections each holding a frame just under the limit. The broker refuses the first at
/// their header, and holds at most one limit's worth of the others each.
#[actix_web::test]
async fn frames_over_the_limit_or_left_unfinished_keep_memory_bounded() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker_with(
        dir.path(),
        &[
            ("SWITCHBOARD__LIMITS__FRAME_TIMEOUT", "3s"),
            ("SWITCHBOARD__LIMITS__MAX_PENDING_PER_IP", "0"),
        ],
    );
    let before = broker.rss_kib();

    // Ten token-less sockets each declare 2^63-1 bytes and try to stream 64 MiB.
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..10 {
        let mut s = raw_socket(broker.port, None).await;
        let mut header = vec![0x81, 0xFF];
        header.extend_from_slice(&((1u64 << 63) - 1).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]);
        s.write_all(&header).await.expect("header");
        let mut sent = 0usize;
        for _ in 0..64 {
            let w = tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await;
            match w {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        // The broker closed the socket at the header: only what the kernel buffered got in.
        assert!(sent < 32 << 20, "{sent} bytes accepted");
    }
    let after_huge = broker.rss_kib();
    assert!(
        after_huge < before + 32 * 1024,
        "RSS {before} KiB → {after_huge} KiB after oversized frames"
    );

    // 200 authenticated sockets each send 60 KiB of a 64 KiB frame, and stop.
    let mut held = Vec::new();
    for i in 0..200 {
        let mut s = raw_socket(broker.port, Some(&token(&format!("user{i}")))).await;
        let mut f = vec![0x81, 0xFE];
        f.extend_from_slice(&65_000u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&vec![b' '; 60 * 1024]);
        s.write_all(&f).await.expect("partial frame");
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_partials = broker.rss_kib();
    // At most the frame limit each, plus the broker's own growth.
    assert!(
        with_partials < after_huge + 200 * 64 + 32 * 1024,
        "RSS {after_huge} KiB → {with_partials} KiB with 200 half frames"
    );
    eprintln!(
        "broker RSS (KiB): {before} at start, {after_huge} after oversized frames, \
         {with_partials} holding 200 half frames"
    );
    // The frame timeout closes them all (each stops once its close frame is written).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = broker.status().await;
    assert_eq!(stats["connections"]["admitted"], 0, "{stats}");
    drop(held);
    stop(broker);
}

/// Subscribe to and leave many channels, let them go idle, and again: the broker's memory
/// stays flat, and an idle stop is not a restart.
#[actix_web::test]
async fn channels_that_go_idle_leave_no_memory_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker_with(
        dir.path(),
        &[
            ("SWITCHBOARD__CHANNELS__IDLE_TIMEOUT", "300ms"),
            ("SWITCHBOARD__LIMITS__MAX_SUBSCRIPTIONS", "100000"),
        ],
    );
    let mut c = connect(broker.port, "alice").await;
    let channels = 4000;
    let mut rss = Vec::new();
    for _round in 0..5 {
        // In steps that fit the outbound queue (1,024 frames).
        for step in (0..channels).collect::<Vec<_>>().chunks(500) {
            for i in step {
                c.send(serde_json::json!({"type": "subscribe",
                    "payload": {"channel": format!("broadcast:ch{i}")}}))
                    .await;
            }
            for _ in step {
                assert_eq!(c.recv().await["type"], "subscribed");
            }
            for i in step {
                c.send(serde_json::json!({"type": "unsubscribe",
                    "payload": {"channel": format!("broadcast:ch{i}")}}))
                    .await;
            }
            for _ in step {
                assert_eq!(c.recv().await["type"], "unsubscribed");
            }
        }
        // Past the idle timeout and a sweep: every channel actor is gone.
        let mut gone = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s = broker.status().await;
            if s["channels"]["active"] == 0 && s["channels"]["actors"] == 0 {
                gone = true;
                break;
            }
        }
        assert!(gone, "channel actors still alive");
        rss.push(broker.rss_kib());
    }
    // The first round grows the allocator's pools; later rounds reuse them.
    assert!(rss[4] < rss[1] + 4 * 1024, "RSS per round (KiB): {rss:?}");
    assert!(broker.log_lines("restarting").is_empty());
    stop(broker);
}

/// `GET /poll?{query}` on `port` as `user`: the JSON answer.
async fn poll(port: u16, user: &str, query: &str) -> Value {
    let mut resp = awc::Client::builder()
        .timeout(WAIT * 3)
        .finish()
        .get(format!("http://127.0.0.1:{port}/poll?{query}"))
        .bearer_auth(token(user))
        .send()
        .await
        .expect("poll");
    assert_eq!(resp.status(), 200);
    resp.json().limit(16 << 20).await.expect("json")
}

fn polled(answer: &Value) -> Vec<String> {
    answer["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["payload"]["content"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[actix_web::test]
async fn a_poller_resumes_from_its_cursor_on_a_broker_restarted_after_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = start_broker(dir.path());
    let mut alice = connect(broker.port, "alice").await;
    alice.dm("bob", "m1", "one").await;
    alice.dm("bob", "m2", "two").await;
    let first = poll(broker.port, "bob", "client_id=bob-cli&timeout_s=5").await;
    assert_eq!(polled(&first), ["one", "two"]);
    alice.dm("bob", "m3", "three").await;
    broker.child.kill().expect("SIGKILL");
    broker.child.wait().expect("reaped");

    // The new process knows nothing of the poller but what the cursor and the store say.
    let broker = start_broker(dir.path());
    let cursor = first["cursor"].as_str().expect("cursor");
    let next = poll(broker.port, "bob", &format!("cursor={cursor}&timeout_s=5")).await;
    assert_eq!(polled(&next), ["three"]);
    stop(broker);
}
