//! Unit tests of `protocol`.

use super::*;
use crate::ids::MessageId;

#[test]
fn needs_escape_finds_every_byte_json_escapes_at_every_place() {
    for len in 0..20 {
        assert!(!needs_escape("a".repeat(len).as_bytes()));
        for at in 0..len {
            for b in 0..=0xffu8 {
                let mut s = vec![b'a'; len];
                s[at] = b;
                let expected = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(needs_escape(&s), expected, "byte {b:#x} at {at} of {len}");
            }
        }
    }
    // Bytes of multi-byte UTF-8 characters are never escaped, in words or in pieces.
    for s in ["héllo wörld — ünïcode", "é", "ü!", "日本", "日本語"] {
        assert!(!needs_escape(s.as_bytes()), "{s}");
    }
}

#[test]
fn chat_needs_target_and_content() {
    let e = parse_client_frame(
        r#"{"type":"chat_message","id":"1","payload":{"content":"hi"}}"#,
        32,
    )
    .expect_err("no target");
    assert_eq!(e.code(), ErrorCode::BadRequest);
    assert_eq!(e.ref_id(), Some("1"));
    let e = parse_client_frame(
        r#"{"type":"chat_message","payload":{"content":5},"meta":{"target_id":"bob"}}"#,
        32,
    )
    .expect_err("content not a string");
    assert_eq!(e.code(), ErrorCode::BadRequest);
    let ok = parse_client_frame(
        r#"{"type":"chat_message","id":"x","payload":{"content":"hi","extra":1},"meta":{"target_id":"bob"}}"#,
        32,
    )
    .expect("valid");
    assert!(matches!(ok.frame, ClientFrame::Chat { .. }));
}

/// Frames in the SDKs' layout skip serde's walk over the envelope; whatever they hold,
/// the answer (frame or error) is the full parse's.
#[test]
fn messages_in_the_sdk_layout_parse_as_the_full_parse_does() {
    let frame = |kind: &str, id: &str, payload: &str, target: &str| {
        format!(
            r#"{{"type":"{kind}","id":"{id}","payload":{payload},"meta":{{"target_id":"{target}"}}}}"#
        )
    };
    let mut taken = Vec::new();
    for kind in ["chat_message", "group_message"] {
        for id in ["m-1", "", "é-ü", "a\\\"b", "tab\there"] {
            for payload in [
                r#"{"content":"hi"}"#,
                r#"{"content":""}"#,
                r#"{"content":"x","attachments":[1]}"#,
                r#" {"content":"spaced"} "#,
                r#"["content"]"#,
                r#"{"content":"unclosed"#,
                r#"{"content":"a"}}"#,
                "null",
                "17",
            ] {
                for target in ["bob", "group:g1", "g1", "", "bad id", "b\\u0062"] {
                    taken.push(frame(kind, id, payload, target));
                }
            }
        }
    }
    let others = [
        r#"{"type":"chat_message","id":"1","payload":{"content":"hi"},"meta":{"target_id":"bob"}} "#,
        r#"{"type":"chat_message","id":"1","payload":{"content":"hi"},"meta":{"target_id":"bob","x":1}}"#,
        r#"{"type":"chat_message","id":"1","payload":{"content":"hi"},"meta":{"target_id":"bob"},"x":2}"#,
        r#"{"type":"chat_message","payload":{"content":"hi"},"meta":{"target_id":"bob"}}"#,
        r#"{"type":"chat_message","id":"1","payload":{"content":"hi"}}"#,
        r#"{"type":"chat_message","id":"1","payload":{"content":"hi"},"meta":{"target_id":"bob"}"#,
        r#"{"type":"chat_message","id":"1","payload":{"content":"hi"},"meta":{"target_id":"bob"}}}"#,
        r#"{"type":"typing_indicator","id":"1","payload":{"typing":true},"meta":{"target_id":"bob"}}"#,
    ];
    let mut fast = 0;
    for text in taken.iter().map(String::as_str).chain(others) {
        fast += usize::from(parse_plain_message(text, 32).is_some());
        assert_eq!(
            format!("{:?}", parse_client_frame(text, 32)),
            format!("{:?}", parse_envelope(text, 32)),
            "{text}"
        );
    }
    // The layout is taken where the id and the target need no unescaping (3 ids, 5
    // targets) and the payload is one JSON value right before `,"meta"` (6 payloads: not
    // the unclosed one, the one with a brace too many, the one with a space after it).
    assert_eq!(fast, 2 * 3 * 6 * 5, "frames that took the plain path");
    let plain = frame("chat_message", "m-1", r#"{"content":"hi"}"#, "bob");
    assert!(matches!(
        parse_plain_message(&plain, 32),
        Some(Ok(ParsedFrame {
            frame: ClientFrame::Chat { .. },
            ..
        }))
    ));
}

/// The payload is kept as sent, whether it takes the plain `{"content":"…"}` shortcut
/// or is parsed; what the shortcut would wrongly let through is refused either way.
#[test]
fn chat_payloads_are_checked_and_kept_as_sent() {
    let chat = |payload: &str| {
        parse_client_frame(
            &format!(
                r#"{{"type":"chat_message","payload":{payload},"meta":{{"target_id":"bob"}}}}"#
            ),
            32,
        )
    };
    for payload in [
        r#"{"content":"hi there"}"#,
        r#"{"content":"say \"hi\""}"#,
        r#"{"content":"\u00e9t\u00e9"}"#,
        r#"{"content":"hi","attachments":[{"url":"x"}]}"#,
        r#"{ "content" : "hi" }"#,
        r#"{"extra":{"content":""},"content":"hi"}"#,
    ] {
        match chat(payload).map(|p| p.frame) {
            Ok(ClientFrame::Chat { payload: kept, .. }) => assert_eq!(kept, payload),
            other => panic!("{payload}: {other:?}"),
        }
    }
    for payload in [
        r#"{"content":""}"#,
        r#"{"content":"","x":"y"}"#,
        r#"{"content":"hi","attachments":"no"}"#,
        r#"{"content":"a","content":"b"}"#,
        r#"{"text":"hi"}"#,
        r#"["content"]"#,
        r#""hi""#,
    ] {
        let e = chat(payload).expect_err(payload);
        assert_eq!(e.code(), ErrorCode::BadRequest, "{payload}");
    }
}

#[test]
fn delivery_frame_is_the_json_of_the_message() {
    let m = StoredMessage {
        id: MessageId::parse("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b").expect("a uuid"),
        channel: "dm:alice:bob".into(),
        seq: 7,
        kind: "chat_message".into(),
        sender_id: "alice".into(),
        target_id: "bob \"quoted\"".into(),
        client_id: None,
        client_msg_id: Some("c1".into()),
        payload: r#"{"content":"hi","n":[1,2]}"#.into(),
        created_at: 1_700_000_000_000,
    };
    let frame = delivery_frame(&m);
    let v: serde_json::Value = serde_json::from_str(&frame).expect("valid JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "type": "chat_message",
            "id": "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b",
            "payload": {"content": "hi", "n": [1, 2]},
            "meta": {
                "timestamp": 1_700_000_000_000_i64,
                "sender_id": "alice",
                "target_id": "bob \"quoted\"",
                "channel": "dm:alice:bob",
                "seq": 7
            }
        })
    );
}

#[test]
fn strings_and_numbers_are_written_as_serde_json_writes_them() {
    for s in [
        "",
        "dm:alice:bob",
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "say \"hi\"",
        "back\\slash",
        "tab\there\nnewline\u{1}",
        "caf\u{e9} \u{1F600}",
        "\u{7f}\u{2028}",
    ] {
        let mut out = String::new();
        push_json_str(&mut out, s);
        assert_eq!(out, serde_json::to_string(s).expect("json"), "{s:?}");
    }
    for n in [0, 7, -1, 10, 1_700_000_000_000, i64::MIN, i64::MAX] {
        let mut out = String::new();
        push_json_int(&mut out, n);
        assert_eq!(out, n.to_string());
    }
}

#[test]
fn frames_after_a_large_one_are_whole_and_of_their_own_size() {
    let mut m = StoredMessage {
        id: MessageId::parse("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b").expect("a uuid"),
        channel: "group:team".into(),
        seq: 1,
        kind: "group_message".into(),
        sender_id: "alice".into(),
        target_id: "group:team".into(),
        client_id: Some("dev-1".into()),
        client_msg_id: None,
        payload: format!(r#"{{"content":"{}"}}"#, "x".repeat(100_000)),
        created_at: 1,
    };
    let big = delivery_frame(&m);
    assert!(big.len() > 100_000);
    m.payload = r#"{"content":"small"}"#.into();
    let small = delivery_frame(&m);
    let v: serde_json::Value = serde_json::from_str(&small).expect("valid JSON");
    assert_eq!(v["payload"]["content"], "small");
    assert!(small.len() < 300, "{}", small.len());
    // The large frame is untouched by what was built after it.
    let v: serde_json::Value = serde_json::from_str(&big).expect("valid JSON");
    assert_eq!(
        v["payload"]["content"].as_str().map(str::len),
        Some(100_000)
    );
}

#[test]
fn ack_frame_is_the_encoded_ack() {
    let m = StoredMessage {
        id: MessageId::parse("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b").expect("a uuid"),
        channel: "dm:alice:bob".into(),
        seq: 7,
        created_at: 1_700_000_000_000,
        ..StoredMessage::default()
    };
    for ref_id in [Some("f-1 \"q\" \u{e9}"), None] {
        let fast: serde_json::Value =
            serde_json::from_str(&ack_frame(&m, ref_id)).expect("valid JSON");
        let slow: serde_json::Value =
            serde_json::from_str(&encode("ack", None, Ack::of(&m, ref_id))).expect("JSON");
        assert_eq!(fast, slow);
        assert_eq!(fast["payload"]["seq"], 7);
    }
}

#[test]
fn unknown_and_garbage() {
    let e = parse_client_frame(r#"{"type":"dance","id":"9"}"#, 32).expect_err("unknown");
    assert_eq!(e.code(), ErrorCode::UnknownType);
    let e = parse_client_frame("not json", 32).expect_err("garbage");
    assert_eq!(e.code(), ErrorCode::BadRequest);
    let e = parse_client_frame(r#"{"type":"heartbeat","id":7}"#, 32).expect_err("id type");
    assert_eq!(e.code(), ErrorCode::BadRequest);
}

#[test]
fn group_target_accepts_both_forms() {
    for t in ["group:g1", "g1"] {
        let f = parse_client_frame(&format!(
            r#"{{"type":"group_message","payload":{{"content":"x"}},"meta":{{"target_id":"{t}"}}}}"#
        ), 32)
        .expect("valid");
        match f.frame {
            ClientFrame::Group { channel, .. } => assert_eq!(&*channel.name, "group:g1"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn payloads_that_break_parsers_are_bad_requests_on_both_paths() {
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    for payload in [
        format!(r#"{{"content":"x","n":{deep}}}"#),
        r#"{"content":"x","n":1e999999}"#.to_string(),
        r#"{"content":"\ud800"}"#.to_string(),
    ] {
        for text in [
            format!(
                r#"{{"type":"chat_message","id":"m1","payload":{payload},"meta":{{"target_id":"bob"}}}}"#
            ),
            format!(
                r#"{{"meta":{{"target_id":"bob"}},"type":"chat_message","id":"m1","payload":{payload}}}"#
            ),
        ] {
            let e = parse_client_frame(&text, 32).expect_err(&text);
            assert_eq!(e.code(), ErrorCode::BadRequest, "{text}");
            assert_eq!(e.ref_id(), Some("m1"));
        }
    }
    let ok = format!(
        r#"{{"type":"chat_message","payload":{{"content":"x","n":{}1{}}},"meta":{{"target_id":"bob"}}}}"#,
        "[".repeat(31),
        "]".repeat(31)
    );
    assert!(parse_client_frame(&ok, 32).is_ok());
}

#[test]
fn no_frame_or_payload_is_read_from_a_list() {
    for text in [
        r#"["heartbeat"]"#,
        r#"{"type":"chat_message","payload":{"content":"hi"},"meta":["bob"]}"#,
        r#"{"type":"subscribe","payload":["dm:a:b",0]}"#,
        r#"{"type":"unsubscribe","payload":["dm:a:b"]}"#,
        r#"{"type":"typing_indicator","payload":[true],"meta":{"target_id":"bob"}}"#,
        r#"{"type":"read_receipt","payload":["dm:a:b",1]}"#,
        r#"{"type":"auth","payload":["token"]}"#,
    ] {
        let e = parse_client_frame(text, 32).expect_err(text);
        assert_eq!(e.code(), ErrorCode::BadRequest, "{text}");
    }
    assert!(parse_client_frame(
        r#"{"type":"subscribe","payload":{"channel":"dm:a:b","since_seq":0}}"#,
        32
    )
    .is_ok());
}

#[test]
fn each_frame_type_counts_under_its_own_name_in_metrics() {
    let frames = [
        r#"{"type":"auth","payload":{"token":"t"}}"#,
        r#"{"type":"heartbeat"}"#,
        r#"{"type":"chat_message","payload":{"content":"x"},"meta":{"target_id":"b"}}"#,
        r#"{"type":"group_message","payload":{"content":"x"},"meta":{"target_id":"g"}}"#,
        r#"{"type":"typing_indicator","payload":{"typing":true},"meta":{"target_id":"b"}}"#,
        r#"{"type":"read_receipt","payload":{"channel":"dm:a:b","up_to_seq":1}}"#,
        r#"{"type":"subscribe","payload":{"channel":"broadcast:n"}}"#,
        r#"{"type":"unsubscribe","payload":{"channel":"broadcast:n"}}"#,
        r#"{"type":"status_update","payload":{"status":"away"}}"#,
        r#"{"type":"sync"}"#,
        r#"{"type":"delivered","payload":{"channel":"dm:a:b","up_to_seq":1}}"#,
        r#"{"type":"state_sync","payload":{"collection":"c","key":"k","value":1,"base_version":0}}"#,
        r#"{"type":"presence_subscribe","payload":{"user_ids":["b"]}}"#,
        r#"{"type":"command","payload":{"name":"n"}}"#,
    ];
    for text in frames {
        let parsed = parse_client_frame(text, 32).unwrap_or_else(|e| panic!("{text}: {e}"));
        let kind = serde_json::from_str::<serde_json::Value>(text).expect("json")["type"]
            .as_str()
            .expect("type")
            .to_owned();
        assert_eq!(crate::metrics::FRAME_TYPES[parsed.frame.type_index()], kind);
    }
}
