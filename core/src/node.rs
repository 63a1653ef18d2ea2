//! The runtime-facing half of core: a [`Hub`] plus the per-connection
//! outboxes and the broker queue that both runtimes would otherwise each
//! write. Still no I/O: a runtime holds a `Node` behind a mutex, feeds it
//! inputs, and its tasks take work out with `poll_*` methods that register a
//! [`Waker`] (plain `std::task`, no executor), so the same `Node` serves a
//! tokio runtime, a smol runtime, or a test.
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

use crate::config::HubConfig;
use crate::hub::{Command, ConnId, ConnMap, Hub, Inbound, Session};

/// Which broker the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerMode {
    /// An external broker (Redis): broker commands are queued for the runtime.
    Remote,
    /// The embedded single-node broker: commands are answered in process.
    Local,
}

/// What a connection's writer must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Write these frames, in order, then flush once.
    Frames(Vec<Bytes>),
    /// Send a close frame and finish. `abort` asks to discard unsent data and
    /// let the socket go at once (slow consumers).
    Close {
        code: u16,
        reason: String,
        abort: bool,
    },
    /// The connection is unknown or already finished.
    Gone,
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

/// Runtime-side statistics the node cannot see itself, for `/metrics`.
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
    broker_queue: VecDeque<Command>,
    broker_waker: Option<Waker>,
    broker_queue_dropped: u64,
    queued_publishes: usize,
    timer_waker: Option<Waker>,
    timer_seen: Option<Duration>,
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
        };
        node.pump();
        node
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

    // ----- inputs -----

    /// A WebSocket connection is established.
    pub fn open(&mut self) -> ConnId {
        let id = self.hub.handle_open();
        self.outboxes.insert(id, Outbox::default());
        self.pump();
        id
    }

    pub fn frame(&mut self, conn: ConnId, frame: Inbound<'_>) {
        self.hub.handle_frame(conn, frame);
        self.pump();
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
            return Poll::Ready(Outgoing::Gone);
        };
        if !ob.frames.is_empty() {
            ob.bytes = 0;
            return Poll::Ready(Outgoing::Frames(Vec::from(std::mem::take(&mut ob.frames))));
        }
        if let Some((code, reason)) = &ob.close {
            if ob.close_taken {
                return Poll::Ready(Outgoing::Gone);
            }
            ob.close_taken = true;
            return Poll::Ready(Outgoing::Close {
                code: *code,
                reason: reason.clone(),
                abort: ob.abort,
            });
        }
        ob.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready when the connection must be dropped at once (a slow consumer,
    /// or unknown): lets a runtime interrupt a writer blocked on a full socket.
    pub fn poll_abort(&mut self, conn: ConnId, cx: &mut Context<'_>) -> Poll<()> {
        match self.outboxes.get_mut(&conn) {
            Some(ob) if ob.abort && ob.close.is_some() => Poll::Ready(()),
            Some(ob) => {
                ob.abort_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(()),
        }
    }

    /// Whether the hub has closed this connection (its writer may still be
    /// sending the close frame).
    pub fn is_closing(&self, conn: ConnId) -> bool {
        self.outboxes.get(&conn).is_none_or(|o| o.close.is_some())
    }

    /// The broker task takes every queued broker command, or registers to be
    /// woken. After shutdown, once everything queued has been taken, it is
    /// ready with an empty list: the broker task's cue to finish.
    pub fn poll_broker(&mut self, cx: &mut Context<'_>) -> Poll<Vec<Command>> {
        if self.broker_queue.is_empty() {
            if self.hub.broker_state() == crate::hub::BrokerState::Stopped {
                return Poll::Ready(Vec::new());
            }
            self.broker_waker = Some(cx.waker().clone());
            Poll::Pending
        } else {
            self.queued_publishes = 0;
            Poll::Ready(Vec::from(std::mem::take(&mut self.broker_queue)))
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
        if matches!(cmd, Command::BrokerPublish { .. }) {
            if self.queued_publishes >= self.hub.config().limits.publish_buffer {
                self.broker_queue_dropped += 1;
                return;
            }
            self.queued_publishes += 1;
        }
        self.broker_queue.push_back(cmd);
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
            Poll::Ready(Outgoing::Close {
                code: 1003,
                reason: "binary frames are not supported".into(),
                abort: false
            })
        );
        assert_eq!(n.poll_outgoing(a, &mut cx), Poll::Ready(Outgoing::Gone));
        n.closed(a);
        assert_eq!(n.poll_outgoing(a, &mut cx), Poll::Ready(Outgoing::Gone));
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
            Poll::Ready(Outgoing::Close {
                code: 1008,
                reason: "slow consumer".into(),
                abort: true
            })
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
        let Poll::Ready(cmds) = n.poll_broker(&mut cx) else {
            panic!()
        };
        assert_eq!(cmds, vec![Command::BrokerConnect(Session(1))]);
        assert!(n.poll_broker(&mut cx).is_pending());
        n.broker_connected(Session(1), Duration::ZERO);
        let a = n.open();
        n.frame(a, Inbound::Text(sub("r").as_bytes()));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            n.poll_broker(&mut cx),
            Poll::Ready(vec![Command::BrokerSubscribe(vec!["r".into()])])
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
        assert_eq!(n.poll_broker(&mut cx), Poll::Ready(Vec::new()));
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
}
