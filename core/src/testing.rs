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
//! The model is plain sets and queues. It *predicts* rather than follows:
//! every broker operation, deadline and counter is computed by the model and
//! compared with the node's.
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
//!   fields) queues exactly one frame per current member of R and none
//!   elsewhere; junk and oversized payloads are counted and deliver nothing.
//! - d. commands that change nothing (a second SUBSCRIBE, an UNSUBSCRIBE of
//!   a room one is not in) change nothing.
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
//! - h. **outboxes**: the frames, the close and the writer's next work are
//!   the model's; an outbox holds at most `max_outbound_bytes` plus one
//!   frame; a connection that would exceed it is closed 1008 "slow
//!   consumer" with its queue discarded; `reading_ended` and `poll_abort`
//!   say what the model says.
//! - i. **every counter** of [`Node::snapshot`] equals the model's.
//! - j. **wakers**: the broker task, the timer task, each writer and each
//!   abort watch are woken whenever they have something new to do.
//! - k. keepalive pings and "no pong" closes, the command rate limit, socket
//!   admission with its operator reserve, `/healthz` following the broker,
//!   and the accept-error log, as the model predicts.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;

use crate::codec::http::ClientProtocol;
use crate::codec::seed::FrameError;
use crate::config::{ClientTimers, HubConfig, Limits, NodeConfig};
use crate::hub::{BrokerMode, BrokerOp, BrokerState, ConnId, Session};
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
/// Outbox limit (a frame is refused once this much is queued): two of the
/// longest message, so that a queue reaches it exactly.
pub const MAX_OUTBOUND: usize = 120;
/// Largest broker payload taken.
pub const MAX_BROKER_PAYLOAD: usize = 120;
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

fn channel(room: usize) -> String {
    format!("{PREFIX}{}", ROOMS[room].0)
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

/// What a broker payload must come to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Delivered to the members of this room as this frame.
    Room(usize, Bytes),
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
    let deliver = |p: String, text: &str| {
        (
            Bytes::from(p),
            Expect::Room(room, Bytes::copy_from_slice(text.as_bytes())),
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
            "hi",
        ),
        1 => deliver(
            format!(r#"{{"type":"sendMessage","roomId":{r},"message":{{"n": [1, 2]}}}}"#),
            r#"{"n":[1,2]}"#,
        ),
        2 => deliver(
            format!(
                r#"{{"type":"sendMessage","roomId":{r},"message":"from c","info":{{"user":"u1"}}}}"#
            ),
            "from c",
        ),
        3 => deliver(
            format!(
                r#"{{"info": {{"user": "u2", "client": "c2"}}, "message": 7, "roomId": {r}, "type": "sendMessage"}}"#
            ),
            "7",
        ),
        4 => dropped(format!(
            r#"{{"type":"sendMessage","roomId":{r},"message":"x","info":"u"}}"#
        )),
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
            deliver(p, &fill)
        }
        11 => dropped(format!(r#"{{"type":"sendMessage","roomId":{r}}}"#)),
        12 => deliver(
            format!(
                r#"{{"type":"sendMessage","roomId":{r},"message":"tutorial","from":"node.js"}}"#
            ),
            "tutorial",
        ),
        _ => deliver(
            format!(r#"{{"type":"sendMessage","roomId":{r},"message":null}}"#),
            "null",
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
            node_id: "n".into(),
            timers: ClientTimers {
                ws_ping_interval: if self.no_keepalive {
                    Duration::ZERO
                } else {
                    300 * MS
                },
                ws_pong_timeout: 200 * MS,
                ..ClientTimers::default()
            },
            wall_origin: 0,
        }
    }
}

/// One input to the system. Connection, room and kind operands are
/// indices taken modulo what exists, so every value is meaningful and
/// shrinking never points at nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Op {
    /// A socket is accepted and its upgrade answered, then the connection
    /// opens. `true`: the upgrade was answered before (a shutdown may have
    /// come since), so the connection opens at once.
    Open(bool),
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
    /// (connection, room, message; its frame layout from the message index).
    Send(u8, u8, u8),
    /// A bad frame, or one the WebSocket layer refused.
    Bad(u8, u8),
    /// A ping or pong from the client.
    Pong(u8),
    /// The connection's writer takes everything it can.
    Drain(u8),
    /// The connection's reader stops (`true`: the client sent a close); the
    /// connection then ends the way the node says.
    End(u8, bool),
    /// The runtime found the connection's own buffers full.
    OutboundFull(u8),
    /// A plain HTTP request (or garbage) on a socket of its own.
    Http(u8),
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
}

impl Pub {
    fn wire(&self) -> (String, Bytes) {
        (self.channel.clone(), self.payload.clone())
    }
}

#[derive(Debug)]
struct MConn {
    id: ConnId,
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
    // rate limit: a bucket of `rate` tokens, in millionths
    tokens: u64,
    last: Duration,
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
    known: BTreeMap<Bytes, (usize, Bytes)>,
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
    handshake_failures: u64,
    rejected: u64,
    http_requests: u64,
    accept_errors: u64,
    accept_log: Option<Duration>,
    accept_suppressed: u64,
    /// (nominal, actual) of every reconnect delay.
    backoffs: Vec<(Duration, Duration)>,
}

impl Model {
    fn new(cfg: NodeConfig, probe_channel: String) -> Model {
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
            handshake_failures: 0,
            rejected: 0,
            http_requests: 0,
            accept_errors: 0,
            accept_log: None,
            accept_suppressed: 0,
            backoffs: Vec::new(),
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
    }

    /// A slow consumer: its queue is discarded, it is closed and counted.
    fn slow(&mut self, i: usize) {
        if self.conns[i].close.is_none() {
            self.slow_consumer_closes += 1;
            self.close(i, 1008, "slow consumer", true);
        }
    }

    /// One frame to every member of `room`.
    fn deliver(&mut self, room: usize, text: &Bytes) {
        let members = self.members(room);
        self.deliveries += members.len() as u64;
        let max = self.hub().limits.max_outbound_bytes;
        for i in members {
            let c = &mut self.conns[i];
            if c.bytes >= max {
                self.slow(i);
            } else {
                c.bytes += text.len();
                c.queue.push_back(text.clone());
                c.wake_writer();
            }
        }
    }

    fn allowed(&mut self, i: usize, now: Duration) -> bool {
        let rate = u64::from(self.hub().limits.max_commands_per_sec);
        if rate == 0 {
            return true;
        }
        let c = &mut self.conns[i];
        let elapsed = now.saturating_sub(c.last).as_micros() as u64;
        c.last = c.last.max(now);
        c.tokens = (c.tokens + elapsed * rate).min(rate * 1_000_000);
        if c.tokens >= 1_000_000 {
            c.tokens -= 1_000_000;
            true
        } else {
            false
        }
    }

    fn conn_deadline(&self, i: usize) -> Option<Duration> {
        keepalive_deadline(&self.cfg.timers, &self.conns[i])
    }

    fn conn_timeout(&mut self, i: usize, now: Duration) {
        let Some(d) = self.conn_deadline(i) else {
            return;
        };
        // A connection already closing is left to its close.
        if now < d || self.conns[i].close.is_some() {
            return;
        }
        let c = &mut self.conns[i];
        if c.pinged.is_some() {
            self.no_pong_closes += 1;
            self.close(i, 1008, "no pong", false);
        } else {
            c.pinged = Some(now);
            c.ping = true;
            c.wake_writer();
        }
    }

    /// A frame from connection `i`: returns whether reading goes on.
    fn frame(&mut self, i: usize, input: Input, now: Duration) -> bool {
        if self.conns[i].close.is_some() {
            return false;
        }
        self.frames_received += 1;
        let c = &mut self.conns[i];
        c.heard = now;
        c.pinged = None;
        match input {
            Input::Control => {}
            Input::Bad(code, reason, label) => {
                *self.bad_frames.entry(label).or_default() += 1;
                self.close(i, code, &reason, false);
            }
            Input::Command(cmd) => {
                if !self.allowed(i, now) {
                    self.rate_limited += 1;
                    self.close(i, 1008, "too many requests", false);
                } else {
                    self.command(i, cmd);
                }
            }
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
            Command::Send(room, message) => {
                let text = Bytes::from_static(MESSAGES[message].2.as_bytes());
                if self.local {
                    self.deliver(room, &text);
                } else {
                    let payload = Bytes::from(publish_payload(room, message));
                    self.known.insert(payload.clone(), (room, text));
                    self.publish(Pub {
                        channel: channel(room),
                        payload,
                    });
                }
            }
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
            Expect::Room(room, text) => {
                let text = text.clone();
                self.deliver(*room, &text)
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
                self.queue.clear();
            }
            Link::Up { .. } => {
                let mut all: VecDeque<Pub> = list.into();
                all.extend(self.queue.drain(..));
                while all.len() > PUBLISH_BUFFER {
                    all.pop_front();
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
            return;
        }
        let room = PUBLISH_BUFFER.saturating_sub(self.pending.len());
        let keep = list.len().min(room);
        self.counters.buffer_dropped += (list.len() - keep) as u64;
        for p in list.into_iter().rev().take(keep) {
            self.pending.push_front(p);
        }
    }

    fn publish(&mut self, p: Pub) {
        self.publishes += 1;
        match self.link {
            Link::Up { .. } => {
                if self.queue.len() >= PUBLISH_BUFFER {
                    self.counters.queue_dropped += 1;
                } else {
                    self.queue.push_back(p);
                }
            }
            Link::Stopped => self.counters.buffer_dropped += 1,
            _ => {
                if self.pending.len() < PUBLISH_BUFFER {
                    self.pending.push_back(p);
                } else {
                    self.counters.buffer_dropped += 1;
                }
            }
        }
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
                self.close(i, 1001, "going away", false);
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
        self.pending.clear();
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
                (ExpOp::Publish(batch), Some(BrokerOp::Publish(g))) => {
                    g.iter().cloned().eq(batch.iter().map(Pub::wire))
                }
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
            let want: Vec<(String, Bytes)> = self.queue.drain(..).map(|p| p.wire()).collect();
            assert!(
                matches!(got, Some(BrokerOp::Publish(g)) if *g == want),
                "g: publishes in order: expected {want:?}, got {got:?}"
            );
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
                self.link_subs.len() - 1
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
            cf_bad_commands: crate::node::CF_LABELS.iter().map(|l| (*l, 0)).collect(),
            origin_refused: 0,
            auth_refused: 0,
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
}

#[derive(Debug, Clone)]
enum Input {
    Control,
    Command(Command),
    Bad(u16, String, &'static str),
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub probes_echoed: u64,
    pub echoed_publishes: u64,
    /// Publishes lost to the node's accounting (see
    /// [`UNREPORTED_PUBLISHES_TOLERATED`]).
    pub unreported: u64,
    pub keepalive_pings: u64,
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
        let node = Node::new(cfg.clone(), Duration::ZERO);
        let probe = node.inspect(|h| h.broker().probe_channel().to_string());
        // The timer task starts from the first deadline.
        let timer_seen = node.deadline();
        assert!(
            (0..ROOMS.len()).all(|r| channel(r) != probe),
            "the probe channel is not a room's"
        );
        let mut h = Harness {
            node,
            model: Model::new(cfg, probe),
            sim: Sim::default(),
            tasks: Vec::new(),
            now: Duration::ZERO,
            broker_waker: Waking::new(),
            timer_waker: Waking::new(),
            timer_seen,
            pings: 0,
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
        Tally {
            probes_echoed: self.sim.probes_echoed,
            echoed_publishes: self.sim.echoed_publishes,
            unreported: self.sim.unreported,
            keepalive_pings: self.pings,
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
            Op::Open(raced) => self.open(raced),
            Op::Subscribe(c, r) => {
                let room = r as usize % ROOMS.len();
                self.text(
                    c,
                    subscribe_frame(room).as_bytes(),
                    Command::Subscribe(room),
                );
            }
            Op::Unsubscribe(c, r) => {
                let room = r as usize % ROOMS.len();
                self.text(
                    c,
                    unsubscribe_frame(room).as_bytes(),
                    Command::Unsubscribe(room),
                );
            }
            Op::Send(c, r, m) => {
                let room = r as usize % ROOMS.len();
                let message = m as usize % MESSAGES.len();
                let layout = m as usize / MESSAGES.len();
                let frame = send_frame(room, message, layout);
                self.text(c, frame.as_bytes(), Command::Send(room, message));
            }
            Op::Bad(c, k) => {
                let (input, code, reason, label) = bad_input(k);
                let long = vec![b' '; MAX_FRAME + 1];
                let inbound = match input {
                    BadInput::Text(b) => Inbound::Text(b),
                    BadInput::LongText => Inbound::Text(&long),
                    BadInput::Binary => Inbound::Binary,
                    BadInput::TooLarge => Inbound::TooLarge,
                    BadInput::NotUtf8 => Inbound::NotUtf8,
                    BadInput::Protocol => Inbound::ProtocolError,
                };
                self.frame(c, inbound, Input::Bad(code, reason, label));
            }
            Op::Pong(c) => self.frame(c, Inbound::Control, Input::Control),
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

    fn open(&mut self, raced: bool) {
        let Some((admitted, full)) = self.admit() else {
            return;
        };
        if !raced {
            let admitted = Self::read_head(admitted, UPGRADE);
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
            match reply {
                Reply::Upgrade {
                    response,
                    rest,
                    protocol: ClientProtocol::Seed,
                    ..
                } if response.starts_with(b"HTTP/1.1 101 ") && rest.is_empty() => {}
                other => panic!("k: the upgrade: {other:?}"),
            }
        }
        let conn = self.node.open(ClientProtocol::Seed, None, self.now);
        let m = &mut self.model;
        m.connections_opened += 1;
        let id = if m.stopped {
            ConnId(0)
        } else {
            m.next_id += 1;
            ConnId(m.next_id - 1)
        };
        assert_eq!(conn.id(), id, "ids are sequential and never reused");
        m.conns.push(MConn {
            id,
            open: !m.stopped,
            rooms: BTreeSet::new(),
            queue: VecDeque::new(),
            bytes: 0,
            ping: false,
            close: m.stopped.then(|| (1001, "going away".to_string())),
            abort: false,
            close_taken: false,
            reading: true,
            heard: self.now,
            pinged: None,
            tokens: u64::from(m.cfg.hub.limits.max_commands_per_sec) * 1_000_000,
            last: self.now,
            writer_waiting: false,
            expect_writer_wake: false,
            expect_abort_wake: false,
        });
        self.tasks.push(Task {
            conn,
            writer: Waking::new(),
            abort: Waking::new(),
        });
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
                for line in [
                    format!("roomcast_connections {}\n", want.connections),
                    format!("roomcast_broker_up {}\n", u8::from(want.broker_up)),
                    format!("roomcast_deliveries_total {}\n", want.deliveries),
                ] {
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

    fn text(&mut self, c: u8, bytes: &[u8], cmd: Command) {
        let input = if bytes.len() > MAX_FRAME {
            let reason = format!("frame larger than {MAX_FRAME} bytes");
            Input::Bad(1009, reason, "too_large")
        } else {
            Input::Command(cmd)
        };
        self.frame(c, Inbound::Text(bytes), input);
    }

    /// Feeds a frame to a connection whose reader still runs.
    fn frame(&mut self, c: u8, inbound: Inbound<'_>, input: Input) {
        let Some(i) = self.pick(c) else {
            return;
        };
        if !self.model.conns[i].reading {
            return;
        }
        let go = self.node.frame(&self.tasks[i].conn, inbound, self.now);
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
                        let pubs: Vec<Pub> = b
                            .iter()
                            .map(|(channel, payload)| Pub {
                                channel: channel.clone(),
                                payload: payload.clone(),
                            })
                            .collect();
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
                if ok {
                    for (ch, payload) in batch {
                        let expect = match self.model.known.get(&payload) {
                            Some((room, text)) => Expect::Room(*room, text.clone()),
                            None => panic!("g: a publish the clients never made: {payload:?}"),
                        };
                        self.redis_publish(ch, payload, expect);
                    }
                    self.node.broker_published(s, n);
                    if !self.model.published(s.0, n) {
                        self.sim.unreported += n as u64;
                    }
                }
                (ok, n)
            }
            BrokerOp::Probe { channel, payload } => {
                if ok {
                    self.redis_publish(channel, payload, Expect::Probe);
                }
                (ok, 0)
            }
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
                let unsent: Vec<(String, Bytes)> = self
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
            }
        }
        self.sim_run();
    }

    fn report_disconnected(&mut self, s: Session, unknown: usize, unsent: Vec<(String, Bytes)>) {
        let now = self.now;
        let pubs: Vec<Pub> = unsent
            .iter()
            .map(|(channel, payload)| Pub {
                channel: channel.clone(),
                payload: payload.clone(),
            })
            .collect();
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
        } else if self.model.known.contains_key(&payload) {
            self.sim.echoed_publishes += 1;
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
                    keepalive_deadline(&timers, c),
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

/// The lines of two values' pretty `Debug` that differ: (node, model).
fn diff<T: std::fmt::Debug>(node: &T, model: &T) -> String {
    let (a, b) = (format!("{node:#?}"), format!("{model:#?}"));
    a.lines()
        .zip(b.lines())
        .filter(|(x, y)| x != y)
        .map(|(x, y)| format!("  node {}  model {}\n", x.trim(), y.trim()))
        .collect()
}

/// A seed connection's keepalive deadline: a ping after `ws_ping_interval`
/// of silence, then a close `ws_pong_timeout` after it.
fn keepalive_deadline(t: &ClientTimers, c: &MConn) -> Option<Duration> {
    if t.ws_ping_interval.is_zero() {
        return None;
    }
    Some(match c.pinged {
        Some(at) => at + t.ws_pong_timeout,
        None => c.heard + t.ws_ping_interval,
    })
}
