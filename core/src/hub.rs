//! The hub: connections, room memberships, broker subscriptions and the
//! broker session, as one deterministic state machine.
//!
//! See the crate documentation for the driving contract.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::codec::envelope::{self, EnvelopeError};
use crate::config::HubConfig;
use crate::seed::{self as protocol, CLOSE_GOING_AWAY, CLOSE_POLICY, ClientFrame, FrameError};

/// A connection's id. Ids are allocated by the hub, start at 1 and are never
/// reused, so a late event for a closed connection cannot reach a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Hashes connection ids (sequential, never attacker-chosen) with one
/// multiplication instead of SipHash: fan-out looks one up per recipient.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnIdHasher(u64);

impl std::hash::Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads sequential ids over the high bits too,
        // which the hash table uses for its control bytes.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by connection id.
pub type ConnMap<V> = HashMap<ConnId, V, std::hash::BuildHasherDefault<ConnIdHasher>>;

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A broker session: one connection attempt and, if it succeeds, the
/// connection that follows. Events of an older session are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Session(pub u64);

/// What the runtime must do. Drained in order from [`Hub::poll_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Queue this text frame for the connection. The bytes are shared by
    /// every recipient of the same message.
    SendTo(ConnId, Bytes),
    /// Send a close frame with this code and reason, then let the connection
    /// go. The hub has already forgotten it.
    Close {
        conn: ConnId,
        code: u16,
        reason: String,
    },
    /// Open a broker session (both the subscriber and the publisher link) and
    /// report back with [`Hub::handle_broker_connected`] or
    /// [`Hub::handle_broker_disconnected`].
    BrokerConnect(Session),
    /// Drop this session's links at once (it timed out or the hub is
    /// stopping). No report is expected.
    BrokerReset(Session),
    /// Subscribe to these channels in one command.
    BrokerSubscribe(Vec<String>),
    /// Unsubscribe from these channels in one command.
    BrokerUnsubscribe(Vec<String>),
    /// Publish this payload on this channel.
    BrokerPublish { channel: String, payload: Bytes },
    /// Check that the broker still answers; report with [`Hub::handle_broker_pong`].
    BrokerPing(Session),
}

/// What a connection sent.
#[derive(Debug, Clone, Copy)]
pub enum Inbound<'a> {
    /// A complete text frame's payload.
    Text(&'a [u8]),
    /// A binary frame.
    Binary,
    /// A frame over the size limit, refused by the WebSocket layer before it
    /// was read whole.
    TooLarge,
    /// A text frame that is not UTF-8, refused by the WebSocket layer.
    NotUtf8,
    /// A frame that breaks the WebSocket protocol (reserved bits, no mask, a
    /// bad opcode or fragmentation), refused by the WebSocket layer.
    ProtocolError,
}

/// Where the broker session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// No session; the next attempt is due at `retry_at`.
    Down { retry_at: Duration },
    /// `BrokerConnect` was issued; the attempt is abandoned at `deadline`.
    Connecting { deadline: Duration },
    /// Connected. `ping_deadline` is set while a ping is unanswered.
    Up {
        next_ping: Duration,
        ping_deadline: Option<Duration>,
    },
    /// Shut down: no further attempts.
    Stopped,
}

/// Counters for metrics. Monotonic unless named as a gauge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub connections_opened: u64,
    pub frames_received: u64,
    pub messages_published: u64,
    pub broker_messages: u64,
    pub deliveries: u64,
    /// Indexed like [`FrameError::LABELS`].
    pub bad_frames: [u64; FrameError::LABELS.len()],
    pub slow_consumer_closes: u64,
    pub broker_connects: u64,
    pub broker_failures: u64,
    pub broker_payloads_dropped: u64,
    pub publish_buffer_dropped: u64,
}

#[derive(Debug)]
struct Room {
    name: Box<str>,
    channel: Box<str>,
    members: Vec<ConnId>,
}

#[derive(Debug, Default)]
struct Conn {
    /// (room slot, index of this connection in that room's members).
    rooms: Vec<(u32, u32)>,
}

/// Sizes of the hub's tables, for leak checks: a connection that has gone
/// leaves them as they would be had it never come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub connections: usize,
    pub rooms: usize,
    pub memberships: usize,
    pub room_slots_in_use: usize,
}

/// The state machine. See the crate docs for how to drive it.
#[derive(Debug)]
pub struct Hub {
    cfg: HubConfig,
    next_conn: u64,
    conns: ConnMap<Conn>,
    rooms: Vec<Option<Room>>,
    free_rooms: Vec<u32>,
    room_index: HashMap<Box<str>, u32>,
    memberships: usize,
    broker: BrokerState,
    session: Session,
    failed_attempts: u32,
    rng: u64,
    pending: VecDeque<(String, Bytes)>,
    out: VecDeque<Command>,
    counters: Counters,
}

impl Hub {
    /// A hub whose first command asks for a broker session.
    pub fn new(cfg: HubConfig, now: Duration) -> Hub {
        let mut hub = Hub {
            rng: cfg.jitter_seed,
            cfg,
            next_conn: 1,
            conns: ConnMap::default(),
            rooms: Vec::new(),
            free_rooms: Vec::new(),
            room_index: HashMap::new(),
            memberships: 0,
            broker: BrokerState::Down { retry_at: now },
            session: Session(0),
            failed_attempts: 0,
            pending: VecDeque::new(),
            out: VecDeque::new(),
            counters: Counters::default(),
        };
        hub.connect(now);
        hub
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    /// The next command, in the order the inputs caused them.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.out.pop_front()
    }

    /// Whether commands are waiting.
    pub fn has_commands(&self) -> bool {
        !self.out.is_empty()
    }

    /// When [`Hub::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.broker {
            BrokerState::Down { retry_at } => Some(retry_at),
            BrokerState::Connecting { deadline } => Some(deadline),
            BrokerState::Up {
                next_ping,
                ping_deadline,
            } => Some(ping_deadline.map_or(next_ping, |d| d.min(next_ping))),
            BrokerState::Stopped => None,
        }
    }

    pub fn broker_state(&self) -> BrokerState {
        self.broker
    }

    pub fn broker_up(&self) -> bool {
        matches!(self.broker, BrokerState::Up { .. })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Rooms with at least one local member.
    pub fn rooms(&self) -> usize {
        self.room_index.len()
    }

    /// Broker subscriptions held (rooms with members, while connected).
    pub fn subscriptions(&self) -> usize {
        if self.broker_up() { self.rooms() } else { 0 }
    }

    /// Messages waiting for the broker to come back.
    pub fn publish_buffer_depth(&self) -> usize {
        self.pending.len()
    }

    pub fn footprint(&self) -> Footprint {
        Footprint {
            connections: self.conns.len(),
            rooms: self.room_index.len(),
            memberships: self.memberships,
            room_slots_in_use: self.rooms.len() - self.free_rooms.len(),
        }
    }

    /// Whether a connection is open.
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// The rooms a connection is in, in join order.
    pub fn rooms_of(&self, conn: ConnId) -> Vec<&str> {
        self.conns.get(&conn).map_or_else(Vec::new, |c| {
            c.rooms
                .iter()
                .map(|&(slot, _)| &*self.room(slot).name)
                .collect()
        })
    }

    /// The local members of a room, in no particular order.
    pub fn members_of(&self, room: &str) -> &[ConnId] {
        self.room_index
            .get(room)
            .map_or(&[][..], |&slot| &self.room(slot).members[..])
    }

    /// Every room with members.
    pub fn room_names(&self) -> impl Iterator<Item = &str> {
        self.room_index.keys().map(|k| &**k)
    }

    // ----- connection inputs -----

    /// A WebSocket connection was accepted. After shutdown it is closed at once.
    pub fn handle_open(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.counters.connections_opened += 1;
        if self.broker == BrokerState::Stopped {
            self.out.push_back(Command::Close {
                conn: id,
                code: CLOSE_GOING_AWAY,
                reason: "going away".into(),
            });
        } else {
            self.conns.insert(id, Conn::default());
        }
        id
    }

    /// The connection went away, cleanly or not. Unknown ids are ignored.
    pub fn handle_close(&mut self, conn: ConnId) {
        self.remove_conn(conn);
    }

    /// The connection's outbound queue is full: it is closed as a slow consumer.
    pub fn handle_outbound_full(&mut self, conn: ConnId) {
        if self.remove_conn(conn) {
            self.counters.slow_consumer_closes += 1;
            self.out.push_back(Command::Close {
                conn,
                code: CLOSE_POLICY,
                reason: "slow consumer".into(),
            });
        }
    }

    /// The connection sent a frame.
    pub fn handle_frame(&mut self, conn: ConnId, frame: Inbound<'_>) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.counters.frames_received += 1;
        let parsed = match frame {
            Inbound::Text(bytes) => protocol::parse_client_frame(bytes, &self.cfg.limits),
            Inbound::Binary => Err(FrameError::Binary),
            Inbound::TooLarge => Err(FrameError::TooLarge {
                max: self.cfg.limits.max_frame_bytes,
            }),
            Inbound::NotUtf8 => Err(FrameError::NotUtf8),
            Inbound::ProtocolError => Err(FrameError::Protocol),
        };
        let result = match parsed {
            Ok(ClientFrame::Subscribe { room }) => self.join(conn, &room),
            Ok(ClientFrame::Unsubscribe { room }) => {
                self.leave(conn, &room);
                Ok(())
            }
            Ok(ClientFrame::SendMessage { room, message }) => {
                let payload = protocol::encode_send_message(&room, &message);
                let channel = envelope::channel_for(&self.cfg.channel_prefix, &room);
                self.publish(channel, Bytes::from(payload));
                Ok(())
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.refuse(conn, e);
        }
    }

    fn refuse(&mut self, conn: ConnId, e: FrameError) {
        if let Some(i) = FrameError::LABELS.iter().position(|l| *l == e.label()) {
            self.counters.bad_frames[i] += 1;
        }
        self.remove_conn(conn);
        self.out.push_back(Command::Close {
            conn,
            code: e.close_code(),
            reason: e.to_string(),
        });
    }

    // ----- broker inputs -----

    /// A message arrived on a subscribed channel. It reaches every local
    /// member of its room, one shared buffer for all of them.
    pub fn handle_broker_message(&mut self, channel: &[u8], payload: &[u8]) {
        self.counters.broker_messages += 1;
        let env = match envelope::parse_for_channel(&self.cfg.channel_prefix, channel, payload) {
            Ok(env) => env,
            Err(EnvelopeError::ForeignChannel | _) => {
                self.counters.broker_payloads_dropped += 1;
                return;
            }
        };
        let Some(&slot) = self.room_index.get(&*env.room) else {
            return;
        };
        let frame = Bytes::copy_from_slice(env.message.delivered().as_bytes());
        let members = &self.rooms[slot as usize]
            .as_ref()
            .expect("indexed room slot is live")
            .members;
        self.counters.deliveries += members.len() as u64;
        self.out.reserve(members.len());
        for &m in members {
            self.out.push_back(Command::SendTo(m, frame.clone()));
        }
    }

    /// The session's links are up: subscribe every room with members, in
    /// batches, then publish what was held, in order.
    pub fn handle_broker_connected(&mut self, session: Session, now: Duration) {
        if session != self.session || !matches!(self.broker, BrokerState::Connecting { .. }) {
            return;
        }
        self.counters.broker_connects += 1;
        self.failed_attempts = 0;
        self.broker = BrokerState::Up {
            next_ping: now + self.cfg.ping_interval,
            ping_deadline: None,
        };
        let mut channels: Vec<String> = self
            .rooms
            .iter()
            .flatten()
            .map(|r| r.channel.to_string())
            .collect();
        channels.sort_unstable();
        let batch = self.cfg.subscribe_batch.max(1);
        while !channels.is_empty() {
            let rest = channels.split_off(channels.len().min(batch));
            self.out
                .push_back(Command::BrokerSubscribe(std::mem::replace(
                    &mut channels,
                    rest,
                )));
        }
        for (channel, payload) in std::mem::take(&mut self.pending) {
            self.counters.messages_published += 1;
            self.out
                .push_back(Command::BrokerPublish { channel, payload });
        }
    }

    /// The session failed to connect, or its links broke. Another attempt
    /// follows after a backoff.
    pub fn handle_broker_disconnected(&mut self, session: Session, now: Duration) {
        if session != self.session {
            return;
        }
        if matches!(
            self.broker,
            BrokerState::Connecting { .. } | BrokerState::Up { .. }
        ) {
            self.fail(now);
        }
    }

    /// The broker answered a ping.
    pub fn handle_broker_pong(&mut self, session: Session) {
        if session != self.session {
            return;
        }
        if let BrokerState::Up { ping_deadline, .. } = &mut self.broker {
            *ping_deadline = None;
        }
    }

    /// Time passed. Call at [`Hub::poll_timeout`] (earlier or later is harmless).
    pub fn handle_timeout(&mut self, now: Duration) {
        match self.broker {
            BrokerState::Down { retry_at } if now >= retry_at => self.connect(now),
            BrokerState::Connecting { deadline } if now >= deadline => {
                self.out.push_back(Command::BrokerReset(self.session));
                self.fail(now);
            }
            BrokerState::Up {
                ping_deadline: Some(d),
                ..
            } if now >= d => {
                self.out.push_back(Command::BrokerReset(self.session));
                self.fail(now);
            }
            BrokerState::Up {
                next_ping,
                ping_deadline,
            } if now >= next_ping => {
                self.out.push_back(Command::BrokerPing(self.session));
                self.broker = BrokerState::Up {
                    next_ping: now + self.cfg.ping_interval,
                    ping_deadline: ping_deadline.or(Some(now + self.cfg.ping_timeout)),
                };
            }
            _ => {}
        }
    }

    /// Graceful shutdown: every connection is closed with 1001 "going away",
    /// every subscription dropped, and the session ended.
    pub fn handle_shutdown(&mut self) {
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        for conn in ids {
            self.remove_conn(conn);
            self.out.push_back(Command::Close {
                conn,
                code: CLOSE_GOING_AWAY,
                reason: "going away".into(),
            });
        }
        if self.broker != BrokerState::Stopped {
            if !matches!(self.broker, BrokerState::Down { .. }) {
                self.out.push_back(Command::BrokerReset(self.session));
            }
            self.broker = BrokerState::Stopped;
        }
        self.pending.clear();
    }

    // ----- internals -----

    fn room(&self, slot: u32) -> &Room {
        self.rooms[slot as usize]
            .as_ref()
            .expect("room slot referenced by a member is live")
    }

    fn room_mut(&mut self, slot: u32) -> &mut Room {
        self.rooms[slot as usize]
            .as_mut()
            .expect("room slot referenced by a member is live")
    }

    fn connect(&mut self, now: Duration) {
        self.session = Session(self.session.0 + 1);
        self.broker = BrokerState::Connecting {
            deadline: now + self.cfg.connect_timeout,
        };
        self.out.push_back(Command::BrokerConnect(self.session));
    }

    fn fail(&mut self, now: Duration) {
        self.counters.broker_failures += 1;
        let delay = self.backoff();
        self.failed_attempts = self.failed_attempts.saturating_add(1);
        self.broker = BrokerState::Down {
            retry_at: now + delay,
        };
    }

    /// Capped exponential backoff with "equal jitter": half the delay is fixed,
    /// the other half random, so attempts from many nodes spread out but never
    /// come sooner than half the nominal delay.
    pub(crate) fn backoff(&mut self) -> Duration {
        let base = self.cfg.backoff_base.as_millis() as u64;
        let max = self.cfg.backoff_max.as_millis() as u64;
        let nominal = base
            .saturating_mul(1u64 << self.failed_attempts.min(32))
            .min(max);
        let half = nominal / 2;
        let jitter = if half == 0 {
            0
        } else {
            self.next_random() % (half + 1)
        };
        Duration::from_millis(nominal - half + jitter)
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn publish(&mut self, channel: String, payload: Bytes) {
        if self.broker_up() {
            self.counters.messages_published += 1;
            self.out
                .push_back(Command::BrokerPublish { channel, payload });
        } else if self.pending.len() < self.cfg.limits.publish_buffer {
            self.pending.push_back((channel, payload));
        } else {
            self.counters.publish_buffer_dropped += 1;
        }
    }

    fn join(&mut self, conn: ConnId, room: &str) -> Result<(), FrameError> {
        let slot = self.room_index.get(room).copied();
        let c = self
            .conns
            .get(&conn)
            .expect("caller checked the connection");
        if let Some(slot) = slot
            && c.rooms.iter().any(|&(s, _)| s == slot)
        {
            return Ok(());
        }
        if c.rooms.len() >= self.cfg.limits.max_rooms_per_conn {
            return Err(FrameError::TooManyRooms {
                max: self.cfg.limits.max_rooms_per_conn,
            });
        }
        let slot = match slot {
            Some(slot) => slot,
            None => self.create_room(room),
        };
        let r = self.room_mut(slot);
        let idx = r.members.len() as u32;
        r.members.push(conn);
        self.memberships += 1;
        self.conns
            .get_mut(&conn)
            .expect("caller checked the connection")
            .rooms
            .push((slot, idx));
        Ok(())
    }

    fn create_room(&mut self, name: &str) -> u32 {
        let room = Room {
            name: name.into(),
            channel: envelope::channel_for(&self.cfg.channel_prefix, name).into(),
            members: Vec::new(),
        };
        if self.broker_up() {
            self.out
                .push_back(Command::BrokerSubscribe(vec![room.channel.to_string()]));
        }
        let slot = match self.free_rooms.pop() {
            Some(slot) => {
                self.rooms[slot as usize] = Some(room);
                slot
            }
            None => {
                self.rooms.push(Some(room));
                (self.rooms.len() - 1) as u32
            }
        };
        self.room_index.insert(name.into(), slot);
        slot
    }

    fn leave(&mut self, conn: ConnId, room: &str) {
        let Some(&slot) = self.room_index.get(room) else {
            return;
        };
        let c = self
            .conns
            .get_mut(&conn)
            .expect("caller checked the connection");
        let Some(pos) = c.rooms.iter().position(|&(s, _)| s == slot) else {
            return;
        };
        let (_, idx) = c.rooms.swap_remove(pos);
        self.remove_member(slot, idx);
    }

    /// Removes the member at `idx` of room `slot`, fixing the index of the
    /// member moved into its place, and drops the room when it empties.
    fn remove_member(&mut self, slot: u32, idx: u32) {
        self.memberships -= 1;
        let r = self.room_mut(slot);
        r.members.swap_remove(idx as usize);
        if let Some(&moved) = r.members.get(idx as usize) {
            let mc = self.conns.get_mut(&moved).expect("members are open");
            if let Some(entry) = mc.rooms.iter_mut().find(|(s, _)| *s == slot) {
                entry.1 = idx;
            }
        }
        if self.room(slot).members.is_empty() {
            let room = self.rooms[slot as usize].take().expect("live slot");
            self.free_rooms.push(slot);
            self.room_index.remove(&room.name);
            if self.broker_up() {
                self.out
                    .push_back(Command::BrokerUnsubscribe(vec![room.channel.into()]));
            }
        }
    }

    fn remove_conn(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.remove(&conn) else {
            return false;
        };
        // Our entries' indices stay valid while we leave: removing us from a
        // room only moves another member of that same room.
        for &(slot, idx) in &c.rooms {
            debug_assert_eq!(self.room(slot).members[idx as usize], conn);
            self.remove_member(slot, idx);
        }
        true
    }
}
