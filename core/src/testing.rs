//! A reference model of the node and a harness that drives a real [`Node`]
//! and the model side by side, in remote (Redis) or embedded (local) broker
//! mode, checking the core's invariants after every step. Shared by the
//! property tests and the fuzz targets (feature `testing`).
//!
//! The harness plays every part a runtime plays: it admits sockets and
//! answers their heads, feeds frames, drains writers, ends connections the
//! way the node says, fires timers, and runs the broker task against a
//! simulated Redis that executes the node's operations one at a time, as
//! the driver does, holds subscriptions, and delivers what is published on
//! subscribed channels (the node's own publishes and probes, other
//! publishers' messages, junk) back to the node.
//!
//! Both client protocols are driven ([`Proto`]): every operation on a
//! connection is expressed in that connection's own protocol. A seed client
//! sends the tutorial's frames and is answered with closes; a Centrifugo
//! client (`/connection/websocket`) sends its `connect` first (at once, or
//! later with [`Op::Connect`]), then commands with ids, and the model
//! predicts every reply, error reply and push its outbox holds, in order.
//! Rooms mix both: a seed publish reaches a Centrifugo member as a push
//! without `info`, a Centrifugo publish reaches a seed member as the text
//! (or compact JSON) of its `data` and Centrifugo members with the
//! publisher's `info`, locally and through the simulated Redis (whose
//! envelope carries `info`).
//!
//! The model is plain sets and queues. It *predicts* rather than follows:
//! every broker operation, deadline, frame and counter is computed by the
//! model and compared with the node's.
//!
//! Invariants checked after every [`Op`]:
//! - a. **subscriptions**: after each poll of the broker task, the channels
//!   its operations have subscribed on the current link are exactly the
//!   probe channel plus the channels of the rooms with members; no operation
//!   is redundant (never a subscribe of a held channel, never an unsubscribe
//!   of one not held); each change goes in batches of at most
//!   `subscribe_batch`, as few as that allows; nothing is subscribed while
//!   no link is open. Between polls the pending changes are the coalesced
//!   difference (a join and a leave before the poll cancel out).
//! - b. **broker operations** are exactly those the model predicts, in
//!   order: control (connect, reset, the last publishes at shutdown), then
//!   subscription changes, then the queued publishes in order, then the
//!   probe.
//! - c. **delivery**: a message for room R (a client's publish in embedded
//!   mode; a broker message in both modes: the node's own publishes fed
//!   back, other publishers' messages with JSON messages and `info`
//!   fields) queues exactly one frame per current member of R, in the
//!   member's protocol, and none elsewhere; junk and oversized payloads are
//!   counted and deliver nothing.
//! - d. commands that change nothing (a second SUBSCRIBE, an UNSUBSCRIBE of
//!   a room one is not in) change nothing; in Centrifugo's protocol they
//!   are answered (105 already subscribed, an empty unsubscribe reply).
//! - e. **no leaks**: the hub's tables (connections, rooms, memberships,
//!   slots) match the model, member lists included.
//! - f. **broker timing is predicted**: the node's `deadline()` equals the
//!   model's (next probe, probe timeout, connect timeout, verification
//!   timeout); each reconnect delay lies within the equal-jitter bounds
//!   (half to all of base·2^failures, capped), which restart from the base
//!   only after a link proved itself. The session is up only once its own
//!   probe came back: a link whose probe never returns is never up.
//! - g. **publish accounting**: every publish a client made is exactly one
//!   of published (confirmed), unknown (in a failed operation), held (the
//!   buffer or the queue to the link), dropped (counted), or in the broker
//!   task's hands; held publishes go out in order once a link is proven.
//! - h. **outboxes**: the frames (replies, error replies, pushes, pings),
//!   the close and the writer's next work are the model's; an outbox holds
//!   at most `max_outbound_bytes` plus one frame; a connection that would
//!   exceed it is closed as a slow consumer (1008 "slow consumer", 3008
//!   "slow") with its queue discarded; `reading_ended` and `poll_abort` say
//!   what the model says.
//! - i. **every counter** of [`Node::snapshot`] equals the model's,
//!   `cf_bad_commands{reason}` included.
//! - j. **wakers**: the broker task, the timer task, each writer and each
//!   abort watch are woken whenever they have something new to do.
//! - k. keepalive pings and "no pong" closes (seed: WebSocket pings, 1008;
//!   Centrifugo: `{}` pings every interval, 3012, and 3502 "stale" without
//!   a connect), each connection's deadline, the command rate limit (seed:
//!   a close; Centrifugo: 111, then 3013), socket admission with its
//!   operator reserve, `/healthz` following the broker, and the accept-error
//!   log, as the model predicts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;

use crate::codec::http::ClientProtocol;
use crate::codec::redis::Reply as RedisReply;
use crate::codec::seed::FrameError;
use crate::config::{ClientTimers, HubConfig, Limits, NodeConfig};
use crate::hub::{BrokerMode, BrokerOp, BrokerState, ConnId, Outbound, Session, Ticket};
use crate::metrics::Snapshot;
use crate::node::{Admitted, Conn, Finish, Inbound, Node, Outgoing, Reply, WRITE_BATCH_BYTES};

/// The prefix of every room's broker channel.
pub const PREFIX: &str = "rc:";
/// Largest client frame.
pub const MAX_FRAME: usize = 120;
/// Longest room name.
pub const MAX_ROOM: usize = 24;
/// Most rooms per connection.
pub const MAX_ROOMS_PER_CONN: usize = 3;
/// Outbox limit (a frame is refused once this much is queued): four of the
/// longest seed message, so that a queue reaches it exactly, and room for
/// a Centrifugo client's replies next to a push or two.
pub const MAX_OUTBOUND: usize = 240;
/// Largest broker payload taken: room for the longest message of a
/// Centrifugo publisher, `info` included.
pub const MAX_BROKER_PAYLOAD: usize = 200;
/// The publish buffer (and bound of the queue to a live link).
pub const PUBLISH_BUFFER: usize = 4;
/// Channels per SUBSCRIBE / UNSUBSCRIBE.
pub const SUBSCRIBE_BATCH: usize = 2;
/// Sockets the node takes, plus its operator reserve.
pub const MAX_SOCKETS: usize = 8;
pub const OPERATOR_RESERVE: usize = 1;
/// Commands per second per connection, when the setup limits them.
pub const RATE: u32 = 4;

const MS: Duration = Duration::from_millis(1);

/// The node's id (Centrifugo's `node`, and the prefix of its client ids).
pub const NODE_ID: &str = "n";

/// The server version a Centrifugo connect reply announces.
const VERSION: &str = concat!("roomcast ", env!("CARGO_PKG_VERSION"));

/// Whether publishes the node never accounts for are tolerated (counted in
/// [`Tally::unreported`]). They are not: a report for an older session and
/// a publish skipped for lack of a link are counted and held like any other.
pub const UNREPORTED_PUBLISHES_TOLERATED: bool = false;

/// Rooms the operations pick from: (name, as a JSON string). The last is
/// exactly `MAX_ROOM` bytes long.
pub const ROOMS: [(&str, &str); 6] = [
    ("lobby", r#""lobby""#),
    ("r1", r#""r1""#),
    ("r2", r#""r2""#),
    ("é-room", r#""é-room""#),
    ("a\"b", r#""a\"b""#),
    ("0123456789abcdef01234567", r#""0123456789abcdef01234567""#),
];

/// Messages the operations pick from: (as a client writes it, as the
/// node re-encodes it in its broker payload, as members receive it).
pub const MESSAGES: [(&str, &str, &str); 9] = [
    (r#""hi""#, r#""hi""#, "hi"),
    (r#""line\nbreak""#, r#""line\nbreak""#, "line\nbreak"),
    (r#"{"k":[1,2]}"#, r#"{"k":[1,2]}"#, r#"{"k":[1,2]}"#),
    (r#""""#, r#""""#, ""),
    (
        r#""xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx""#,
        r#""xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx""#,
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ),
    (
        r#"{ "a" : 1 , "b" : [ true , null ] }"#,
        r#"{"a":1,"b":[true,null]}"#,
        r#"{"a":1,"b":[true,null]}"#,
    ),
    ("12.50", "12.50", "12.50"),
    (r#""caf\u00e9 \"q\"""#, r#""café \"q\"""#, "café \"q\""),
    ("null", "null", "null"),
];

/// A client's SUBSCRIBE.
pub fn subscribe_frame(room: usize) -> String {
    format!(r#"{{"type":"SUBSCRIBE","room":{}}}"#, ROOMS[room].1)
}

/// A client's UNSUBSCRIBE.
pub fn unsubscribe_frame(room: usize) -> String {
    format!(r#"{{"type":"UNSUBSCRIBE","room":{}}}"#, ROOMS[room].1)
}

/// A client's sendMessage, in one of two layouts.
pub fn send_frame(room: usize, message: usize, layout: usize) -> String {
    let (r, m) = (ROOMS[room].1, MESSAGES[message].0);
    if layout.is_multiple_of(2) {
        format!(r#"{{"type":"sendMessage","roomId":{r},"message":{m}}}"#)
    } else {
        format!(r#"{{ "message":{m}, "x":0, "roomId":{r}, "type":"sendMessage" }}"#)
    }
}

/// The broker payload of a client's sendMessage.
pub fn publish_payload(room: usize, message: usize) -> String {
    let (r, m) = (ROOMS[room].1, MESSAGES[message].1);
    format!(r#"{{"type":"sendMessage","roomId":{r},"message":{m}}}"#)
}

/// The broker payload of a Centrifugo client's publish: the seed's, with
/// the publisher's `info` last.
pub fn cf_publish_payload(room: usize, message: usize, info: &str) -> String {
    let (r, m) = (ROOMS[room].1, MESSAGES[message].1);
    format!(r#"{{"type":"sendMessage","roomId":{r},"message":{m},"info":{info}}}"#)
}

fn channel(room: usize) -> String {
    format!("{PREFIX}{}", ROOMS[room].0)
}

/// A Centrifugo client's connect command.
pub fn cf_connect_frame(id: u32) -> String {
    format!(r#"{{"id":{id},"connect":{{"name":"js","version":"1"}}}}"#)
}

/// A Centrifugo client's subscribe command.
pub fn cf_subscribe_frame(id: u32, room: usize) -> String {
    format!(
        r#"{{"id":{id},"subscribe":{{"channel":{}}}}}"#,
        ROOMS[room].1
    )
}

/// A Centrifugo client's unsubscribe command.
pub fn cf_unsubscribe_frame(id: u32, room: usize) -> String {
    format!(
        r#"{{"id":{id},"unsubscribe":{{"channel":{}}}}}"#,
        ROOMS[room].1
    )
}

/// A Centrifugo client's publish, in one of two layouts (the second
/// behind a pong, in one frame of two lines, fields reordered).
pub fn cf_publish_frame(id: u32, room: usize, message: usize, layout: usize) -> String {
    let (r, m) = (ROOMS[room].1, MESSAGES[message].0);
    if layout.is_multiple_of(2) {
        format!(r#"{{"id":{id},"publish":{{"channel":{r},"data":{m}}}}}"#)
    } else {
        format!("{{}}\n{{\"publish\":{{\"data\":{m}, \"channel\":{r}}},\"id\":{id}}}")
    }
}

/// The `info` of a Centrifugo client's publications: anonymous, and its
/// client id (`<node>-<connection id>`).
pub fn cf_info(id: ConnId) -> String {
    format!(r#"{{"user":"","client":"{NODE_ID}-{}"}}"#, id.0)
}

/// The push a Centrifugo member receives for a publication in `room` whose
/// `data` is the JSON `data`.
fn cf_push(room: usize, data: &str, info: Option<&str>) -> Bytes {
    let info = info.map(|i| format!(r#","info":{i}"#)).unwrap_or_default();
    Bytes::from(format!(
        r#"{{"push":{{"channel":{},"pub":{{"data":{data}{info}}}}}}}"#,
        ROOMS[room].1
    ))
}

/// A reply with an empty result: `{"id":N,"<method>":{}}`.
fn cf_reply(id: u32, method: &str) -> Bytes {
    Bytes::from(format!(r#"{{"id":{id},"{method}":{{}}}}"#))
}

/// An error reply, with Centrifugo's message for the code.
fn cf_error(id: u32, code: u32) -> Bytes {
    let (message, temporary) = match code {
        103 => ("permission denied", false),
        104 => ("method not found", false),
        105 => ("already subscribed", false),
        106 => ("limit exceeded", false),
        107 => ("bad request", false),
        108 => ("not available", false),
        111 => ("too many requests", true),
        other => panic!("no error {other} in the model"),
    };
    let temporary = if temporary {
        r#","temporary":true"#
    } else {
        ""
    };
    Bytes::from(format!(
        r#"{{"id":{id},"error":{{"code":{code},"message":"{message}"{temporary}}}}}"#
    ))
}

/// The connect reply to connection `conn`'s connect `id`: anonymous, no
/// expiry, the ping interval in whole seconds (omitted when 0).
fn cf_connect_reply(id: u32, conn: ConnId, timers: &ClientTimers) -> Bytes {
    let ping = match timers.ping_interval.as_secs() {
        0 => String::new(),
        s => format!(r#","ping":{s}"#),
    };
    Bytes::from(format!(
        r#"{{"id":{id},"connect":{{"client":"{NODE_ID}-{}","version":"{VERSION}"{ping},"pong":true,"node":"{NODE_ID}"}}}}"#,
        conn.0
    ))
}

/// A message for a room, as each protocol's members receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivery {
    room: usize,
    /// A seed member's text frame.
    seed: Bytes,
    /// A Centrifugo member's push.
    cf: Bytes,
    /// Whether it carries a publisher's `info`.
    info: bool,
}

impl Delivery {
    /// `data`: the JSON a push carries; `text`: what a seed member gets.
    fn new(room: usize, data: &str, text: &str, info: Option<&str>) -> Delivery {
        Delivery {
            room,
            seed: Bytes::copy_from_slice(text.as_bytes()),
            cf: cf_push(room, data, info),
            info: info.is_some(),
        }
    }

    /// A client's message `message` (either protocol's publisher).
    fn message(room: usize, message: usize, info: Option<&str>) -> Delivery {
        let (_, data, text) = MESSAGES[message];
        Delivery::new(room, data, text, info)
    }
}

/// Bad input and what it must cause: (input, close code, reason, metric label).
#[derive(Debug, Clone, Copy)]
enum BadInput {
    Text(&'static [u8]),
    /// A text frame one byte over the limit.
    LongText,
    Binary,
    TooLarge,
    NotUtf8,
    Protocol,
}

fn bad_input(k: u8) -> (BadInput, u16, String, &'static str) {
    use BadInput::*;
    let policy = |input, reason: &str, label| (input, 1008, reason.to_string(), label);
    let table = [
        policy(Text(b"not json"), "frame is not valid JSON", "not_json"),
        policy(Text(b"[]"), "frame is not a JSON object", "not_object"),
        policy(Text(b"{}"), "missing type", "missing_type"),
        policy(
            Text(br#"{"type":7}"#),
            "type must be a string",
            "type_not_string",
        ),
        policy(Text(br#"{"type":"JOIN"}"#), "unknown type", "unknown_type"),
        policy(
            Text(br#"{"type":"sendMessage","message":1}"#),
            "sendMessage: missing roomId",
            "missing_field",
        ),
        policy(
            Text(br#"{"type":"SUBSCRIBE","room":5}"#),
            "SUBSCRIBE: room must be a string",
            "field_not_string",
        ),
        policy(
            Text(br#"{"type":"SUBSCRIBE","room":""}"#),
            "room name is empty",
            "room_empty",
        ),
        policy(
            Text(br#"{"type":"UNSUBSCRIBE","room":"0123456789abcdef012345678"}"#),
            &format!("room name longer than {MAX_ROOM} bytes"),
            "room_too_long",
        ),
        policy(
            Text(br#"{"type":"SUBSCRIBE","room":"a","room":"b"}"#),
            "frame has a duplicate field",
            "duplicate_field",
        ),
        policy(
            Text(br#"{"type":"sendMessage","roomId":"r1","message":"\ud800"}"#),
            "string has an invalid \\u escape",
            "bad_escape",
        ),
        (
            Text(b"\xff\xfe"),
            1007,
            "frame is not valid UTF-8".into(),
            "not_utf8",
        ),
        (
            LongText,
            1009,
            format!("frame larger than {MAX_FRAME} bytes"),
            "too_large",
        ),
        (
            Binary,
            1003,
            "binary frames are not supported".into(),
            "binary",
        ),
        (
            TooLarge,
            1009,
            format!("frame larger than {MAX_FRAME} bytes"),
            "too_large",
        ),
        (NotUtf8, 1007, "frame is not valid UTF-8".into(), "not_utf8"),
        (
            Protocol,
            1002,
            "WebSocket protocol error".into(),
            "protocol",
        ),
    ];
    table[k as usize % table.len()].clone()
}

/// What a frame is, before it is borrowed as an [`Inbound`].
#[derive(Debug, Clone)]
enum Raw {
    Text(Vec<u8>),
    Binary,
    TooLarge,
    NotUtf8,
    Protocol,
    Control,
}

impl Raw {
    fn inbound(&self) -> Inbound<'_> {
        match self {
            Raw::Text(t) => Inbound::Text(t),
            Raw::Binary => Inbound::Binary,
            Raw::TooLarge => Inbound::TooLarge,
            Raw::NotUtf8 => Inbound::NotUtf8,
            Raw::Protocol => Inbound::ProtocolError,
            Raw::Control => Inbound::Control,
        }
    }
}

/// A Centrifugo client's other input (bad frames and commands, commands
/// roomcast answers with an error or ignores, frames the WebSocket layer
/// refused), built with the client's next command id `id` (an entry uses
/// at most two ids), and what it must cause.
fn cf_other_input(k: u8, id: u32) -> (Raw, Input) {
    use CfItem::{Bad, Ok as Cmd};
    let text = |t: String, items: Vec<CfItem>| (Raw::Text(t.into_bytes()), Input::Cf(items));
    let refused = |t: &[u8], label| (Raw::Text(t.to_vec()), Input::CfRefused(label));
    let bad = |t: String, label, code: Option<u32>| {
        text(
            t,
            vec![Bad {
                label,
                reply: code.map(|c| (id, c)),
            }],
        )
    };
    let answered = |t: String, cmd| text(t, vec![Cmd(id, cmd)]);
    match k % 34 {
        0 => refused(b"not json", "not_json"),
        1 => refused(b"[]", "not_object"),
        2 => refused(&[b'['; 65], "too_deep"),
        3 => refused(b"\xff\xfe", "not_utf8"),
        4 => refused(&[b' '; MAX_FRAME + 1], "too_large"),
        5 => bad(
            format!(r#"{{"id":{id},"subscribe":{{}}}}"#),
            "missing_field",
            Some(107),
        ),
        6 => bad(format!(r#"{{"id":{id}}}"#), "unknown_method", Some(104)),
        7 => bad(
            r#"{"subscribe":{"channel":"r1"}}"#.into(),
            "missing_id",
            None,
        ),
        8 => bad(
            format!(
                r#"{{"id":{id},"subscribe":{{"channel":"r1"}},"publish":{{"channel":"r1","data":1}}}}"#
            ),
            "multiple_methods",
            Some(107),
        ),
        9 => bad(r#"{"id":"x","connect":{}}"#.into(), "bad_id", None),
        10 => bad(
            format!(r#"{{"id":{id},"publish":{{"channel":"","data":1}}}}"#),
            "channel_empty",
            Some(107),
        ),
        11 => bad(
            format!(r#"{{"id":{id},"unsubscribe":{{"channel":"0123456789abcdef012345678"}}}}"#),
            "channel_too_long",
            Some(107),
        ),
        12 => bad(
            format!(r#"{{"id":{id},"subscribe":{{"channel":5}}}}"#),
            "wrong_type",
            Some(107),
        ),
        13 => bad(
            format!(r#"{{"id":{id},"subscribe":"r1"}}"#),
            "method_not_object",
            Some(107),
        ),
        14 => bad(
            format!(r#"{{"id":{id},"publish":{{"channel":"r1","data":1,"data":2}}}}"#),
            "duplicate_field",
            Some(107),
        ),
        15 => bad(
            format!(r#"{{"id":{id},"publish":{{"channel":"\ud800","data":1}}}}"#),
            "bad_escape",
            Some(107),
        ),
        // A send is never answered: a bad one closes.
        16 => bad(r#"{"send":{}}"#.into(), "missing_field", None),
        17 => (
            Raw::Text(br#"{"send":{"data":{"k":1}}}"#.to_vec()),
            Input::Cf(vec![Cmd(0, Command::Ignored)]),
        ),
        18 => answered(
            format!(r#"{{"id":{id},"presence":{{"channel":"r1"}}}}"#),
            Command::Error(108),
        ),
        19 => answered(
            format!(r#"{{"id":{id},"presence_stats":{{"channel":"r1"}}}}"#),
            Command::Error(108),
        ),
        20 => answered(
            format!(r#"{{"id":{id},"history":{{"channel":"r1","limit":5}}}}"#),
            Command::Error(108),
        ),
        21 => answered(format!(r#"{{"id":{id},"ping":{{}}}}"#), Command::Error(108)),
        22 => answered(
            format!(r#"{{"id":{id},"rpc":{{"method":"x","data":{{}}}}}}"#),
            Command::Error(104),
        ),
        23 => answered(
            format!(r#"{{"id":{id},"refresh":{{"token":"t"}}}}"#),
            Command::Refresh,
        ),
        24 => answered(
            format!(r#"{{"id":{id},"sub_refresh":{{"channel":"r1","token":"t"}}}}"#),
            Command::SubRefresh(1),
        ),
        // Unknown fields are ignored.
        25 => answered(
            format!(r#"{{"id":{id},"subscribe":{{"channel":"lobby","x":[1]}},"y":{{}}}}"#),
            Command::Subscribe(0),
        ),
        // Two commands in one frame, answered in order.
        26 => text(
            format!(
                "{{\"id\":{id},\"presence\":{{\"channel\":\"r1\"}}}}\r\n{{\"id\":{}}}\n",
                id + 1
            ),
            vec![
                Cmd(id, Command::Error(108)),
                Bad {
                    label: "unknown_method",
                    reply: Some((id + 1, 104)),
                },
            ],
        ),
        // Blank lines: no command at all.
        27 => text("\n \r\n".into(), Vec::new()),
        28 => (Raw::Binary, Input::CfClosed(3506, "inappropriate protocol")),
        29 => (Raw::TooLarge, Input::CfClosed(3501, "bad request")),
        30 => (Raw::NotUtf8, Input::CfClosed(3501, "bad request")),
        31 => (Raw::Protocol, Input::CfClosed(3501, "bad request")),
        // A WebSocket ping is no Centrifugo pong.
        32 => (Raw::Control, Input::Control),
        _ => refused(b"{\"id\":1,", "not_json"),
    }
}

/// What a broker payload must come to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Delivered to the members of its room, in their protocols.
    Room(Delivery),
    /// Dropped and counted (`broker_payloads_dropped`).
    Dropped,
    /// On the probe channel: a probe echo, or nothing.
    Probe,
    /// Over `max_broker_payload_bytes`: dropped and counted.
    TooLarge,
}

/// Payloads another publisher may put on room `room`'s channel.
fn external_payload(room: usize, kind: u8) -> (Bytes, Expect) {
    let r = ROOMS[room].1;
    // `data`: the JSON a push carries; `text`: what a seed member gets.
    let deliver = |p: String, data: &str, text: &str, info: Option<&str>| {
        (
            Bytes::from(p),
            Expect::Room(Delivery::new(room, data, text, info)),
        )
    };
    let dropped = |p: String| (Bytes::from(p), Expect::Dropped);
    // Pads a string message so that the payload is exactly `len` bytes.
    let sized = |len: usize| {
        let head = format!(r#"{{"type":"sendMessage","roomId":{r},"message":""#);
        let fill = "y".repeat(len - head.len() - 2);
        (format!(r#"{head}{fill}"}}"#), fill)
    };
    match kind % 14 {
        0 => deliver(
            format!(r#"{{"type":"sendMessage","roomId":{r},"message":"hi"}}"#),
            r#""hi""#,
            "hi",
            None,
        ),
        1 => deliver(
            format!(r#"{{"type":"sendMessage","roomId":{r},"message":{{"n": [1, 2]}}}}"#),
            r#"{"n":[1,2]}"#,
            r#"{"n":[1,2]}"#,
            None,
        ),
        2 => deliver(
            format!(
                r#"{{"type":"sendMessage","roomId":{r},"message":"from c","info":{{"user":"u1"}}}}"#
            ),
            r#""from c""#,
            "from c",
            Some(r#"{"user":"u1"}"#),
        ),
        3 => deliver(
            format!(
                r#"{{"info": {{"user": "u2", "client": "c2"}}, "message": 7, "roomId": {r}, "type": "sendMessage"}}"#
            ),
            "7",
            "7",
            Some(r#"{"user":"u2","client":"c2"}"#),
        ),
        // An info that is not an object is ignored: delivered without it.
        4 => deliver(
            format!(r#"{{"type":"sendMessage","roomId":{r},"message":"x","info":"u"}}"#),
            "\"x\"",
            "x",
            None,
        ),
        5 => dropped("hello".into()),
        6 => dropped(format!(r#"{{"type":"SUBSCRIBE","room":{r}}}"#)),
        7 => dropped(r#"{"type":"sendMessage","roomId":"elsewhere","message":"x"}"#.into()),
        8 => (Bytes::from_static(b"\xff{"), Expect::Dropped),
        9 => (
            Bytes::from(sized(MAX_BROKER_PAYLOAD + 1).0),
            Expect::TooLarge,
        ),
        10 => {
            let (p, fill) = sized(MAX_BROKER_PAYLOAD);
            deliver(p, &format!("\"{fill}\""), &fill, None)
        }
        11 => dropped(format!(r#"{{"type":"sendMessage","roomId":{r}}}"#)),
        12 => deliver(
            format!(
                r#"{{"type":"sendMessage","roomId":{r},"message":"tutorial","from":"node.js"}}"#
            ),
            r#""tutorial""#,
            "tutorial",
            None,
        ),
        _ => deliver(
            format!(r#"{{"type":"sendMessage","roomId":{r},"message":null}}"#),
            "null",
            "null",
            None,
        ),
    }
}

/// HTTP requests on their own sockets, and what they must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpExpect {
    Health { head: bool },
    Metrics,
    Status(u16),
    Drop,
}

const HTTP: [(&[u8], HttpExpect); 7] = [
    (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        HttpExpect::Health { head: false },
    ),
    (
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        HttpExpect::Health { head: true },
    ),
    (
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        HttpExpect::Metrics,
    ),
    (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        HttpExpect::Status(200),
    ),
    (
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        HttpExpect::Status(404),
    ),
    (b"\x16\x03\x01\x02\x00 tls", HttpExpect::Drop),
    (b"GET /healthz HTTP/1.1\r\n", HttpExpect::Drop),
];

const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A Centrifugo SDK's upgrade: its path and subprotocol.
const CF_UPGRADE: &[u8] = b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: centrifuge-json\r\n\r\n";

/// How a harness's node is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Arbitrary)]
pub struct Setup {
    /// The embedded broker instead of Redis.
    pub local: bool,
    /// `max_commands_per_sec` = [`RATE`] instead of no limit.
    pub rate_limit: bool,
    /// Seed keepalive pings off (`ws_ping_interval` 0).
    pub no_keepalive: bool,
}

impl Setup {
    pub const REMOTE: Setup = Setup {
        local: false,
        rate_limit: false,
        no_keepalive: false,
    };
    pub const LOCAL: Setup = Setup {
        local: true,
        rate_limit: false,
        no_keepalive: false,
    };

    /// The node's configuration: small limits and short timers, so that
    /// every limit and timer is reached in short sequences.
    pub fn config(&self) -> NodeConfig {
        NodeConfig {
            recovery_max_publications: 300,
            history_max_publications: 300,
            presence_refresh: Duration::from_secs(25),
            presence_ttl: Duration::from_secs(60),
            presence_max_members: 1000,
            // No node announcements: the model does not expect their
            // publishes (the API's tests cover them). The API without a key
            // (its checks have tests of their own): the model's backends
            // publish through it.
            api: crate::config::ApiConfig {
                announce_interval: Duration::ZERO,
                insecure: true,
                ..Default::default()
            },
            hub: HubConfig {
                limits: Limits {
                    max_frame_bytes: MAX_FRAME,
                    max_room_bytes: MAX_ROOM,
                    max_rooms_per_conn: MAX_ROOMS_PER_CONN,
                    max_outbound_bytes: MAX_OUTBOUND,
                    publish_buffer: PUBLISH_BUFFER,
                    max_broker_payload_bytes: MAX_BROKER_PAYLOAD,
                    max_commands_per_sec: if self.rate_limit { RATE } else { 0 },
                },
                channel_prefix: PREFIX.into(),
                backoff_base: 10 * MS,
                backoff_max: 200 * MS,
                jitter_seed: 7,
                connect_timeout: 100 * MS,
                ping_interval: 120 * MS,
                ping_timeout: 150 * MS,
                subscribe_batch: SUBSCRIBE_BATCH,
            },
            mode: if self.local {
                BrokerMode::Local
            } else {
                BrokerMode::Remote
            },
            serve_index: true,
            seed_protocol: true,
            max_sockets: MAX_SOCKETS,
            operator_reserve: OPERATOR_RESERVE,
            node_id: NODE_ID.into(),
            timers: ClientTimers {
                ws_ping_interval: if self.no_keepalive {
                    Duration::ZERO
                } else {
                    300 * MS
                },
                ws_pong_timeout: 200 * MS,
                // Longer than the interval: a second ping may go out while
                // the first is unanswered, and does not move the deadline.
                ping_interval: 200 * MS,
                pong_timeout: 250 * MS,
                connect_timeout: 150 * MS,
            },
            wall_origin: 0,
        }
    }
}

/// The protocol of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Proto {
    /// The tutorial's protocol (any path but `/connection/websocket`).
    Seed,
    /// Centrifugo's: the client sends its `connect` at once, and reads the
    /// reply.
    Centrifugo,
    /// Centrifugo's, the `connect` left to an [`Op::Connect`] (or never:
    /// the connection goes stale).
    CentrifugoLate,
}

/// One input to the system. Connection, room and kind operands are
/// indices taken modulo what exists, so every value is meaningful and
/// shrinking never points at nothing. Every operation on a connection is
/// sent in the connection's own protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Op {
    /// A socket is accepted and its upgrade answered, then the connection
    /// opens. `true`: the upgrade was answered before (a shutdown may have
    /// come since), so the connection opens at once.
    Open(bool, Proto),
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
    /// (connection, room, message; its frame layout from the message index).
    Send(u8, u8, u8),
    /// A bad frame, or one the WebSocket layer refused; for a Centrifugo
    /// connection also the commands roomcast answers with an error or
    /// ignores.
    Bad(u8, u8),
    /// A ping or pong from the client (Centrifugo: its `{}` pong).
    Pong(u8),
    /// A Centrifugo client's connect command (a second one is a bad
    /// request); sent to a seed connection, it is a frame without a type.
    Connect(u8),
    /// The connection's writer takes everything it can.
    Drain(u8),
    /// The connection's reader stops (`true`: the client sent a close); the
    /// connection then ends the way the node says.
    End(u8, bool),
    /// The runtime found the connection's own buffers full.
    OutboundFull(u8),
    /// A plain HTTP request (or garbage) on a socket of its own.
    Http(u8),
    /// A backend publishes message (operand 2) into a room (operand 1)
    /// through the server API (`POST /api/publish`), on a socket of its
    /// own that stays open until the answer.
    Api(u8, u8),
    /// `accept` failed.
    AcceptFailed,
    /// The broker task, idle, polls the node for operations.
    BrokerPoll,
    /// The operation the broker task is executing completes (`true`) or
    /// fails (an error or `--redis-timeout`).
    BrokerStep(bool),
    /// The subscriber link hands the next message it received to the node.
    Deliver,
    /// Redis answers promptly: the broker task polls, every operation
    /// completes and every message is delivered, until nothing is left.
    BrokerRun,
    /// Another publisher publishes on a room's channel (room, payload kind).
    External(u8, u8),
    /// A message on a channel the node did not ask for, or junk on its probe
    /// channel, handed straight to the node.
    Stray(u8, u8),
    /// The subscriber link dies (its reader reports it).
    SubscriberLost,
    /// A late or stray broker report for another session.
    Stale(u8),
    /// Milliseconds pass; every timer fires on time.
    Advance(u16),
    /// Milliseconds pass; the timers fire late, once at the end.
    Late(u16),
    Shutdown,
}

// ---------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------

/// A publish, as the model expects it on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pub {
    channel: String,
    payload: Bytes,
    /// A server API publish (its index among them), whose answer waits
    /// for the broker: its `Outbound` carries a ticket.
    api: Option<usize>,
}

impl Pub {
    /// The `PUBLISH` without its ticket.
    fn wire(&self) -> Outbound {
        Outbound::publish(&self.channel, self.payload.clone())
    }
}

/// A Centrifugo connection's session, as the model has it.
#[derive(Debug, Clone)]
struct CfState {
    connected: bool,
    opened: Duration,
    next_ping: Option<Duration>,
    pong_deadline: Option<Duration>,
    /// The client's next command id.
    next_id: u32,
}

#[derive(Debug)]
struct MConn {
    id: ConnId,
    /// `Some` for a Centrifugo connection.
    cf: Option<CfState>,
    /// In the hub (not closing).
    open: bool,
    rooms: BTreeSet<usize>,
    queue: VecDeque<Bytes>,
    bytes: usize,
    ping: bool,
    close: Option<(u16, String)>,
    abort: bool,
    close_taken: bool,
    /// The connection's reader still runs (it calls frames and timers).
    reading: bool,
    // keepalive
    heard: Duration,
    pinged: Option<Duration>,
    // rate limit: a bucket of `rate` tokens, in millionths, and the
    // commands refused since the last allowed one
    tokens: u64,
    last: Duration,
    refused: u64,
    // wakers
    writer_waiting: bool,
    expect_writer_wake: bool,
    expect_abort_wake: bool,
}

impl MConn {
    /// The writer's next work, as the model has it.
    fn take(&mut self) -> Option<Outgoing> {
        if self.ping {
            self.ping = false;
            return Some(Outgoing::Ping);
        }
        if !self.queue.is_empty() {
            assert!(
                self.bytes <= WRITE_BATCH_BYTES,
                "the harness's outboxes stay below a batch"
            );
            self.bytes = 0;
            return Some(Outgoing::Frames(self.queue.drain(..).collect()));
        }
        if let Some((code, reason)) = &self.close {
            if self.close_taken {
                return Some(Outgoing::Finish(Finish::Release));
            }
            self.close_taken = true;
            return Some(Outgoing::Finish(Finish::Close {
                code: *code,
                reason: reason.clone(),
                abort: self.abort,
            }));
        }
        None
    }

    fn abort_close(&self) -> Option<Finish> {
        match &self.close {
            Some((code, reason)) if self.abort => Some(Finish::Close {
                code: *code,
                reason: reason.clone(),
                abort: true,
            }),
            _ => None,
        }
    }

    fn reading_ended(&self, peer_closed: bool) -> Option<Finish> {
        if let Some(f) = self.abort_close() {
            Some(f)
        } else if self.close.is_some() {
            None
        } else if peer_closed {
            Some(Finish::Answer)
        } else {
            Some(Finish::Release)
        }
    }

    fn wake_writer(&mut self) {
        if self.writer_waiting {
            self.writer_waiting = false;
            self.expect_writer_wake = true;
        }
    }

    fn connected(&self) -> bool {
        self.cf.as_ref().is_some_and(|cf| cf.connected)
    }

    /// The close of a slow consumer, in the connection's protocol.
    fn slow_close(&self) -> (u16, &'static str) {
        if self.cf.is_some() {
            (3008, "slow")
        } else {
            (1008, "slow consumer")
        }
    }

    /// The close at shutdown, in the connection's protocol.
    fn shutdown_close(&self) -> (u16, &'static str) {
        if self.cf.is_some() {
            (3001, "shutdown")
        } else {
            (1001, "going away")
        }
    }
}

/// The rate limiter's verdict on a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allowed,
    /// Refused (Centrifugo: 111).
    Refused,
    /// Refused more than a second's worth since the last allowed command
    /// (Centrifugo: 3013).
    Exceeded,
}

/// The model's view of the broker session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Down since `failed_at`; `retry_at` is learnt from the node: it
    /// must lie within half to all of `nominal` after `failed_at`.
    Down {
        retry_at: Option<Duration>,
        failed_at: Duration,
        nominal: Duration,
    },
    Connecting {
        deadline: Duration,
    },
    Verifying {
        deadline: Duration,
    },
    Up {
        next_probe: Duration,
        probe_deadline: Option<Duration>,
    },
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ExpOp {
    Connect(u64),
    Reset(u64),
    Publish(Vec<Pub>),
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counters {
    connects: u64,
    failures: u64,
    published: u64,
    unknown: u64,
    buffer_dropped: u64,
    queue_dropped: u64,
}

#[derive(Debug)]
struct Model {
    cfg: NodeConfig,
    local: bool,
    stopped: bool,
    next_id: u64,
    conns: Vec<MConn>,
    sockets: usize,
    // broker session (remote)
    link: Link,
    session: u64,
    /// Failures since the last proven link: the backoff's exponent.
    attempts: u32,
    probe_channel: String,
    /// The fleet's control channel, subscribed like the probe channel.
    control_channel: Option<String>,
    /// A probe is out, sent at this time, with this payload once the
    /// broker task took it.
    probe_out: Option<Duration>,
    probe_payload: Option<Bytes>,
    probe_due: bool,
    probes_seen: Vec<Bytes>,
    progress_at: Duration,
    /// The node's idea of the time (the latest given to a broker call).
    node_now: Duration,
    control: VecDeque<ExpOp>,
    /// Channels subscribed by the operations taken on the current link.
    link_subs: BTreeSet<String>,
    queue: VecDeque<Pub>,
    pending: VecDeque<Pub>,
    counters: Counters,
    publishes: u64,
    /// Payloads the clients published: what a member gets for each.
    known: BTreeMap<Bytes, Delivery>,
    /// Each server API publish's fate once decided: published, or the
    /// error code it is answered with (100: dropped, or lost with the
    /// link; 106: over the broker payload limit).
    api: Vec<Option<Result<(), u32>>>,
    /// The ticket the node gave each API publish, learnt when it is first
    /// taken by the broker task, both ways.
    api_tickets: BTreeMap<u64, usize>,
    api_ticket_of: BTreeMap<usize, u64>,
    // counters outside the broker
    connections_opened: u64,
    frames_received: u64,
    broker_messages: u64,
    deliveries: u64,
    slow_consumer_closes: u64,
    payloads_dropped: u64,
    payloads_too_large: u64,
    rate_limited: u64,
    no_pong_closes: u64,
    bad_frames: BTreeMap<&'static str, u64>,
    cf_bad_commands: BTreeMap<&'static str, u64>,
    handshake_failures: u64,
    rejected: u64,
    http_requests: u64,
    accept_errors: u64,
    accept_log: Option<Duration>,
    accept_suppressed: u64,
    /// (nominal, actual) of every reconnect delay.
    backoffs: Vec<(Duration, Duration)>,
    /// What the run did, for [`Tally`].
    seen: Seen,
}

/// What a run did in the clients' protocols (see [`Tally`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Seen {
    cf_connects: u64,
    cf_pushes: u64,
    cf_pushes_with_info: u64,
    seed_deliveries_with_info: u64,
    cf_pings: u64,
    cf_errors: BTreeMap<u32, u64>,
    closes: BTreeMap<u16, u64>,
}

impl Model {
    fn new(cfg: NodeConfig, probe_channel: String, control_channel: Option<String>) -> Model {
        let local = cfg.mode == BrokerMode::Local;
        let mut m = Model {
            local,
            stopped: false,
            next_id: 1,
            conns: Vec::new(),
            sockets: 0,
            link: Link::Stopped,
            session: 0,
            attempts: 0,
            probe_channel,
            control_channel,
            probe_out: None,
            probe_payload: None,
            probe_due: false,
            probes_seen: Vec::new(),
            progress_at: Duration::ZERO,
            node_now: Duration::ZERO,
            control: VecDeque::new(),
            link_subs: BTreeSet::new(),
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            counters: Counters::default(),
            publishes: 0,
            known: BTreeMap::new(),
            api: Vec::new(),
            api_tickets: BTreeMap::new(),
            api_ticket_of: BTreeMap::new(),
            connections_opened: 0,
            frames_received: 0,
            broker_messages: 0,
            deliveries: 0,
            slow_consumer_closes: 0,
            payloads_dropped: 0,
            payloads_too_large: 0,
            rate_limited: 0,
            no_pong_closes: 0,
            bad_frames: BTreeMap::new(),
            cf_bad_commands: BTreeMap::new(),
            handshake_failures: 0,
            rejected: 0,
            http_requests: 0,
            accept_errors: 0,
            accept_log: None,
            accept_suppressed: 0,
            backoffs: Vec::new(),
            seen: Seen::default(),
            cfg,
        };
        if !local {
            // The session starts at once: its first operation is a connect.
            m.connect(Duration::ZERO);
        }
        m
    }

    fn hub(&self) -> &HubConfig {
        &self.cfg.hub
    }

    // ----- rooms -----

    fn rooms_with_members(&self) -> BTreeSet<usize> {
        self.conns
            .iter()
            .filter(|c| c.open)
            .flat_map(|c| c.rooms.iter().copied())
            .collect()
    }

    fn members(&self, room: usize) -> Vec<usize> {
        (0..self.conns.len())
            .filter(|&i| self.conns[i].open && self.conns[i].rooms.contains(&room))
            .collect()
    }

    /// What the link must subscribe: the probe channel and every room with
    /// members.
    fn desired(&self) -> BTreeSet<String> {
        let mut d: BTreeSet<String> = self.rooms_with_members().into_iter().map(channel).collect();
        d.insert(self.probe_channel.clone());
        d.extend(self.control_channel.clone());
        d
    }

    fn link_open(&self) -> bool {
        matches!(self.link, Link::Verifying { .. } | Link::Up { .. })
    }

    fn up(&self) -> bool {
        self.local || matches!(self.link, Link::Up { .. })
    }

    fn pending_changes(&self) -> usize {
        if self.link_open() {
            self.desired().symmetric_difference(&self.link_subs).count()
        } else {
            0
        }
    }

    // ----- connections -----

    fn close(&mut self, i: usize, code: u16, reason: &str, abort: bool) {
        let c = &mut self.conns[i];
        if c.close.is_some() {
            return;
        }
        if abort {
            c.queue.clear();
            c.bytes = 0;
            c.abort = true;
            c.expect_abort_wake = true;
            // The abort watch ends the connection's task at once: its
            // reader reads no more and fires no more timers.
            c.reading = false;
        }
        c.close = Some((code, reason.to_string()));
        c.open = false;
        c.rooms.clear();
        c.wake_writer();
        *self.seen.closes.entry(code).or_default() += 1;
    }

    /// A slow consumer: its queue is discarded, it is closed and counted.
    fn slow(&mut self, i: usize) {
        if self.conns[i].close.is_none() {
            self.slow_consumer_closes += 1;
            let (code, reason) = self.conns[i].slow_close();
            self.close(i, code, reason, true);
        }
    }

    /// Queues a frame for connection `i`, as `Node::send` does: nothing
    /// once it is closing; a full outbox makes it a slow consumer.
    fn send(&mut self, i: usize, frame: Bytes) {
        let max = self.hub().limits.max_outbound_bytes;
        let c = &mut self.conns[i];
        if c.close.is_some() {
            return;
        }
        if c.bytes >= max {
            self.slow(i);
        } else {
            c.bytes += frame.len();
            c.queue.push_back(frame);
            c.wake_writer();
        }
    }

    /// A Centrifugo error reply.
    fn send_error(&mut self, i: usize, id: u32, code: u32) {
        if self.conns[i].close.is_none() {
            *self.seen.cf_errors.entry(code).or_default() += 1;
        }
        self.send(i, cf_error(id, code));
    }

    /// One frame to every member of its room, in the member's protocol.
    fn deliver(&mut self, d: &Delivery) {
        let members = self.members(d.room);
        self.deliveries += members.len() as u64;
        for i in members {
            let cf = self.conns[i].cf.is_some();
            self.send(i, if cf { d.cf.clone() } else { d.seed.clone() });
            if self.conns[i].close.is_some() {
                // A slow consumer now.
                continue;
            }
            if cf {
                self.seen.cf_pushes += 1;
                self.seen.cf_pushes_with_info += u64::from(d.info);
            } else {
                self.seen.seed_deliveries_with_info += u64::from(d.info);
            }
        }
    }

    /// The command rate limit: a bucket of `rate` tokens, refilled at
    /// `rate` per second.
    fn verdict(&mut self, i: usize, now: Duration) -> Verdict {
        let rate = u64::from(self.hub().limits.max_commands_per_sec);
        if rate == 0 {
            return Verdict::Allowed;
        }
        let c = &mut self.conns[i];
        let elapsed = now.saturating_sub(c.last).as_micros() as u64;
        c.last = c.last.max(now);
        c.tokens = (c.tokens + elapsed * rate).min(rate * 1_000_000);
        if c.tokens >= 1_000_000 {
            c.tokens -= 1_000_000;
            c.refused = 0;
            Verdict::Allowed
        } else {
            c.refused += 1;
            if c.refused > rate {
                Verdict::Exceeded
            } else {
                Verdict::Refused
            }
        }
    }

    fn conn_deadline(&self, i: usize) -> Option<Duration> {
        conn_deadline(&self.cfg.timers, &self.conns[i])
    }

    fn conn_timeout(&mut self, i: usize, now: Duration) {
        let Some(d) = self.conn_deadline(i) else {
            return;
        };
        // A connection already closing is left to its close.
        if now < d || self.conns[i].close.is_some() {
            return;
        }
        let timers = self.cfg.timers.clone();
        let c = &mut self.conns[i];
        match &mut c.cf {
            None if c.pinged.is_some() => {
                self.no_pong_closes += 1;
                self.close(i, 1008, "no pong", false);
            }
            None => {
                c.pinged = Some(now);
                c.ping = true;
                c.wake_writer();
            }
            Some(cf) if !cf.connected => self.close(i, 3502, "stale", false),
            Some(cf) if cf.pong_deadline.is_some_and(|d| now >= d) => {
                self.no_pong_closes += 1;
                self.close(i, 3012, "no pong", false);
            }
            Some(cf) => {
                // Due (the deadline is the earlier of the two).
                cf.next_ping = Some(now + timers.ping_interval);
                cf.pong_deadline = cf.pong_deadline.or(Some(now + timers.pong_timeout));
                self.seen.cf_pings += 1;
                self.send(i, Bytes::from_static(b"{}"));
            }
        }
    }

    /// A frame from connection `i`: returns whether reading goes on.
    fn frame(&mut self, i: usize, input: Input, now: Duration) -> bool {
        if self.conns[i].close.is_some() {
            return false;
        }
        self.frames_received += 1;
        if self.conns[i].cf.is_some() {
            self.cf_frame(i, input, now);
            return self.conns[i].close.is_none();
        }
        let c = &mut self.conns[i];
        c.heard = now;
        c.pinged = None;
        match input {
            Input::Control => {}
            Input::Bad(code, reason, label) => {
                *self.bad_frames.entry(label).or_default() += 1;
                self.close(i, code, &reason, false);
            }
            Input::Command(cmd) => match self.verdict(i, now) {
                Verdict::Allowed => self.command(i, cmd),
                Verdict::Refused | Verdict::Exceeded => {
                    self.rate_limited += 1;
                    self.close(i, 1008, "too many requests", false);
                }
            },
            other => panic!("{other:?} for a seed connection"),
        }
        self.conns[i].close.is_none()
    }

    fn command(&mut self, i: usize, cmd: Command) {
        let max = self.hub().limits.max_rooms_per_conn;
        match cmd {
            Command::Subscribe(room) => {
                let c = &mut self.conns[i];
                if c.rooms.contains(&room) {
                } else if c.rooms.len() >= max {
                    *self.bad_frames.entry("too_many_rooms").or_default() += 1;
                    self.close(
                        i,
                        1008,
                        &format!("more than {max} rooms on one connection"),
                        false,
                    );
                } else {
                    c.rooms.insert(room);
                }
            }
            Command::Unsubscribe(room) => {
                self.conns[i].rooms.remove(&room);
            }
            Command::Send(room, message) => self.client_publish(room, message, None),
            other => panic!("{other:?} from a seed client"),
        }
    }

    /// A client's message for `room`: delivered at once in embedded mode,
    /// else published (and remembered, to know it when it comes back).
    fn client_publish(&mut self, room: usize, message: usize, info: Option<String>) {
        let d = Delivery::message(room, message, info.as_deref());
        if self.local {
            self.deliver(&d);
        } else {
            let payload = Bytes::from(match &info {
                Some(info) => cf_publish_payload(room, message, info),
                None => publish_payload(room, message),
            });
            self.known.insert(payload.clone(), d);
            self.publish(Pub {
                channel: channel(room),
                payload,
                api: None,
            });
        }
    }

    /// A server API publish of `message` into `room`: delivered at once in
    /// embedded mode, else published like a client's (no publisher info).
    /// Returns its index, and whether the node took it (`false`: dropped at
    /// once, answered with an error).
    fn api_publish(&mut self, room: usize, message: usize) -> (usize, bool) {
        let d = Delivery::message(room, message, None);
        let i = self.api.len();
        let payload = Bytes::from(publish_payload(room, message));
        if MESSAGES[message].0 == "null" {
            // `"data": null` is no data.
            self.api.push(Some(Err(107)));
            return (i, false);
        }
        if payload.len() > MAX_BROKER_PAYLOAD {
            self.api.push(Some(Err(106)));
            return (i, false);
        }
        if self.local {
            self.deliver(&d);
            self.api.push(Some(Ok(())));
            return (i, true);
        }
        self.api.push(None);
        self.known.insert(payload.clone(), d);
        let taken = self.publish(Pub {
            channel: channel(room),
            payload,
            api: Some(i),
        });
        (i, taken)
    }

    /// A publish was dropped: an API publish's answer is an error.
    fn dropped(&mut self, p: &Pub) {
        if let Some(i) = p.api {
            self.api[i] = Some(Err(100));
        }
    }

    /// The API publish of `ticket` was published (`true`) or failed.
    fn api_settled(&mut self, ticket: u64, ok: bool) {
        let i = self.api_tickets[&ticket];
        assert!(self.api[i].is_none(), "an API publish settled twice");
        self.api[i] = Some(if ok { Ok(()) } else { Err(100) });
    }

    /// Whether the node's `got` is the model's `want`, in order; an API
    /// publish's ticket is learnt the first time, checked after.
    fn wire_matches(&mut self, got: &[Outbound], want: &[Pub]) -> bool {
        got.len() == want.len()
            && got.iter().zip(want).all(|(o, p)| {
                o.call == p.wire().call
                    && match (o.ticket, p.api) {
                        (None, None) => true,
                        (Some(t), Some(i)) => match self.api_ticket_of.get(&i) {
                            Some(known) => *known == t.0,
                            None => {
                                assert!(
                                    self.api_tickets.insert(t.0, i).is_none(),
                                    "a ticket given twice"
                                );
                                self.api_ticket_of.insert(i, t.0);
                                true
                            }
                        },
                        _ => false,
                    }
            })
    }

    /// The plain `PUBLISH` the node sent (the model's rooms keep no
    /// history), with the API publish its ticket names.
    fn pub_of(&self, o: &Outbound) -> Pub {
        let args = &o.call.0;
        assert_eq!(o.call.name(), b"PUBLISH", "a plain publish: {o:?}");
        Pub {
            channel: String::from_utf8(args[1].to_vec()).expect("a UTF-8 channel"),
            payload: args[2].clone(),
            api: o.ticket.map(|t| {
                *self
                    .api_tickets
                    .get(&t.0)
                    .expect("a ticket the model learnt")
            }),
        }
    }

    /// A frame from Centrifugo connection `i` (open, counted).
    fn cf_frame(&mut self, i: usize, input: Input, now: Duration) {
        let items = match input {
            // A WebSocket ping or pong: no Centrifugo pong.
            Input::Control => return,
            Input::CfClosed(code, reason) => return self.close(i, code, reason, false),
            Input::CfRefused(label) => {
                self.cf_pong(i);
                *self.cf_bad_commands.entry(label).or_default() += 1;
                return self.close(i, 3501, "bad request", false);
            }
            Input::Cf(items) => items,
            other => panic!("{other:?} for a Centrifugo connection"),
        };
        // Any text frame shows the client is alive.
        self.cf_pong(i);
        for item in items {
            if self.conns[i].close.is_some() {
                return;
            }
            match item {
                CfItem::Bad { label, reply } => {
                    *self.cf_bad_commands.entry(label).or_default() += 1;
                    match reply {
                        // Nothing but a valid connect before connect.
                        Some((id, code)) if self.conns[i].connected() => {
                            self.send_error(i, id, code)
                        }
                        _ => return self.close(i, 3501, "bad request", false),
                    }
                }
                CfItem::Ok(_, Command::Pong) => {}
                CfItem::Ok(id, cmd) => match self.verdict(i, now) {
                    Verdict::Allowed => self.cf_command(i, id, cmd, now),
                    Verdict::Refused => {
                        self.rate_limited += 1;
                        // A `send` is never answered: refused, it is dropped.
                        if !matches!(cmd, Command::Ignored) {
                            self.send_error(i, id, 111);
                        }
                    }
                    Verdict::Exceeded => {
                        self.rate_limited += 1;
                        return self.close(i, 3013, "too many requests", false);
                    }
                },
            }
        }
    }

    fn cf_pong(&mut self, i: usize) {
        if let Some(cf) = &mut self.conns[i].cf {
            cf.pong_deadline = None;
        }
    }

    fn cf_command(&mut self, i: usize, id: u32, cmd: Command, now: Duration) {
        let max = self.hub().limits.max_rooms_per_conn;
        let timers = self.cfg.timers.clone();
        let connected = self.conns[i].connected();
        if !connected && !matches!(cmd, Command::Connect) {
            return self.close(i, 3501, "bad request", false);
        }
        let conn = self.conns[i].id;
        match cmd {
            Command::Connect if connected => self.close(i, 3501, "bad request", false),
            Command::Connect => {
                let cf = self.conns[i].cf.as_mut().expect("a Centrifugo connection");
                cf.connected = true;
                cf.next_ping = Some(now + timers.ping_interval);
                self.seen.cf_connects += 1;
                self.send(i, cf_connect_reply(id, conn, &timers));
            }
            Command::Subscribe(room) => {
                let c = &mut self.conns[i];
                if c.rooms.contains(&room) {
                    self.send_error(i, id, 105);
                } else if c.rooms.len() >= max {
                    self.send_error(i, id, 106);
                } else {
                    c.rooms.insert(room);
                    self.send(i, cf_reply(id, "subscribe"));
                }
            }
            Command::Unsubscribe(room) => {
                self.conns[i].rooms.remove(&room);
                self.send(i, cf_reply(id, "unsubscribe"));
            }
            Command::Send(room, message) => {
                self.client_publish(room, message, Some(cf_info(conn)));
                self.send(i, cf_reply(id, "publish"));
            }
            Command::Error(code) => self.send_error(i, id, code),
            Command::Refresh => self.send(
                i,
                Bytes::from(format!(
                    r#"{{"id":{id},"refresh":{{"client":"{NODE_ID}-{}","version":"{VERSION}"}}}}"#,
                    conn.0
                )),
            ),
            Command::SubRefresh(room) => {
                if self.conns[i].rooms.contains(&room) {
                    self.send(i, cf_reply(id, "sub_refresh"));
                } else {
                    self.send_error(i, id, 103);
                }
            }
            Command::Ignored => {}
            Command::Pong => unreachable!("a pong is no command"),
        }
    }

    /// The connection's task is over (`Node::closed`).
    fn ended(&mut self, i: usize) {
        self.conns.remove(i);
        self.sockets -= 1;
    }

    // ----- broker messages -----

    fn broker_message(&mut self, channel: &str, payload: &Bytes, expect: &Expect) {
        self.broker_messages += 1;
        if channel == self.probe_channel && payload.starts_with(b"probe:") {
            self.echo(payload);
            return;
        }
        if payload.len() > self.hub().limits.max_broker_payload_bytes {
            assert_eq!(
                *expect,
                Expect::TooLarge,
                "c: a payload of {} bytes",
                payload.len()
            );
            self.payloads_too_large += 1;
            return;
        }
        match expect {
            Expect::Room(d) => {
                let d = d.clone();
                self.deliver(&d)
            }
            Expect::Dropped => self.payloads_dropped += 1,
            Expect::Probe | Expect::TooLarge => panic!("{expect:?} for {channel}"),
        }
    }

    // ----- the broker session -----

    fn connect(&mut self, now: Duration) {
        self.session += 1;
        self.link = Link::Connecting {
            deadline: now + self.hub().connect_timeout,
        };
        self.control.push_back(ExpOp::Connect(self.session));
    }

    fn send_probe(&mut self, now: Duration) {
        self.probe_out = Some(now);
        self.probe_payload = None;
        self.probe_due = true;
    }

    fn nominal_backoff(&self) -> Duration {
        let base = self.hub().backoff_base;
        let max = self.hub().backoff_max.max(base);
        (0..self.attempts.min(64)).fold(base, |d, _| (d * 2).min(max))
    }

    fn fail(&mut self, now: Duration) {
        self.counters.failures += 1;
        let queued: Vec<Pub> = self.queue.drain(..).collect();
        self.hold_again(queued);
        self.link_subs.clear();
        self.probe_out = None;
        self.probe_payload = None;
        self.probe_due = false;
        let nominal = self.nominal_backoff();
        self.attempts += 1;
        self.link = Link::Down {
            retry_at: None,
            failed_at: now,
            nominal,
        };
    }

    /// Publishes never sent, back in front, in order: into the live link's
    /// queue when up, else the buffer; after stop, dropped and counted.
    /// Either bound keeps the newest and counts the rest.
    fn hold_unsent(&mut self, list: Vec<Pub>) {
        match self.link {
            Link::Stopped => {
                self.counters.buffer_dropped += (list.len() + self.queue.len()) as u64;
                let queue: Vec<Pub> = self.queue.drain(..).collect();
                for p in list.iter().chain(&queue) {
                    self.dropped(p);
                }
            }
            Link::Up { .. } => {
                let mut all: VecDeque<Pub> = list.into();
                all.extend(self.queue.drain(..));
                while all.len() > PUBLISH_BUFFER {
                    if let Some(p) = all.pop_front() {
                        self.dropped(&p);
                    }
                    self.counters.queue_dropped += 1;
                }
                self.queue = all;
            }
            _ => {
                let mut all = list;
                all.extend(self.queue.drain(..));
                self.hold_again(all);
            }
        }
    }

    /// Publishes back to the front of the buffer, in order; when it is
    /// full, the oldest of them are dropped and counted.
    fn hold_again(&mut self, list: Vec<Pub>) {
        if matches!(self.link, Link::Stopped) {
            self.counters.buffer_dropped += list.len() as u64;
            list.iter().for_each(|p| self.dropped(p));
            return;
        }
        let room = PUBLISH_BUFFER.saturating_sub(self.pending.len());
        let keep = list.len().min(room);
        self.counters.buffer_dropped += (list.len() - keep) as u64;
        let lost = list.len() - keep;
        list[..lost].iter().for_each(|p| self.dropped(p));
        for p in list.into_iter().rev().take(keep) {
            self.pending.push_front(p);
        }
    }

    /// Returns whether the publish was taken (queued or held).
    fn publish(&mut self, p: Pub) -> bool {
        self.publishes += 1;
        let taken = match self.link {
            Link::Up { .. } => {
                if self.queue.len() >= PUBLISH_BUFFER {
                    self.counters.queue_dropped += 1;
                    false
                } else {
                    self.queue.push_back(p.clone());
                    true
                }
            }
            Link::Stopped => {
                self.counters.buffer_dropped += 1;
                false
            }
            _ => {
                if self.pending.len() < PUBLISH_BUFFER {
                    self.pending.push_back(p.clone());
                    true
                } else {
                    self.counters.buffer_dropped += 1;
                    false
                }
            }
        };
        if !taken {
            self.dropped(&p);
        }
        taken
    }

    fn echo(&mut self, payload: &Bytes) {
        if self.probe_out.is_none() || self.probe_payload.as_ref() != Some(payload) {
            return;
        }
        self.probe_out = None;
        self.progress_at = self.node_now;
        match self.link {
            Link::Verifying { .. } => {
                self.counters.connects += 1;
                self.attempts = 0;
                self.link = Link::Up {
                    next_probe: self.node_now + self.hub().ping_interval,
                    probe_deadline: None,
                };
                self.queue.extend(self.pending.drain(..));
            }
            Link::Up { next_probe, .. } => {
                self.link = Link::Up {
                    next_probe,
                    probe_deadline: None,
                }
            }
            _ => {}
        }
    }

    fn connected(&mut self, session: u64, now: Duration) {
        self.node_now = self.node_now.max(now);
        if session != self.session || !matches!(self.link, Link::Connecting { .. }) {
            return;
        }
        let hub = self.hub();
        self.link = Link::Verifying {
            deadline: now + hub.connect_timeout.max(hub.ping_timeout),
        };
        self.link_subs.clear();
        self.progress_at = now;
        self.send_probe(now);
    }

    /// Returns whether the node takes the report (its session is current).
    fn disconnected(
        &mut self,
        session: u64,
        unknown: usize,
        unsent: Vec<Pub>,
        now: Duration,
    ) -> bool {
        self.node_now = self.node_now.max(now);
        self.counters.unknown += unknown as u64;
        if session != self.session {
            // Not the current session's: no failure of the link, but its
            // publishes are counted and held all the same.
            self.hold_unsent(unsent);
            return false;
        }
        let mut list = unsent;
        list.extend(self.queue.drain(..));
        self.hold_again(list);
        if matches!(
            self.link,
            Link::Connecting { .. } | Link::Verifying { .. } | Link::Up { .. }
        ) {
            self.fail(now);
        }
        true
    }

    fn progress(&mut self, session: u64, now: Duration) {
        self.node_now = self.node_now.max(now);
        if session == self.session {
            self.progress_at = now;
        }
    }

    fn published(&mut self, _session: u64, n: usize) -> bool {
        self.counters.published += n as u64;
        true
    }

    fn timeout(&mut self, now: Duration) {
        self.node_now = self.node_now.max(now);
        let hub = self.hub().clone();
        match self.link {
            Link::Down {
                retry_at: Some(r), ..
            } if now >= r => self.connect(now),
            Link::Down { retry_at: None, .. } => panic!("the retry time was not learnt"),
            Link::Connecting { deadline } | Link::Verifying { deadline } if now >= deadline => {
                self.control.push_back(ExpOp::Reset(self.session));
                self.fail(now);
            }
            Link::Up {
                next_probe,
                probe_deadline: Some(d),
            } if now >= d => {
                let sent = self
                    .probe_out
                    .expect("a probe is out while its deadline runs");
                if self.progress_at > sent {
                    // The subscriber link is busy, not dead: the echo gets time.
                    self.probe_out = Some(now);
                    self.link = Link::Up {
                        next_probe,
                        probe_deadline: Some(now + hub.ping_timeout),
                    };
                } else {
                    self.control.push_back(ExpOp::Reset(self.session));
                    self.fail(now);
                }
            }
            Link::Up {
                next_probe,
                probe_deadline,
            } if now >= next_probe => {
                if probe_deadline.is_none() {
                    self.send_probe(now);
                }
                self.link = Link::Up {
                    next_probe: now + hub.ping_interval,
                    probe_deadline: probe_deadline.or(Some(now + hub.ping_timeout)),
                };
            }
            _ => {}
        }
    }

    fn deadline(&self) -> Option<Duration> {
        match self.link {
            Link::Down { retry_at, .. } => Some(retry_at.expect("learnt")),
            Link::Connecting { deadline } | Link::Verifying { deadline } => Some(deadline),
            Link::Up {
                next_probe,
                probe_deadline,
            } => Some(probe_deadline.map_or(next_probe, |d| d.min(next_probe))),
            Link::Stopped => None,
        }
    }

    /// Whether the broker task's next poll returns operations.
    fn broker_has_work(&self) -> bool {
        !self.control.is_empty()
            || (self.link_open() && (self.pending_changes() > 0 || self.probe_due))
            || (matches!(self.link, Link::Up { .. }) && !self.queue.is_empty())
    }

    fn shutdown(&mut self) {
        self.stopped = true;
        for i in 0..self.conns.len() {
            if self.conns[i].open {
                let (code, reason) = self.conns[i].shutdown_close();
                self.close(i, code, reason, false);
            }
        }
        if self.link == Link::Stopped {
            return;
        }
        if !matches!(self.link, Link::Down { .. }) {
            if matches!(self.link, Link::Up { .. }) && !self.queue.is_empty() {
                let batch = self.queue.drain(..).collect();
                self.control.push_back(ExpOp::Publish(batch));
            }
            self.control.push_back(ExpOp::Reset(self.session));
        }
        self.counters.buffer_dropped += self.pending.len() as u64;
        let pending: Vec<Pub> = self.pending.drain(..).collect();
        pending.iter().for_each(|p| self.dropped(p));
        self.link = Link::Stopped;
    }

    /// Checks one poll's operations against the prediction, and takes them.
    fn take_ops(&mut self, ops: &[BrokerOp]) {
        let mut it = ops.iter().peekable();
        for exp in std::mem::take(&mut self.control) {
            let got = it.next();
            let ok = match (&exp, got) {
                (ExpOp::Connect(s), Some(BrokerOp::Connect(g))) => g.0 == *s,
                (ExpOp::Reset(s), Some(BrokerOp::Reset(g))) => g.0 == *s,
                (ExpOp::Publish(batch), Some(BrokerOp::Publish(g))) => self.wire_matches(g, batch),
                _ => false,
            };
            assert!(ok, "b: expected {exp:?}, got {got:?} in {ops:?}");
        }
        if self.link_open() {
            let desired = self.desired();
            let want_sub: BTreeSet<String> = desired.difference(&self.link_subs).cloned().collect();
            let want_unsub: BTreeSet<String> =
                self.link_subs.difference(&desired).cloned().collect();
            let (mut subbed, mut unsubbed) = (BTreeSet::new(), BTreeSet::new());
            let (mut n_sub, mut n_unsub) = (0, 0);
            while let Some(op @ (BrokerOp::Subscribe(chs) | BrokerOp::Unsubscribe(chs))) = it.peek()
            {
                assert!(
                    !chs.is_empty() && chs.len() <= SUBSCRIBE_BATCH,
                    "a: a batch of {} channels",
                    chs.len()
                );
                let (set, n) = if matches!(op, BrokerOp::Subscribe(_)) {
                    (&mut subbed, &mut n_sub)
                } else {
                    (&mut unsubbed, &mut n_unsub)
                };
                *n += 1;
                for c in chs {
                    assert!(set.insert(c.clone()), "a: {c} twice in one poll: {ops:?}");
                }
                it.next();
            }
            assert_eq!(
                subbed, want_sub,
                "a: subscribed exactly what was missing ({ops:?})"
            );
            assert_eq!(
                unsubbed, want_unsub,
                "a: unsubscribed exactly what is not wanted ({ops:?})"
            );
            assert_eq!(
                n_sub,
                want_sub.len().div_ceil(SUBSCRIBE_BATCH),
                "a: full batches"
            );
            assert_eq!(
                n_unsub,
                want_unsub.len().div_ceil(SUBSCRIBE_BATCH),
                "a: full batches"
            );
            self.link_subs = desired;
        }
        if matches!(self.link, Link::Up { .. }) && !self.queue.is_empty() {
            let got = it.next();
            let want: Vec<Pub> = self.queue.drain(..).collect();
            let ok = matches!(got, Some(BrokerOp::Publish(g)) if self.wire_matches(g, &want));
            assert!(ok, "g: publishes in order: expected {want:?}, got {got:?}");
        }
        if self.link_open() && self.probe_due {
            match it.next() {
                Some(BrokerOp::Probe { channel, payload }) => {
                    assert_eq!(
                        *channel, self.probe_channel,
                        "the probe goes on the probe channel"
                    );
                    assert!(
                        !self.probes_seen.contains(payload),
                        "f: a probe payload is never reused: {payload:?}"
                    );
                    self.probes_seen.push(payload.clone());
                    self.probe_payload = Some(payload.clone());
                    self.probe_due = false;
                }
                other => panic!("b: expected the probe, got {other:?} in {ops:?}"),
            }
        }
        let rest: Vec<_> = it.collect();
        assert!(
            rest.is_empty(),
            "b: unexpected operations {rest:?} in {ops:?}"
        );
    }

    // ----- admission -----

    /// `None`: refused; `Some(full)`: admitted, on the reserve if `full`.
    fn admit(&mut self) -> Option<bool> {
        if self.sockets >= MAX_SOCKETS + OPERATOR_RESERVE {
            self.rejected += 1;
            return None;
        }
        let full = self.sockets >= MAX_SOCKETS;
        self.sockets += 1;
        Some(full)
    }

    fn accept_failed(&mut self, now: Duration) -> Option<String> {
        self.accept_errors += 1;
        match self.accept_log {
            Some(t) if now < t + Duration::from_secs(1) => {
                self.accept_suppressed += 1;
                None
            }
            _ => {
                self.accept_log = Some(now);
                let more = std::mem::take(&mut self.accept_suppressed);
                Some(if more > 0 {
                    format!("accept failed: EMFILE ({more} more since the last report)")
                } else {
                    "accept failed: EMFILE".to_string()
                })
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let up = matches!(self.link, Link::Up { .. });
        Snapshot {
            connections: self.conns.iter().filter(|c| c.open).count(),
            sockets: self.sockets,
            rooms: self.rooms_with_members().len(),
            broker_up: self.up(),
            subscriptions: if up {
                assert!(self.link_subs.contains(&self.probe_channel));
                let control = self.control_channel.as_ref();
                assert!(control.is_none_or(|c| self.link_subs.contains(c)));
                self.link_subs.len() - 1 - usize::from(control.is_some())
            } else {
                0
            },
            publish_buffer_depth: self.pending.len() + self.queue.len(),
            pending_subscription_changes: self.pending_changes(),
            broker: crate::hub::BrokerCounters {
                connects: self.counters.connects,
                failures: self.counters.failures,
                published: self.counters.published,
                unknown: self.counters.unknown,
                buffer_dropped: self.counters.buffer_dropped,
                queue_dropped: self.counters.queue_dropped,
            },
            connections_opened: self.connections_opened,
            frames_received: self.frames_received,
            broker_messages: self.broker_messages,
            deliveries: self.deliveries,
            slow_consumer_closes: self.slow_consumer_closes,
            broker_payloads_dropped: self.payloads_dropped,
            broker_payloads_too_large: self.payloads_too_large,
            rate_limited: self.rate_limited,
            no_pong_closes: self.no_pong_closes,
            bad_frames: FrameError::LABELS
                .iter()
                .map(|l| (*l, self.bad_frames.get(l).copied().unwrap_or(0)))
                .collect(),
            cf_bad_commands: crate::node::CF_LABELS
                .iter()
                .map(|l| (*l, self.cf_bad_commands.get(l).copied().unwrap_or(0)))
                .collect(),
            origin_refused: 0,
            auth_refused: 0,
            recovered: 0,
            not_recovered: 0,
            insufficient_state: 0,
            heals: 0,
            history_gaps: 0,
            presence_rooms: 0,
            presence_capped_rooms: 0,
            presence_capped: 0,
            presence_refreshes: 0,
            handshake_failures: self.handshake_failures,
            rejected_connections: self.rejected,
            http_requests: self.http_requests,
            accept_errors: self.accept_errors,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Command {
    Subscribe(usize),
    Unsubscribe(usize),
    Send(usize, usize),
    // Centrifugo's only:
    Connect,
    /// `{}`: no command, and not rate-limited.
    Pong,
    /// Answered with this error (presence, history, ping, rpc).
    Error(u32),
    Refresh,
    SubRefresh(usize),
    /// A `send`: taken, and nothing done.
    Ignored,
}

/// One command of a Centrifugo frame.
#[derive(Debug, Clone, Copy)]
enum CfItem {
    /// A valid command and its id.
    Ok(u32, Command),
    /// A bad one, counted under `label`: answered with (id, error code)
    /// when it has an id a reply can carry, else closed 3501.
    Bad {
        label: &'static str,
        reply: Option<(u32, u32)>,
    },
}

#[derive(Debug, Clone)]
enum Input {
    /// A WebSocket ping or pong.
    Control,
    /// Seed: a valid frame.
    Command(Command),
    /// Seed: a bad frame: (close code, reason, metric label).
    Bad(u16, String, &'static str),
    /// Centrifugo: a text frame that parses, its commands in order.
    Cf(Vec<CfItem>),
    /// Centrifugo: a text frame refused whole (counted under this label):
    /// closed 3501.
    CfRefused(&'static str),
    /// Centrifugo: a frame the WebSocket layer refused: closed with this,
    /// not counted.
    CfClosed(u16, &'static str),
}

// ---------------------------------------------------------------------
// The simulated broker task and Redis
// ---------------------------------------------------------------------

#[derive(Debug)]
struct SimLink {
    session: Session,
    subscriber_alive: bool,
    /// What Redis has subscribed for this link's subscriber.
    subs: BTreeSet<String>,
    /// Messages Redis sent the subscriber, not yet handed to the node.
    inbox: VecDeque<(String, Bytes, Expect)>,
}

#[derive(Debug, Default)]
struct Sim {
    /// The operations of the last poll not yet carried out; the first is
    /// executing when `executing`.
    batch: VecDeque<BrokerOp>,
    executing: bool,
    link: Option<SimLink>,
    /// The last poll was pending: the task waits for its waker.
    waiting: bool,
    finished: bool,
    /// Publishes no counter of the node can account for (see
    /// [`UNREPORTED_PUBLISHES_TOLERATED`]).
    unreported: u64,
    /// Broker messages handed to the node that the node had published.
    echoed_publishes: u64,
    echoed_cf_publishes: u64,
    probes_echoed: u64,
}

impl Sim {
    fn in_flight(&self) -> u64 {
        self.batch
            .iter()
            .map(|op| match op {
                BrokerOp::Publish(b) => b.len() as u64,
                _ => 0,
            })
            .sum()
    }
}

// ---------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------

#[derive(Debug, Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct Waking {
    count: Arc<Count>,
    waker: Waker,
    seen: usize,
}

impl Waking {
    fn new() -> Waking {
        let count = Arc::new(Count::default());
        Waking {
            waker: Waker::from(count.clone()),
            count,
            seen: 0,
        }
    }

    /// Whether it was woken since the last call.
    fn woken(&mut self) -> bool {
        let now = self.count.0.load(Ordering::SeqCst);
        let woken = now != self.seen;
        self.seen = now;
        woken
    }
}

/// A connection as its runtime task holds it.
#[derive(Debug)]
struct Task {
    conn: Conn,
    writer: Waking,
    abort: Waking,
}

/// What a harness run did, for tests that check a scenario exercised what
/// it means to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub probes_echoed: u64,
    pub echoed_publishes: u64,
    /// Of those, a Centrifugo client's (its envelope carries `info`).
    pub echoed_cf_publishes: u64,
    /// Publishes lost to the node's accounting (see
    /// [`UNREPORTED_PUBLISHES_TOLERATED`]).
    pub unreported: u64,
    /// WebSocket pings the seed keepalive sent.
    pub keepalive_pings: u64,
    /// Centrifugo connections connected.
    pub cf_connects: u64,
    /// Pushes queued for Centrifugo members, and those with a publisher's
    /// `info`.
    pub cf_pushes: u64,
    pub cf_pushes_with_info: u64,
    /// Messages with a Centrifugo publisher's `info` queued for seed members.
    pub seed_deliveries_with_info: u64,
    /// Centrifugo `{}` pings queued.
    pub cf_pings: u64,
    /// Centrifugo error replies queued, by code.
    pub cf_errors: BTreeMap<u32, u64>,
    /// Closes queued, by code (both protocols).
    pub closes: BTreeMap<u16, u64>,
    /// Server API publishes answered as published, and as failed (dropped,
    /// or lost with the link).
    pub api_published: u64,
    pub api_failed: u64,
}

impl Tally {
    /// Adds another run's.
    pub fn add(&mut self, o: &Tally) {
        self.probes_echoed += o.probes_echoed;
        self.api_published += o.api_published;
        self.api_failed += o.api_failed;
        self.echoed_publishes += o.echoed_publishes;
        self.echoed_cf_publishes += o.echoed_cf_publishes;
        self.unreported += o.unreported;
        self.keepalive_pings += o.keepalive_pings;
        self.cf_connects += o.cf_connects;
        self.cf_pushes += o.cf_pushes;
        self.cf_pushes_with_info += o.cf_pushes_with_info;
        self.seed_deliveries_with_info += o.seed_deliveries_with_info;
        self.cf_pings += o.cf_pings;
        for (k, v) in &o.cf_errors {
            *self.cf_errors.entry(*k).or_default() += v;
        }
        for (k, v) in &o.closes {
            *self.closes.entry(*k).or_default() += v;
        }
    }
}

/// Drives a [`Node`] and the model together. Panics (with a description)
/// when they disagree or an invariant breaks.
pub struct Harness {
    node: Node,
    model: Model,
    sim: Sim,
    tasks: Vec<Task>,
    now: Duration,
    broker_waker: Waking,
    timer_waker: Waking,
    timer_seen: Option<Duration>,
    pings: u64,
    /// Server API publishes waiting for the broker (their index in the
    /// model), each holding its socket.
    api_waiting: Vec<(usize, crate::node::ApiPending)>,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new(Setup::REMOTE)
    }
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("now", &self.now)
            .field("model", &self.model)
            .field("sim", &self.sim)
            .finish_non_exhaustive()
    }
}

impl Harness {
    pub fn new(setup: Setup) -> Harness {
        let cfg = setup.config();
        // Everything allowed, as open mode, but without its history: the
        // model's rooms are plain Pub/Sub (history has tests of its own).
        let settings = crate::auth::AuthSettings {
            default_namespace: Some(crate::auth::NamespaceOptions::allow_all()),
            ..crate::auth::AuthSettings::default()
        };
        let auth = crate::auth::Auth::new(&settings, None).expect("a valid policy");
        let node = Node::with_auth(cfg.clone(), Arc::new(auth), Duration::ZERO);
        let probe = node.inspect(|h| h.broker().probe_channel().to_string());
        let control = node.inspect(|h| h.broker().control_channel().map(str::to_string));
        // The timer task starts from the first deadline.
        let timer_seen = node.deadline();
        assert!(
            (0..ROOMS.len()).all(|r| channel(r) != probe),
            "the probe channel is not a room's"
        );
        let mut h = Harness {
            node,
            model: Model::new(cfg, probe, control),
            sim: Sim::default(),
            tasks: Vec::new(),
            now: Duration::ZERO,
            broker_waker: Waking::new(),
            timer_waker: Waking::new(),
            timer_seen,
            pings: 0,
            api_waiting: Vec::new(),
        };
        h.check();
        h
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    /// The connections whose tasks still run, oldest first (the index an
    /// operation's connection operand is taken modulo).
    pub fn conns(&self) -> Vec<&Conn> {
        self.tasks.iter().map(|t| &t.conn).collect()
    }

    /// Every reconnect delay so far: (nominal, actual).
    pub fn backoffs(&self) -> &[(Duration, Duration)] {
        &self.model.backoffs
    }

    pub fn tally(&self) -> Tally {
        let seen = &self.model.seen;
        Tally {
            probes_echoed: self.sim.probes_echoed,
            echoed_publishes: self.sim.echoed_publishes,
            echoed_cf_publishes: self.sim.echoed_cf_publishes,
            unreported: self.sim.unreported,
            keepalive_pings: self.pings,
            cf_connects: seen.cf_connects,
            cf_pushes: seen.cf_pushes,
            cf_pushes_with_info: seen.cf_pushes_with_info,
            seed_deliveries_with_info: seen.seed_deliveries_with_info,
            cf_pings: seen.cf_pings,
            cf_errors: seen.cf_errors.clone(),
            closes: seen.closes.clone(),
            api_published: self
                .model
                .api
                .iter()
                .filter(|f| **f == Some(Ok(())))
                .count() as u64,
            api_failed: self
                .model
                .api
                .iter()
                .filter(|f| matches!(f, Some(Err(_))))
                .count() as u64,
        }
    }

    /// Applies every operation in turn.
    pub fn run(&mut self, ops: &[Op]) {
        for op in ops {
            self.apply(*op);
        }
    }

    fn pick(&self, i: u8) -> Option<usize> {
        (!self.tasks.is_empty()).then(|| i as usize % self.tasks.len())
    }

    /// Applies one operation to both sides, then checks every invariant.
    pub fn apply(&mut self, op: Op) {
        match op {
            Op::Open(raced, proto) => self.open(raced, proto),
            Op::Subscribe(c, r) => {
                let room = r as usize % ROOMS.len();
                self.command(
                    c,
                    || subscribe_frame(room),
                    |id| cf_subscribe_frame(id, room),
                    Command::Subscribe(room),
                );
            }
            Op::Unsubscribe(c, r) => {
                let room = r as usize % ROOMS.len();
                self.command(
                    c,
                    || unsubscribe_frame(room),
                    |id| cf_unsubscribe_frame(id, room),
                    Command::Unsubscribe(room),
                );
            }
            Op::Send(c, r, m) => {
                let room = r as usize % ROOMS.len();
                let message = m as usize % MESSAGES.len();
                let layout = m as usize / MESSAGES.len();
                self.command(
                    c,
                    || send_frame(room, message, layout),
                    |id| cf_publish_frame(id, room, message, layout),
                    Command::Send(room, message),
                );
            }
            Op::Connect(c) => self.command(
                c,
                || cf_connect_frame(1),
                cf_connect_frame,
                Command::Connect,
            ),
            Op::Bad(c, k) => {
                if let Some(i) = self.reader(c) {
                    let (raw, input) = if self.model.conns[i].cf.is_some() {
                        // An entry takes one id, or two.
                        cf_other_input(k, self.cf_ids(i, 2))
                    } else {
                        let (input, code, reason, label) = bad_input(k);
                        let raw = match input {
                            BadInput::Text(b) => Raw::Text(b.to_vec()),
                            BadInput::LongText => Raw::Text(vec![b' '; MAX_FRAME + 1]),
                            BadInput::Binary => Raw::Binary,
                            BadInput::TooLarge => Raw::TooLarge,
                            BadInput::NotUtf8 => Raw::NotUtf8,
                            BadInput::Protocol => Raw::Protocol,
                        };
                        (raw, Input::Bad(code, reason, label))
                    };
                    self.feed(i, &raw, input);
                }
            }
            Op::Pong(c) => {
                if let Some(i) = self.reader(c) {
                    if self.model.conns[i].cf.is_some() {
                        let pong = Raw::Text(b"{}".to_vec());
                        self.feed(i, &pong, Input::Cf(vec![CfItem::Ok(0, Command::Pong)]));
                    } else {
                        self.feed(i, &Raw::Control, Input::Control);
                    }
                }
            }
            Op::Drain(c) => {
                if let Some(i) = self.pick(c) {
                    self.drain(i, false);
                }
            }
            Op::End(c, peer_closed) => {
                if let Some(i) = self.pick(c) {
                    self.end(i, peer_closed);
                }
            }
            Op::OutboundFull(c) => {
                if let Some(i) = self.pick(c) {
                    self.node.outbound_full(&self.tasks[i].conn);
                    self.model.slow(i);
                }
            }
            Op::Http(k) => self.http(k),
            Op::Api(r, m) => self.api(r, m),
            Op::AcceptFailed => {
                let got = self.node.accept_failed("EMFILE", self.now);
                let want = self.model.accept_failed(self.now);
                assert_eq!(got, want, "k: the accept-error log");
            }
            Op::BrokerPoll => self.broker_poll(),
            Op::BrokerStep(ok) => self.broker_step(ok),
            Op::Deliver => {
                self.deliver();
            }
            Op::BrokerRun => {
                for _ in 0..256 {
                    let before = (
                        self.sim.batch.len(),
                        self.sim.executing,
                        self.sim.waiting,
                        self.sim.finished,
                    );
                    let delivered = self.deliver();
                    if self.sim.executing {
                        self.broker_step(true);
                    } else {
                        self.broker_poll();
                    }
                    let after = (
                        self.sim.batch.len(),
                        self.sim.executing,
                        self.sim.waiting,
                        self.sim.finished,
                    );
                    if !delivered && before == after && self.sim.batch.is_empty() {
                        break;
                    }
                }
            }
            Op::External(r, k) => {
                let room = r as usize % ROOMS.len();
                let (payload, expect) = external_payload(room, k);
                if self.model.local {
                    self.broker_message(channel(room), payload, expect);
                } else {
                    self.redis_publish(channel(room), payload, expect);
                }
            }
            Op::Stray(r, k) => self.stray(r, k),
            Op::SubscriberLost => {
                if let Some(l) = &mut self.sim.link
                    && l.subscriber_alive
                {
                    l.subscriber_alive = false;
                    l.subs.clear();
                    l.inbox.clear();
                    let s = l.session;
                    self.report_disconnected(s, 0, Vec::new());
                }
            }
            Op::Stale(k) => self.stale(k),
            Op::Advance(ms) => self.advance(Duration::from_millis(u64::from(ms)), false),
            Op::Late(ms) => self.advance(Duration::from_millis(u64::from(ms)), true),
            Op::Shutdown => {
                self.node.shutdown();
                self.model.shutdown();
            }
        }
        self.api_answers();
        self.check();
    }

    // ----- sockets and connections -----

    fn read_head(mut admitted: Admitted, input: &[u8]) -> Admitted {
        let mut at = 0;
        loop {
            let buf = admitted.head.buf();
            let n = buf.len().min(input.len() - at);
            buf[..n].copy_from_slice(&input[at..at + n]);
            at += n;
            if admitted.head.advance(n) {
                return admitted;
            }
        }
    }

    fn admit(&mut self) -> Option<(Admitted, bool)> {
        let got = self.node.admit();
        let want = self.model.admit();
        assert_eq!(got.is_some(), want.is_some(), "k: admission");
        Some((got?, want?))
    }

    fn open(&mut self, raced: bool, proto: Proto) {
        let cf = proto != Proto::Seed;
        let protocol = if cf {
            ClientProtocol::Centrifugo
        } else {
            ClientProtocol::Seed
        };
        let Some((admitted, full)) = self.admit() else {
            return;
        };
        if !raced {
            let admitted = Self::read_head(admitted, if cf { CF_UPGRADE } else { UPGRADE });
            let reply = self.node.answer(admitted, self.now);
            if full || self.model.stopped {
                self.model.rejected += 1;
                let body: &[u8] = if full {
                    b"connection limit reached\n"
                } else {
                    b"shutting down\n"
                };
                match &reply {
                    Reply::Respond(r) if r.starts_with(b"HTTP/1.1 503") && r.ends_with(body) => {}
                    other => panic!("k: an upgrade on a full or stopping node: {other:?}"),
                }
                self.node.socket_closed();
                self.model.sockets -= 1;
                return;
            }
            let subprotocol: &[u8] = b"\r\nSec-WebSocket-Protocol: centrifuge-json\r\n";
            match reply {
                Reply::Upgrade {
                    response,
                    rest,
                    protocol: p,
                    claims,
                } if p == protocol
                    // A Centrifugo client's token comes with its connect.
                    && claims.is_none() == cf
                    && response.starts_with(b"HTTP/1.1 101 ")
                    && rest.is_empty()
                    && response.windows(subprotocol.len()).any(|w| w == subprotocol) == cf => {}
                other => panic!("k: the upgrade: {other:?}"),
            }
        }
        let conn = self.node.open(protocol, None, self.now);
        let m = &mut self.model;
        m.connections_opened += 1;
        let id = if m.stopped {
            ConnId(0)
        } else {
            m.next_id += 1;
            ConnId(m.next_id - 1)
        };
        assert_eq!(conn.id(), id, "ids are sequential and never reused");
        assert_eq!(conn.protocol(), protocol);
        let mut c = MConn {
            id,
            cf: cf.then_some(CfState {
                connected: false,
                opened: self.now,
                next_ping: None,
                pong_deadline: None,
                next_id: 1,
            }),
            open: !m.stopped,
            rooms: BTreeSet::new(),
            queue: VecDeque::new(),
            bytes: 0,
            ping: false,
            close: None,
            abort: false,
            close_taken: false,
            reading: true,
            heard: self.now,
            pinged: None,
            tokens: u64::from(m.cfg.hub.limits.max_commands_per_sec) * 1_000_000,
            last: self.now,
            refused: 0,
            writer_waiting: false,
            expect_writer_wake: false,
            expect_abort_wake: false,
        };
        if m.stopped {
            let (code, reason) = c.shutdown_close();
            c.close = Some((code, reason.into()));
        }
        m.conns.push(c);
        self.tasks.push(Task {
            conn,
            writer: Waking::new(),
            abort: Waking::new(),
        });
        let i = self.tasks.len() - 1;
        if proto == Proto::Centrifugo && self.model.conns[i].close.is_none() {
            // The client connects at once, and reads the reply.
            let id = self.cf_ids(i, 1);
            let frame = Raw::Text(cf_connect_frame(id).into_bytes());
            self.feed(i, &frame, Input::Cf(vec![CfItem::Ok(id, Command::Connect)]));
            if self.model.conns[i].close.is_none() {
                self.drain(i, false);
            }
        }
    }

    fn http(&mut self, k: u8) {
        let (request, expect) = HTTP[k as usize % HTTP.len()];
        let Some((admitted, full)) = self.admit() else {
            return;
        };
        let admitted = Self::read_head(admitted, request);
        let reply = self.node.answer(admitted, self.now);
        let status = |r: &[u8]| {
            std::str::from_utf8(&r[9..12])
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
        };
        match (expect, &reply) {
            (HttpExpect::Drop, Reply::Drop) => self.model.handshake_failures += 1,
            (HttpExpect::Health { head }, Reply::Respond(r)) => {
                self.model.http_requests += 1;
                let m = &self.model;
                let (code, body): (u16, &[u8]) = if m.stopped {
                    (503, b"shutting down\n")
                } else if !m.up() {
                    (503, b"broker unavailable\n")
                } else if full {
                    (503, b"full\n")
                } else {
                    (200, b"ok\n")
                };
                assert_eq!(status(r), Some(code), "k: /healthz");
                if !head {
                    assert!(r.ends_with(body), "k: /healthz body");
                }
            }
            (HttpExpect::Metrics, Reply::Respond(r)) => {
                self.model.http_requests += 1;
                assert_eq!(status(r), Some(200));
                let text = String::from_utf8_lossy(r);
                let want = self.model.snapshot();
                let cf_bad = want.cf_bad_commands.iter().map(|(label, n)| {
                    format!("roomcast_centrifugo_bad_commands_total{{reason=\"{label}\"}} {n}\n")
                });
                for line in [
                    format!("roomcast_connections {}\n", want.connections),
                    format!("roomcast_broker_up {}\n", u8::from(want.broker_up)),
                    format!("roomcast_deliveries_total {}\n", want.deliveries),
                ]
                .into_iter()
                .chain(cf_bad)
                {
                    assert!(text.contains(&line), "k: /metrics lacks {line:?}");
                }
            }
            (HttpExpect::Status(code), Reply::Respond(r)) => {
                self.model.http_requests += 1;
                assert_eq!(status(r), Some(code));
            }
            (want, got) => panic!("k: {want:?} for {request:?}, got {got:?}"),
        }
        self.node.socket_closed();
        self.model.sockets -= 1;
    }

    /// A backend's `POST /api/publish` of message `m` into room `r`.
    fn api(&mut self, r: u8, m: u8) {
        let room = r as usize % ROOMS.len();
        let message = m as usize % MESSAGES.len();
        let body = format!(
            r#"{{"channel":{},"data":{}}}"#,
            ROOMS[room].1, MESSAGES[message].0
        );
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let request = request.as_bytes();
        let Some((admitted, _)) = self.admit() else {
            return;
        };
        let admitted = Self::read_head(admitted, request);
        let mut req = match self.node.answer(admitted, self.now) {
            Reply::Api(req) => req,
            Reply::Respond(r) if self.model.stopped => {
                assert!(r.starts_with(b"HTTP/1.1 503"), "k: the API after shutdown");
                self.node.socket_closed();
                self.model.sockets -= 1;
                return;
            }
            other => panic!("k: the API's head refused: {other:?}"),
        };
        // The body's end, past what the head's reader took.
        let missing = req.missing();
        req.extend(&request[request.len() - missing..]);
        let call = self.node.api(req, self.now);
        let (i, taken) = self.model.api_publish(room, message);
        match call {
            crate::node::ApiCall::Ready(answer) => {
                assert!(
                    self.model.local || !taken,
                    "k: an API publish answered before the broker took it: {answer:?}"
                );
                self.api_answered(i, answer);
            }
            crate::node::ApiCall::Pending(p) => {
                assert!(
                    !self.model.local && taken,
                    "k: an API publish waits, but the model has it {}",
                    if self.model.local {
                        "delivered"
                    } else {
                        "dropped"
                    }
                );
                self.api_waiting.push((i, p));
            }
        }
    }

    /// Every waiting API publish whose fate the model knows is ready, and
    /// no other: each answers as the model says, and closes its socket.
    fn api_answers(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        for (i, p) in std::mem::take(&mut self.api_waiting) {
            let ready = p.poll(&mut cx).is_ready();
            let fate = self.model.api[i];
            assert_eq!(
                ready,
                fate.is_some(),
                "k: API publish {i} is {} while the model has it {fate:?}",
                if ready { "answered" } else { "waiting" }
            );
            if ready {
                self.api_answered(i, p.finish());
            } else {
                self.api_waiting.push((i, p));
            }
        }
    }

    /// API publish `i`'s answer: `{}` if it was published, else error 100;
    /// then its socket closes.
    fn api_answered(&mut self, i: usize, answer: crate::node::ApiAnswer) {
        let (response, next) = self.node.api_respond(answer, 1, self.now);
        assert!(next.is_none(), "k: the request asked to close");
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with("HTTP/1.1 200"), "k: API answer {text:?}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        match self.model.api[i] {
            Some(Ok(())) => assert_eq!(body, r#"{"result":{}}"#, "k: API publish {i}"),
            Some(Err(code)) => assert!(
                body.starts_with(&format!(r#"{{"error":{{"code":{code},"#)),
                "k: API publish {i} fails with {code}, but: {body}"
            ),
            None => panic!("k: API publish {i} answered undecided"),
        }
        // Counted by the API's own metrics, not as a plain HTTP request.
        self.node.socket_closed();
        self.model.sockets -= 1;
    }

    /// The connection operand `c`'s index, if its reader still runs.
    fn reader(&self, c: u8) -> Option<usize> {
        self.pick(c).filter(|&i| self.model.conns[i].reading)
    }

    /// The Centrifugo client `i`'s next command id; `n` ids are used.
    fn cf_ids(&mut self, i: usize, n: u32) -> u32 {
        let cf = self.model.conns[i]
            .cf
            .as_mut()
            .expect("a Centrifugo client");
        let id = cf.next_id;
        cf.next_id += n;
        id
    }

    /// Sends a command in connection `c`'s protocol: `seed` makes the
    /// seed frame, `cf` the Centrifugo frame given its id.
    fn command(
        &mut self,
        c: u8,
        seed: impl FnOnce() -> String,
        cf: impl FnOnce(u32) -> String,
        cmd: Command,
    ) {
        let Some(i) = self.reader(c) else {
            return;
        };
        if self.model.conns[i].cf.is_some() {
            let id = self.cf_ids(i, 1);
            let text = cf(id);
            let input = if text.len() > MAX_FRAME {
                Input::CfRefused("too_large")
            } else {
                // A layout may put a pong first.
                let pong = text
                    .starts_with("{}\n")
                    .then_some(CfItem::Ok(0, Command::Pong));
                Input::Cf(pong.into_iter().chain([CfItem::Ok(id, cmd)]).collect())
            };
            self.feed(i, &Raw::Text(text.into_bytes()), input);
        } else {
            let text = seed();
            let input = if text.len() > MAX_FRAME {
                let reason = format!("frame larger than {MAX_FRAME} bytes");
                Input::Bad(1009, reason, "too_large")
            } else if matches!(cmd, Command::Connect) {
                // Another protocol's command: no `type`.
                Input::Bad(1008, "missing type".into(), "missing_type")
            } else {
                Input::Command(cmd)
            };
            self.feed(i, &Raw::Text(text.into_bytes()), input);
        }
    }

    /// Feeds a frame to connection `i`, whose reader runs.
    fn feed(&mut self, i: usize, raw: &Raw, input: Input) {
        assert!(self.model.conns[i].reading);
        let go = self
            .node
            .frame(&self.tasks[i].conn, raw.inbound(), self.now);
        let want = self.model.frame(i, input, self.now);
        assert_eq!(go, want, "h: whether reading goes on");
        if !go {
            self.model.conns[i].reading = false;
        }
    }

    /// The writer of connection `i` takes its work until it waits or
    /// finishes (`to_finish`: it must finish). Returns whether the
    /// connection ended.
    fn drain(&mut self, i: usize, to_finish: bool) -> bool {
        loop {
            let t = &self.tasks[i];
            let mut cx = Context::from_waker(&t.writer.waker);
            let got = self.node.poll_outgoing(&t.conn, &mut cx);
            let want = self.model.conns[i].take();
            match (got, want) {
                (Poll::Pending, None) => {
                    assert!(!to_finish, "h: the writer of a closing connection waits");
                    self.model.conns[i].writer_waiting = true;
                    self.tasks[i].writer.woken();
                    return false;
                }
                (Poll::Ready(Outgoing::Finish(f)), Some(Outgoing::Finish(w))) => {
                    assert_eq!(f, w, "h: how the writer finishes");
                    self.finish(i);
                    return true;
                }
                (Poll::Ready(got), Some(want)) => {
                    if got == Outgoing::Ping {
                        self.pings += 1;
                    }
                    assert_eq!(
                        got, want,
                        "c: what the writer of #{} takes",
                        self.model.conns[i].id.0
                    );
                }
                (got, want) => panic!("h: the writer got {got:?}, the model says {want:?}"),
            }
        }
    }

    /// The connection's task is over.
    fn finish(&mut self, i: usize) {
        let t = self.tasks.remove(i);
        self.node.closed(t.conn);
        self.node.socket_closed();
        self.model.ended(i);
    }

    fn end(&mut self, i: usize, peer_closed: bool) {
        let peer_closed = peer_closed && self.model.conns[i].reading;
        let got = self.node.reading_ended(&self.tasks[i].conn, peer_closed);
        let want = self.model.conns[i].reading_ended(peer_closed);
        assert_eq!(got, want, "h: how the connection ends");
        self.model.conns[i].reading = false;
        match got {
            Some(_) => self.finish(i),
            None => {
                assert!(self.drain(i, true), "h: the writer sends the close");
            }
        }
    }

    // ----- the broker task -----

    fn broker_poll(&mut self) {
        if self.sim.finished || !self.sim.batch.is_empty() {
            return;
        }
        let mut cx = Context::from_waker(&self.broker_waker.waker);
        let got = self.node.poll_broker(&mut cx);
        let work = self.model.broker_has_work();
        let stopped = self.model.link == Link::Stopped;
        match got {
            Poll::Pending => {
                assert!(!work && !stopped, "b: pending with work, or after shutdown");
                self.sim.waiting = true;
                self.broker_waker.woken();
            }
            Poll::Ready(None) => {
                assert!(
                    !work && stopped,
                    "b: finished with work, or before shutdown"
                );
                self.sim.finished = true;
            }
            Poll::Ready(Some(ops)) => {
                assert!(
                    work && !ops.is_empty(),
                    "b: operations without work: {ops:?}"
                );
                self.model.take_ops(&ops);
                self.sim.batch = ops.into();
                self.sim_run();
            }
        }
    }

    /// Carries out the batch's operations that need no answer, up to the
    /// first that does, as the driver does.
    fn sim_run(&mut self) {
        while let Some(op) = self.sim.batch.front() {
            match op {
                BrokerOp::Connect(_) => {
                    // The old link is dropped first.
                    self.sim.link = None;
                    self.sim.executing = true;
                    return;
                }
                BrokerOp::Reset(_) => {
                    self.sim.link = None;
                    self.sim.batch.pop_front();
                }
                other if self.sim.link.is_none() => {
                    // No link: the driver skips it; a publish goes back to
                    // the node's buffer.
                    if let BrokerOp::Publish(b) = other {
                        let b = b.clone();
                        let pubs: Vec<Pub> = b.iter().map(|o| self.model.pub_of(o)).collect();
                        self.node.broker_unsent(b);
                        self.model.hold_unsent(pubs);
                    }
                    self.sim.batch.pop_front();
                }
                _ => {
                    self.sim.executing = true;
                    return;
                }
            }
        }
        self.sim.executing = false;
    }

    fn broker_step(&mut self, ok: bool) {
        if !self.sim.executing {
            return;
        }
        let op = self.sim.batch.pop_front().expect("executing an operation");
        self.sim.executing = false;
        let now = self.now;
        if let BrokerOp::Connect(s) = op {
            if ok {
                self.sim.link = Some(SimLink {
                    session: s,
                    subscriber_alive: true,
                    subs: BTreeSet::new(),
                    inbox: VecDeque::new(),
                });
                self.node.broker_connected(s, now);
                self.model.connected(s.0, now);
                self.after_broker_call();
            } else {
                self.report_disconnected(s, 0, Vec::new());
            }
            self.sim_run();
            return;
        }
        let l = self.sim.link.as_mut().expect("a link for the operation");
        let s = l.session;
        let progress = matches!(op, BrokerOp::Subscribe(_) | BrokerOp::Unsubscribe(_));
        // Tickets of API publishes whose fate is unknown: failed after the
        // node learns the link is gone, as the driver does.
        let mut failed: Vec<Ticket> = Vec::new();
        let (ok, unknown) = match op {
            BrokerOp::Subscribe(chs) => {
                let ok = ok && l.subscriber_alive;
                if ok {
                    l.subs.extend(chs);
                }
                (ok, 0)
            }
            BrokerOp::Unsubscribe(chs) => {
                let ok = ok && l.subscriber_alive;
                if ok {
                    for c in chs {
                        l.subs.remove(&c);
                    }
                }
                (ok, 0)
            }
            BrokerOp::Publish(batch) => {
                let n = batch.len();
                let tickets: Vec<Ticket> = batch.iter().filter_map(|o| o.ticket).collect();
                if ok {
                    let pubs: Vec<Pub> = batch.iter().map(|o| self.model.pub_of(o)).collect();
                    for Pub {
                        channel: ch,
                        payload,
                        ..
                    } in pubs
                    {
                        let expect = match self.model.known.get(&payload) {
                            Some(_) if payload.len() > MAX_BROKER_PAYLOAD => Expect::TooLarge,
                            Some(d) => Expect::Room(d.clone()),
                            None => panic!("g: a publish the clients never made: {payload:?}"),
                        };
                        self.redis_publish(ch, payload, expect);
                    }
                    self.node.broker_published(s, n);
                    if !self.model.published(s.0, n) {
                        self.sim.unreported += n as u64;
                    }
                    if !tickets.is_empty() {
                        // `PUBLISH` answers its receiver count.
                        let replies = tickets.iter().map(|t| (*t, Ok(RedisReply::Int(1))));
                        self.node.broker_replies(replies.collect());
                        for t in &tickets {
                            self.model.api_settled(t.0, true);
                        }
                    }
                } else {
                    failed = tickets;
                }
                (ok, n)
            }
            BrokerOp::Probe { channel, payload } => {
                if ok {
                    self.redis_publish(channel, payload, Expect::Probe);
                }
                (ok, 0)
            }
            BrokerOp::Query(q) => panic!("the model's rooms keep no history: {q:?}"),
            BrokerOp::Connect(_) | BrokerOp::Reset(_) => unreachable!("handled before"),
        };
        if ok && progress {
            self.node.broker_progress(s, now);
            self.model.progress(s.0, now);
        }
        match (ok, unknown) {
            (true, _) => {}
            (false, unknown) => {
                // The link is lost; what was queued behind went unsent.
                self.sim.link = None;
                let unsent: Vec<Outbound> = self
                    .sim
                    .batch
                    .drain(..)
                    .filter_map(|op| match op {
                        BrokerOp::Publish(b) => Some(b),
                        _ => None,
                    })
                    .flatten()
                    .collect();
                self.report_disconnected(s, unknown, unsent);
                if !failed.is_empty() {
                    let replies = failed.iter().map(|t| (*t, Err("link lost".to_string())));
                    self.node.broker_replies(replies.collect());
                    for t in &failed {
                        self.model.api_settled(t.0, false);
                    }
                }
            }
        }
        self.sim_run();
    }

    fn report_disconnected(&mut self, s: Session, unknown: usize, unsent: Vec<Outbound>) {
        let now = self.now;
        let pubs: Vec<Pub> = unsent.iter().map(|o| self.model.pub_of(o)).collect();
        self.node.broker_disconnected(s, unknown, unsent, now);
        // Current or not, the report's publishes are accounted.
        let _ = self.model.disconnected(s.0, unknown, pubs, now);
        self.after_broker_call();
    }

    /// Redis publishes on a channel: its subscriber gets it if subscribed.
    fn redis_publish(&mut self, channel: String, payload: Bytes, expect: Expect) {
        if let Some(l) = &mut self.sim.link
            && l.subscriber_alive
            && l.subs.contains(&channel)
        {
            l.inbox.push_back((channel, payload, expect));
        }
    }

    /// Returns whether a message was delivered.
    fn deliver(&mut self) -> bool {
        let Some(l) = &mut self.sim.link else {
            return false;
        };
        let Some((channel, payload, expect)) = l.inbox.pop_front() else {
            return false;
        };
        if expect == Expect::Probe {
            self.sim.probes_echoed += 1;
        } else if let Some(d) = self.model.known.get(&payload) {
            self.sim.echoed_publishes += 1;
            self.sim.echoed_cf_publishes += u64::from(d.info);
        }
        self.broker_message(channel, payload, expect);
        true
    }

    fn broker_message(&mut self, channel: String, payload: Bytes, expect: Expect) {
        self.node.broker_message(channel.as_bytes(), &payload);
        self.model.broker_message(&channel, &payload, &expect);
    }

    fn stray(&mut self, r: u8, k: u8) {
        let room = r as usize % ROOMS.len();
        let probe = self.model.probe_channel.clone();
        let (channel, payload, expect) = match k % 6 {
            // A channel without the prefix: no room's.
            0 => (
                ROOMS[room].0.to_string(),
                external_payload(room, 0).0,
                Expect::Dropped,
            ),
            // Junk on the probe channel is no probe: dropped and counted,
            // as on any channel.
            1 => (probe, Bytes::from_static(b"junk"), Expect::Dropped),
            2 => {
                let old = self.model.probes_seen.first().cloned();
                (
                    probe,
                    old.unwrap_or_else(|| Bytes::from_static(b"probe:")),
                    Expect::Probe,
                )
            }
            3 => (probe, Bytes::from_static(b"probe:99999999"), Expect::Probe),
            4 => {
                let (p, e) = external_payload(room, r / ROOMS.len() as u8);
                (channel(room), p, e)
            }
            _ => (String::new(), Bytes::new(), Expect::Dropped),
        };
        self.broker_message(channel, payload, expect);
    }

    fn stale(&mut self, k: u8) {
        let cur = self.model.session;
        let now = self.now;
        let other = Session(if k.is_multiple_of(2) {
            cur.wrapping_sub(1)
        } else {
            cur + 1
        });
        match k % 7 {
            0 | 1 => {
                self.node.broker_connected(other, now);
                self.model.connected(other.0, now);
            }
            2 | 3 => {
                self.node.broker_disconnected(other, 0, Vec::new(), now);
                assert!(!self.model.disconnected(other.0, 0, Vec::new(), now));
            }
            4 | 5 => {
                self.node.broker_progress(other, now);
                self.model.progress(other.0, now);
            }
            _ => {
                // A repeated connected for the current session: taken only
                // while connecting, which is when the runtime may report it.
                if !matches!(self.model.link, Link::Connecting { .. }) {
                    self.node.broker_connected(Session(cur), now);
                    self.model.connected(cur, now);
                }
            }
        }
        self.after_broker_call();
    }

    /// After a call that may have failed the link: learn the reconnect
    /// time the node drew, checking it lies within the bounds.
    fn after_broker_call(&mut self) {
        if let Link::Down {
            retry_at: None,
            failed_at,
            nominal,
        } = self.model.link
        {
            let ms = nominal.as_millis() as u64;
            let lo = failed_at + Duration::from_millis(ms - ms / 2);
            let hi = failed_at + nominal;
            let BrokerState::Down { retry_at } = self.node.broker_state() else {
                panic!(
                    "f: the link failed: down, not {:?}",
                    self.node.broker_state()
                )
            };
            assert!(
                lo <= retry_at && retry_at <= hi,
                "f: reconnect at {retry_at:?}, outside [{lo:?}, {hi:?}] (equal jitter of base·2^{})",
                self.model.attempts - 1
            );
            self.model.link = Link::Down {
                retry_at: Some(retry_at),
                failed_at,
                nominal,
            };
            self.model.backoffs.push((nominal, retry_at - failed_at));
        }
    }

    // ----- time -----

    fn advance(&mut self, by: Duration, late: bool) {
        let target = self.now + by;
        if late {
            self.now = target;
        }
        for _ in 0..100_000 {
            let broker = self.model.deadline().filter(|&d| d <= target);
            let conn = (0..self.tasks.len())
                .filter(|&i| self.model.conns[i].reading)
                .filter_map(|i| self.model.conn_deadline(i).map(|d| (d, i)))
                .filter(|&(d, _)| d <= target)
                .min();
            let at = match (broker, conn) {
                (None, None) => {
                    self.now = target;
                    return;
                }
                (Some(b), Some((c, _))) => b.min(c),
                (Some(b), None) => b,
                (None, Some((c, _))) => c,
            };
            self.now = self.now.max(at);
            assert_eq!(
                self.node.deadline(),
                self.model.deadline(),
                "f: the node's deadline"
            );
            if broker == Some(at) {
                self.node.timeout(self.now);
                self.model.timeout(self.now);
                self.after_broker_call();
            } else if let Some((_, i)) = conn {
                let got = self.node.conn_deadline(&self.tasks[i].conn);
                assert_eq!(got, self.model.conn_deadline(i), "k: keepalive deadline");
                self.node.conn_timeout(&self.tasks[i].conn, self.now);
                self.model.conn_timeout(i, self.now);
                if self.model.conns[i].close.is_some() {
                    // The reader stops once its connection is closing.
                    self.model.conns[i].reading = false;
                }
            }
        }
        panic!("f: timers fire without end");
    }

    // ----- the invariants -----

    /// Invariants a–k, compared with the model.
    pub fn check(&mut self) {
        let m = &self.model;
        // j: wakers.
        if self.sim.waiting && (m.broker_has_work() || m.link == Link::Stopped) {
            assert!(
                self.broker_waker.woken(),
                "j: the broker task has work and was not woken"
            );
            self.sim.waiting = false;
        }
        let deadline = self.node.deadline();
        assert_eq!(
            deadline,
            m.deadline(),
            "f: the node's deadline vs the model's ({:?})",
            m.link
        );
        if deadline != self.timer_seen {
            assert!(
                self.timer_waker.woken(),
                "j: the deadline moved without waking the timer"
            );
        }
        // i: every counter.
        let snap = self.node.snapshot();
        let want = m.snapshot();
        assert!(
            snap == want,
            "i: the node's snapshot differs from the model's:\n{}",
            diff(&snap, &want)
        );
        // f: the session's state.
        let state = self.node.broker_state();
        let same = match (state, m.link) {
            (BrokerState::Down { retry_at }, Link::Down { retry_at: r, .. }) => Some(retry_at) == r,
            (BrokerState::Connecting { deadline }, Link::Connecting { deadline: d }) => {
                deadline == d
            }
            (BrokerState::Verifying { deadline }, Link::Verifying { deadline: d }) => deadline == d,
            (
                BrokerState::Up {
                    next_probe,
                    probe_deadline,
                },
                Link::Up {
                    next_probe: n,
                    probe_deadline: p,
                },
            ) => next_probe == n && probe_deadline == p,
            (BrokerState::Stopped, Link::Stopped) => true,
            _ => false,
        };
        assert!(
            same,
            "f: broker state {state:?}, the model says {:?}",
            m.link
        );
        // g: publish accounting.
        if !m.local {
            let c = &m.counters;
            let in_control: u64 = m
                .control
                .iter()
                .map(|op| match op {
                    ExpOp::Publish(b) => b.len() as u64,
                    _ => 0,
                })
                .sum();
            let held = (m.pending.len() + m.queue.len()) as u64;
            let accounted = c.published
                + c.unknown
                + held
                + c.buffer_dropped
                + c.queue_dropped
                + in_control
                + self.sim.in_flight()
                + self.sim.unreported;
            assert_eq!(
                accounted,
                m.publishes,
                "g: every publish accounted for ({c:?}, held {held}, in the task {}, unreported {})",
                self.sim.in_flight(),
                self.sim.unreported
            );
            assert!(
                UNREPORTED_PUBLISHES_TOLERATED || self.sim.unreported == 0,
                "g: {} publishes left no trace in the node's counters",
                self.sim.unreported
            );
            assert!(m.pending.len() <= PUBLISH_BUFFER && m.queue.len() <= PUBLISH_BUFFER);
        }
        // e: the hub's tables.
        let rooms = m.rooms_with_members();
        let fp = self.node.inspect(|h| h.footprint());
        let memberships: usize = m
            .conns
            .iter()
            .filter(|c| c.open)
            .map(|c| c.rooms.len())
            .sum();
        assert_eq!(fp.connections, snap.connections, "e: connections");
        assert_eq!(fp.rooms, rooms.len(), "e: rooms");
        assert_eq!(fp.room_slots_in_use, rooms.len(), "e: room slots");
        assert_eq!(fp.memberships, memberships, "e: memberships");
        for (r, (name, _)) in ROOMS.iter().enumerate() {
            let got: Option<Vec<ConnId>> = self.node.inspect(|h| {
                h.members(name).map(|ms| {
                    let mut ids: Vec<ConnId> = ms.iter().map(|(id, _)| *id).collect();
                    ids.sort();
                    ids
                })
            });
            let want: Vec<ConnId> = m.members(r).iter().map(|&i| m.conns[i].id).collect();
            let want = (!want.is_empty()).then_some(want);
            assert_eq!(got, want, "e: members of {name}");
        }
        // h: outboxes, ends and wakers of every connection.
        let max = m.cfg.hub.limits.max_outbound_bytes;
        let timers = m.cfg.timers.clone();
        for (i, t) in self.tasks.iter_mut().enumerate() {
            let c = &mut self.model.conns[i];
            let id = c.id;
            let frames = self.node.queued_frames(&t.conn);
            assert_eq!(frames, Vec::from(c.queue.clone()), "c: queue of {id}");
            assert_eq!(self.node.queued_bytes(&t.conn), c.bytes, "h: bytes of {id}");
            if let Some(last) = c.queue.back() {
                assert!(
                    c.bytes - last.len() < max,
                    "h: at most the limit plus one frame"
                );
            }
            assert_eq!(self.node.queued_close(&t.conn), c.close, "h: close of {id}");
            assert_eq!(self.node.is_closing(&t.conn), c.close.is_some());
            let open = self.node.inspect(|h| h.is_open(id));
            assert_eq!(open, c.open && id.0 != 0, "e: {id} in the hub");
            let mut hub_rooms: Vec<String> = self
                .node
                .inspect(|h| h.rooms_of(id).into_iter().map(String::from).collect());
            hub_rooms.sort();
            let mut want: Vec<String> = c.rooms.iter().map(|&r| ROOMS[r].0.to_string()).collect();
            want.sort();
            assert_eq!(hub_rooms, want, "e: rooms of {id}");
            for peer_closed in [false, true] {
                let peer_closed = peer_closed && c.reading;
                assert_eq!(
                    self.node.reading_ended(&t.conn, peer_closed),
                    c.reading_ended(peer_closed),
                    "h: how {id} ends (peer closed: {peer_closed})"
                );
            }
            if c.expect_writer_wake {
                assert!(
                    t.writer.woken(),
                    "j: the writer of {id} has work and was not woken"
                );
                c.expect_writer_wake = false;
            }
            if c.expect_abort_wake {
                assert!(t.abort.woken(), "j: the abort watch of {id} was not woken");
                c.expect_abort_wake = false;
            }
            let mut cx = Context::from_waker(&t.abort.waker);
            let abort = self.node.poll_abort(&t.conn, &mut cx);
            match (abort, c.abort_close()) {
                (Poll::Pending, None) => {}
                (Poll::Ready(f), Some(w)) => assert_eq!(f, w),
                (got, want) => panic!("h: abort watch of {id}: {got:?}, want {want:?}"),
            }
            if c.open {
                let got = self.node.conn_deadline(&t.conn);
                assert_eq!(
                    got,
                    conn_deadline(&timers, c),
                    "k: keepalive deadline of {id}"
                );
            }
        }
        // The timer task waits for the deadline to change.
        let mut cx = Context::from_waker(&self.timer_waker.waker);
        let d = self.model.deadline();
        assert!(
            self.node.poll_deadline_change(d, &mut cx).is_pending(),
            "f: the deadline is the model's"
        );
        self.timer_waker.woken();
        self.timer_seen = d;
    }
}

/// The lines of two values' pretty `Debug` that differ: (node, model),
/// after the line before when it names them (a label's count).
fn diff<T: std::fmt::Debug>(node: &T, model: &T) -> String {
    let (a, b) = (format!("{node:#?}"), format!("{model:#?}"));
    let mut prev = "";
    let mut out = String::new();
    for (x, y) in a.lines().zip(b.lines()) {
        if x != y {
            let name = if x.contains(':') { "" } else { prev.trim() };
            out.push_str(&format!("  {name} node {}  model {}\n", x.trim(), y.trim()));
        }
        prev = x;
    }
    out
}

/// A connection's own deadline. Seed: a ping after `ws_ping_interval` of
/// silence, then a close `ws_pong_timeout` after it. Centrifugo: the
/// connect timeout until it connects, then the next ping or the pong's
/// deadline, whichever is first.
fn conn_deadline(t: &ClientTimers, c: &MConn) -> Option<Duration> {
    if let Some(cf) = &c.cf {
        if !cf.connected {
            return Some(cf.opened + t.connect_timeout);
        }
        return [cf.next_ping, cf.pong_deadline].into_iter().flatten().min();
    }
    if t.ws_ping_interval.is_zero() {
        return None;
    }
    Some(match c.pinged {
        Some(at) => at + t.ws_pong_timeout,
        None => c.heard + t.ws_ping_interval,
    })
}
