//! Arbitrary bytes as a client text frame of the Centrifugo JSON protocol.
//!
//! - `centrifugo::parse_frame` never panics;
//! - a refused frame has a reason of 1..=123 bytes, a listed metric label and
//!   the 3501 disconnect; `NotUtf8` exactly for bytes that are not UTF-8
//!   (unless too large), `TooLarge` exactly past the limit;
//! - every accepted command re-encodes (`Command::encode`) to text that parses
//!   to an equal command, and encoding is then a fixed point; all accepted
//!   commands re-encoded as one frame parse back to the same list;
//! - every command error has a text of 1..=123 bytes and a listed label; it
//!   names a reply id only when it has an id and is not a `send`; its error
//!   code is 104 for a command with no known method, else 107; its error
//!   reply is valid JSON;
//! - an accepted `publish` gives a publication push that is valid JSON
//!   holding the same channel and data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::Limits;
use roomcast_core::codec::centrifugo::{
    CommandErrorKind, Disconnect, ErrorCode, FrameError, MAX_COMMANDS_PER_FRAME, Method,
    Publication, Request, encode_frame, encode_pub_push, parse_frame,
};
use serde_json::value::RawValue;

fn short(text: &str) {
    assert!(
        !text.is_empty() && text.len() <= 123,
        "error text of {} bytes: {text:?}",
        text.len()
    );
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let results = match parse_frame(data, &limits) {
        Err(e) => {
            short(&e.to_string());
            assert!(FrameError::LABELS.contains(&e.label()), "label of {e:?}");
            assert_eq!(e.disconnect(), Disconnect::BAD_REQUEST);
            let too_large = data.len() > limits.max_frame_bytes;
            assert_eq!(matches!(e, FrameError::TooLarge { .. }), too_large, "{e:?}");
            if !too_large {
                let utf8 = std::str::from_utf8(data).is_ok();
                assert_eq!(e == FrameError::NotUtf8, !utf8, "{e:?}");
            }
            return;
        }
        Ok(results) => results,
    };
    assert!(results.len() <= MAX_COMMANDS_PER_FRAME);
    let mut accepted = Vec::new();
    for r in results {
        match r {
            Ok(c) => {
                let encoded = c.encode();
                let again = parse_frame(encoded.as_bytes(), &limits)
                    .unwrap_or_else(|e| panic!("re-encoded {encoded:?} refused: {e}"));
                assert_eq!(again.len(), 1, "{encoded:?}");
                let again = again[0]
                    .as_ref()
                    .unwrap_or_else(|e| panic!("re-encoded {encoded:?} refused: {e}"));
                assert_eq!(again, &c, "round trip through {encoded:?}");
                assert_eq!(again.encode(), encoded, "encoding is not a fixed point");
                if let Request::Publish { channel, data } = &c.request {
                    let p = Publication {
                        data: data.as_str(),
                        info: None,
                        offset: 1,
                    };
                    let push = encode_pub_push(channel, &p);
                    let raw: &RawValue = serde_json::from_str(&push)
                        .unwrap_or_else(|e| panic!("push {push:?} is not JSON: {e}"));
                    assert_eq!(raw.get(), push);
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&push) {
                        assert_eq!(v["push"]["channel"], channel.as_ref());
                        let want: serde_json::Value = serde_json::from_str(data.as_str()).unwrap();
                        assert_eq!(v["push"]["pub"]["data"], want);
                    }
                }
                accepted.push(c);
            }
            Err(e) => {
                short(&e.to_string());
                assert!(
                    CommandErrorKind::LABELS.contains(&e.label()),
                    "label of {e:?}"
                );
                let answerable = e.id != 0 && e.method != Some(Method::Send);
                assert_eq!(e.reply_id(), answerable.then_some(e.id), "{e:?}");
                let code = if e.kind == CommandErrorKind::UnknownMethod {
                    ErrorCode::METHOD_NOT_FOUND
                } else {
                    ErrorCode::BAD_REQUEST
                };
                assert_eq!(e.error_code(), code, "{e:?}");
                if let Some(reply) = e.encode_reply() {
                    serde_json::from_str::<serde_json::Value>(&reply)
                        .unwrap_or_else(|err| panic!("reply {reply:?} is not JSON: {err}"));
                }
            }
        }
    }
    let frame = encode_frame(&accepted);
    let again: Vec<_> = parse_frame(frame.as_bytes(), &limits)
        .unwrap_or_else(|e| panic!("re-encoded frame {frame:?} refused: {e}"))
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("re-encoded frame {frame:?}: {e}")))
        .collect();
    assert_eq!(again, accepted, "frame round trip through {frame:?}");
});
