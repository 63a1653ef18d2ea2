//! The broker wire format, identical to the tutorial server's.
//!
//! A message for room R is published on channel `prefix + R` with payload
//! `{"type":"sendMessage","roomId":R,"message":M}` (the client's own frame
//! format). Anything may publish there: other roomcast nodes, the tutorial's
//! Node.js server, or a backend with `redis-cli PUBLISH`.

use std::borrow::Cow;

use crate::codec::seed::{self as protocol, ClientFrame, Message};

/// Why a broker payload was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("channel does not carry the configured prefix")]
    ForeignChannel,
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    #[error("payload is not valid JSON")]
    NotJson,
    #[error("payload is not a sendMessage")]
    NotSendMessage,
    #[error("payload has no roomId or message")]
    MissingField,
    #[error("payload roomId does not match its channel")]
    RoomMismatch,
}

/// A parsed broker payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub room: Cow<'a, str>,
    pub message: Message<'a>,
    /// The publisher's client info (a JSON object), when a client of the
    /// Centrifugo protocol published. The tutorial's server ignores it.
    pub info: Option<Cow<'a, str>>,
    /// In a room with history: the publication's offset and its stream's
    /// epoch (both, or neither). The tutorial's server ignores them.
    pub position: Option<(u64, Cow<'a, str>)>,
}

impl Envelope<'_> {
    /// The payload to publish.
    pub fn encode(&self) -> String {
        let mut out = encode_parts(&self.room, &self.message, self.info.as_deref());
        if let Some((offset, epoch)) = &self.position {
            out.pop();
            push_position(&mut out, *offset, epoch);
        }
        out
    }
}

/// The payload for a publication: the seed's `sendMessage` frame, with the
/// publisher's `info` after the seed's fields when there is one.
pub fn encode(publication: &super::Publication<'_>) -> String {
    encode_parts(publication.room, &publication.message, publication.info)
}

/// [`encode`] with a position: what a room with history stores and
/// publishes (the Redis script appends the same two fields itself).
pub fn encode_positioned(publication: &super::Publication<'_>, offset: u64, epoch: &str) -> String {
    let mut out = encode(publication);
    out.pop();
    push_position(&mut out, offset, epoch);
    out
}

/// `,"offset":N,"epoch":"E"}` — as the publish script writes it (an epoch
/// is made of characters JSON need not escape).
fn push_position(out: &mut String, offset: u64, epoch: &str) {
    use std::fmt::Write;
    let _ = write!(out, r#","offset":{offset},"epoch":"#);
    protocol::write_json_string(epoch, out);
    out.push('}');
}

fn encode_parts(room: &str, message: &Message<'_>, info: Option<&str>) -> String {
    let mut out = protocol::encode_send_message(room, message);
    if let Some(info) = info {
        out.pop();
        out.push_str(r#","info":"#);
        out.push_str(info);
        out.push('}');
    }
    out
}

/// The channel name for a room.
pub fn channel_for(prefix: &str, room: &str) -> String {
    let mut c = String::with_capacity(prefix.len() + room.len());
    c.push_str(prefix);
    c.push_str(room);
    c
}

/// The room a channel carries, if it carries the prefix.
pub fn room_of_channel<'a>(prefix: &str, channel: &'a [u8]) -> Option<&'a [u8]> {
    channel.strip_prefix(prefix.as_bytes())
}

/// Parses a broker payload. Room-name limits are not applied: what arrives
/// from the broker was published by a trusted party, and delivery only
/// reaches rooms that local members joined under the limits anyway.
pub fn parse_envelope(payload: &[u8]) -> Result<Envelope<'_>, EnvelopeError> {
    let text = std::str::from_utf8(payload).map_err(|_| EnvelopeError::NotUtf8)?;
    let limits = crate::config::Limits {
        max_frame_bytes: usize::MAX,
        max_room_bytes: usize::MAX,
        ..Default::default()
    };
    match protocol::parse_with_extras(text.as_bytes(), &limits) {
        Ok((ClientFrame::SendMessage { room, message }, extras)) => {
            // Publisher info is an object from a Centrifugo-protocol
            // client; anything else there is not ours to refuse the
            // message for (a client frame may carry any extra field, and
            // must be accepted from the broker as it is): it is ignored.
            // Likewise a position that is not an offset and an epoch.
            let info = extras
                .info
                .filter(|v| v.get().starts_with('{'))
                .map(|v| protocol::compact_json(v.get()));
            let position = match (extras.offset, extras.epoch) {
                (Some(o), Some(e)) => match (
                    o.get().parse::<u64>(),
                    serde_json::from_str::<Cow<'_, str>>(e.get()),
                ) {
                    (Ok(offset), Ok(epoch)) if offset > 0 && !epoch.is_empty() => {
                        Some((offset, epoch))
                    }
                    _ => None,
                },
                _ => None,
            };
            Ok(Envelope {
                room,
                message,
                info,
                position,
            })
        }
        Ok(_) => Err(EnvelopeError::NotSendMessage),
        Err(protocol::FrameError::NotJson | protocol::FrameError::NotObject) => {
            Err(EnvelopeError::NotJson)
        }
        Err(protocol::FrameError::MissingType | protocol::FrameError::UnknownType) => {
            Err(EnvelopeError::NotSendMessage)
        }
        Err(_) => Err(EnvelopeError::MissingField),
    }
}

/// Parses a payload that arrived on `channel`, checking that it is for the
/// room that channel carries.
pub fn parse_for_channel<'a>(
    prefix: &str,
    channel: &[u8],
    payload: &'a [u8],
) -> Result<Envelope<'a>, EnvelopeError> {
    let room = room_of_channel(prefix, channel).ok_or(EnvelopeError::ForeignChannel)?;
    let env = parse_envelope(payload)?;
    if env.room.as_bytes() != room {
        return Err(EnvelopeError::RoomMismatch);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_payload() {
        // What the tutorial's publishClient.publish(roomId, JSON.stringify(...)) sends.
        let p = br#"{"type":"sendMessage","roomId":"room1","message":"hello"}"#;
        let env = parse_for_channel("", b"room1", p).unwrap();
        assert_eq!(env.room, "room1");
        assert_eq!(env.message.delivered(), "hello");
        assert_eq!(env.encode().as_bytes(), p);
    }

    #[test]
    fn prefix() {
        assert_eq!(channel_for("rc:", "a"), "rc:a");
        assert_eq!(room_of_channel("rc:", b"rc:a"), Some(&b"a"[..]));
        let p = br#"{"type":"sendMessage","roomId":"a","message":1}"#;
        assert!(parse_for_channel("rc:", b"rc:a", p).is_ok());
        assert_eq!(
            parse_for_channel("rc:", b"a", p),
            Err(EnvelopeError::ForeignChannel)
        );
    }

    #[test]
    fn bad_payloads() {
        let cases: &[(&[u8], EnvelopeError)] = &[
            (b"\xff", EnvelopeError::NotUtf8),
            (b"hello", EnvelopeError::NotJson),
            (b"[]", EnvelopeError::NotJson),
            (
                br#"{"type":"SUBSCRIBE","room":"r"}"#,
                EnvelopeError::NotSendMessage,
            ),
            (br#"{"roomId":"r"}"#, EnvelopeError::NotSendMessage),
            (
                br#"{"type":"sendMessage","roomId":"r"}"#,
                EnvelopeError::MissingField,
            ),
            (
                br#"{"type":"sendMessage","roomId":"other","message":"x"}"#,
                EnvelopeError::RoomMismatch,
            ),
        ];
        for (p, e) in cases {
            assert_eq!(parse_for_channel("", b"r", p).as_ref().err(), Some(e));
        }
    }

    #[test]
    fn info_rides_along_and_the_seed_shape_stays() {
        let env = Envelope {
            room: "r".into(),
            message: Message::Json(r#"{"text":"hi"}"#.into()),
            info: Some(r#"{"user":"42","client":"c1"}"#.into()),
            position: None,
        };
        let enc = env.encode();
        assert_eq!(
            enc,
            r#"{"type":"sendMessage","roomId":"r","message":{"text":"hi"},"info":{"user":"42","client":"c1"}}"#
        );
        assert_eq!(parse_envelope(enc.as_bytes()).unwrap(), env);
        // An info that is not an object is ignored, not a reason to drop
        // the message (fuzz/broker_payload: any client frame is accepted
        // from the broker).
        let odd = br#"{"type":"sendMessage","roomId":"r","message":1,"info":"x"}"#;
        assert_eq!(parse_envelope(odd).unwrap().info, None);
    }

    #[test]
    fn a_position_rides_along_as_the_script_writes_it() {
        let p = super::super::Publication {
            room: "r",
            message: Message::Text("hi".into()),
            info: None,
            position: None,
        };
        let enc = encode_positioned(&p, 7, "abc");
        assert_eq!(
            enc,
            r#"{"type":"sendMessage","roomId":"r","message":"hi","offset":7,"epoch":"abc"}"#
        );
        let env = parse_envelope(enc.as_bytes()).unwrap();
        assert_eq!(env.position, Some((7, "abc".into())));
        assert_eq!(env.encode(), enc);
        // Anything else in those fields is no position.
        for odd in [
            r#"{"type":"sendMessage","roomId":"r","message":1,"offset":"7","epoch":"e"}"#,
            r#"{"type":"sendMessage","roomId":"r","message":1,"offset":-1,"epoch":"e"}"#,
            r#"{"type":"sendMessage","roomId":"r","message":1,"offset":0,"epoch":"e"}"#,
            r#"{"type":"sendMessage","roomId":"r","message":1,"offset":7,"epoch":""}"#,
            r#"{"type":"sendMessage","roomId":"r","message":1,"offset":7}"#,
            r#"{"type":"sendMessage","roomId":"r","message":1,"offset":1.5,"epoch":"e"}"#,
        ] {
            assert_eq!(
                parse_envelope(odd.as_bytes()).unwrap().position,
                None,
                "{odd}"
            );
        }
    }

    #[test]
    fn long_room_names_from_the_broker_are_accepted() {
        let room = "x".repeat(1000);
        let env = Envelope {
            room: room.as_str().into(),
            message: Message::Text("m".into()),
            info: None,
            position: None,
        };
        let enc = env.encode();
        assert_eq!(parse_envelope(enc.as_bytes()).unwrap(), env);
    }
}
