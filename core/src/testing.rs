//! A reference model of the hub and a harness that drives a real [`Node`]
//! (remote-broker mode) and the model side by side, checking the core's
//! invariants after every step. Shared by the property tests and the fuzz
//! targets (feature `testing`).
//!
//! Invariants checked after every [`Op`]:
//! - a. the simulated broker holds a subscription to R iff R has an open local member (while connected; none otherwise);
//! - b. `BrokerSubscribe(R)` only on R's 0→1 transition, `BrokerUnsubscribe(R)` only on 1→0 (never a duplicate or a stray one);
//! - c. a broker message for R queues exactly one frame per current member of R and none elsewhere;
//! - d. repeated SUBSCRIBE / UNSUBSCRIBE of a room one is not in change nothing;
//! - e. a gone connection leaves nothing: the hub's tables match the model's sizes;
//! - f. on reconnect exactly the rooms with members are subscribed, once each, in batches;
//! - g. messages sent while the broker is down are published in order once it is back, up to the buffer size; the rest are counted;
//! - h. no outbox ever holds more than its byte limit; a connection that would exceed it is closed with 1008 "slow consumer".

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;

use crate::codec::envelope;
use crate::config::{HubConfig, Limits};
use crate::hub::{BrokerState, ConnId, Inbound, Session};
use crate::node::{BrokerMode, BrokerOp, Finish, Node, Outgoing};
use crate::seed::{ClientFrame, Message};

/// Room names the operations pick from.
pub const ROOMS: [&str; 5] = ["lobby", "r1", "r2", "é-room", "a\"b"];
/// Messages the operations pick from: short, escaped, JSON, and one large.
pub const MESSAGES: [&str; 5] = [
    "hi",
    "line\nbreak",
    "{\"k\":[1,2]}",
    "",
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
];
/// Bad frames and the close they must cause.
pub const BAD_FRAMES: [(&[u8], u16, &str); 7] = [
    (b"not json", 1008, "frame is not valid JSON"),
    (b"[]", 1008, "frame is not a JSON object"),
    (b"{\"type\":\"JOIN\"}", 1008, "unknown type"),
    (
        b"{\"type\":\"sendMessage\",\"message\":1}",
        1008,
        "sendMessage: missing roomId",
    ),
    (
        b"{\"type\":\"SUBSCRIBE\",\"room\":\"\"}",
        1008,
        "room name is empty",
    ),
    (
        b"{\"type\":\"SUBSCRIBE\",\"room\":\"0123456789abcdefX\"}",
        1008,
        "room name longer than 16 bytes",
    ),
    (b"\xff\xfe", 1007, "frame is not valid UTF-8"),
];

/// One input to the system. Connection and room operands are indices,
/// taken modulo what exists, so every value is meaningful and shrinking
/// never points at nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Op {
    Open,
    /// Abrupt or clean close reported by the runtime.
    Close(u8),
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
    Send(u8, u8, u8),
    BadFrame(u8, u8),
    Binary(u8),
    TooLarge(u8),
    /// The runtime reports the outbound queue full.
    OutboundFull(u8),
    /// The writer of a connection takes everything queued (and finishes if closing).
    Drain(u8),
    /// A message from any publisher on the broker.
    BrokerMessage(u8, u8),
    /// Junk on a subscribed channel.
    BrokerJunk(u8),
    /// The current (or, with `true`, a stale) session connected.
    BrokerConnected(bool),
    BrokerDisconnected(bool),
    BrokerPong,
    /// Milliseconds pass.
    Advance(u16),
    Shutdown,
    /// The WebSocket layer refused a text frame that is not UTF-8.
    NotUtf8(u8),
    /// The WebSocket layer refused a frame that breaks the protocol.
    ProtocolError(u8),
}

/// The configuration the harness runs with: small limits so that every
/// limit is reached in short sequences.
pub fn harness_config() -> HubConfig {
    HubConfig {
        limits: Limits {
            max_frame_bytes: 256,
            max_room_bytes: 16,
            max_rooms_per_conn: 3,
            max_outbound_bytes: 48,
            publish_buffer: 4,
        },
        channel_prefix: "rc:".into(),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        jitter_seed: 7,
        connect_timeout: Duration::from_millis(300),
        ping_interval: Duration::from_millis(100),
        ping_timeout: Duration::from_millis(150),
        subscribe_batch: 2,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModelBroker {
    Connecting(Session),
    Up(Session),
    Down(Session),
    Stopped,
}

#[derive(Debug, Default)]
struct ModelConn {
    rooms: BTreeSet<String>,
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// Set once the hub closed it; the writer has not finished yet.
    close: Option<(u16, String)>,
    /// The close drops it at once (a slow consumer).
    abort: bool,
}

/// The reference model: plain sets and queues, obviously right.
#[derive(Debug)]
struct Model {
    cfg: HubConfig,
    ids: Vec<ConnId>,
    conns: BTreeMap<ConnId, ModelConn>,
    broker: ModelBroker,
    /// What the simulated broker has subscribed, from the command stream.
    broker_subs: BTreeSet<String>,
    /// Publishes held while down, oldest first.
    pending: VecDeque<(String, Bytes)>,
    /// Publishes expected on the command stream next, in order.
    expect_publish: VecDeque<(String, Bytes)>,
    dropped: u64,
    slow_closes: u64,
}

impl Model {
    fn up(&self) -> bool {
        matches!(self.broker, ModelBroker::Up(_))
    }

    fn session(&self) -> Session {
        match self.broker {
            ModelBroker::Connecting(s) | ModelBroker::Up(s) | ModelBroker::Down(s) => s,
            ModelBroker::Stopped => Session(u64::MAX),
        }
    }

    fn live(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.close.is_none())
    }

    fn rooms_with_members(&self) -> BTreeSet<String> {
        self.conns
            .values()
            .filter(|c| c.close.is_none())
            .flat_map(|c| c.rooms.iter().cloned())
            .collect()
    }

    fn channel(&self, room: &str) -> String {
        envelope::channel_for(&self.cfg.channel_prefix, room)
    }

    fn close(&mut self, id: ConnId, code: u16, reason: &str, discard: bool) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.close.is_none()
        {
            c.rooms.clear();
            if discard {
                c.queue.clear();
                c.bytes = 0;
            }
            c.close = Some((code, reason.to_string()));
            c.abort = discard;
        }
    }

    fn deliver(&mut self, room: &str, frame: &Bytes) {
        let max = self.cfg.limits.max_outbound_bytes;
        let members: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.close.is_none() && c.rooms.contains(room))
            .map(|(id, _)| *id)
            .collect();
        for id in members {
            let c = self.conns.get_mut(&id).expect("member exists");
            if c.bytes + frame.len() > max {
                self.slow_closes += 1;
                self.close(id, 1008, "slow consumer", true);
            } else {
                c.bytes += frame.len();
                c.queue.push_back(frame.clone());
            }
        }
    }

    fn publish(&mut self, room: &str, message: &Message<'_>) {
        let channel = self.channel(room);
        let payload = Bytes::from(crate::seed::encode_send_message(room, message));
        if self.up() {
            self.expect_publish.push_back((channel, payload));
        } else if matches!(self.broker, ModelBroker::Stopped) {
        } else if self.pending.len() < self.cfg.limits.publish_buffer {
            self.pending.push_back((channel, payload));
        } else {
            self.dropped += 1;
        }
    }
}

/// Drives a [`Node`] and the model together. Panics (with a description)
/// when they disagree or an invariant breaks.
pub struct Harness {
    node: Node,
    model: Model,
    now: Duration,
    waker: Waker,
    pings: u64,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new(harness_config())
    }
}

impl Harness {
    pub fn new(cfg: HubConfig) -> Harness {
        let node = Node::new(cfg.clone(), BrokerMode::Remote, Duration::ZERO);
        let mut h = Harness {
            node,
            model: Model {
                cfg,
                ids: Vec::new(),
                conns: BTreeMap::new(),
                broker: ModelBroker::Down(Session(0)),
                broker_subs: BTreeSet::new(),
                pending: VecDeque::new(),
                expect_publish: VecDeque::new(),
                dropped: 0,
                slow_closes: 0,
            },
            now: Duration::ZERO,
            waker: Waker::noop().clone(),
            pings: 0,
        };
        h.settle();
        h
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Pings issued so far.
    pub fn pings(&self) -> u64 {
        self.pings
    }

    fn pick(&self, i: u8) -> Option<ConnId> {
        if self.model.ids.is_empty() {
            None
        } else {
            Some(self.model.ids[i as usize % self.model.ids.len()])
        }
    }

    fn room(i: u8) -> &'static str {
        ROOMS[i as usize % ROOMS.len()]
    }

    fn text(&mut self, id: ConnId, frame: &ClientFrame<'_>) {
        let enc = frame.encode();
        self.frame(id, Inbound::Text(enc.as_bytes()));
    }

    /// Feeds a frame; the node's "go on reading" must match whether it kept
    /// the connection open.
    fn frame(&mut self, id: ConnId, frame: Inbound<'_>) {
        let go_on = self.node.frame(id, frame);
        assert_eq!(
            go_on,
            self.node.hub().is_open(id),
            "reading goes on iff open"
        );
    }

    /// Applies one operation to both sides, then checks every invariant.
    pub fn apply(&mut self, op: Op) {
        let m = &mut self.model;
        match op {
            Op::Open => {
                let id = self.node.open();
                assert!(
                    m.ids.last().is_none_or(|last| *last < id),
                    "ids must never be reused"
                );
                m.ids.push(id);
                let mut c = ModelConn::default();
                if m.broker == ModelBroker::Stopped {
                    c.close = Some((1001, "going away".into()));
                }
                m.conns.insert(id, c);
            }
            Op::Close(i) => {
                if let Some(id) = self.pick(i) {
                    self.node.closed(id);
                    self.model.conns.remove(&id);
                }
            }
            Op::Subscribe(i, r) => {
                if let Some(id) = self.pick(i) {
                    let room = Self::room(r);
                    self.text(id, &ClientFrame::Subscribe { room: room.into() });
                    let m = &mut self.model;
                    if m.live(id) {
                        let max = m.cfg.limits.max_rooms_per_conn;
                        let c = m.conns.get_mut(&id).expect("live");
                        if !c.rooms.contains(room) && c.rooms.len() >= max {
                            m.close(
                                id,
                                1008,
                                &format!("more than {max} rooms on one connection"),
                                false,
                            );
                        } else {
                            c.rooms.insert(room.to_string());
                        }
                    }
                }
            }
            Op::Unsubscribe(i, r) => {
                if let Some(id) = self.pick(i) {
                    let room = Self::room(r);
                    self.text(id, &ClientFrame::Unsubscribe { room: room.into() });
                    if let Some(c) = self.model.conns.get_mut(&id)
                        && c.close.is_none()
                    {
                        c.rooms.remove(room);
                    }
                }
            }
            Op::Send(i, r, k) => {
                if let Some(id) = self.pick(i) {
                    let room = Self::room(r);
                    let text = MESSAGES[k as usize % MESSAGES.len()];
                    let message = if text.starts_with('{') {
                        Message::Json(text.into())
                    } else {
                        Message::Text(text.into())
                    };
                    self.text(
                        id,
                        &ClientFrame::SendMessage {
                            room: room.into(),
                            message: message.clone(),
                        },
                    );
                    if self.model.live(id) {
                        self.model.publish(room, &message);
                    }
                }
            }
            Op::BadFrame(i, k) => {
                if let Some(id) = self.pick(i) {
                    let (bytes, code, reason) = BAD_FRAMES[k as usize % BAD_FRAMES.len()];
                    self.frame(id, Inbound::Text(bytes));
                    self.model.close(id, code, reason, false);
                }
            }
            Op::Binary(i) => {
                if let Some(id) = self.pick(i) {
                    self.frame(id, Inbound::Binary);
                    self.model
                        .close(id, 1003, "binary frames are not supported", false);
                }
            }
            Op::NotUtf8(i) => {
                if let Some(id) = self.pick(i) {
                    self.frame(id, Inbound::NotUtf8);
                    self.model
                        .close(id, 1007, "frame is not valid UTF-8", false);
                }
            }
            Op::ProtocolError(i) => {
                if let Some(id) = self.pick(i) {
                    self.frame(id, Inbound::ProtocolError);
                    self.model
                        .close(id, 1002, "WebSocket protocol error", false);
                }
            }
            Op::TooLarge(i) => {
                if let Some(id) = self.pick(i) {
                    self.frame(id, Inbound::TooLarge);
                    let max = self.model.cfg.limits.max_frame_bytes;
                    self.model
                        .close(id, 1009, &format!("frame larger than {max} bytes"), false);
                }
            }
            Op::OutboundFull(i) => {
                if let Some(id) = self.pick(i) {
                    self.node.outbound_full(id);
                    if self.model.live(id) {
                        self.model.slow_closes += 1;
                        self.model.close(id, 1008, "slow consumer", true);
                    }
                }
            }
            Op::Drain(i) => {
                if let Some(id) = self.pick(i) {
                    self.drain(id);
                }
            }
            Op::BrokerMessage(r, k) => {
                let room = Self::room(r);
                let text = MESSAGES[k as usize % MESSAGES.len()];
                let env = envelope::Envelope {
                    room: room.into(),
                    message: Message::Text(text.into()),
                };
                let channel = self.model.channel(room);
                self.node
                    .broker_message(channel.as_bytes(), env.encode().as_bytes());
                self.model
                    .deliver(room, &Bytes::copy_from_slice(text.as_bytes()));
            }
            Op::BrokerJunk(r) => {
                let channel = self.model.channel(Self::room(r));
                let before = self.node.hub().counters().broker_payloads_dropped;
                self.node
                    .broker_message(channel.as_bytes(), b"{\"type\":\"nope\"}");
                assert_eq!(
                    self.node.hub().counters().broker_payloads_dropped,
                    before + 1,
                    "junk payloads are counted"
                );
            }
            Op::BrokerConnected(stale) => {
                let s = self.model.session();
                let s = if stale {
                    Session(s.0.wrapping_sub(1))
                } else {
                    s
                };
                self.node.broker_connected(s, self.now);
                if let ModelBroker::Connecting(cur) = self.model.broker
                    && cur == s
                {
                    self.model.broker = ModelBroker::Up(s);
                    self.model.expect_publish = std::mem::take(&mut self.model.pending);
                    self.check_resubscribe();
                }
            }
            Op::BrokerDisconnected(stale) => {
                let s = self.model.session();
                let s = if stale {
                    Session(s.0.wrapping_sub(1))
                } else {
                    s
                };
                self.node.broker_disconnected(s, self.now);
                if let ModelBroker::Connecting(cur) | ModelBroker::Up(cur) = self.model.broker
                    && cur == s
                {
                    self.model.broker = ModelBroker::Down(s);
                    self.model.broker_subs.clear();
                    self.check_backoff();
                }
            }
            Op::BrokerPong => {
                let s = self.model.session();
                self.node.broker_pong(s);
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                self.node.timeout(self.now);
            }
            Op::Shutdown => {
                self.node.shutdown();
                let ids: Vec<ConnId> = self.model.conns.keys().copied().collect();
                for id in ids {
                    self.model.close(id, 1001, "going away", false);
                }
                self.model.pending.clear();
            }
        }
        self.settle();
        if op == Op::Shutdown {
            self.model.broker = ModelBroker::Stopped;
            assert!(
                self.model.broker_subs.is_empty(),
                "shutdown leaves no subscription"
            );
        }
        self.check();
    }

    /// Checks what the node sent at (re)connection: exactly the rooms with
    /// members, each once, in batches no larger than configured.
    fn check_resubscribe(&mut self) {
        let cmds = self.broker_commands();
        let batch = self.model.cfg.subscribe_batch;
        let mut seen = BTreeSet::new();
        let mut rest = Vec::new();
        for cmd in cmds {
            match cmd {
                BrokerOp::Subscribe(chs) if rest.is_empty() => {
                    assert!(
                        !chs.is_empty() && chs.len() <= batch,
                        "batch of {}",
                        chs.len()
                    );
                    for c in chs {
                        assert!(seen.insert(c.clone()), "{c} subscribed twice");
                    }
                }
                other => rest.push(other),
            }
        }
        let want: BTreeSet<String> = self
            .model
            .rooms_with_members()
            .iter()
            .map(|r| self.model.channel(r))
            .collect();
        assert_eq!(seen, want, "f: resubscribe exactly the rooms with members");
        self.model.broker_subs = seen;
        for cmd in rest {
            self.execute_broker(cmd);
        }
    }

    fn check_backoff(&self) {
        if let BrokerState::Down { retry_at } = self.node.hub().broker_state() {
            let delay = retry_at.saturating_sub(self.now);
            let cfg = &self.model.cfg;
            assert!(
                delay >= cfg.backoff_base / 2 && delay <= cfg.backoff_max,
                "backoff {delay:?} outside [{:?}, {:?}]",
                cfg.backoff_base / 2,
                cfg.backoff_max
            );
        }
    }

    fn drain(&mut self, id: ConnId) {
        let mut cx = Context::from_waker(&self.waker);
        loop {
            match self.node.poll_outgoing(id, &mut cx) {
                Poll::Ready(Outgoing::Frames(frames)) => {
                    let c = self
                        .model
                        .conns
                        .get_mut(&id)
                        .expect("frames for a known conn");
                    // A batch: the queue's first frames, at most
                    // WRITE_BATCH_BYTES of them (or one larger frame).
                    let bytes: usize = frames.iter().map(Bytes::len).sum();
                    assert!(
                        !frames.is_empty()
                            && (frames.len() == 1 || bytes <= crate::node::WRITE_BATCH_BYTES),
                        "c: a batch of {} frames, {bytes} bytes",
                        frames.len()
                    );
                    let want: Vec<Bytes> = c.queue.drain(..frames.len()).collect();
                    c.bytes -= bytes;
                    assert_eq!(frames, want, "c: frames delivered to {id}");
                }
                Poll::Ready(Outgoing::Finish(Finish::Close { code, reason, .. })) => {
                    let c = self.model.conns.get(&id).expect("close for a known conn");
                    assert_eq!(c.close.as_ref(), Some(&(code, reason)), "close of {id}");
                    assert!(c.queue.is_empty());
                }
                Poll::Ready(Outgoing::Finish(finish)) => {
                    assert_eq!(finish, Finish::Drop, "the writer never answers a close");
                    if self.model.conns.get(&id).is_some_and(|c| c.close.is_some()) {
                        // The writer sent the close; the runtime now reports the end.
                        self.node.closed(id);
                        self.model.conns.remove(&id);
                    }
                    assert!(!self.model.conns.contains_key(&id), "{id} gone too early");
                    return;
                }
                Poll::Pending => {
                    assert!(self.model.live(id), "{id} pending but closed in model");
                    return;
                }
            }
        }
    }

    /// Takes the node's broker operations, checking their grouping:
    /// publishes that follow one another form one batch.
    fn broker_commands(&mut self) -> Vec<BrokerOp> {
        let mut cx = Context::from_waker(&self.waker);
        let ops = match self.node.poll_broker(&mut cx) {
            Poll::Ready(Some(ops)) => ops,
            Poll::Ready(None) => {
                assert_eq!(self.node.hub().broker_state(), BrokerState::Stopped);
                Vec::new()
            }
            Poll::Pending => Vec::new(),
        };
        for pair in ops.windows(2) {
            assert!(
                !matches!(pair, [BrokerOp::Publish(_), BrokerOp::Publish(_)]),
                "consecutive publishes are one batch"
            );
        }
        assert!(
            ops.iter()
                .all(|op| !matches!(op, BrokerOp::Publish(b) if b.is_empty())),
            "no empty publish batch"
        );
        ops
    }

    /// Executes the broker operations against the simulated broker.
    fn settle(&mut self) {
        for op in self.broker_commands() {
            self.execute_broker(op);
        }
    }

    fn execute_broker(&mut self, op: BrokerOp) {
        let m = &mut self.model;
        match op {
            BrokerOp::Connect(s) => {
                assert!(
                    matches!(m.broker, ModelBroker::Down(_)),
                    "connect while {:?}",
                    m.broker
                );
                assert!(s > m.session(), "sessions increase");
                m.broker = ModelBroker::Connecting(s);
            }
            BrokerOp::Reset(s) => {
                assert_eq!(s, m.session(), "reset of the current session");
                m.broker_subs.clear();
                m.broker = ModelBroker::Down(s);
                self.check_backoff();
            }
            BrokerOp::Subscribe(chs) => {
                assert!(m.up(), "b: subscribe while not connected");
                for c in chs {
                    assert!(
                        m.broker_subs.insert(c.clone()),
                        "b: duplicate subscribe {c}"
                    );
                }
            }
            BrokerOp::Unsubscribe(chs) => {
                assert!(m.up(), "b: unsubscribe while not connected");
                for c in chs {
                    assert!(
                        m.broker_subs.remove(&c),
                        "b: unsubscribe of {c} not subscribed"
                    );
                }
            }
            BrokerOp::Publish(batch) => {
                assert!(m.up(), "publish while not connected");
                for (channel, payload) in batch {
                    let want = m.expect_publish.pop_front();
                    assert_eq!(want, Some((channel, payload)), "g: publishes in order");
                }
            }
            BrokerOp::Ping(s) => {
                assert_eq!(s, m.session());
                self.pings += 1;
            }
        }
    }

    /// Invariants a–h, compared with the model.
    pub fn check(&self) {
        let m = &self.model;
        let hub = self.node.hub();
        if hub.broker_state() == BrokerState::Stopped {
            assert!(!m.up());
        } else {
            assert_eq!(
                hub.broker_up(),
                m.up(),
                "broker state {:?} vs {:?}",
                hub.broker_state(),
                m.broker
            );
        }
        let rooms = m.rooms_with_members();
        // a, b
        if m.up() {
            let want: BTreeSet<String> = rooms.iter().map(|r| m.channel(r)).collect();
            assert_eq!(m.broker_subs, want, "a: subscribed iff members");
        } else {
            assert!(m.broker_subs.is_empty(), "a: no subscriptions while down");
        }
        // g
        assert!(
            m.expect_publish.is_empty(),
            "g: expected publishes missing: {:?}",
            m.expect_publish
        );
        assert_eq!(
            hub.publish_buffer_depth(),
            m.pending.len(),
            "g: buffer depth"
        );
        assert_eq!(
            hub.counters().publish_buffer_dropped,
            m.dropped,
            "g: drops counted"
        );
        assert_eq!(
            hub.counters().slow_consumer_closes,
            m.slow_closes,
            "h: slow closes counted"
        );
        // c, d, e, h
        let fp = hub.footprint();
        let live = m.conns.values().filter(|c| c.close.is_none()).count();
        assert_eq!(fp.connections, live, "e: connections");
        assert_eq!(fp.rooms, rooms.len(), "e: rooms");
        assert_eq!(fp.room_slots_in_use, rooms.len(), "e: room slots");
        let memberships: usize = m.conns.values().map(|c| c.rooms.len()).sum();
        assert_eq!(fp.memberships, memberships, "e: memberships");
        assert_eq!(self.node.outboxes(), m.conns.len(), "e: outboxes");
        for room in &rooms {
            let mut got: Vec<ConnId> = hub.members_of(room).to_vec();
            got.sort();
            let want: Vec<ConnId> = m
                .conns
                .iter()
                .filter(|(_, c)| c.close.is_none() && c.rooms.contains(room))
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(got, want, "members of {room}");
        }
        let max = m.cfg.limits.max_outbound_bytes;
        for (id, c) in &m.conns {
            let got: Vec<&Bytes> = self.node.queued_frames(*id).collect();
            let want: Vec<&Bytes> = c.queue.iter().collect();
            assert_eq!(got, want, "c: queue of {id}");
            assert!(
                self.node.queued_bytes(*id) <= max,
                "h: outbox over its limit"
            );
            assert_eq!(
                self.node.queued_close(*id),
                c.close.as_ref().map(|(code, r)| (*code, r.as_str())),
                "close of {id}"
            );
            assert_eq!(hub.is_open(*id), c.close.is_none());
            // A reader that stops waits for the writer only when it has a
            // close to send, and not for a slow consumer's; a peer's close
            // is answered unless the connection is a slow consumer.
            let want = match &c.close {
                None => Some(Finish::Drop),
                Some((code, reason)) if c.abort => Some(Finish::Close {
                    code: *code,
                    reason: reason.clone(),
                    abort: true,
                }),
                Some(_) => None,
            };
            assert_eq!(self.node.reading_ended(*id, false), want, "end of {id}");
            let answered = match want {
                Some(abort @ Finish::Close { .. }) => abort,
                _ => Finish::Answer,
            };
            assert_eq!(self.node.reading_ended(*id, true), Some(answered));
        }
    }
}
