//! Property tests of the Centrifugo JSON codec: encode→parse round trips of
//! every request, batched frames, compaction of spaced data, encoders that
//! always give valid JSON holding the values given, and arbitrary input that
//! never panics.

use std::borrow::Cow;

use proptest::prelude::*;
use roomcast_core::Limits;
use roomcast_core::codec::centrifugo::{
    ClientInfo, Command, CommandError, CommandErrorKind, Disconnect, FrameError, HistoryResult,
    Publication, RawJson, Request, StreamPosition, encode_error_reply, encode_history_reply,
    encode_join_push, encode_presence_reply, encode_pub_push, parse_frame,
};
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".*".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn raw(v: &Value) -> RawJson<'static> {
    RawJson::new(&v.to_string())
        .expect("serde_json writes valid JSON")
        .into_owned()
}

/// Any data; `null` included (a value for publish and send).
fn data() -> impl Strategy<Value = RawJson<'static>> {
    json_value().prop_map(|v| raw(&v))
}

/// Optional data: `null` reads as absent there, so it is never generated.
fn opt_data() -> impl Strategy<Value = Option<RawJson<'static>>> {
    prop::option::of(
        json_value()
            .prop_filter("not null", |v| !v.is_null())
            .prop_map(|v| raw(&v)),
    )
}

fn channel() -> impl Strategy<Value = Cow<'static, str>> {
    // Any Unicode, 1..=64 chars: within the 256-byte default.
    proptest::string::string_regex(".{1,64}")
        .expect("valid regex")
        .prop_map(Cow::Owned)
}

fn text() -> impl Strategy<Value = Cow<'static, str>> {
    ".{1,24}".prop_map(Cow::Owned)
}

/// Optional strings: empty reads as absent, so never `Some("")`.
fn opt_text() -> impl Strategy<Value = Option<Cow<'static, str>>> {
    prop::option::of(text())
}

fn request() -> impl Strategy<Value = Request<'static>> {
    prop_oneof![
        (opt_text(), opt_data(), opt_text(), opt_text()).prop_map(
            |(token, data, name, version)| {
                Request::Connect {
                    token,
                    data,
                    name,
                    version,
                }
            }
        ),
        (
            channel(),
            opt_text(),
            any::<[bool; 4]>(),
            opt_text(),
            prop::option::of(1..=u64::MAX),
            opt_data()
        )
            .prop_map(
                |(channel, token, b, epoch, offset, data)| Request::Subscribe {
                    channel,
                    token,
                    recover: b[0],
                    epoch,
                    offset,
                    join_leave: b[1],
                    positioned: b[2],
                    recoverable: b[3],
                    data,
                }
            ),
        channel().prop_map(|channel| Request::Unsubscribe { channel }),
        (channel(), data()).prop_map(|(channel, data)| Request::Publish { channel, data }),
        channel().prop_map(|channel| Request::Presence { channel }),
        channel().prop_map(|channel| Request::PresenceStats { channel }),
        (
            channel(),
            prop::option::of(any::<i32>().prop_filter("non-zero", |l| *l != 0)),
            prop::option::of((any::<u64>(), ".{0,8}")),
            any::<bool>()
        )
            .prop_map(|(channel, limit, since, reverse)| Request::History {
                channel,
                limit,
                since: since.map(|(offset, epoch)| StreamPosition {
                    offset,
                    epoch: epoch.into(),
                }),
                reverse,
            }),
        (opt_text(), opt_data()).prop_map(|(method, data)| Request::Rpc { method, data }),
        data().prop_map(|data| Request::Send { data }),
        text().prop_map(|token| Request::Refresh { token }),
        (channel(), text()).prop_map(|(channel, token)| Request::SubRefresh { channel, token }),
        Just(Request::Ping),
        Just(Request::Pong),
    ]
}

fn command() -> impl Strategy<Value = Command<'static>> {
    (1..=u32::MAX, any::<bool>(), request()).prop_map(|(id, no_id, request)| {
        let id = match request {
            Request::Pong => 0,
            // send carries no id as SDKs send it, but may carry one.
            Request::Send { .. } if no_id => 0,
            _ => id,
        };
        Command { id, request }
    })
}

/// Every refusal is short, labelled, and classed as documented.
fn check_errors(bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse_frame(bytes, &Limits::default()) {
        Err(e) => {
            let text = e.to_string();
            prop_assert!(!text.is_empty() && text.len() <= 123, "{}", text);
            prop_assert!(FrameError::LABELS.contains(&e.label()));
            prop_assert_eq!(e.disconnect(), Disconnect::BAD_REQUEST);
            prop_assert_eq!(
                e == FrameError::NotUtf8,
                std::str::from_utf8(bytes).is_err()
            );
        }
        Ok(results) => {
            for r in results {
                match r {
                    Ok(c) => {
                        let enc = c.encode();
                        let again = parse_frame(enc.as_bytes(), &Limits::default())
                            .map_err(|e| TestCaseError::fail(format!("{enc}: {e}")))?;
                        prop_assert_eq!(again.len(), 1);
                        prop_assert_eq!(again[0].as_ref(), Ok(&c));
                    }
                    Err(e) => check_command_error(&e)?,
                }
            }
        }
    }
    Ok(())
}

fn check_command_error(e: &CommandError) -> Result<(), TestCaseError> {
    let text = e.to_string();
    prop_assert!(!text.is_empty() && text.len() <= 123, "{}", text);
    prop_assert!(CommandErrorKind::LABELS.contains(&e.label()));
    if let Some(id) = e.reply_id() {
        prop_assert_ne!(id, 0);
        prop_assert_eq!(id, e.id);
    }
    prop_assert!(matches!(e.error_code().code, 104 | 107));
    Ok(())
}

proptest! {
    #[test]
    fn commands_round_trip(c in command()) {
        let enc = c.encode();
        let parsed = parse_frame(enc.as_bytes(), &Limits::default()).unwrap();
        prop_assert_eq!(parsed.len(), 1);
        prop_assert_eq!(parsed[0].as_ref(), Ok(&c), "{}", enc);
    }

    #[test]
    fn batched_frames_round_trip(
        cs in prop::collection::vec(command(), 1..12),
        crlf in any::<bool>(),
        trailing in any::<bool>(),
    ) {
        let sep = if crlf { "\r\n" } else { "\n" };
        let mut frame = cs.iter().map(Command::encode).collect::<Vec<_>>().join(sep);
        if trailing {
            frame.push_str(sep);
        }
        let parsed: Vec<Command<'_>> = parse_frame(frame.as_bytes(), &Limits::default())
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        prop_assert_eq!(parsed, cs);
    }

    #[test]
    fn spaced_data_is_compacted(v in json_value(), id in 1..=u32::MAX) {
        // json.dumps-style spacing on one line (pretty output has newlines
        // only between tokens, never inside strings).
        let spaced = serde_json::to_string_pretty(&v).unwrap().replace('\n', " ");
        let frame = format!("{{ \"id\" : {id}, \"publish\" : {{ \"channel\" : \"c\", \"data\" : {spaced} }} }}");
        let parsed = parse_frame(frame.as_bytes(), &Limits::default()).unwrap();
        let Ok(Command { request: Request::Publish { data, .. }, .. }) = &parsed[0] else {
            panic!("{frame}: {parsed:?}")
        };
        prop_assert_eq!(data.as_str(), v.to_string());
    }

    #[test]
    fn pushes_are_valid_json_holding_the_values(
        ch in ".*",
        user in ".*",
        client in ".*",
        v in json_value(),
        offset in any::<u64>(),
    ) {
        let data = v.to_string();
        // What any JSON reader makes of the data (floats need not read back
        // bit for bit, so compare with the data read, not with `v`).
        let v: Value = serde_json::from_str(&data).unwrap();
        let info = ClientInfo {
            user: user.as_str().into(),
            client: client.as_str().into(),
            conn_info: Some(data.as_str().into()),
            chan_info: None,
        };
        let p = Publication { data: &data, info: Some(&info), offset };
        let got: Value = serde_json::from_str(&encode_pub_push(&ch, &p)).unwrap();
        let push = &got["push"];
        if !ch.is_empty() {
            prop_assert_eq!(&push["channel"], &Value::from(ch.as_str()));
        }
        prop_assert_eq!(&push["pub"]["data"], &v);
        prop_assert_eq!(&push["pub"]["info"]["user"], &Value::from(user.as_str()));
        prop_assert_eq!(&push["pub"]["info"]["client"], &Value::from(client.as_str()));
        prop_assert_eq!(&push["pub"]["info"]["conn_info"], &v);
        if offset != 0 {
            prop_assert_eq!(&push["pub"]["offset"], &Value::from(offset));
        }
        let join: Value = serde_json::from_str(&encode_join_push(&ch, &info)).unwrap();
        prop_assert_eq!(&join["push"]["join"]["info"]["client"], &Value::from(client.as_str()));
        let presence: Value = serde_json::from_str(&encode_presence_reply(1, [&info])).unwrap();
        prop_assert_eq!(
            &presence["presence"]["presence"][client.as_str()]["user"],
            &Value::from(user.as_str())
        );
        let history: Value = serde_json::from_str(&encode_history_reply(
            2,
            &HistoryResult { publications: &[p, p], epoch: &user, offset, raw_publications: None },
        ))
        .unwrap();
        prop_assert_eq!(&history["history"]["publications"][1]["data"], &v);
        prop_assert_eq!(&history["history"]["epoch"], &Value::from(user.as_str()));
        prop_assert_eq!(&history["history"]["offset"], &Value::from(offset));
        let err: Value = serde_json::from_str(&encode_error_reply(3, 4000, &user, true)).unwrap();
        if !user.is_empty() {
            prop_assert_eq!(&err["error"]["message"], &Value::from(user.as_str()));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check_errors(&bytes)?;
    }

    #[test]
    fn json_shaped_garbage_never_panics(
        s in r#"(\{|\}|\[|\]|"|,|:| |\n|\r|\\|\\u|d800|dc00|00e9|null|true|false|0|1|-|\.|e|4294967296|id|connect|subscribe|publish|history|send|ping|rpc|sub_refresh|presence_stats|channel|data|token|since|offset|epoch|limit|recover){0,48}"#
    ) {
        check_errors(s.as_bytes())?;
    }

    #[test]
    fn mutated_commands_never_panic(
        c in command(),
        at in any::<prop::sample::Index>(),
        insert in prop::sample::select(vec!["", "\"", "{", "}", "[", "]", ",", ":", "null", "1", "\\u", "\n", "\"id\":2,"]),
        cut in any::<bool>(),
    ) {
        let enc = c.encode();
        let mut i = at.index(enc.len() + 1);
        while !enc.is_char_boundary(i) {
            i -= 1;
        }
        let mutated = if cut {
            format!("{}{insert}", &enc[..i])
        } else {
            format!("{}{insert}{}", &enc[..i], &enc[i..])
        };
        check_errors(mutated.as_bytes())?;
    }
}
