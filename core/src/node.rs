//! The runtime-facing half of core: a [`Hub`] plus the per-connection
//! outboxes and the broker queue that both runtimes would otherwise each
//! write. Still no I/O: a runtime holds a `Node` behind a mutex, feeds it
//! inputs, and its tasks take work out with `poll_*` methods that register a
//! [`Waker`] (plain `std::task`, no executor), so the same `Node` serves a
//! tokio runtime, a smol runtime, or a test.
//!
//! Around the hub it also keeps what a server needs per socket, so that the
//! runtimes only move bytes: admission against `--max-connections`, the
//! request-head reader and the answer to it ([`Node::admit`],
//! [`Node::answer`]), how each connection ends ([`Finish`]), the count of
//! live sockets that shutdown waits for ([`Node::poll_drained`]), and the
//! broker queue already grouped into the operations a Redis client runs
//! ([`BrokerOp`]: consecutive publishes form one pipeline).
//!
//! Every input method runs the hub and then executes its commands:
//! `SendTo` lands in the connection's byte-bounded outbox (full → the hub
//! closes it as a slow consumer), `Close` is handed to the connection's
//! writer, broker commands go to the broker queue — or, in local mode, to the
//! embedded single-node broker, which answers them on the spot.

use std::collections::{HashSet, VecDeque};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use crate::codec::http::{self, Decision, HeadReader, Reply, Route};
use crate::config::HubConfig;
use crate::hub::{BrokerState, Command, ConnId, ConnMap, Hub, Inbound, Session};

/// Which broker the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerMode {
    /// An external broker (Redis): broker commands are queued for the runtime.
    Remote,
    /// The embedded single-node broker: commands are answered in process.
    Local,
}

/// How long a slow consumer's close frame may take before its socket is
/// let go ([`Finish::Close`] with `abort`).
pub const ABORT_CLOSE_WAIT: Duration = Duration::from_millis(100);

/// The most a connection's writer takes from its outbox at once (or one
/// frame, if larger): while the socket is full, what the writer holds beyond
/// the outbound limit stays this small.
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// At shutdown, how long the broker task may take to finish what is queued
/// (Redis may hang) before it is cancelled.
pub const BROKER_STOP_WAIT: Duration = Duration::from_secs(1);

/// How long to stop accepting after `accept` fails (out of descriptors).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How a connection ends: what the runtime does with the socket once the
/// connection's reading and writing stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Send a close frame with this code and reason, then end the stream
    /// (FIN) and read until the client closes, all within the shutdown grace.
    /// `abort` (a slow consumer): one attempt at the close frame of at most
    /// [`ABORT_CLOSE_WAIT`], then let the socket go with its unsent data
    /// discarded (`SO_LINGER` 0).
    Close {
        code: u16,
        reason: String,
        abort: bool,
    },
    /// The client started the close handshake: answer it.
    Answer,
    /// The transport is gone, or the close was already sent: drop the socket.
    Drop,
}

/// What a connection's writer must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Write these frames, in order, then flush once. At most
    /// [`WRITE_BATCH_BYTES`] (or one larger frame); poll again for the rest.
    Frames(Vec<Bytes>),
    /// Stop writing and end the connection this way.
    Finish(Finish),
}

/// One operation for the broker client, in the order given. Consecutive
/// publishes are grouped into one [`BrokerOp::Publish`] (one pipeline).
///
/// An operation that fails, is answered with an error, or is not answered
/// within `--redis-timeout` means the link is lost: the runtime drops its
/// links and reports [`Node::broker_disconnected`]; core reconnects with
/// backoff, then subscribes every room with members again. Operations
/// already queued behind the failure find no link and are skipped: their
/// subscriptions are redone by the next session, their publishes are lost
/// (delivery is at most once; what clients send while the link is down is
/// held by the hub, up to `--publish-buffer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerOp {
    /// Drop any link held, open this session's links and report with
    /// [`Node::broker_connected`] or [`Node::broker_disconnected`].
    Connect(Session),
    /// Drop the links. The queue is in order, so this always concerns the
    /// links of the latest `Connect` (if they came up). No report.
    Reset(Session),
    /// One SUBSCRIBE for these channels.
    Subscribe(Vec<String>),
    /// One UNSUBSCRIBE for these channels.
    Unsubscribe(Vec<String>),
    /// A health ping; report an answer with [`Node::broker_pong`].
    Ping(Session),
    /// These publishes, in order, in one pipeline.
    Publish(Vec<(String, Bytes)>),
}

#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Bytes>,
    bytes: usize,
    close: Option<(u16, String)>,
    abort: bool,
    close_taken: bool,
    waker: Option<Waker>,
    abort_waker: Option<Waker>,
}

impl Outbox {
    /// A slow consumer's end: its close, carried out at once.
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

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        if self.abort
            && self.close.is_some()
            && let Some(w) = self.abort_waker.take()
        {
            w.wake();
        }
    }
}

/// Socket-level counters, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub struct IoStats {
    pub handshake_failures: u64,
    pub rejected_connections: u64,
    pub http_requests: u64,
}

/// A hub wired to outboxes and a broker queue. See the module docs.
#[derive(Debug)]
pub struct Node {
    hub: Hub,
    mode: BrokerMode,
    now: Duration,
    outboxes: ConnMap<Outbox>,
    local_subs: HashSet<String>,
    broker_queue: VecDeque<BrokerOp>,
    broker_waker: Option<Waker>,
    broker_queue_dropped: u64,
    queued_publishes: usize,
    timer_waker: Option<Waker>,
    timer_seen: Option<Duration>,
    sockets: usize,
    max_sockets: usize,
    serve_index: bool,
    io: IoStats,
    drain_waker: Option<Waker>,
}

impl Node {
    pub fn new(cfg: HubConfig, mode: BrokerMode, now: Duration) -> Node {
        let mut node = Node {
            hub: Hub::new(cfg, now),
            mode,
            now,
            outboxes: ConnMap::default(),
            local_subs: HashSet::new(),
            broker_queue: VecDeque::new(),
            broker_waker: None,
            broker_queue_dropped: 0,
            queued_publishes: 0,
            timer_waker: None,
            timer_seen: None,
            sockets: 0,
            max_sockets: usize::MAX,
            serve_index: true,
            io: IoStats::default(),
            drain_waker: None,
        };
        node.pump();
        node
    }

    /// The node these flags describe: Redis when `--redis` is given, else
    /// the embedded broker. `seed` feeds the reconnect jitter.
    #[cfg(feature = "cli")]
    pub fn from_cli(cli: &crate::cli::Cli, seed: u64) -> Node {
        let mode = if cli.redis.is_some() {
            BrokerMode::Remote
        } else {
            BrokerMode::Local
        };
        let mut node = Node::new(cli.hub_config(seed), mode, Duration::ZERO);
        node.max_sockets = cli.max_connections;
        node.serve_index = !cli.no_chat_page;
        node
    }

    /// Most sockets [`Node::admit`] lets in at once (unlimited by default).
    pub fn set_max_sockets(&mut self, max: usize) {
        self.max_sockets = max;
    }

    /// Socket-level counters.
    pub fn io_stats(&self) -> IoStats {
        self.io
    }

    /// Sockets admitted and not yet reported closed.
    pub fn sockets(&self) -> usize {
        self.sockets
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn mode(&self) -> BrokerMode {
        self.mode
    }

    /// Publishes dropped because the broker link could not keep up.
    pub fn broker_queue_dropped(&self) -> u64 {
        self.broker_queue_dropped
    }

    /// Bytes queued for a connection and not yet taken by its writer.
    pub fn queued_bytes(&self, conn: ConnId) -> usize {
        self.outboxes.get(&conn).map_or(0, |o| o.bytes)
    }

    /// The frames queued for a connection and not yet taken by its writer.
    pub fn queued_frames(&self, conn: ConnId) -> impl Iterator<Item = &Bytes> {
        self.outboxes
            .get(&conn)
            .into_iter()
            .flat_map(|o| o.frames.iter())
    }

    /// The close waiting for a connection's writer, if any.
    pub fn queued_close(&self, conn: ConnId) -> Option<(u16, &str)> {
        self.outboxes
            .get(&conn)
            .and_then(|o| o.close.as_ref())
            .map(|(c, r)| (*c, r.as_str()))
    }

    /// Connections the runtime has not yet reported finished.
    pub fn outboxes(&self) -> usize {
        self.outboxes.len()
    }

    // ----- inputs: sockets -----

    /// A socket was accepted. `None`: the node is at its socket limit; drop
    /// the socket (it is counted). Otherwise read its request head into the
    /// returned reader, give that to [`Node::answer`], and report the
    /// socket's end, however it ends, with [`Node::socket_closed`].
    pub fn admit(&mut self) -> Option<HeadReader> {
        if self.sockets >= self.max_sockets {
            self.io.rejected_connections += 1;
            return None;
        }
        self.sockets += 1;
        Some(HeadReader::new(self.serve_index))
    }

    /// What to do with a socket whose head was read into `head`: stopped
    /// when [`HeadReader::advance`] said so, or early because the read failed
    /// or the handshake timeout passed (the socket is then dropped).
    pub fn answer(&mut self, head: HeadReader) -> Reply {
        let (decision, mut buf) = head.into_parts();
        match decision {
            Some(Decision::Upgrade { key, head_len }) => {
                let response = http::switching_protocols(&http::accept_key(&key));
                buf.drain(..head_len);
                buf.shrink_to_fit();
                Reply::Upgrade {
                    response,
                    rest: buf,
                }
            }
            Some(Decision::Route { route, head_only }) => {
                self.io.http_requests += 1;
                Reply::Respond(respond(self, route, head_only))
            }
            Some(Decision::Incomplete | Decision::Invalid) | None => {
                self.io.handshake_failures += 1;
                Reply::Drop
            }
        }
    }

    /// The upgrade response could not be written in time: the socket is
    /// dropped before it became a connection.
    pub fn handshake_failed(&mut self) {
        self.io.handshake_failures += 1;
    }

    /// A socket from [`Node::admit`] is gone.
    pub fn socket_closed(&mut self) {
        debug_assert!(self.sockets > 0, "socket_closed without admit");
        self.sockets = self.sockets.saturating_sub(1);
        if self.sockets == 0
            && let Some(w) = self.drain_waker.take()
        {
            w.wake();
        }
    }

    /// Ready once every admitted socket is closed: what shutdown waits for
    /// (bounded by the grace period).
    pub fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.sockets == 0 {
            return Poll::Ready(());
        }
        self.drain_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    // ----- inputs: connections and broker -----

    /// A WebSocket connection is established.
    pub fn open(&mut self) -> ConnId {
        let id = self.hub.handle_open();
        self.outboxes.insert(id, Outbox::default());
        self.pump();
        id
    }

    /// A frame arrived. Returns whether to go on reading: `false` once the
    /// hub has closed the connection (its writer sends the close).
    pub fn frame(&mut self, conn: ConnId, frame: Inbound<'_>) -> bool {
        self.hub.handle_frame(conn, frame);
        self.pump();
        !self.is_closing(conn)
    }

    /// The connection's reader stopped: the client sent a close frame
    /// (`peer_closed`), the stream ended or failed, or [`Node::frame`] said
    /// to stop. `None`: the writer has a close to send; wait for it, but no
    /// longer than the shutdown grace (it may be stuck on a client that does
    /// not read), then drop the socket.
    ///
    /// A slow consumer (the close is an abort) ends at once, as from
    /// [`Node::poll_abort`], even if it sent a close: its writer is stuck and
    /// will send neither the close nor the answer.
    pub fn reading_ended(&self, conn: ConnId, peer_closed: bool) -> Option<Finish> {
        let Some(ob) = self.outboxes.get(&conn) else {
            return Some(Finish::Drop);
        };
        // Before the peer's close: a slow consumer's writer is stuck and
        // could not answer it either.
        if let Some(abort) = ob.abort_close() {
            Some(abort)
        } else if peer_closed {
            Some(Finish::Answer)
        } else if ob.close.is_some() {
            None
        } else {
            Some(Finish::Drop)
        }
    }

    /// The runtime found the connection's queue full (its own buffers, beyond
    /// the outbox): it is closed as a slow consumer.
    pub fn outbound_full(&mut self, conn: ConnId) {
        if let Some(ob) = self.outboxes.get_mut(&conn)
            && ob.close.is_none()
        {
            ob.abort = true;
        }
        self.hub.handle_outbound_full(conn);
        self.pump();
    }

    /// The connection's task has finished: nothing of it remains.
    pub fn closed(&mut self, conn: ConnId) {
        self.hub.handle_close(conn);
        self.outboxes.remove(&conn);
        self.pump();
    }

    pub fn broker_message(&mut self, channel: &[u8], payload: &[u8]) {
        self.hub.handle_broker_message(channel, payload);
        self.pump();
    }

    pub fn broker_connected(&mut self, session: Session, now: Duration) {
        self.now = now;
        self.hub.handle_broker_connected(session, now);
        self.pump();
    }

    pub fn broker_disconnected(&mut self, session: Session, now: Duration) {
        self.now = now;
        self.hub.handle_broker_disconnected(session, now);
        self.pump();
    }

    pub fn broker_pong(&mut self, session: Session) {
        self.hub.handle_broker_pong(session);
        self.pump();
    }

    pub fn timeout(&mut self, now: Duration) {
        self.now = now;
        self.hub.handle_timeout(now);
        self.pump();
    }

    pub fn shutdown(&mut self) {
        self.hub.handle_shutdown();
        self.pump();
        // The broker task must see the stop even when nothing was queued
        // (the broker was down): see `poll_broker`.
        if let Some(w) = self.broker_waker.take() {
            w.wake();
        }
    }

    // ----- outputs -----

    /// The writer of `conn` takes its next work, or registers to be woken.
    pub fn poll_outgoing(&mut self, conn: ConnId, cx: &mut Context<'_>) -> Poll<Outgoing> {
        let Some(ob) = self.outboxes.get_mut(&conn) else {
            return Poll::Ready(Outgoing::Finish(Finish::Drop));
        };
        if !ob.frames.is_empty() {
            // Take at most a batch, so that what the writer holds while the
            // socket is full stays small: the rest is still counted against
            // the outbound limit.
            if ob.bytes <= WRITE_BATCH_BYTES {
                ob.bytes = 0;
                return Poll::Ready(Outgoing::Frames(Vec::from(std::mem::take(&mut ob.frames))));
            }
            let mut taken = 0;
            let n = ob
                .frames
                .iter()
                .take_while(|f| {
                    let first = taken == 0;
                    taken += f.len();
                    first || taken <= WRITE_BATCH_BYTES
                })
                .count();
            let batch: Vec<Bytes> = ob.frames.drain(..n).collect();
            ob.bytes -= batch.iter().map(Bytes::len).sum::<usize>();
            return Poll::Ready(Outgoing::Frames(batch));
        }
        if let Some((code, reason)) = &ob.close {
            if ob.close_taken {
                return Poll::Ready(Outgoing::Finish(Finish::Drop));
            }
            ob.close_taken = true;
            return Poll::Ready(Outgoing::Finish(Finish::Close {
                code: *code,
                reason: reason.clone(),
                abort: ob.abort,
            }));
        }
        ob.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready when the connection must be dropped at once (a slow consumer,
    /// or unknown): lets a runtime interrupt a writer blocked on a full
    /// socket, and end the connection the way this says instead.
    pub fn poll_abort(&mut self, conn: ConnId, cx: &mut Context<'_>) -> Poll<Finish> {
        let Some(ob) = self.outboxes.get_mut(&conn) else {
            return Poll::Ready(Finish::Drop);
        };
        if let Some(abort) = ob.abort_close() {
            return Poll::Ready(abort);
        }
        ob.abort_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Whether the hub has closed this connection (its writer may still be
    /// sending the close frame).
    pub fn is_closing(&self, conn: ConnId) -> bool {
        self.outboxes.get(&conn).is_none_or(|o| o.close.is_some())
    }

    /// The broker task takes every queued broker operation, or registers to
    /// be woken. After shutdown, once everything queued has been taken, it is
    /// ready with `None`: the broker task's cue to finish.
    pub fn poll_broker(&mut self, cx: &mut Context<'_>) -> Poll<Option<Vec<BrokerOp>>> {
        if self.broker_queue.is_empty() {
            if self.hub.broker_state() == BrokerState::Stopped {
                return Poll::Ready(None);
            }
            self.broker_waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            self.queued_publishes = 0;
            Poll::Ready(Some(Vec::from(std::mem::take(&mut self.broker_queue))))
        }
    }

    /// The hub's next deadline.
    pub fn deadline(&self) -> Option<Duration> {
        self.hub.poll_timeout()
    }

    /// Ready when the deadline differs from `seen`: the timer task sleeps
    /// until `seen` or until this fires, whichever comes first.
    pub fn poll_deadline_change(
        &mut self,
        seen: Option<Duration>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Duration>> {
        let d = self.hub.poll_timeout();
        if d != seen {
            return Poll::Ready(d);
        }
        self.timer_seen = seen;
        self.timer_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    // ----- execution -----

    fn pump(&mut self) {
        while let Some(cmd) = self.hub.poll_command() {
            match cmd {
                Command::SendTo(conn, frame) => self.send_to(conn, frame),
                Command::Close { conn, code, reason } => {
                    if let Some(ob) = self.outboxes.get_mut(&conn) {
                        if ob.abort {
                            ob.frames.clear();
                            ob.bytes = 0;
                        }
                        ob.close = Some((code, reason));
                        ob.wake();
                    }
                }
                cmd => match self.mode {
                    BrokerMode::Local => self.local_broker(cmd),
                    BrokerMode::Remote => self.queue_broker(cmd),
                },
            }
        }
        if self.timer_waker.is_some()
            && self.hub.poll_timeout() != self.timer_seen
            && let Some(w) = self.timer_waker.take()
        {
            w.wake();
        }
    }

    fn send_to(&mut self, conn: ConnId, frame: Bytes) {
        let max = self.hub.config().limits.max_outbound_bytes;
        let Some(ob) = self.outboxes.get_mut(&conn) else {
            return;
        };
        if ob.close.is_some() {
            return;
        }
        if ob.bytes + frame.len() > max {
            ob.abort = true;
            self.hub.handle_outbound_full(conn);
            return;
        }
        ob.bytes += frame.len();
        ob.frames.push_back(frame);
        if ob.frames.len() == 1 {
            ob.wake();
        }
    }

    fn queue_broker(&mut self, cmd: Command) {
        let op = match cmd {
            Command::BrokerPublish { channel, payload } => {
                if self.queued_publishes >= self.hub.config().limits.publish_buffer {
                    self.broker_queue_dropped += 1;
                    return;
                }
                self.queued_publishes += 1;
                if let Some(BrokerOp::Publish(batch)) = self.broker_queue.back_mut() {
                    batch.push((channel, payload));
                    return;
                }
                BrokerOp::Publish(vec![(channel, payload)])
            }
            Command::BrokerConnect(s) => BrokerOp::Connect(s),
            Command::BrokerReset(s) => BrokerOp::Reset(s),
            Command::BrokerSubscribe(chs) => BrokerOp::Subscribe(chs),
            Command::BrokerUnsubscribe(chs) => BrokerOp::Unsubscribe(chs),
            Command::BrokerPing(s) => BrokerOp::Ping(s),
            Command::SendTo(..) | Command::Close { .. } => {
                unreachable!("connection commands are executed by pump")
            }
        };
        self.broker_queue.push_back(op);
        if let Some(w) = self.broker_waker.take() {
            w.wake();
        }
    }

    fn local_broker(&mut self, cmd: Command) {
        match cmd {
            Command::BrokerConnect(s) => self.hub.handle_broker_connected(s, self.now),
            Command::BrokerPing(s) => self.hub.handle_broker_pong(s),
            Command::BrokerSubscribe(chs) => self.local_subs.extend(chs),
            Command::BrokerUnsubscribe(chs) => {
                for c in chs {
                    self.local_subs.remove(&c);
                }
            }
            Command::BrokerPublish { channel, payload } => {
                if self.local_subs.contains(&channel) {
                    self.hub.handle_broker_message(channel.as_bytes(), &payload);
                }
            }
            Command::BrokerReset(_) => self.local_subs.clear(),
            Command::SendTo(..) | Command::Close { .. } => {
                unreachable!("connection commands are executed by pump")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn sub(room: &str) -> String {
        format!(r#"{{"type":"SUBSCRIBE","room":"{room}"}}"#)
    }

    fn send(room: &str, msg: &str) -> String {
        format!(r#"{{"type":"sendMessage","roomId":"{room}","message":"{msg}"}}"#)
    }

    #[test]
    fn local_mode_delivers_to_members_including_sender() {
        let mut n = Node::new(HubConfig::default(), BrokerMode::Local, Duration::ZERO);
        assert!(n.hub().broker_up());
        let a = n.open();
        let b = n.open();
        let c = n.open();
        n.frame(a, Inbound::Text(sub("r").as_bytes()));
        n.frame(b, Inbound::Text(sub("r").as_bytes()));
        n.frame(a, Inbound::Text(send("r", "hi").as_bytes()));
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        for id in [a, b] {
            assert_eq!(
                n.poll_outgoing(id, &mut cx),
                Poll::Ready(Outgoing::Frames(vec![Bytes::from_static(b"hi")]))
            );
        }
        assert!(n.poll_outgoing(c, &mut cx).is_pending());
        n.frame(b, Inbound::Text(send("r", "yo").as_bytes()));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "c is not a member");
        assert!(n.poll_outgoing(a, &mut cx).is_ready());
    }

    #[test]
    fn writer_is_woken_and_close_follows_frames() {
        let mut n = Node::new(HubConfig::default(), BrokerMode::Local, Duration::ZERO);
        let a = n.open();
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(n.poll_outgoing(a, &mut cx).is_pending());
        n.frame(a, Inbound::Text(sub("r").as_bytes()));
        n.frame(a, Inbound::Text(send("r", "x").as_bytes()));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        n.frame(a, Inbound::Binary);
        assert!(matches!(
            n.poll_outgoing(a, &mut cx),
            Poll::Ready(Outgoing::Frames(_))
        ));
        assert_eq!(
            n.poll_outgoing(a, &mut cx),
            Poll::Ready(Outgoing::Finish(Finish::Close {
                code: 1003,
                reason: "binary frames are not supported".into(),
                abort: false
            }))
        );
        let gone = Poll::Ready(Outgoing::Finish(Finish::Drop));
        assert_eq!(n.poll_outgoing(a, &mut cx), gone);
        n.closed(a);
        assert_eq!(n.poll_outgoing(a, &mut cx), gone);
    }

    #[test]
    fn slow_consumer_is_closed_with_unsent_data_discarded() {
        let mut cfg = HubConfig::default();
        cfg.limits.max_outbound_bytes = 10;
        let mut n = Node::new(cfg, BrokerMode::Local, Duration::ZERO);
        let slow = n.open();
        let fast = n.open();
        for c in [slow, fast] {
            n.frame(c, Inbound::Text(sub("r").as_bytes()));
        }
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        // The slow writer is stuck in a socket write: only the abort watch is registered.
        assert!(n.poll_abort(slow, &mut cx).is_pending());
        for i in 0..5 {
            n.frame(
                fast,
                Inbound::Text(send("r", &format!("m{i}xx")).as_bytes()),
            );
            // The fast reader drains after every message; the slow one never does.
            assert!(matches!(
                n.poll_outgoing(fast, &mut cx),
                Poll::Ready(Outgoing::Frames(f)) if f.len() == 1
            ));
        }
        assert_eq!(
            n.poll_outgoing(slow, &mut cx),
            Poll::Ready(Outgoing::Finish(Finish::Close {
                code: 1008,
                reason: "slow consumer".into(),
                abort: true
            }))
        );
        assert!(!n.hub().is_open(slow));
        assert!(count.0.load(Ordering::SeqCst) >= 1, "abort watch woken");
        assert!(n.poll_abort(slow, &mut cx).is_ready());
        assert!(n.poll_abort(fast, &mut cx).is_pending());
        assert_eq!(n.hub().counters().slow_consumer_closes, 1);
        assert_eq!(n.hub().members_of("r"), &[fast]);
    }

    #[test]
    fn remote_mode_queues_broker_commands_and_wakes() {
        let mut n = Node::new(HubConfig::default(), BrokerMode::Remote, Duration::ZERO);
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        let Poll::Ready(Some(ops)) = n.poll_broker(&mut cx) else {
            panic!()
        };
        assert_eq!(ops, vec![BrokerOp::Connect(Session(1))]);
        assert!(n.poll_broker(&mut cx).is_pending());
        n.broker_connected(Session(1), Duration::ZERO);
        let a = n.open();
        n.frame(a, Inbound::Text(sub("r").as_bytes()));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            n.poll_broker(&mut cx),
            Poll::Ready(Some(vec![BrokerOp::Subscribe(vec!["r".into()])]))
        );
    }

    #[test]
    fn broker_task_is_told_to_finish_at_shutdown_even_when_down() {
        let mut n = Node::new(HubConfig::default(), BrokerMode::Remote, Duration::ZERO);
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        let _ = n.poll_broker(&mut cx);
        n.broker_disconnected(Session(1), Duration::ZERO);
        assert!(n.poll_broker(&mut cx).is_pending());
        n.shutdown();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(n.poll_broker(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn timer_task_is_woken_when_the_deadline_moves() {
        let mut n = Node::new(HubConfig::default(), BrokerMode::Remote, Duration::ZERO);
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        let d = n.deadline();
        assert!(n.poll_deadline_change(d, &mut cx).is_pending());
        n.broker_disconnected(Session(1), Duration::from_secs(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(n.poll_deadline_change(d, &mut cx).is_ready());
    }

    #[test]
    fn sockets_are_admitted_up_to_the_limit_and_shutdown_waits_for_them() {
        let mut n = Node::new(HubConfig::default(), BrokerMode::Local, Duration::ZERO);
        n.set_max_sockets(2);
        let (count, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(n.poll_drained(&mut cx).is_ready(), "nothing to wait for");
        assert!(n.admit().is_some());
        assert!(n.admit().is_some());
        assert!(n.admit().is_none(), "over the limit");
        assert_eq!(n.io_stats().rejected_connections, 1);
        assert_eq!(n.sockets(), 2);
        assert!(n.poll_drained(&mut cx).is_pending());
        n.socket_closed();
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(n.admit().is_some(), "a freed place is taken again");
        n.socket_closed();
        n.socket_closed();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken at zero");
        assert!(n.poll_drained(&mut cx).is_ready());
    }

    #[test]
    fn a_connection_ends_as_its_first_finisher_says() {
        let mut n = Node::new(HubConfig::default(), BrokerMode::Local, Duration::ZERO);
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        // The client leaves: its close is answered, or the stream just broke.
        let a = n.open();
        assert_eq!(n.reading_ended(a, true), Some(Finish::Answer));
        assert_eq!(n.reading_ended(a, false), Some(Finish::Drop));
        // A refused frame: stop reading, and the writer has the close.
        assert!(n.frame(a, Inbound::Text(sub("r").as_bytes())));
        assert!(!n.frame(a, Inbound::Binary));
        assert_eq!(n.reading_ended(a, false), None);
        assert!(n.poll_abort(a, &mut cx).is_pending(), "not a slow consumer");
        assert!(matches!(
            n.poll_outgoing(a, &mut cx),
            Poll::Ready(Outgoing::Finish(Finish::Close { code: 1003, .. }))
        ));
        n.closed(a);
        assert_eq!(n.reading_ended(a, false), Some(Finish::Drop));
        assert_eq!(n.poll_abort(a, &mut cx), Poll::Ready(Finish::Drop));
        // Dropped as a slow consumer: the abort watch has the close.
        let b = n.open();
        n.outbound_full(b);
        let close = Finish::Close {
            code: 1008,
            reason: "slow consumer".into(),
            abort: true,
        };
        assert_eq!(n.poll_abort(b, &mut cx), Poll::Ready(close.clone()));
        assert_eq!(
            n.poll_outgoing(b, &mut cx),
            Poll::Ready(Outgoing::Finish(close))
        );
        // Shutdown closes with 1001.
        let c = n.open();
        n.shutdown();
        assert_eq!(
            n.poll_outgoing(c, &mut cx),
            Poll::Ready(Outgoing::Finish(Finish::Close {
                code: 1001,
                reason: "going away".into(),
                abort: false
            }))
        );
    }

    #[test]
    fn a_member_that_overflows_its_own_outbox_is_aborted_when_its_reader_stops() {
        let mut cfg = HubConfig::default();
        cfg.limits.max_outbound_bytes = 64;
        let mut n = Node::new(cfg, BrokerMode::Local, Duration::ZERO);
        let a = n.open();
        assert!(n.frame(a, Inbound::Text(sub("r").as_bytes())));
        // It never drains; its own messages come back to it until it overflows.
        let mut frames = 0;
        while n.frame(a, Inbound::Text(send("r", "0123456789").as_bytes())) {
            frames += 1;
            assert!(frames < 100);
        }
        let close = Finish::Close {
            code: 1008,
            reason: "slow consumer".into(),
            abort: true,
        };
        assert_eq!(n.reading_ended(a, false), Some(close.clone()));
        assert_eq!(
            n.reading_ended(a, true),
            Some(close.clone()),
            "even after its close"
        );
        let (_, w) = waker();
        assert_eq!(
            n.poll_abort(a, &mut Context::from_waker(&w)),
            Poll::Ready(close)
        );
    }

    #[test]
    fn a_writer_takes_at_most_a_batch_and_the_rest_stays_counted() {
        let mut cfg = HubConfig::default();
        cfg.limits.max_outbound_bytes = 1 << 20;
        cfg.limits.max_frame_bytes = 1 << 20;
        let mut n = Node::new(cfg, BrokerMode::Local, Duration::ZERO);
        let a = n.open();
        n.frame(a, Inbound::Text(sub("r").as_bytes()));
        let msg = "x".repeat(10_000);
        for _ in 0..20 {
            n.frame(a, Inbound::Text(send("r", &msg).as_bytes()));
        }
        assert_eq!(n.queued_bytes(a), 200_000);
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let mut sizes = Vec::new();
        while let Poll::Ready(Outgoing::Frames(batch)) = n.poll_outgoing(a, &mut cx) {
            let bytes: usize = batch.iter().map(Bytes::len).sum();
            assert!(bytes <= WRITE_BATCH_BYTES);
            sizes.push(batch.len());
            assert_eq!(
                n.queued_bytes(a),
                200_000 - 10_000 * sizes.iter().sum::<usize>()
            );
        }
        assert_eq!(sizes, [6, 6, 6, 2]);
        // A frame larger than a batch still goes, alone.
        let big = "y".repeat(WRITE_BATCH_BYTES + 1);
        n.frame(a, Inbound::Text(send("r", &big).as_bytes()));
        n.frame(a, Inbound::Text(send("r", "z").as_bytes()));
        assert!(
            matches!(n.poll_outgoing(a, &mut cx), Poll::Ready(Outgoing::Frames(b)) if b.len() == 1 && b[0].len() > WRITE_BATCH_BYTES)
        );
        assert_eq!(n.queued_bytes(a), 1);
    }

    #[test]
    fn publishes_in_a_row_are_one_batch_in_order() {
        let mut n = Node::new(HubConfig::default(), BrokerMode::Remote, Duration::ZERO);
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let _ = n.poll_broker(&mut cx);
        n.broker_connected(Session(1), Duration::ZERO);
        let a = n.open();
        n.frame(a, Inbound::Text(send("x", "1").as_bytes()));
        n.frame(a, Inbound::Text(send("y", "2").as_bytes()));
        n.frame(a, Inbound::Text(sub("r").as_bytes()));
        n.frame(a, Inbound::Text(send("r", "3").as_bytes()));
        let Poll::Ready(Some(ops)) = n.poll_broker(&mut cx) else {
            panic!()
        };
        let channels = |op: &BrokerOp| match op {
            BrokerOp::Publish(b) => b.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
            other => panic!("not a publish: {other:?}"),
        };
        assert_eq!(ops.len(), 3, "{ops:?}");
        assert_eq!(channels(&ops[0]), ["x", "y"]);
        assert_eq!(ops[1], BrokerOp::Subscribe(vec!["r".into()]));
        assert_eq!(channels(&ops[2]), ["r"]);
    }
}

/// The full response to a plain request, from the node's current state.
fn respond(node: &Node, route: Route, head_only: bool) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match route {
        Route::Health if node.hub().broker_up() => http::response(200, TEXT, b"ok\n", head_only),
        Route::Health => http::response(503, TEXT, b"broker unavailable\n", head_only),
        Route::Metrics => {
            let body = crate::metrics::render(node);
            http::response(200, "text/plain; version=0.0.4", body.as_bytes(), head_only)
        }
        Route::Index => http::response(
            200,
            "text/html; charset=utf-8",
            crate::CHAT_PAGE.as_bytes(),
            head_only,
        ),
        Route::NotFound => http::response(404, TEXT, b"not found\n", head_only),
        Route::MethodNotAllowed => http::response(405, TEXT, b"method not allowed\n", head_only),
        Route::BadUpgrade => http::response(400, TEXT, b"bad websocket upgrade\n", head_only),
    }
}
