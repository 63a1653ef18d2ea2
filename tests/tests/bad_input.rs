//! Every bad-input rule closes the offending connection with its code and
//! reason, is counted, and leaves everyone else on the node served. Every
//! label of core's [`FrameError::LABELS`] has a case here and a metric line.

use roomcast_core::FrameError;
use roomcast_tests::{Client, Node, RedisServer, Runtime, scenarios};
use tungstenite::Message;

scenarios!(
    bad_input_closes_only_the_offender,
    frame_at_the_limit_is_accepted
);

enum Bad {
    Text(String),
    Binary,
    /// A text frame of this many bytes.
    Long(usize),
    /// Bytes written straight to the socket, past the client's WebSocket
    /// library: frames it would never send.
    Raw(Vec<u8>),
}

/// A client frame (masked, as clients must) with this first byte and
/// payload.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    match u16::try_from(payload.len()) {
        Ok(n) if n < 126 => f.push(0x80 | n as u8),
        Ok(n) => {
            f.push(0x80 | 126);
            f.extend(n.to_be_bytes());
        }
        Err(_) => panic!("frame too long for this helper"),
    }
    f.extend(mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

struct Case {
    /// Valid frames sent first.
    before: Vec<String>,
    frame: Bad,
    code: u16,
    reason: &'static str,
    label: &'static str,
}

fn case(frame: &str, reason: &'static str, label: &'static str) -> Case {
    Case {
        before: Vec::new(),
        frame: Bad::Text(frame.to_string()),
        code: 1008,
        reason,
        label,
    }
}

const PROTOCOL: &str = "WebSocket protocol error";

/// Raw bytes (see [`Bad::Raw`]) and how the node must close.
fn raw(bytes: Vec<u8>, code: u16, reason: &'static str, label: &'static str) -> Case {
    Case {
        before: Vec::new(),
        frame: Bad::Raw(bytes),
        code,
        reason,
        label,
    }
}

fn subscribe(room: &str) -> String {
    roomcast_tests::json!({"type": "SUBSCRIBE", "room": room}).to_string()
}

fn cases() -> Vec<Case> {
    let long_room = "r".repeat(257);
    // 256 bytes of UTF-8 in 128 characters: at the limit, accepted.
    let max_room = "é".repeat(128);
    vec![
        case("hello", "frame is not valid JSON", "not_json"),
        case(
            r#"{"type":"SUBSCRIBE","room":"a""#,
            "frame is not valid JSON",
            "not_json",
        ),
        case(
            r#"["SUBSCRIBE","a"]"#,
            "frame is not a JSON object",
            "not_object",
        ),
        case("42", "frame is not a JSON object", "not_object"),
        case(r#"{"room":"a"}"#, "missing type", "missing_type"),
        case(
            r#"{"type":"JOIN","room":"a"}"#,
            "unknown type",
            "unknown_type",
        ),
        case(
            r#"{"type":7,"room":"a"}"#,
            "type must be a string",
            "type_not_string",
        ),
        case(
            r#"{"type":"SUBSCRIBE","room":"a","room":"b"}"#,
            "frame has a duplicate field",
            "duplicate_field",
        ),
        case(
            r#"{"type":"sendMessage","message":"x"}"#,
            "sendMessage: missing roomId",
            "missing_field",
        ),
        case(
            r#"{"type":"sendMessage","roomId":"a"}"#,
            "sendMessage: missing message",
            "missing_field",
        ),
        case(
            r#"{"type":"UNSUBSCRIBE"}"#,
            "UNSUBSCRIBE: missing room",
            "missing_field",
        ),
        case(
            r#"{"type":"SUBSCRIBE","room":5}"#,
            "SUBSCRIBE: room must be a string",
            "field_not_string",
        ),
        case(
            r#"{"type":"sendMessage","roomId":null,"message":"x"}"#,
            "sendMessage: roomId must be a string",
            "field_not_string",
        ),
        // A lone surrogate escape: valid JSON, but not a Unicode string.
        case(
            r#"{"type":"SUBSCRIBE","room":"a\udc00b"}"#,
            r"string has an invalid \u escape",
            "bad_escape",
        ),
        case(
            r#"{"type":"SUBSCRIBE","room":""}"#,
            "room name is empty",
            "room_empty",
        ),
        Case {
            before: vec![subscribe(&max_room)],
            ..case(
                &subscribe(&long_room),
                "room name longer than 256 bytes",
                "room_too_long",
            )
        },
        Case {
            before: (0..256).map(|i| subscribe(&format!("many-{i}"))).collect(),
            ..case(
                &subscribe("many-256"),
                "more than 256 rooms on one connection",
                "too_many_rooms",
            )
        },
        Case {
            before: vec![subscribe("a")],
            frame: Bad::Binary,
            code: 1003,
            reason: "binary frames are not supported",
            label: "binary",
        },
        Case {
            before: vec![subscribe("a")],
            frame: Bad::Long(65537),
            code: 1009,
            reason: "frame larger than 65536 bytes",
            label: "too_large",
        },
        // FIN + text, payload not UTF-8.
        Case {
            before: vec![subscribe("a")],
            ..raw(
                masked(0x81, b"\xff\xfe"),
                1007,
                "frame is not valid UTF-8",
                "not_utf8",
            )
        },
        // FIN + RSV1 + text: no extension was negotiated.
        Case {
            before: vec![subscribe("a")],
            ..raw(masked(0xc1, b"x"), 1002, PROTOCOL, "protocol")
        },
        // FIN + text, unmasked.
        raw(vec![0x81, 0x01, b'x'], 1002, PROTOCOL, "protocol"),
        // A ping with a payload over 125 bytes.
        raw(masked(0x89, &[b'p'; 126]), 1002, PROTOCOL, "protocol"),
        Case {
            before: Vec::new(),
            frame: Bad::Long(200_000),
            code: 1009,
            reason: "frame larger than 65536 bytes",
            label: "too_large",
        },
    ]
}

fn bad_input_closes_only_the_offender(rt: Runtime) {
    let redis = RedisServer::start();
    // A long grace: the node must end each refused connection's TCP stream
    // when the close handshake is done, not when the grace runs out.
    let node = Node::redis(rt, &redis, &["--shutdown-grace", "30s"]);
    let mut g1 = node.client();
    let mut g2 = node.client();
    g1.join("good");
    g2.join("good");
    redis.wait_numsub("good", 1);
    let before = node.metrics();

    let cases = cases();
    let mut expected: std::collections::HashMap<&str, u64> = Default::default();
    for (i, c) in cases.into_iter().enumerate() {
        let mut bad: Client = node.client();
        // (No `sync` here: it would join a room of its own. The node
        // handles one connection's frames in order anyway.)
        for f in &c.before {
            bad.send_text(f);
        }
        match &c.frame {
            Bad::Text(t) => bad.send_text(t),
            Bad::Binary => bad.send_binary(b"\x00\x01binary"),
            Bad::Long(n) => {
                // The node may close before it has read the whole frame.
                let _ = bad.send_raw_text_len(*n);
            }
            Bad::Raw(bytes) => {
                use std::io::Write;
                bad.tcp().write_all(bytes).expect("write a raw frame");
            }
        }
        bad.expect_close(c.code, c.reason);
        *expected.entry(c.label).or_default() += 1;

        // Everyone else is still served.
        let msg = format!("after case {i} ({})", c.reason);
        g1.send("good", msg.as_str());
        assert_eq!(g1.recv(), msg);
        assert_eq!(g2.recv(), msg);
    }

    // Nothing of the closed connections is left.
    redis.wait_numsub("many-0", 0);
    redis.wait_numsub("a", 0);
    assert_eq!(redis.numsub("good"), 1);
    let after = node.wait_metric("roomcast_connections", |v| v == 2);
    assert_eq!(after, 2);
    let m = node.metrics();
    // Every label core knows has its line (`bad_frames` panics without
    // one) and counts exactly its cases.
    for label in FrameError::LABELS {
        assert_eq!(
            m.bad_frames(label) - before.bad_frames(label),
            expected.get(label).copied().unwrap_or(0),
            "roomcast_bad_frames_total{{reason=\"{label}\"}}"
        );
    }
    assert_eq!(m.get("roomcast_rooms"), 1);
}

/// The cases cover every label of [`FrameError::LABELS`], and name no other.
#[test]
fn every_bad_frame_label_has_a_case() {
    let cases = cases();
    for label in FrameError::LABELS {
        assert!(
            cases.iter().any(|c| c.label == label),
            "no case in bad_input.rs is counted as {label:?}"
        );
    }
    for c in &cases {
        assert!(
            FrameError::LABELS.contains(&c.label),
            "case {:?} is counted as {:?}, which core does not know",
            c.reason,
            c.label
        );
    }
}

/// A frame of exactly --max-frame-bytes is accepted and delivered; one byte
/// more is refused. Also with a smaller configured limit.
fn frame_at_the_limit_is_accepted(rt: Runtime) {
    for (limit, flags) in [
        (65536usize, &[][..]),
        (1024, &["--max-frame-bytes", "1024"][..]),
    ] {
        let node = Node::embedded(rt, flags);
        let mut a = node.client();
        a.join("big");
        let head = r#"{"type":"sendMessage","roomId":"big","message":""#;
        let tail = r#""}"#;
        let body = "m".repeat(limit - head.len() - tail.len());
        let frame = format!("{head}{body}{tail}");
        assert_eq!(frame.len(), limit);
        a.send_text(&frame);
        assert_eq!(a.recv(), body);

        let frame = format!("{head}{body}m{tail}");
        a.try_write(Message::text(frame)).expect("send");
        a.expect_close(1009, &format!("frame larger than {limit} bytes"));
    }
}
