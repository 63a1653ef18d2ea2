//! The broker session: the link to Redis as a state machine, the
//! subscriptions it must hold, and the publishes it must carry.
//!
//! - **A link is up only once it has proven itself**: the runtime opens the
//!   links and checks each with a real round trip ([`BrokerOp::Connect`]);
//!   then every room is subscribed and a probe is published on the node's
//!   own probe channel. Only when that probe comes back through the
//!   subscriber link is the session up: publishes flow, `/healthz` says ok,
//!   and the reconnect backoff starts again from its base. A link that
//!   connects but cannot publish (a paused Redis) never gets there.
//! - **Liveness is judged by the link**: while up, a probe goes out every
//!   `ping_interval`; it must come back within `ping_timeout`, unless the
//!   subscriber link completed work meanwhile (a long backlog of
//!   subscriptions is a busy link, not a dead one).
//! - **Subscription changes coalesce per channel**: the session keeps what
//!   Redis has (`sent`) and what differs from what the rooms want
//!   (`dirty`). A join and a leave before they are sent cancel out; the
//!   queue is bounded by the number of rooms, never by their history; the
//!   changes go out in batches of `subscribe_batch` channels per command.
//! - **Every publish is accounted for**: confirmed by Redis (published),
//!   held while the link is down (up to `publish_buffer`, the rest
//!   dropped and counted), or lost with a failing link (counted as unknown:
//!   Redis may or may not have delivered it).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::codec::redis::Call;
use crate::config::HubConfig;

/// Names a broker request whose answer someone waits for; the node
/// allocates them and matches each answer to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// A publish for the broker: one Redis command (a `PUBLISH`, or the
/// history script that publishes), and the ticket of whoever waits for its
/// reply (an API publish waits for its offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub call: Call,
    pub ticket: Option<Ticket>,
}

impl Outbound {
    /// A plain `PUBLISH` nobody waits for.
    pub fn publish(channel: &str, payload: Bytes) -> Outbound {
        Outbound {
            call: Call::publish(channel, payload),
            ticket: None,
        }
    }
}

/// A broker session: one connection attempt and, if it succeeds, the links
/// that follow. Events of an older session are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Session(pub u64);

/// Which broker the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerMode {
    /// Redis: the session below carries everything.
    Remote,
    /// The embedded single-node broker: always up, nothing to send.
    Local,
}

/// Where the broker session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    /// No session; the next attempt is due at `retry_at`.
    Down { retry_at: Duration },
    /// [`BrokerOp::Connect`] was issued; abandoned at `deadline`.
    Connecting { deadline: Duration },
    /// The links answered; the first probe must come back by `deadline`.
    Verifying { deadline: Duration },
    /// Proven. `probe_deadline` is set while a probe is out.
    Up {
        next_probe: Duration,
        probe_deadline: Option<Duration>,
    },
    /// Shut down (or the embedded broker, which has no session).
    Stopped,
}

/// One operation for the broker client, in the order given.
///
/// An operation that fails, is answered with an error, or is not answered
/// within `--redis-timeout` means the link is lost: the runtime drops its
/// links and reports [`Broker::disconnected`] with the publishes of the
/// failed operation (their fate is unknown) and those of the operations
/// after it (never sent: they go back to the publish buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerOp {
    /// Drop any link held, open this session's links, check each with a
    /// round trip (PING), subscribe nothing yet, and report with
    /// [`Broker::connected`] or [`Broker::disconnected`].
    Connect(Session),
    /// Drop the links. No report.
    Reset(Session),
    /// One SUBSCRIBE for these channels; report completion with
    /// [`Broker::progress`].
    Subscribe(Vec<String>),
    /// One UNSUBSCRIBE for these channels; report with [`Broker::progress`].
    Unsubscribe(Vec<String>),
    /// These publishes, in order, in one pipeline; report with
    /// [`Broker::published`], and the reply of each one with a ticket
    /// (an error reply is that publish's answer, not a lost link; a
    /// `NOSCRIPT` one is a lost link: the next one loads the scripts).
    Publish(Vec<Outbound>),
    /// These reads, in one pipeline on the command link, after everything
    /// before them; report each reply with its ticket. A link that fails
    /// fails them (report each as failed).
    Query(Vec<(Ticket, Call)>),
    /// Publish `payload` on the node's probe channel. Its echo arrives as a
    /// broker message on that channel ([`Broker::probe_echo`]).
    Probe { channel: String, payload: Bytes },
}

/// Counters of the session, for metrics. Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerCounters {
    /// Links that proved themselves (the first probe came back).
    pub connects: u64,
    /// Attempts that failed and links that broke.
    pub failures: u64,
    /// Publishes Redis confirmed.
    pub published: u64,
    /// Publishes lost with a failing link: Redis may or may not have them.
    pub unknown: u64,
    /// Publishes dropped because the buffer (link down) was full.
    pub buffer_dropped: u64,
    /// Publishes dropped because the queue to a live link was full.
    pub queue_dropped: u64,
}

/// Where a publish went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// To the broker task (wake it).
    Sent,
    /// Into the buffer, until the link is up.
    Held,
    /// Dropped and counted (full, or stopped).
    Dropped,
}

/// The session state machine. See the module docs.
#[derive(Debug)]
pub struct Broker {
    mode: BrokerMode,
    state: BrokerState,
    session: Session,
    failed_attempts: u32,
    rng: u64,
    backoff_base: Duration,
    backoff_max: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
    ping_timeout: Duration,
    batch: usize,
    publish_buffer: usize,
    probe_channel: String,
    /// The fleet's control channel (server-side subscribe, unsubscribe and
    /// disconnect), subscribed like the probe channel when set.
    control_channel: Option<String>,
    probe_seq: u64,
    probe_sent: Option<(u64, Duration)>,
    probe_due: bool,
    /// The last time the subscriber link completed an operation.
    progress_at: Duration,
    control: VecDeque<BrokerOp>,
    /// Channels subscribed on the current link (sent, confirmed or not).
    sent: HashSet<Box<str>>,
    /// Channels whose wanted state differs from `sent`: `true` to subscribe.
    dirty: BTreeMap<Box<str>, bool>,
    /// Publishes for a live link, not yet taken by the broker task.
    queue: Vec<Outbound>,
    /// Publishes held while the link is not up.
    pending: VecDeque<Outbound>,
    /// Reads for a live link, not yet taken.
    queries: Vec<(Ticket, Call)>,
    /// Tickets of publishes dropped (no answer will come for them).
    dropped: Vec<Ticket>,
    /// The session came up since [`Broker::take_came_up`] last asked.
    came_up: bool,
    counters: BrokerCounters,
}

impl Broker {
    /// A session for `cfg`. In remote mode the first operation is a
    /// [`BrokerOp::Connect`].
    pub fn new(cfg: &HubConfig, mode: BrokerMode, probe_channel: String, now: Duration) -> Broker {
        let mut b = Broker {
            mode,
            state: BrokerState::Down { retry_at: now },
            session: Session(0),
            failed_attempts: 0,
            rng: cfg.jitter_seed,
            backoff_base: cfg.backoff_base,
            backoff_max: cfg.backoff_max.max(cfg.backoff_base),
            connect_timeout: cfg.connect_timeout,
            ping_interval: cfg.ping_interval,
            ping_timeout: cfg.ping_timeout,
            batch: cfg.subscribe_batch.max(1),
            publish_buffer: cfg.limits.publish_buffer,
            probe_channel,
            control_channel: None,
            probe_seq: 0,
            probe_sent: None,
            probe_due: false,
            progress_at: now,
            control: VecDeque::new(),
            sent: HashSet::new(),
            dirty: BTreeMap::new(),
            queue: Vec::new(),
            pending: VecDeque::new(),
            queries: Vec::new(),
            dropped: Vec::new(),
            came_up: false,
            counters: BrokerCounters::default(),
        };
        match mode {
            BrokerMode::Remote => b.connect(now),
            BrokerMode::Local => b.state = BrokerState::Stopped,
        }
        b
    }

    pub fn mode(&self) -> BrokerMode {
        self.mode
    }

    pub fn state(&self) -> BrokerState {
        self.state
    }

    pub fn session(&self) -> Session {
        self.session
    }

    /// Whether messages flow: a proven link, or the embedded broker.
    pub fn is_up(&self) -> bool {
        match self.mode {
            BrokerMode::Local => true,
            BrokerMode::Remote => matches!(self.state, BrokerState::Up { .. }),
        }
    }

    /// Whether the session is over (shutdown); the broker task finishes once
    /// it has taken everything.
    pub fn is_stopped(&self) -> bool {
        self.state == BrokerState::Stopped
    }

    /// The node's probe channel.
    pub fn probe_channel(&self) -> &str {
        &self.probe_channel
    }

    /// Subscribes `channel` on every link, as the probe channel is: the
    /// fleet's control channel. Set before the first link comes up.
    pub fn set_control_channel(&mut self, channel: String) {
        self.control_channel = Some(channel);
    }

    /// The fleet's control channel, if set.
    pub fn control_channel(&self) -> Option<&str> {
        self.control_channel.as_deref()
    }

    /// A channel subscribed on every link whatever the rooms: the probe
    /// channel, the control channel.
    fn is_fixed(&self, channel: &str) -> bool {
        channel == self.probe_channel || self.control_channel.as_deref() == Some(channel)
    }

    pub fn counters(&self) -> BrokerCounters {
        self.counters
    }

    /// Publishes held for the link (buffered while down, plus queued for a
    /// live link).
    pub fn buffered(&self) -> usize {
        self.pending.len() + self.queue.len()
    }

    /// Channels subscribed on the live link.
    pub fn subscriptions(&self) -> usize {
        if self.is_up() {
            let fixed = 1 + usize::from(self.control_channel.is_some());
            self.sent.len().saturating_sub(fixed)
        } else {
            0
        }
    }

    /// Subscription changes waiting to be sent.
    pub fn pending_changes(&self) -> usize {
        self.dirty.len()
    }

    /// When [`Broker::timeout`] must next be called.
    pub fn deadline(&self) -> Option<Duration> {
        match self.state {
            BrokerState::Down { retry_at } => Some(retry_at),
            BrokerState::Connecting { deadline } | BrokerState::Verifying { deadline } => {
                Some(deadline)
            }
            BrokerState::Up {
                next_probe,
                probe_deadline,
            } => Some(probe_deadline.map_or(next_probe, |d| d.min(next_probe))),
            BrokerState::Stopped => None,
        }
    }

    /// Whether [`Broker::poll`] has work.
    pub fn has_work(&self) -> bool {
        !self.control.is_empty()
            || (self.link_open() && (!self.dirty.is_empty() || self.probe_due))
            || (self.is_up() && !(self.queue.is_empty() && self.queries.is_empty()))
    }

    fn link_open(&self) -> bool {
        matches!(
            self.state,
            BrokerState::Verifying { .. } | BrokerState::Up { .. }
        )
    }

    /// Everything the broker task must do now, in order: control first,
    /// then subscription changes, then publishes, then a probe.
    #[must_use]
    pub fn poll(&mut self) -> Vec<BrokerOp> {
        let mut ops: Vec<BrokerOp> = self.control.drain(..).collect();
        if self.link_open() {
            let mut subscribe = Vec::new();
            let mut unsubscribe = Vec::new();
            for (channel, want) in std::mem::take(&mut self.dirty) {
                let name = channel.to_string();
                if want {
                    self.sent.insert(channel);
                    subscribe.push(name);
                } else {
                    self.sent.remove(&channel);
                    unsubscribe.push(name);
                }
            }
            for chunk in subscribe.chunks(self.batch) {
                ops.push(BrokerOp::Subscribe(chunk.to_vec()));
            }
            for chunk in unsubscribe.chunks(self.batch) {
                ops.push(BrokerOp::Unsubscribe(chunk.to_vec()));
            }
            if self.sent.capacity() > 64 && self.sent.len() < self.sent.capacity() / 4 {
                self.sent.shrink_to_fit();
            }
        }
        if self.is_up() && !self.queue.is_empty() {
            let batch = std::mem::take(&mut self.queue);
            ops.push(BrokerOp::Publish(batch));
        }
        if self.is_up() && !self.queries.is_empty() {
            ops.push(BrokerOp::Query(std::mem::take(&mut self.queries)));
        }
        if self.link_open() && self.probe_due {
            self.probe_due = false;
            ops.push(BrokerOp::Probe {
                channel: self.probe_channel.clone(),
                payload: Bytes::from(format!("probe:{}", self.probe_seq)),
            });
        }
        ops
    }

    // ----- rooms -----

    /// A room gained its first local member.
    pub fn room_added(&mut self, channel: &str) {
        // A room may carry the probe channel's name: the probe channel is
        // subscribed anyway, and stays so when that room empties.
        if !self.link_open() || self.is_fixed(channel) {
            return;
        }
        if self.sent.contains(channel) {
            self.dirty.remove(channel);
        } else {
            self.dirty.insert(channel.into(), true);
        }
    }

    /// A room lost its last local member.
    pub fn room_removed(&mut self, channel: &str) {
        if !self.link_open() || self.is_fixed(channel) {
            return;
        }
        if self.sent.contains(channel) {
            self.dirty.insert(channel.into(), false);
        } else {
            self.dirty.remove(channel);
        }
    }

    // ----- publishes -----

    /// Hands a publish to the link, or holds it. A dropped publish's
    /// ticket gets no answer: its caller answers at once.
    pub fn publish(&mut self, out: Outbound) -> Queued {
        if self.is_up() {
            if self.queue.len() >= self.publish_buffer {
                self.counters.queue_dropped += 1;
                return Queued::Dropped;
            }
            self.queue.push(out);
            Queued::Sent
        } else if self.state == BrokerState::Stopped {
            self.counters.buffer_dropped += 1;
            Queued::Dropped
        } else if self.pending.len() < self.publish_buffer {
            self.pending.push_back(out);
            Queued::Held
        } else {
            self.counters.buffer_dropped += 1;
            Queued::Dropped
        }
    }

    /// Queues a read for the live link. `false`: the link is not up (the
    /// caller answers at once; reads are not held, a caller retries).
    pub fn query(&mut self, ticket: Ticket, call: Call) -> bool {
        if !self.is_up() || self.queries.len() >= self.publish_buffer {
            return false;
        }
        self.queries.push((ticket, call));
        true
    }

    /// Tickets of publishes dropped since the last call: no reply will
    /// come for them.
    pub fn take_dropped(&mut self) -> Vec<Ticket> {
        std::mem::take(&mut self.dropped)
    }

    /// Whether the session came up (its first probe returned) since the
    /// last call: the node heals its rooms then.
    pub fn take_came_up(&mut self) -> bool {
        std::mem::take(&mut self.came_up)
    }

    /// Redis confirmed `n` publishes (of this or an older session: they
    /// count either way).
    pub fn published(&mut self, _session: Session, n: usize) {
        self.counters.published += n as u64;
    }

    /// Publishes the runtime could not send for lack of a link (they were
    /// queued for one that is gone): held again, in order.
    pub fn unsent(&mut self, unsent: Vec<Outbound>) {
        self.hold_front(unsent, self.is_up());
    }

    // ----- link events -----

    /// The links of `session` are open and answered a round trip. Every
    /// room with members (`channels`) is to be subscribed, then a probe
    /// published; the session is up when it comes back.
    pub fn connected<'a>(
        &mut self,
        session: Session,
        channels: impl Iterator<Item = &'a str>,
        now: Duration,
    ) {
        if session != self.session || !matches!(self.state, BrokerState::Connecting { .. }) {
            return;
        }
        self.state = BrokerState::Verifying {
            deadline: now + self.connect_timeout.max(self.ping_timeout),
        };
        self.sent.clear();
        self.dirty.clear();
        self.dirty.insert(self.probe_channel.as_str().into(), true);
        if let Some(c) = &self.control_channel {
            self.dirty.insert(c.as_str().into(), true);
        }
        for c in channels {
            self.dirty.insert(c.into(), true);
        }
        self.progress_at = now;
        self.send_probe(now);
    }

    /// The subscriber link of `session` completed an operation: it is alive.
    pub fn progress(&mut self, session: Session, now: Duration) {
        if session == self.session {
            self.progress_at = now;
        }
    }

    /// Whether a payload is one of the node's probes.
    pub fn is_probe(payload: &[u8]) -> bool {
        payload.starts_with(b"probe:")
    }

    /// A probe came back on the probe channel.
    pub fn probe_echo(&mut self, payload: &[u8], now: Duration) {
        let Some((seq, _)) = self.probe_sent else {
            return;
        };
        let echoed = std::str::from_utf8(payload)
            .ok()
            .and_then(|p| p.strip_prefix("probe:"))
            .and_then(|n| n.parse::<u64>().ok());
        if echoed != Some(seq) {
            return;
        }
        self.probe_sent = None;
        self.progress_at = now;
        match self.state {
            BrokerState::Verifying { .. } => {
                self.counters.connects += 1;
                self.failed_attempts = 0;
                self.came_up = true;
                self.state = BrokerState::Up {
                    next_probe: now + self.ping_interval,
                    probe_deadline: None,
                };
                self.queue.extend(self.pending.drain(..));
                self.pending.shrink_to(self.publish_buffer.min(1024));
            }
            BrokerState::Up { next_probe, .. } => {
                self.state = BrokerState::Up {
                    next_probe,
                    probe_deadline: None,
                };
            }
            _ => {}
        }
    }

    /// The links of `session` failed (to connect, or later). `unknown`:
    /// publishes of the failed operation; `unsent`: publishes never sent,
    /// which go back to the front of the buffer, in order.
    pub fn disconnected(
        &mut self,
        session: Session,
        unknown: usize,
        unsent: Vec<Outbound>,
        now: Duration,
    ) {
        // Counted and held even when a newer session reports late: those
        // publishes were real.
        self.counters.unknown += unknown as u64;
        if session != self.session {
            self.unsent(unsent);
            return;
        }
        self.hold_front(unsent, false);
        if matches!(
            self.state,
            BrokerState::Connecting { .. } | BrokerState::Verifying { .. } | BrokerState::Up { .. }
        ) {
            self.fail(now);
        }
    }

    /// Time passed.
    pub fn timeout(&mut self, now: Duration) {
        match self.state {
            BrokerState::Down { retry_at } if now >= retry_at => self.connect(now),
            BrokerState::Connecting { deadline } | BrokerState::Verifying { deadline }
                if now >= deadline =>
            {
                self.control.push_back(BrokerOp::Reset(self.session));
                self.fail(now);
            }
            BrokerState::Up {
                probe_deadline: Some(d),
                next_probe,
            } if now >= d => {
                let busy = self.probe_sent.is_some_and(|(_, at)| self.progress_at > at);
                if busy {
                    // The subscriber link is answering: give the echo time.
                    self.state = BrokerState::Up {
                        next_probe,
                        probe_deadline: Some(now + self.ping_timeout),
                    };
                    if let Some((seq, _)) = self.probe_sent {
                        self.probe_sent = Some((seq, now));
                    }
                } else {
                    self.control.push_back(BrokerOp::Reset(self.session));
                    self.fail(now);
                }
            }
            BrokerState::Up {
                next_probe,
                probe_deadline,
            } if now >= next_probe => {
                if probe_deadline.is_none() {
                    self.send_probe(now);
                }
                self.state = BrokerState::Up {
                    next_probe: now + self.ping_interval,
                    probe_deadline: probe_deadline.or(Some(now + self.ping_timeout)),
                };
            }
            _ => {}
        }
    }

    /// Shutdown: the links are dropped once what is queued has gone out.
    pub fn shutdown(&mut self) {
        if self.state == BrokerState::Stopped {
            return;
        }
        if !matches!(self.state, BrokerState::Down { .. }) {
            // What is queued for a live link goes first (poll keeps order).
            if self.is_up() && !self.queue.is_empty() {
                let batch = std::mem::take(&mut self.queue);
                self.control.push_back(BrokerOp::Publish(batch));
            }
            // And the calls queued for the live link (a leaving node's
            // presence removals among them).
            if self.is_up() && !self.queries.is_empty() {
                let q = std::mem::take(&mut self.queries);
                self.control.push_back(BrokerOp::Query(q));
            }
            self.control.push_back(BrokerOp::Reset(self.session));
        }
        self.counters.buffer_dropped += self.pending.len() as u64;
        let pending = std::mem::take(&mut self.pending);
        self.dropped
            .extend(pending.into_iter().filter_map(|o| o.ticket));
        self.dirty.clear();
        let queries = std::mem::take(&mut self.queries);
        self.dropped.extend(queries.into_iter().map(|(t, _)| t));
        self.state = BrokerState::Stopped;
    }

    // ----- internals -----

    fn send_probe(&mut self, now: Duration) {
        self.probe_seq += 1;
        self.probe_sent = Some((self.probe_seq, now));
        self.probe_due = true;
    }

    /// Puts publishes that were never sent back in front, in order: into
    /// the queue of the live link (`to_queue`), or into the buffer, with
    /// what was queued for a link that is failing.
    ///
    /// After shutdown there is no link to come: they are dropped and
    /// counted. Either bound keeps the newest and counts the rest.
    fn hold_front(&mut self, unsent: Vec<Outbound>, to_queue: bool) {
        if self.state == BrokerState::Stopped {
            self.counters.buffer_dropped += (unsent.len() + self.queue.len()) as u64;
            let queue = std::mem::take(&mut self.queue);
            self.dropped
                .extend(unsent.into_iter().chain(queue).filter_map(|o| o.ticket));
            return;
        }
        if to_queue {
            let mut all = unsent;
            all.append(&mut self.queue);
            let excess = all.len().saturating_sub(self.publish_buffer);
            self.counters.queue_dropped += excess as u64;
            self.queue = all.split_off(excess);
            self.dropped
                .extend(all.into_iter().filter_map(|o| o.ticket));
            return;
        }
        let mut unsent = unsent;
        unsent.append(&mut self.queue);
        for p in unsent.into_iter().rev() {
            if self.pending.len() < self.publish_buffer {
                self.pending.push_front(p);
            } else {
                self.counters.buffer_dropped += 1;
                self.dropped.extend(p.ticket);
            }
        }
    }

    fn connect(&mut self, now: Duration) {
        self.session = Session(self.session.0 + 1);
        self.state = BrokerState::Connecting {
            deadline: now + self.connect_timeout,
        };
        self.control.push_back(BrokerOp::Connect(self.session));
    }

    fn fail(&mut self, now: Duration) {
        self.counters.failures += 1;
        // Reads queued for the failed link get no answer: their waiters
        // are told (those the runtime took, it answers as failed).
        let queries = std::mem::take(&mut self.queries);
        self.dropped.extend(queries.into_iter().map(|(t, _)| t));
        // Publishes queued for the failed link were never taken: hold them.
        self.hold_front(Vec::new(), false);
        self.sent.clear();
        self.dirty.clear();
        self.probe_sent = None;
        self.probe_due = false;
        let delay = self.backoff();
        self.failed_attempts = self.failed_attempts.saturating_add(1);
        self.state = BrokerState::Down {
            retry_at: now + delay,
        };
    }

    /// Capped exponential backoff with "equal jitter": half the delay is
    /// fixed, the other half random, so attempts from many nodes spread out
    /// but never come sooner than half the nominal delay. It starts again
    /// from the base only once a link has proven itself.
    pub(crate) fn backoff(&mut self) -> Duration {
        let base = self.backoff_base.as_millis() as u64;
        let max = self.backoff_max.as_millis() as u64;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn broker() -> Broker {
        let cfg = HubConfig {
            subscribe_batch: 2,
            ..HubConfig::default()
        };
        Broker::new(&cfg, BrokerMode::Remote, "probe".into(), Duration::ZERO)
    }

    /// Connects session 1 and echoes its first probe.
    fn up(b: &mut Broker, rooms: &[&str]) {
        assert_eq!(b.poll(), vec![BrokerOp::Connect(Session(1))]);
        b.connected(Session(1), rooms.iter().copied(), Duration::ZERO);
        let ops = b.poll();
        let Some(BrokerOp::Probe { payload, .. }) = ops.last() else {
            panic!("{ops:?}")
        };
        let payload = payload.clone();
        assert!(!b.is_up(), "not up before the probe came back");
        b.probe_echo(&payload, Duration::ZERO);
        assert!(b.is_up());
    }

    #[test]
    fn a_query_alone_is_work_for_the_broker_task() {
        let mut b = broker();
        up(&mut b, &[]);
        let _ = b.poll();
        assert!(!b.has_work());
        assert!(b.query(Ticket(1), Call::cmd(&[b"PING"])));
        assert!(b.has_work(), "the task must wake for a read alone");
        assert_eq!(
            b.poll(),
            vec![BrokerOp::Query(vec![(Ticket(1), Call::cmd(&[b"PING"]))])]
        );
        assert!(!b.has_work());
    }

    #[test]
    fn up_only_after_the_probe_returns() {
        let mut b = broker();
        assert_eq!(b.poll(), vec![BrokerOp::Connect(Session(1))]);
        assert_eq!(b.publish(Outbound::publish("r", "m".into())), Queued::Held);
        b.connected(Session(1), ["r", "s", "t"].into_iter(), Duration::ZERO);
        assert!(!b.is_up());
        let ops = b.poll();
        assert_eq!(
            ops[..2],
            [
                BrokerOp::Subscribe(vec!["probe".into(), "r".into()]),
                BrokerOp::Subscribe(vec!["s".into(), "t".into()]),
            ]
        );
        assert!(matches!(&ops[2], BrokerOp::Probe { payload, .. } if payload == "probe:1"));
        assert_eq!(ops.len(), 3, "nothing published before the probe");
        b.probe_echo(b"probe:0", Duration::ZERO);
        assert!(!b.is_up(), "a stale echo proves nothing");
        b.probe_echo(b"probe:1", Duration::ZERO);
        assert!(b.is_up());
        assert_eq!(
            b.poll(),
            vec![BrokerOp::Publish(vec![Outbound::publish("r", "m".into())])]
        );
        assert_eq!(b.counters().connects, 1);
    }

    #[test]
    fn a_link_that_cannot_publish_never_comes_up_and_the_backoff_grows() {
        // A paused Redis: the links open and answer PING, the probe never
        // returns.
        let mut b = broker();
        let mut now = Duration::ZERO;
        let mut delays = Vec::new();
        for _ in 0..5 {
            let ops = b.poll();
            let Some(BrokerOp::Connect(s)) = ops.last().cloned() else {
                panic!("{ops:?}")
            };
            b.connected(s, std::iter::empty(), now);
            let _ = b.poll();
            assert!(!b.is_up());
            now = b.deadline().unwrap();
            b.timeout(now);
            assert!(matches!(b.poll().first(), Some(BrokerOp::Reset(_))));
            let BrokerState::Down { retry_at } = b.state() else {
                panic!()
            };
            delays.push(retry_at - now);
            now = retry_at;
            b.timeout(now);
        }
        // Nominal 100, 200, 400, 800, 1600 ms with equal jitter.
        for (i, d) in delays.iter().enumerate() {
            let nominal = 100 * MS * (1 << i);
            assert!(*d >= nominal / 2 && *d <= nominal, "{i}: {d:?}");
        }
        assert_eq!(b.counters().connects, 0);
        assert_eq!(b.counters().failures, 5);
    }

    #[test]
    fn changes_coalesce_and_are_bounded_by_rooms() {
        let mut b = broker();
        up(&mut b, &["a"]);
        for i in 0..100_000 {
            let room = format!("churn{i}");
            b.room_added(&room);
            b.room_removed(&room);
        }
        assert_eq!(b.pending_changes(), 0, "a join and leave cancel out");
        b.room_added("x");
        b.room_removed("a");
        b.room_added("a");
        b.room_added("y");
        b.room_removed("y");
        assert_eq!(b.poll(), vec![BrokerOp::Subscribe(vec!["x".into()])]);
        b.room_removed("x");
        b.room_removed("a");
        assert_eq!(
            b.poll(),
            vec![BrokerOp::Unsubscribe(vec!["a".into(), "x".into()])]
        );
        assert_eq!(b.subscriptions(), 0);
    }

    #[test]
    fn a_room_named_like_the_probe_channel_does_not_unsubscribe_it() {
        let mut b = broker();
        up(&mut b, &[]);
        b.room_added("probe");
        b.room_removed("probe");
        assert!(b.poll().is_empty(), "the probe channel stays subscribed");
    }

    #[test]
    fn a_busy_subscriber_link_is_not_declared_dead() {
        let mut b = broker();
        up(&mut b, &[]);
        let probe_at = b.deadline().unwrap();
        b.timeout(probe_at);
        assert!(matches!(b.poll().last(), Some(BrokerOp::Probe { .. })));
        // The echo waits behind a long backlog, but SUBSCRIBEs complete.
        b.progress(Session(1), probe_at + 500 * MS);
        let d = b.deadline().unwrap();
        b.timeout(d);
        assert!(b.is_up(), "progress keeps it alive");
        // Silence: no progress, no echo: down within two probe timeouts.
        let silent_from = probe_at + 500 * MS;
        while b.is_up() {
            let d = b.deadline().unwrap();
            assert!(
                d <= silent_from + 2 * b.ping_timeout + b.ping_interval,
                "{d:?}"
            );
            b.timeout(d);
        }
        assert!(matches!(b.poll().first(), Some(BrokerOp::Reset(_))));
    }

    #[test]
    fn publishes_of_a_failed_link_are_counted_or_held_again() {
        let mut b = broker();
        up(&mut b, &[]);
        for i in 0..4 {
            assert_eq!(
                b.publish(Outbound::publish("r", format!("{i}").into())),
                Queued::Sent
            );
        }
        let ops = b.poll();
        assert_eq!(ops.len(), 1);
        // The pipeline of 4 failed after 2 were written: 2 unknown? The
        // runtime cannot tell, so all of the failed op are unknown; a later
        // op's were never sent.
        b.publish(Outbound::publish("r", "later".into()));
        b.disconnected(
            Session(1),
            4,
            vec![Outbound::publish("r", "unsent".into())],
            Duration::ZERO,
        );
        assert_eq!(b.counters().unknown, 4);
        assert_eq!(b.buffered(), 2, "the unsent and the queued are held");
        assert!(!b.is_up());
        // They go out first after the next proven link, in order.
        let retry = b.deadline().unwrap();
        b.timeout(retry);
        let ops = b.poll();
        let Some(BrokerOp::Connect(s)) = ops.last().cloned() else {
            panic!()
        };
        b.connected(s, std::iter::empty(), retry);
        let ops = b.poll();
        let Some(BrokerOp::Probe { payload, .. }) = ops.last().cloned() else {
            panic!()
        };
        b.probe_echo(&payload, retry);
        assert_eq!(
            b.poll(),
            vec![BrokerOp::Publish(vec![
                Outbound::publish("r", "unsent".into()),
                Outbound::publish("r", "later".into())
            ])]
        );
    }

    #[test]
    fn a_late_report_of_an_older_session_still_counts_and_holds() {
        let mut b = broker();
        up(&mut b, &[]);
        b.publish(Outbound::publish("r", "a".into()));
        let _ = b.poll();
        // The link fails, a new one comes up, then the old batch's failure
        // is reported.
        b.disconnected(Session(1), 0, Vec::new(), Duration::ZERO);
        let retry = b.deadline().unwrap();
        b.timeout(retry);
        let Some(BrokerOp::Connect(s)) = b.poll().last().cloned() else {
            panic!()
        };
        b.connected(s, std::iter::empty(), retry);
        let Some(BrokerOp::Probe { payload, .. }) = b.poll().last().cloned() else {
            panic!()
        };
        b.probe_echo(&payload, retry);
        b.disconnected(
            Session(1),
            1,
            vec![Outbound::publish("r", "b".into())],
            retry,
        );
        assert_eq!(b.counters().unknown, 1);
        assert_eq!(
            b.poll(),
            vec![BrokerOp::Publish(vec![Outbound::publish("r", "b".into())])]
        );
    }

    #[test]
    fn the_buffer_is_bounded_and_counts_what_it_drops() {
        let cfg = HubConfig {
            limits: crate::config::Limits {
                publish_buffer: 2,
                ..Default::default()
            },
            ..HubConfig::default()
        };
        let mut b = Broker::new(&cfg, BrokerMode::Remote, "p".into(), Duration::ZERO);
        assert_eq!(b.publish(Outbound::publish("r", "1".into())), Queued::Held);
        assert_eq!(b.publish(Outbound::publish("r", "2".into())), Queued::Held);
        assert_eq!(
            b.publish(Outbound::publish("r", "3".into())),
            Queued::Dropped
        );
        assert_eq!(b.counters().buffer_dropped, 1);
    }

    #[test]
    fn local_mode_is_always_up_and_sends_nothing() {
        let mut b = Broker::new(
            &HubConfig::default(),
            BrokerMode::Local,
            "p".into(),
            Duration::ZERO,
        );
        assert!(b.is_up());
        b.room_added("r");
        assert!(b.poll().is_empty());
        assert_eq!(b.deadline(), None);
    }
}
