//! Property tests of the parsers: encode→parse round trips, and arbitrary
//! input never panics.

use proptest::prelude::*;
use roomcast_core::envelope::{self, Envelope};
use roomcast_core::seed::{ClientFrame, Message, compact_json, parse_client_frame};
use roomcast_core::{BrokerMode, ClientProtocol, Inbound, Limits, Node, NodeConfig, Publication};
use std::time::Duration;

fn room() -> impl Strategy<Value = String> {
    // Any Unicode, 1..=64 chars: within the 256-byte default.
    proptest::string::string_regex(".{1,64}").expect("valid regex")
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".*".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Message<'static>> {
    prop_oneof![
        ".*".prop_map(|s| Message::Text(s.into())),
        json_value()
            .prop_filter("non-string", |v| !v.is_string())
            .prop_map(|v| Message::Json(v.to_string().into())),
    ]
}

/// A publisher's client info: a JSON object, compact (as the node sends it).
fn info() -> impl Strategy<Value = Option<String>> {
    prop::option::of(
        prop::collection::btree_map(".{0,8}", json_value(), 0..4)
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()).to_string()),
    )
}

fn frame() -> impl Strategy<Value = ClientFrame<'static>> {
    prop_oneof![
        room().prop_map(|r| ClientFrame::Subscribe { room: r.into() }),
        room().prop_map(|r| ClientFrame::Unsubscribe { room: r.into() }),
        (room(), message()).prop_map(|(r, m)| ClientFrame::SendMessage {
            room: r.into(),
            message: m
        }),
    ]
}

proptest! {
    #[test]
    fn client_frames_round_trip(f in frame()) {
        let enc = f.encode();
        let parsed = parse_client_frame(enc.as_bytes(), &Limits::default()).unwrap();
        prop_assert_eq!(parsed, f);
    }

    #[test]
    fn envelopes_round_trip(
        r in room(),
        m in message(),
        i in info(),
        pos in proptest::option::of((1u64.., "[a-z0-9]{1,12}")),
    ) {
        let position = pos.map(|(o, e)| (o, std::borrow::Cow::Owned(e)));
        let env = Envelope { room: r.into(), message: m, info: i.map(Into::into), position };
        let enc = env.encode();
        let parsed = envelope::parse_envelope(enc.as_bytes()).unwrap();
        prop_assert_eq!(&parsed, &env);
        // A publication's payload is the same text.
        let publication = Publication {
            room: &env.room,
            message: env.message.clone(),
            info: env.info.as_deref(),
            position: None,
        };
        let want = match &env.position {
            None => envelope::encode(&publication),
            Some((o, e)) => envelope::encode_positioned(&publication, *o, e),
        };
        prop_assert_eq!(want, enc);
    }

    #[test]
    fn pretty_printed_messages_are_delivered_compact(v in json_value()) {
        prop_assume!(!v.is_string());
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let frame = format!("{{\"type\":\"sendMessage\",\"roomId\":\"r\",\"message\":{pretty}}}");
        let parsed = parse_client_frame(frame.as_bytes(), &Limits::default()).unwrap();
        let ClientFrame::SendMessage { message, .. } = parsed else { panic!() };
        prop_assert_eq!(message.delivered(), v.to_string());
    }

    #[test]
    fn compacting_is_idempotent_and_keeps_the_value(v in json_value()) {
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        let once = compact_json(&pretty).into_owned();
        prop_assert_eq!(compact_json(&once).into_owned(), once.clone());
        prop_assert_eq!(once, v.to_string());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_client_frame(&bytes, &Limits::default());
        let _ = envelope::parse_envelope(&bytes);
        let _ = roomcast_core::http::route(&bytes, true);
        for mode in [BrokerMode::Local, BrokerMode::Remote] {
            let node = Node::new(NodeConfig { mode, ..NodeConfig::default() }, Duration::ZERO);
            let member = node.open(ClientProtocol::Seed, None, Duration::ZERO);
            node.frame(&member, Inbound::Text(br#"{"type":"SUBSCRIBE","room":"r"}"#), Duration::ZERO);
            let conn = node.open(ClientProtocol::Seed, None, Duration::ZERO);
            node.frame(&conn, Inbound::Text(&bytes), Duration::ZERO);
            node.broker_message(&bytes, &bytes);
            node.broker_message(b"r", &bytes);
            let probe = node.inspect(|h| h.broker().probe_channel().to_string());
            node.broker_message(probe.as_bytes(), &bytes);
            prop_assert!(node.snapshot().connections <= 2);
        }
    }

    #[test]
    fn json_shaped_garbage_never_panics(s in r#"[{}\[\]",:a-z0-9 \\]{0,64}"#) {
        let _ = parse_client_frame(s.as_bytes(), &Limits::default());
        let _ = envelope::parse_envelope(s.as_bytes());
    }
}
