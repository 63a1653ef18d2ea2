//! The client protocol, wire-compatible with the tutorial server.
//!
//! Client → server text frames:
//! - `{"type":"SUBSCRIBE","room":R}`
//! - `{"type":"UNSUBSCRIBE","room":R}`
//! - `{"type":"sendMessage","roomId":R,"message":M}`
//!
//! Server → client: one text frame per delivered message, holding M itself
//! when M is a JSON string, otherwise M's compact JSON text.
//!
//! Parsing borrows from the input wherever the JSON has no escapes, never
//! panics, and reports every problem as a [`FrameError`] whose `Display` is
//! the close reason sent to the client (always ≤ 123 bytes, the WebSocket
//! limit for a close reason).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Limits;

/// WebSocket close code 1001: the server is going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code 1002: the client broke the WebSocket protocol.
pub const CLOSE_PROTOCOL: u16 = 1002;
/// WebSocket close code 1003: unsupported data (a binary frame).
pub const CLOSE_UNSUPPORTED: u16 = 1003;
/// WebSocket close code 1007: data inconsistent with its type (a text frame
/// that is not UTF-8).
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// WebSocket close code 1008: policy violation (bad command, limit, slow consumer).
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code 1009: message too big.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// A parsed client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// Join a room.
    Subscribe { room: Cow<'a, str> },
    /// Leave a room.
    Unsubscribe { room: Cow<'a, str> },
    /// Send a message to every member of a room.
    SendMessage {
        room: Cow<'a, str>,
        message: Message<'a>,
    },
}

/// The `message` of a `sendMessage`, as it will be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// M was a JSON string: members receive the string itself (unescaped).
    Text(Cow<'a, str>),
    /// M was any other JSON value: members receive its compact JSON text,
    /// with keys, numbers and string escapes exactly as the sender wrote them.
    Json(Cow<'a, str>),
}

impl Message<'_> {
    /// The text members receive.
    pub fn delivered(&self) -> &str {
        match self {
            Message::Text(s) | Message::Json(s) => s,
        }
    }

    /// Appends this message as a JSON value.
    fn write_json(&self, out: &mut String) {
        match self {
            Message::Text(s) => write_json_string(s, out),
            Message::Json(s) => out.push_str(s),
        }
    }

    /// Detaches from the input buffer.
    pub fn into_owned(self) -> Message<'static> {
        match self {
            Message::Text(s) => Message::Text(Cow::Owned(s.into_owned())),
            Message::Json(s) => Message::Json(Cow::Owned(s.into_owned())),
        }
    }
}

/// Which of the seed protocol's three commands a field error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Subscribe,
    Unsubscribe,
    SendMessage,
}

impl Verb {
    /// The command's `type` as it appears on the wire.
    pub fn wire_name(self) -> &'static str {
        match self {
            Verb::Subscribe => "SUBSCRIBE",
            Verb::Unsubscribe => "UNSUBSCRIBE",
            Verb::SendMessage => "sendMessage",
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// Why a client frame was refused. `Display` is the close reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("binary frames are not supported")]
    Binary,
    /// Refused by the WebSocket layer: reserved bits, an unmasked frame, a
    /// bad opcode or fragmentation, a bad close frame.
    #[error("WebSocket protocol error")]
    Protocol,
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    #[error("frame is not valid JSON")]
    NotJson,
    #[error("frame is not a JSON object")]
    NotObject,
    #[error("frame has a duplicate field")]
    DuplicateField,
    #[error("missing type")]
    MissingType,
    #[error("type must be a string")]
    TypeNotString,
    #[error("unknown type")]
    UnknownType,
    #[error("{command}: missing {field}")]
    MissingField { command: Verb, field: &'static str },
    #[error("{command}: {field} must be a string")]
    FieldNotString { command: Verb, field: &'static str },
    #[error("string has an invalid \\u escape")]
    BadEscape,
    #[error("room name is empty")]
    RoomEmpty,
    #[error("room name longer than {max} bytes")]
    RoomTooLong { max: usize },
    #[error("more than {max} rooms on one connection")]
    TooManyRooms { max: usize },
}

impl FrameError {
    /// The WebSocket close code this error closes the connection with.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => CLOSE_TOO_BIG,
            FrameError::Binary => CLOSE_UNSUPPORTED,
            FrameError::Protocol => CLOSE_PROTOCOL,
            FrameError::NotUtf8 => CLOSE_INVALID_DATA,
            _ => CLOSE_POLICY,
        }
    }

    /// A stable metric label for this kind of error.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Binary => "binary",
            FrameError::Protocol => "protocol",
            FrameError::NotUtf8 => "not_utf8",
            FrameError::NotJson => "not_json",
            FrameError::NotObject => "not_object",
            FrameError::DuplicateField => "duplicate_field",
            FrameError::MissingType => "missing_type",
            FrameError::TypeNotString => "type_not_string",
            FrameError::UnknownType => "unknown_type",
            FrameError::MissingField { .. } => "missing_field",
            FrameError::FieldNotString { .. } => "field_not_string",
            FrameError::BadEscape => "bad_escape",
            FrameError::RoomEmpty => "room_empty",
            FrameError::RoomTooLong { .. } => "room_too_long",
            FrameError::TooManyRooms { .. } => "too_many_rooms",
        }
    }

    /// Every label, for metrics that list each reason even at zero.
    pub const LABELS: [&'static str; 16] = [
        "too_large",
        "binary",
        "protocol",
        "not_utf8",
        "not_json",
        "not_object",
        "duplicate_field",
        "missing_type",
        "type_not_string",
        "unknown_type",
        "missing_field",
        "field_not_string",
        "bad_escape",
        "room_empty",
        "room_too_long",
        "too_many_rooms",
    ];
}

/// The fields of any frame, each kept raw so that every problem gets its own
/// precise error. Unknown fields are ignored, as the tutorial server does.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(rename = "roomId", borrow, default, deserialize_with = "present")]
    room_id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    message: Option<&'a RawValue>,
    /// Only in broker payloads: the publisher's client info, when a client
    /// of the Centrifugo protocol published.
    #[serde(borrow, default, deserialize_with = "present")]
    info: Option<&'a RawValue>,
    /// Only in broker payloads of rooms with history: the publication's
    /// offset and its stream's epoch.
    #[serde(borrow, default, deserialize_with = "present")]
    offset: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    epoch: Option<&'a RawValue>,
}

/// The fields a broker payload may carry beyond a client frame's.
#[derive(Debug, Default)]
pub(crate) struct Extras<'a> {
    pub info: Option<&'a RawValue>,
    pub offset: Option<&'a RawValue>,
    pub epoch: Option<&'a RawValue>,
}

/// A field that is present, even when it is `null` (which plain `Option`
/// would read as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Parses one client text frame, checking the frame-size and room-name limits.
/// (The rooms-per-connection limit needs connection state; the hub checks it.)
pub fn parse_client_frame<'a>(
    input: &'a [u8],
    limits: &Limits,
) -> Result<ClientFrame<'a>, FrameError> {
    parse_with_extras(input, limits).map(|(frame, _)| frame)
}

/// [`parse_client_frame`], also returning the fields (raw JSON) a broker
/// payload may carry beyond a client frame's.
pub(crate) fn parse_with_extras<'a>(
    input: &'a [u8],
    limits: &Limits,
) -> Result<(ClientFrame<'a>, Extras<'a>), FrameError> {
    if input.len() > limits.max_frame_bytes {
        return Err(FrameError::TooLarge {
            max: limits.max_frame_bytes,
        });
    }
    let text = std::str::from_utf8(input).map_err(|_| FrameError::NotUtf8)?;
    let raw = parse_raw(text)?;
    let ty = raw.ty.ok_or(FrameError::MissingType)?;
    let ty: Cow<'a, str> = as_string(ty)?.ok_or(FrameError::TypeNotString)?;
    let frame = match &*ty {
        "SUBSCRIBE" => ClientFrame::Subscribe {
            room: room_field(raw.room, Verb::Subscribe, "room", limits)?,
        },
        "UNSUBSCRIBE" => ClientFrame::Unsubscribe {
            room: room_field(raw.room, Verb::Unsubscribe, "room", limits)?,
        },
        "sendMessage" => ClientFrame::SendMessage {
            room: room_field(raw.room_id, Verb::SendMessage, "roomId", limits)?,
            message: message_field(raw.message)?,
        },
        _ => return Err(FrameError::UnknownType),
    };
    Ok((
        frame,
        Extras {
            info: raw.info,
            offset: raw.offset,
            epoch: raw.epoch,
        },
    ))
}

fn parse_raw(text: &str) -> Result<RawFrame<'_>, FrameError> {
    // serde would read a JSON array into the struct positionally; refuse it.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => Err(FrameError::NotObject),
            Err(_) => Err(FrameError::NotJson),
        };
    }
    match serde_json::from_str::<RawFrame<'_>>(text) {
        Ok(raw) => Ok(raw),
        Err(e) if e.is_data() => {
            // Valid JSON of the wrong shape (an array, a number, duplicate keys).
            match serde_json::from_str::<&RawValue>(text) {
                Ok(v) if v.get().starts_with('{') => Err(FrameError::DuplicateField),
                Ok(_) => Err(FrameError::NotObject),
                Err(_) => Err(FrameError::NotJson),
            }
        }
        Err(_) => Err(FrameError::NotJson),
    }
}

/// A JSON string value, borrowed when it has no escapes. `Ok(None)` when
/// the value is not a string; `Err` when it is one that no Rust string can
/// hold (a lone UTF-16 surrogate escape such as `"\ud800"`).
fn as_string(raw: &RawValue) -> Result<Option<Cow<'_, str>>, FrameError> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Ok(None);
    }
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Ok(Some(Cow::Borrowed(s))),
        Err(_) => match serde_json::from_str::<String>(text) {
            Ok(s) => Ok(Some(Cow::Owned(s))),
            Err(_) => Err(FrameError::BadEscape),
        },
    }
}

fn room_field<'a>(
    raw: Option<&'a RawValue>,
    command: Verb,
    field: &'static str,
    limits: &Limits,
) -> Result<Cow<'a, str>, FrameError> {
    let raw = raw.ok_or(FrameError::MissingField { command, field })?;
    let room = as_string(raw)?.ok_or(FrameError::FieldNotString { command, field })?;
    check_room(&room, limits)?;
    Ok(room)
}

/// Checks a room name against the limits: 1..=max bytes.
pub fn check_room(room: &str, limits: &Limits) -> Result<(), FrameError> {
    if room.is_empty() {
        return Err(FrameError::RoomEmpty);
    }
    if room.len() > limits.max_room_bytes {
        return Err(FrameError::RoomTooLong {
            max: limits.max_room_bytes,
        });
    }
    Ok(())
}

fn message_field(raw: Option<&RawValue>) -> Result<Message<'_>, FrameError> {
    let raw = raw.ok_or(FrameError::MissingField {
        command: Verb::SendMessage,
        field: "message",
    })?;
    Ok(match as_string(raw)? {
        Some(s) => Message::Text(s),
        None => Message::Json(compact_json(raw.get())),
    })
}

/// Removes the insignificant white space of a valid JSON text, keeping
/// everything else (key order, number spelling, escapes) byte for byte.
pub fn compact_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let has_ws = {
        let mut in_str = false;
        let mut escaped = false;
        bytes.iter().any(|&b| {
            if in_str {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_str = false;
                }
                false
            } else if b == b'"' {
                in_str = true;
                false
            } else {
                matches!(b, b' ' | b'\t' | b'\n' | b'\r')
            }
        })
    };
    if !has_ws {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut in_str = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            out.push(c);
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(s: &str, out: &mut String) {
    // serde_json's escaping of a &str cannot fail.
    let quoted = serde_json::to_string(s).unwrap_or_default();
    out.push_str(&quoted);
}

/// Encodes a `sendMessage` frame (the same text is the broker payload).
pub fn encode_send_message(room: &str, message: &Message<'_>) -> String {
    let mut out = String::with_capacity(room.len() + message.delivered().len() + 48);
    out.push_str(r#"{"type":"sendMessage","roomId":"#);
    write_json_string(room, &mut out);
    out.push_str(r#","message":"#);
    message.write_json(&mut out);
    out.push('}');
    out
}

impl ClientFrame<'_> {
    /// Encodes this frame as a client would send it.
    pub fn encode(&self) -> String {
        match self {
            ClientFrame::Subscribe { room } => encode_room_command("SUBSCRIBE", room),
            ClientFrame::Unsubscribe { room } => encode_room_command("UNSUBSCRIBE", room),
            ClientFrame::SendMessage { room, message } => encode_send_message(room, message),
        }
    }

    /// Detaches from the input buffer.
    pub fn into_owned(self) -> ClientFrame<'static> {
        match self {
            ClientFrame::Subscribe { room } => ClientFrame::Subscribe {
                room: Cow::Owned(room.into_owned()),
            },
            ClientFrame::Unsubscribe { room } => ClientFrame::Unsubscribe {
                room: Cow::Owned(room.into_owned()),
            },
            ClientFrame::SendMessage { room, message } => ClientFrame::SendMessage {
                room: Cow::Owned(room.into_owned()),
                message: message.into_owned(),
            },
        }
    }
}

fn encode_room_command(ty: &str, room: &str) -> String {
    let mut out = String::with_capacity(room.len() + 32);
    out.push_str(r#"{"type":""#);
    out.push_str(ty);
    out.push_str(r#"","room":"#);
    write_json_string(room, &mut out);
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn parse(s: &str) -> Result<ClientFrame<'_>, FrameError> {
        parse_client_frame(s.as_bytes(), &limits())
    }

    #[test]
    fn seed_subscribe() {
        assert_eq!(
            parse(r#"{"type":"SUBSCRIBE","room":"room1"}"#),
            Ok(ClientFrame::Subscribe {
                room: "room1".into()
            })
        );
    }

    #[test]
    fn seed_send_message_string() {
        let f = parse(r#"{"type":"sendMessage","roomId":"room1","message":"hi there"}"#).unwrap();
        match f {
            ClientFrame::SendMessage { room, message } => {
                assert_eq!(room, "room1");
                assert_eq!(message.delivered(), "hi there");
                assert!(matches!(message, Message::Text(Cow::Borrowed(_))));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn message_object_is_compacted_keeping_order_and_spelling() {
        let f = parse(
            "{ \"type\" : \"sendMessage\", \"roomId\":\"r\", \"message\": { \"b\" : 1.50, \"a\": [1, \"x y\"] } }",
        )
        .unwrap();
        let ClientFrame::SendMessage { message, .. } = f else {
            panic!()
        };
        assert_eq!(message.delivered(), r#"{"b":1.50,"a":[1,"x y"]}"#);
    }

    #[test]
    fn escaped_string_message_is_unescaped() {
        let f = parse(r#"{"type":"sendMessage","roomId":"r","message":"a\"b\u00e9\n"}"#).unwrap();
        let ClientFrame::SendMessage { message, .. } = f else {
            panic!()
        };
        assert_eq!(message.delivered(), "a\"bé\n");
    }

    #[test]
    fn message_number_null_bool() {
        for (m, d) in [
            ("12", "12"),
            ("null", "null"),
            ("true", "true"),
            ("-0.5e3", "-0.5e3"),
        ] {
            let s = format!(r#"{{"type":"sendMessage","roomId":"r","message":{m}}}"#);
            let f = parse(&s).unwrap();
            let ClientFrame::SendMessage { message, .. } = f else {
                panic!()
            };
            assert_eq!(message.delivered(), d);
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(parse(r#"{"type":"SUBSCRIBE","room":"r","extra":[1,2]}"#).is_ok());
    }

    #[test]
    fn bad_input_rules() {
        let cases: &[(&str, FrameError, &str)] = &[
            ("nope", FrameError::NotJson, "frame is not valid JSON"),
            ("[1,2]", FrameError::NotObject, "frame is not a JSON object"),
            ("\"x\"", FrameError::NotObject, "frame is not a JSON object"),
            ("{}", FrameError::MissingType, "missing type"),
            (
                r#"{"type":5}"#,
                FrameError::TypeNotString,
                "type must be a string",
            ),
            (
                r#"{"type":"JOIN"}"#,
                FrameError::UnknownType,
                "unknown type",
            ),
            (
                r#"{"type":"SUBSCRIBE"}"#,
                FrameError::MissingField {
                    command: Verb::Subscribe,
                    field: "room",
                },
                "SUBSCRIBE: missing room",
            ),
            (
                r#"{"type":"UNSUBSCRIBE","room":7}"#,
                FrameError::FieldNotString {
                    command: Verb::Unsubscribe,
                    field: "room",
                },
                "UNSUBSCRIBE: room must be a string",
            ),
            (
                r#"{"type":"sendMessage","message":"x"}"#,
                FrameError::MissingField {
                    command: Verb::SendMessage,
                    field: "roomId",
                },
                "sendMessage: missing roomId",
            ),
            (
                r#"{"type":"sendMessage","roomId":"r"}"#,
                FrameError::MissingField {
                    command: Verb::SendMessage,
                    field: "message",
                },
                "sendMessage: missing message",
            ),
            (
                r#"{"type":"SUBSCRIBE","room":""}"#,
                FrameError::RoomEmpty,
                "room name is empty",
            ),
            (
                r#"{"type":"SUBSCRIBE","room":"a","room":"b"}"#,
                FrameError::DuplicateField,
                "frame has a duplicate field",
            ),
        ];
        for (input, err, reason) in cases {
            let got = parse(input).unwrap_err();
            assert_eq!(&got, err, "{input}");
            assert_eq!(got.to_string(), *reason, "{input}");
            assert_eq!(got.close_code(), CLOSE_POLICY);
        }
    }

    #[test]
    fn room_length_limit_counts_bytes() {
        let ok = "é".repeat(128); // 256 bytes
        let long = format!("{ok}a");
        assert!(parse(&ClientFrame::Subscribe { room: ok.into() }.encode()).is_ok());
        let err = parse(&ClientFrame::Subscribe { room: long.into() }.encode()).unwrap_err();
        assert_eq!(err.to_string(), "room name longer than 256 bytes");
    }

    #[test]
    fn frame_size_limit() {
        let mut l = limits();
        l.max_frame_bytes = 10;
        let err = parse_client_frame(br#"{"type":"SUBSCRIBE","room":"r"}"#, &l).unwrap_err();
        assert_eq!(err, FrameError::TooLarge { max: 10 });
        assert_eq!(err.close_code(), CLOSE_TOO_BIG);
        assert_eq!(err.to_string(), "frame larger than 10 bytes");
    }

    #[test]
    fn lone_surrogate_escapes_are_refused() {
        for frame in [
            r#"{"type":"sendMessage","roomId":"r","message":"\ud800"}"#,
            r#"{"type":"SUBSCRIBE","room":"a\udc00b"}"#,
            r#"{"type":"\ud800"}"#,
        ] {
            let err = parse(frame).unwrap_err();
            assert_eq!(err, FrameError::BadEscape, "{frame}");
            assert_eq!(err.to_string(), "string has an invalid \\u escape");
        }
        // Inside a JSON object message it is just text, delivered as written.
        let f = parse(r#"{"type":"sendMessage","roomId":"r","message":{"a":"\ud800"}}"#).unwrap();
        let ClientFrame::SendMessage { message, .. } = f else {
            panic!()
        };
        assert_eq!(message.delivered(), r#"{"a":"\ud800"}"#);
    }

    #[test]
    fn not_utf8() {
        assert_eq!(
            parse_client_frame(b"\xff\xfe", &limits()),
            Err(FrameError::NotUtf8)
        );
        assert_eq!(FrameError::NotUtf8.close_code(), CLOSE_INVALID_DATA);
        assert_eq!(FrameError::Protocol.close_code(), CLOSE_PROTOCOL);
    }

    #[test]
    fn reasons_fit_a_close_frame() {
        let e = FrameError::RoomTooLong { max: usize::MAX };
        assert!(e.to_string().len() <= 123);
        assert_eq!(FrameError::Binary.close_code(), CLOSE_UNSUPPORTED);
        for e in [
            FrameError::TooLarge { max: usize::MAX },
            FrameError::TooManyRooms { max: usize::MAX },
        ] {
            assert!(e.to_string().len() <= 123);
            assert!(FrameError::LABELS.contains(&e.label()));
        }
    }

    #[test]
    fn encode_round_trips() {
        let frames = [
            ClientFrame::Subscribe {
                room: "a \"q\" é".into(),
            },
            ClientFrame::Unsubscribe { room: "x".into() },
            ClientFrame::SendMessage {
                room: "r".into(),
                message: Message::Text("line\nbreak".into()),
            },
            ClientFrame::SendMessage {
                room: "r".into(),
                message: Message::Json(r#"{"k":[1,2,{"z":null}]}"#.into()),
            },
        ];
        for f in frames {
            let enc = f.encode();
            assert_eq!(parse(&enc).unwrap(), f, "{enc}");
        }
    }

    #[test]
    fn compact_keeps_whitespace_inside_strings() {
        assert_eq!(
            compact_json("[ \"a \\\" b\" , 1 ]"),
            Cow::<str>::Owned("[\"a \\\" b\",1]".into())
        );
        assert!(matches!(compact_json("[1,2]"), Cow::Borrowed(_)));
    }
}
