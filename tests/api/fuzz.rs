//! Random and mutated input for the frame reader, the frame parser and a live session
//! (proptest). No input may panic, grow a buffer past the frame limit, or stop the broker
//! from answering. `FUZZ_CASES` sets the number of inputs of the pure parts (default
//! 3,000 here and in CI; README.md, "Testing", gives the 1,000,000-input run).

use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;
use switchboard::session::ReadCodec;
use switchboard_actors::json_check::check_json;
use switchboard_actors::protocol::parse_client_frame;
use tokio_util::codec::Decoder;

use crate::helpers::{spawn_app_with, without_rate_limit, RawEnd, RawWs, TestApp};

const MAX_FRAME: usize = 4096;

fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Valid client frames of every type, the seeds that mutations start from.
fn seeds() -> Vec<String> {
    [
        json!({"type": "auth", "payload": {"token": "x.y.z"}}),
        json!({"type": "heartbeat", "id": "h"}),
        json!({"type": "chat_message", "id": "m1", "payload": {"content": "hi"}, "meta": {"target_id": "bob"}}),
        json!({"type": "chat_message", "id": "m2", "payload": {"content": "hi", "attachments": [{"url": "u"}]}, "meta": {"target_id": "bob"}}),
        json!({"type": "group_message", "id": "g1", "payload": {"content": "yo"}, "meta": {"target_id": "group:team"}}),
        json!({"type": "typing_indicator", "payload": {"typing": true}, "meta": {"target_id": "bob"}}),
        json!({"type": "typing_indicator", "payload": {"typing": false}, "meta": {"target_id": "group:team"}}),
        json!({"type": "read_receipt", "payload": {"channel": "dm:alice:bob", "up_to_seq": 1}}),
        json!({"type": "subscribe", "payload": {"channel": "broadcast:news", "since_seq": 0}}),
        json!({"type": "unsubscribe", "payload": {"channel": "broadcast:news"}}),
        json!({"type": "sync", "payload": {"cursors": {"dm:alice:bob": 3}}}),
        json!({"type": "state_sync", "payload": {"collection": "c", "key": "k", "value": 1, "base_version": 0}}),
    ]
    .iter()
    .map(|v| v.to_string())
    .collect()
}

/// Pieces that mutations insert: JSON syntax, values parsers choke on, names the broker
/// knows.
const PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "\\",
    "null",
    "true",
    "-",
    "0",
    "-1",
    "1e999999",
    "1.5",
    "18446744073709551616",
    "\\ud800",
    "\\udc00",
    "\\u0000",
    "\\ud83d\\ude00",
    "é",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    "\"type\"",
    "\"payload\"",
    "\"meta\"",
    "\"chat_message\"",
    "\"subscribe\"",
    "\"auth\"",
    "\"dm:alice:bob\"",
    "\"group:team\"",
    "\"broadcast:x\"",
    "\"user:alice\"",
    "\"since_seq\":9223372036854775808",
    " ",
    "\t",
];

/// A seed frame with up to `n` edits: deletions, insertions of [`PIECES`] or of random
/// text, and replacements.
fn mutated(n: usize) -> impl Strategy<Value = String> {
    let edit = (0usize..4, any::<usize>(), 0usize..PIECES.len(), "\\PC{0,8}");
    (0..seeds().len(), proptest::collection::vec(edit, 0..=n)).prop_map(|(seed, edits)| {
        let mut s: Vec<char> = seeds()[seed].chars().collect();
        for (kind, at, piece, random) in edits {
            let at = if s.is_empty() { 0 } else { at % (s.len() + 1) };
            match kind {
                0 if at < s.len() => {
                    let end = (at + 1 + at % 5).min(s.len());
                    s.drain(at..end);
                }
                1 => s.splice(at..at, PIECES[piece].chars()).for_each(drop),
                2 => s.splice(at..at, random.chars()).for_each(drop),
                _ if at < s.len() => {
                    s.splice(at..at + 1, PIECES[piece].chars()).for_each(drop);
                }
                _ => {}
            }
        }
        s.into_iter().collect()
    })
}

/// Client frame bytes: mutated frames, masked and sometimes fragmented, then with bytes
/// flipped, cut or added.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let frames = proptest::collection::vec((mutated(6), any::<bool>(), 0u8..16), 1..4);
    let flips = proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4);
    (
        frames,
        flips,
        proptest::collection::vec(any::<u8>(), 0..24),
        any::<usize>(),
    )
        .prop_map(|(frames, flips, junk, cut)| {
            let mut out = Vec::new();
            for (text, split, opcode) in frames {
                let b = text.as_bytes();
                if split && b.len() > 2 {
                    let (x, y) = b.split_at(b.len() / 2);
                    out.extend(RawWs::frame(0x01, x.len() as u64, x));
                    out.extend(RawWs::frame(0x80, y.len() as u64, y));
                } else {
                    let first = if opcode < 12 { 0x81 } else { 0x80 | opcode };
                    out.extend(RawWs::frame(first, b.len() as u64, b));
                }
            }
            for (at, byte) in flips {
                if !out.is_empty() {
                    let i = at % out.len();
                    out[i] ^= byte;
                }
            }
            out.extend(junk);
            if cut % 4 == 0 && !out.is_empty() {
                out.truncate(cut % out.len());
            }
            out
        })
}

/// Feeds `bytes` to the reader in pieces, as reads would; parses every text frame.
fn read_all(bytes: &[u8], pieces: usize) {
    let mut codec = ReadCodec::new(MAX_FRAME, Rc::default());
    let mut buf = BytesMut::with_capacity(512);
    let step = (bytes.len() / pieces.max(1)).max(1);
    for chunk in bytes.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(actix_http::ws::Frame::Text(t))) => {
                    assert!(t.len() <= MAX_FRAME);
                    if let Ok(text) = std::str::from_utf8(&t) {
                        let _ = parse_client_frame(text, 32);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
            // Never more than one frame's worth held for what is incomplete.
            assert!(buf.capacity() <= 2 * MAX_FRAME + 1024, "{}", buf.capacity());
        }
    }
}

#[test]
fn the_reader_and_parser_survive_random_and_mutated_frames() {
    let mut runner = TestRunner::new(Config {
        cases: cases(3000),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(wire_bytes(), 1usize..8), |(bytes, pieces)| {
            read_all(&bytes, pieces);
            Ok(())
        })
        .expect("no input panics the reader or the parser");
}

#[test]
fn the_parser_and_the_json_check_survive_any_text() {
    let mut runner = TestRunner::new(Config {
        cases: cases(3000),
        failure_persistence: None,
        ..Config::default()
    });
    let json_ish =
        proptest::string::string_regex(r#"[\[\]{}":,0-9e.\-\\u a-fD]{0,64}"#).expect("regex");
    let text = prop_oneof![mutated(10), "\\PC{0,64}", json_ish];
    runner
        .run(&text, |t| {
            let _ = parse_client_frame(&t, 32);
            let _ = check_json(&t, 32);
            // What a strict parser reads (it refuses lone surrogates, infinite numbers and
            // more than 127 levels), the check passes.
            if serde_json::from_str::<serde_json::Value>(&t).is_ok() {
                prop_assert_eq!(check_json(&t, 128), Ok(()), "{}", t);
            }
            Ok(())
        })
        .expect("no text panics the parser or the check");
}

/// Sends `frames` to the session, then a heartbeat: the broker must answer it (or have
/// closed the connection with a close code of the contract).
async fn survives(app: &TestApp, ws: &mut RawWs, frames: &[String]) -> bool {
    for f in frames {
        if !ws.write(&RawWs::text(f)).await {
            return false;
        }
    }
    if !ws
        .write(&RawWs::text(r#"{"type":"heartbeat","id":"probe"}"#))
        .await
    {
        return false;
    }
    loop {
        match ws.recv().await {
            Ok(v) if v["type"] == "heartbeat" && v["id"] == "probe" => return true,
            Ok(_) => {}
            Err(RawEnd::Closed(code)) => {
                assert!(
                    [1002, 1007, 1008, 1009, 1013, 4001].contains(&code),
                    "closed with {code} by {frames:?}"
                );
                let (_, status) = app.call("GET", "/health", None, None).await;
                assert_eq!(status["status"], "ok");
                return false;
            }
            Err(other) => panic!("{other:?} after {frames:?}"),
        }
    }
}

#[actix_web::test]
async fn a_session_survives_mutated_frames() {
    let app = spawn_app_with(|s| {
        without_rate_limit(s);
        s.limits.max_frame_bytes = MAX_FRAME;
    })
    .await;
    app.group("team", "alice", &["bob"]).await;
    let mut runner = TestRunner::new(Config::default());
    let batch = proptest::collection::vec(mutated(4), 1..20);
    let connect = || async {
        let auth = format!("Authorization: Bearer {}\r\n", app.token("alice"));
        let (status, mut ws) = app.raw_upgrade("", "HTTP/1.1", &auth).await;
        assert_eq!(status, 101);
        assert_eq!(ws.recv().await.expect("connected")["type"], "connected");
        ws
    };
    let mut ws = connect().await;
    let mut sent = 0;
    while sent < cases(3000) as usize / 3 {
        let frames = batch.new_tree(&mut runner).expect("frames").current();
        sent += frames.len();
        if !survives(&app, &mut ws, &frames).await {
            ws = connect().await;
        }
    }
    // The broker is whole: every actor running, and a message still goes through.
    let (_, status) = app.call("GET", "/status", None, None).await;
    assert_eq!(status["status"], "ok", "{status}");
    let mut bob = app.ws("bob").await;
    let ack = bob.dm("carol", "after-fuzz", "still here").await;
    assert!(ack["seq"].as_u64().is_some_and(|s| s >= 1));
    tokio::time::sleep(Duration::from_millis(10)).await;
}
