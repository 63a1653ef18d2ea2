//! The node: a [`Hub`] wired to per-connection outboxes, the broker session
//! and the sockets' admission, shared by every task of a runtime.
//!
//! Still no I/O, no clock and no threads of its own, but built to be shared
//! (`Node: Sync`, every method takes `&self`) so that a runtime with many
//! worker threads scales with them:
//!
//! - **Nothing is parsed, encoded, woken or rendered under a node-wide
//!   lock.** A connection's frames are decoded by its own protocol session
//!   (each connection has its own lock, taken only by its own task); the
//!   hub's lock is held only to look up or change memberships and to queue
//!   broker work; metrics copy numbers out and render afterwards; wakers
//!   are woken after every lock is released.
//! - **A message reaches N members with one shared `Bytes` per protocol and
//!   one hub lookup**: the hub hands out its member list as a snapshot
//!   ([`Members`]), and each member's outbox has its own lock.
//! - **A poisoned lock is a bug**: the node fails fast (panics) rather than
//!   serve half-updated state.
//!
//! Lock order, where two are held: the hub, then one outbox. Nothing takes
//! the hub while holding an outbox.
//!
//! ## A socket's life (what a runtime does)
//!
//! 1. [`Node::admit`] → read into the [`HeadReader`] → [`Node::answer`];
//! 2. on [`Reply::Upgrade`], [`Node::open`]; the reader feeds
//!    [`Node::frame`] until it says stop, then asks [`Node::reading_ended`];
//!    the writer drains [`Node::poll_outgoing`]; [`Node::poll_abort`]
//!    interrupts it; [`Node::conn_deadline`] / [`Node::conn_timeout`] drive
//!    the connection's own timers; whichever [`Finish`] comes first is
//!    carried out;
//! 3. [`Node::closed`], then [`Node::socket_closed`].
//!
//! The broker task drains [`Node::poll_broker`] and reports back; the timer
//! task calls [`Node::timeout`] at [`Node::deadline`].

mod admission;
mod api;
mod centrifugo;
pub mod control;
mod fleet;
pub mod history;
pub mod limiter;
pub mod outbox;
pub mod presence;
mod seed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

pub use admission::{AcceptLog, Admitted, IoStats};
pub use api::{ApiAnswer, ApiCall, ApiPending, ApiRequest};
pub use outbox::{Finish, Outbox, Outgoing, Pushed, WRITE_BATCH_BYTES};

use crate::auth::{Auth, ConnClaims};
pub use crate::codec::Publication;
use crate::codec::envelope::{self, Envelope};
use crate::codec::http::{self, ClientProtocol, Decision, HeadReader, Route};
use crate::codec::seed::FrameError;
use crate::config::NodeConfig;
use crate::hub::{
    BrokerMode, BrokerOp, BrokerState, ConnId, Hub, Members, Outbound, Queued, Session, Ticket,
};
use crate::metrics::Snapshot;

/// How long a slow consumer's close frame may take before its socket is
/// let go ([`Finish::Close`] with `abort`).
pub const ABORT_CLOSE_WAIT: Duration = Duration::from_millis(100);

/// At shutdown, how long the broker task may take to finish what is queued
/// (Redis may hang) before it is cancelled.
pub const BROKER_STOP_WAIT: Duration = Duration::from_secs(1);

/// How long to stop accepting after `accept` fails (out of descriptors).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What a connection sent, as the WebSocket layer reports it.
#[derive(Debug, Clone, Copy)]
pub enum Inbound<'a> {
    /// A complete text frame's payload.
    Text(&'a [u8]),
    /// A binary frame.
    Binary,
    /// A ping or pong (keepalive; the WebSocket layer answers pings).
    Control,
    /// A frame over the size limit, refused by the WebSocket layer before it
    /// was read whole.
    TooLarge,
    /// A text frame that is not UTF-8, refused by the WebSocket layer.
    NotUtf8,
    /// A frame that breaks the WebSocket protocol (reserved bits, no mask, a
    /// bad opcode or fragmentation), refused by the WebSocket layer.
    ProtocolError,
}

/// What a runtime does with a new socket, from [`Node::answer`].
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Write `response` (the `101`), then speak WebSocket on the socket in
    /// `protocol`; `rest` is what the client sent past its head, already
    /// WebSocket bytes.
    Upgrade {
        response: Vec<u8>,
        rest: Vec<u8>,
        protocol: ClientProtocol,
        /// Who the seed protocol's `?token=` says the client is (hand it to
        /// [`Node::open`]); the Centrifugo protocol's token comes later.
        claims: Option<ConnClaims>,
    },
    /// Write this response, then end the stream.
    Respond(Vec<u8>),
    /// Drop the socket at once.
    Drop,
    /// A server API request: read its body into it, then [`Node::api`].
    Api(ApiRequest),
}

/// What became of a broker message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Delivered to this many local members.
    Delivered(usize),
    /// The node's own probe.
    Probe,
    /// Over `--max-broker-payload-bytes`: dropped and counted.
    TooLarge { len: usize },
    /// Not a payload roomcast understands: dropped and counted.
    Dropped,
}

/// A connection, as its runtime task holds it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Conn(Arc<Peer>);

impl Conn {
    pub fn id(&self) -> ConnId {
        self.0.id
    }

    pub fn protocol(&self) -> ClientProtocol {
        self.0.protocol
    }
}

/// What the hub holds for each connection: its outbox and its protocol.
#[derive(Debug)]
pub struct Peer {
    id: ConnId,
    protocol: ClientProtocol,
    outbox: Mutex<Outbox>,
    session: Mutex<ProtocolSession>,
}

/// A connection's protocol state, touched only by its own task.
#[derive(Debug)]
enum ProtocolSession {
    Seed(seed::SeedSession),
    Centrifugo(Box<centrifugo::CfSession>),
}

impl ProtocolSession {
    fn new(
        cfg: &NodeConfig,
        protocol: ClientProtocol,
        id: ConnId,
        claims: Option<ConnClaims>,
        now: Duration,
    ) -> ProtocolSession {
        match protocol {
            ClientProtocol::Seed => {
                ProtocolSession::Seed(seed::SeedSession::new(cfg, claims.unwrap_or_default(), now))
            }
            ClientProtocol::Centrifugo => {
                ProtocolSession::Centrifugo(Box::new(centrifugo::CfSession::new(cfg, id, now)))
            }
        }
    }
}

/// The labels of the Centrifugo protocol's bad frames and commands.
pub const CF_LABELS: [&str; 17] = {
    let mut all = [""; 17];
    let (f, c) = (
        crate::codec::centrifugo::FrameError::LABELS,
        crate::codec::centrifugo::CommandErrorKind::LABELS,
    );
    let mut i = 0;
    while i < f.len() {
        all[i] = f[i];
        i += 1;
    }
    while i < f.len() + c.len() {
        all[i] = c[i - f.len()];
        i += 1;
    }
    all
};

/// Counters kept outside the hub's lock.
#[derive(Debug, Default)]
struct Stats {
    connections_opened: AtomicU64,
    frames_received: AtomicU64,
    broker_messages: AtomicU64,
    deliveries: AtomicU64,
    slow_consumer_closes: AtomicU64,
    broker_payloads_dropped: AtomicU64,
    broker_payloads_too_large: AtomicU64,
    bad_frames: [AtomicU64; FrameError::LABELS.len()],
    cf_bad_commands: [AtomicU64; CF_LABELS.len()],
    rate_limited: AtomicU64,
    no_pong_closes: AtomicU64,
    origin_refused: AtomicU64,
    auth_refused: AtomicU64,
    recovered: AtomicU64,
    not_recovered: AtomicU64,
    insufficient_state: AtomicU64,
    heals: AtomicU64,
    history_gaps: AtomicU64,
    presence_capped: AtomicU64,
    presence_refreshes: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The hub and the wakers of the node-wide tasks, under one lock.
#[derive(Debug)]
struct Shared {
    hub: Hub<Arc<Peer>>,
    broker_waker: Option<Waker>,
    timer_waker: Option<Waker>,
    timer_seen: Option<Duration>,
    now: Duration,
    /// When this node next re-adds its presence entries (Redis).
    presence_due: Option<Duration>,
    /// When this node next writes its announcement (Redis).
    announce_due: Option<Duration>,
}

impl Shared {
    /// The node's next deadline: the broker's, or the presence refresh.
    fn deadline(&self) -> Option<Duration> {
        [
            self.hub.broker().deadline(),
            self.presence_due,
            self.announce_due,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The wakers to wake once the lock is released.
    fn wakes(&mut self) -> [Option<Waker>; 2] {
        let broker = if self.hub.broker().has_work() || self.hub.broker().is_stopped() {
            self.broker_waker.take()
        } else {
            None
        };
        let timer = if self.deadline() != self.timer_seen {
            self.timer_waker.take()
        } else {
            None
        };
        [broker, timer]
    }
}

/// A poisoned lock means a panic mid-update: fail fast.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
        .expect("a roomcast lock was poisoned: a bug, stopping")
}

fn wake_all<const N: usize>(wakers: [Option<Waker>; N]) {
    for w in wakers.into_iter().flatten() {
        w.wake();
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    auth: Arc<Auth>,
    probe_channel: String,
    /// The fleet's control channel (server-side subscribe, unsubscribe,
    /// disconnect).
    control_channel: String,
    /// Connections by user, for those commands.
    users: Mutex<control::Users>,
    /// The node's time when it was made (its uptime's start).
    started: Duration,
    shared: Mutex<Shared>,
    admission: admission::Admission,
    stats: Stats,
    /// The embedded broker's room streams.
    memory: history::Memory,
    /// Who waits for which broker reply.
    waiters: Mutex<std::collections::HashMap<Ticket, history::Waiter>>,
    presence: Mutex<presence::Book>,
    /// Whether the book holds notices (read on every frame: no lock).
    presence_notices: std::sync::atomic::AtomicBool,
    tickets: AtomicU64,
    epochs: AtomicU64,
    /// The HTTP server API's counters and idempotency cache.
    api: api::ApiState,
}

impl Node {
    /// A node in open mode (no auth).
    pub fn new(cfg: NodeConfig, now: Duration) -> Node {
        Node::with_auth(cfg, Arc::new(Auth::open()), now)
    }

    /// A node that authenticates and authorizes with `auth`.
    pub fn with_auth(cfg: NodeConfig, auth: Arc<Auth>, now: Duration) -> Node {
        let probe = envelope::channel_for(
            &cfg.hub.channel_prefix,
            &format!("__roomcast.probe.{}", cfg.node_id),
        );
        let control = envelope::channel_for(&cfg.hub.channel_prefix, control::CONTROL_CHANNEL);
        let mut hub = Hub::new(cfg.hub.clone(), cfg.mode, probe.clone(), now);
        if cfg.mode == BrokerMode::Remote {
            hub.broker_mut().set_control_channel(control.clone());
        }
        Node {
            admission: admission::Admission::new(cfg.max_sockets, cfg.operator_reserve),
            auth,
            probe_channel: probe,
            control_channel: control,
            users: Mutex::new(control::Users::default()),
            started: now,
            shared: Mutex::new(Shared {
                hub,
                broker_waker: None,
                timer_waker: None,
                timer_seen: None,
                presence_due: None,
                announce_due: None,
                now,
            }),
            cfg,
            stats: Stats::default(),
            memory: history::Memory::default(),
            waiters: Mutex::new(std::collections::HashMap::new()),
            presence: Mutex::new(presence::Book::default()),
            presence_notices: std::sync::atomic::AtomicBool::new(false),
            tickets: AtomicU64::new(1),
            epochs: AtomicU64::new(0),
            api: api::ApiState::default(),
        }
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn mode(&self) -> BrokerMode {
        self.cfg.mode
    }

    /// Runs `f` on the hub under its lock, then wakes whoever must be.
    ///
    /// Broker requests that will get no answer are failed afterwards, and
    /// when the broker session has just come up every room heals.
    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        let (r, wakes, dropped, released, departures) = {
            let mut s = lock(&self.shared);
            let r = f(&mut s);
            let released = if s.hub.broker_mut().take_came_up() {
                // Back on Redis: this node's presence entries again, now.
                let now = s.now;
                self.presence_refresh(&mut s, now);
                self.announce(&mut s, now);
                self.heal_all(&mut s)
            } else {
                Vec::new()
            };
            let dropped = s.hub.broker_mut().take_dropped();
            let departures = s.hub.take_departures();
            (r, s.wakes(), dropped, released, departures)
        };
        wake_all(wakes);
        if !departures.is_empty() {
            self.presence_departed(departures);
        }
        if !dropped.is_empty() {
            self.fail_tickets(dropped);
        }
        for (room, payloads) in released {
            if let Some(members) = self.inspect(|h| h.members(&room)) {
                self.release(&room, &members, payloads);
            }
        }
        r
    }

    /// Reads the hub (tests, metrics).
    pub fn inspect<R>(&self, f: impl FnOnce(&Hub<Arc<Peer>>) -> R) -> R {
        f(&lock(&self.shared).hub)
    }

    pub fn broker_up(&self) -> bool {
        self.inspect(|h| h.broker().is_up())
    }

    pub fn broker_state(&self) -> BrokerState {
        self.inspect(|h| h.broker().state())
    }

    // ----- sockets -----

    /// A socket was accepted. `None`: the node is full, operator reserve
    /// included; drop the socket (it is counted). Otherwise read its
    /// request head into the returned reader, give that to
    /// [`Node::answer`], and report the socket's end, however it ends, with
    /// [`Node::socket_closed`].
    pub fn admit(&self) -> Option<Admitted> {
        let full = self.admission.admit()?;
        Some(Admitted {
            head: HeadReader::new(self.cfg.serve_index),
            full,
            api_port: false,
        })
    }

    /// [`Node::admit`] for a socket of the API's own listener
    /// (`--api-listen`): it serves the API, not WebSockets.
    pub fn admit_api(&self) -> Option<Admitted> {
        let mut a = self.admit()?;
        a.api_port = true;
        Some(a)
    }

    /// `accept` failed (out of descriptors and the like): what to log, if
    /// anything (rate-limited).
    pub fn accept_failed(&self, error: &str, now: Duration) -> Option<String> {
        self.admission.accept_failed(error, now)
    }

    /// What to do with a socket whose head was read into `head`: stopped
    /// when [`HeadReader::advance`] said so, or early because the read failed
    /// or the handshake timeout passed (the socket is then dropped).
    pub fn answer(&self, admitted: Admitted, now: Duration) -> Reply {
        let Admitted {
            head,
            full,
            api_port,
        } = admitted;
        let (decision, mut buf) = head.into_parts();
        if api_port && matches!(decision, Some(Decision::Upgrade(_))) {
            self.admission.count_http();
            return Reply::Respond(http::response(404, TEXT, b"not found\n", false));
        }
        match decision {
            Some(Decision::Api(head)) => self.api_admit(head, buf, full, api_port),
            Some(Decision::Upgrade(up)) => {
                if full || self.is_stopped() {
                    self.admission.count_rejected();
                    let body: &[u8] = if full {
                        b"connection limit reached\n"
                    } else {
                        b"shutting down\n"
                    };
                    return Reply::Respond(http::response(503, TEXT, body, false));
                }
                if up.protocol == ClientProtocol::Seed && !self.cfg.seed_protocol {
                    self.admission.count_http();
                    return Reply::Respond(http::response(
                        404,
                        TEXT,
                        b"the seed protocol is off on this node; use /connection/websocket\n",
                        false,
                    ));
                }
                if !self
                    .auth
                    .origin_allowed(up.origin.as_deref(), up.host.as_deref())
                {
                    add(&self.stats.origin_refused, 1);
                    return Reply::Respond(http::response(
                        403,
                        TEXT,
                        b"origin not allowed (see --allowed-origins)\n",
                        false,
                    ));
                }
                let claims = match up.protocol {
                    // Its token is in its first command.
                    ClientProtocol::Centrifugo => None,
                    ClientProtocol::Seed => {
                        match self.auth.seed_upgrade(up.token.as_deref(), self.wall(now)) {
                            Ok(claims) => Some(claims),
                            Err(denied) => {
                                add(&self.stats.auth_refused, 1);
                                return Reply::Respond(http::response(
                                    denied.http_status(),
                                    TEXT,
                                    denied.http_body().as_bytes(),
                                    false,
                                ));
                            }
                        }
                    }
                };
                let response = up.response();
                buf.drain(..up.head_len);
                buf.shrink_to_fit();
                Reply::Upgrade {
                    response,
                    rest: buf,
                    protocol: up.protocol,
                    claims,
                }
            }
            Some(Decision::Route { route, head_only }) => {
                self.admission.count_http();
                Reply::Respond(self.respond(route, head_only, full, api_port))
            }
            Some(Decision::Incomplete | Decision::Invalid) | None => {
                self.admission.count_handshake_failure();
                Reply::Drop
            }
        }
    }

    /// The upgrade response could not be written in time: the socket is
    /// dropped before it became a connection.
    pub fn handshake_failed(&self) {
        self.admission.count_handshake_failure();
    }

    /// A socket from [`Node::admit`] is gone.
    pub fn socket_closed(&self) {
        self.admission.socket_closed();
    }

    /// Ready once every admitted socket is closed: what shutdown waits for
    /// (bounded by the grace period).
    #[must_use = "work a task must carry out, or a waker registration it relies on"]
    pub fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.admission.poll_drained(cx)
    }

    /// Sockets admitted and not yet reported closed.
    pub fn sockets(&self) -> usize {
        self.admission.sockets()
    }

    fn respond(&self, route: Route, head_only: bool, full: bool, api_port: bool) -> Vec<u8> {
        match route {
            Route::Health => {
                let (status, body): (u16, &[u8]) = if self.is_stopped() {
                    (503, b"shutting down\n")
                } else if !self.broker_up() {
                    (503, b"broker unavailable\n")
                } else if full {
                    (503, b"full\n")
                } else {
                    (200, b"ok\n")
                };
                http::response(status, TEXT, body, head_only)
            }
            Route::Metrics => {
                let mut body = crate::metrics::render(&self.snapshot());
                crate::metrics::render_api(&self.api_metrics(), &mut body);
                http::response(200, "text/plain; version=0.0.4", body.as_bytes(), head_only)
            }
            Route::Index => http::response(
                200,
                "text/html; charset=utf-8",
                crate::CHAT_PAGE.as_bytes(),
                head_only,
            ),
            // On the port that serves the API, so that the page calls it
            // from its own origin.
            Route::Admin if self.cfg.api.admin && self.cfg.api.own_listener == api_port => {
                http::response_with(
                    200,
                    http::LOCKED_PAGE_HEADERS,
                    "text/html; charset=utf-8",
                    crate::ADMIN_PAGE.as_bytes(),
                    head_only,
                )
            }
            Route::Admin => {
                http::fixed_response(Route::NotFound, head_only).expect("404 has a fixed response")
            }
            other => http::fixed_response(other, head_only)
                .expect("every other route has a fixed response"),
        }
    }

    // ----- connections -----

    /// Wall-clock seconds at the node's time `now`.
    fn wall(&self, now: Duration) -> u64 {
        self.cfg.wall_origin + now.as_secs()
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// A WebSocket connection is established, speaking `protocol`, as the
    /// upgrade's `claims` say (none: anonymous).
    pub fn open(
        &self,
        protocol: ClientProtocol,
        claims: Option<ConnClaims>,
        now: Duration,
    ) -> Conn {
        add(&self.stats.connections_opened, 1);
        let make = |id| {
            Arc::new(Peer {
                id,
                protocol,
                outbox: Mutex::new(Outbox::default()),
                session: Mutex::new(ProtocolSession::new(
                    &self.cfg,
                    protocol,
                    id,
                    claims.clone(),
                    now,
                )),
            })
        };
        match self.with(|s| s.hub.open_with(make)) {
            Ok(peer) => {
                if let (ClientProtocol::Seed, Some(c)) = (protocol, &claims) {
                    self.index_user(&peer, &c.user, "");
                }
                Conn(peer)
            }
            Err(_) => {
                // After shutdown: closed at once.
                let peer = make(ConnId(0));
                let (code, reason) = seed::shutdown_close(protocol);
                let _ = lock(&peer.outbox).close(code, reason.into(), false);
                Conn(peer)
            }
        }
    }

    /// A frame arrived. Returns whether to go on reading: `false` once the
    /// connection is closing (its writer sends the close).
    pub fn frame(&self, conn: &Conn, input: Inbound<'_>, now: Duration) -> bool {
        let peer = &conn.0;
        if lock(&peer.outbox).is_closing() {
            return false;
        }
        add(&self.stats.frames_received, 1);
        let mut session = lock(&peer.session);
        match &mut *session {
            ProtocolSession::Seed(s) => s.frame(self, peer, input, now),
            ProtocolSession::Centrifugo(s) => s.frame(self, peer, input, now),
        }
        drop(session);
        !lock(&peer.outbox).is_closing()
    }

    /// When the connection's own timers next need [`Node::conn_timeout`].
    pub fn conn_deadline(&self, conn: &Conn) -> Option<Duration> {
        match &*lock(&conn.0.session) {
            ProtocolSession::Seed(s) => s.deadline(),
            ProtocolSession::Centrifugo(s) => s.deadline(),
        }
    }

    /// The connection's deadline passed (calling early is harmless).
    pub fn conn_timeout(&self, conn: &Conn, now: Duration) {
        let peer = &conn.0;
        // A connection already closing is left to its close.
        if lock(&peer.outbox).is_closing() {
            return;
        }
        let mut session = lock(&peer.session);
        match &mut *session {
            ProtocolSession::Seed(s) => s.timeout(self, peer, now),
            ProtocolSession::Centrifugo(s) => s.timeout(self, peer, now),
        }
    }

    /// The connection's reader stopped: the client sent a close frame
    /// (`peer_closed`), the stream ended or failed, or [`Node::frame`] said
    /// to stop. `None`: the writer has a close to send; wait for it, but no
    /// longer than the shutdown grace (it may be stuck on a client that does
    /// not read), then let the socket go.
    ///
    /// A slow consumer (the close is an abort) ends at once, as from
    /// [`Node::poll_abort`], even if it sent a close: its writer is stuck and
    /// will send neither the close nor the answer.
    pub fn reading_ended(&self, conn: &Conn, peer_closed: bool) -> Option<Finish> {
        let ob = lock(&conn.0.outbox);
        if let Some(abort) = ob.abort_close() {
            Some(abort)
        } else if ob.is_closing() {
            None
        } else if peer_closed {
            Some(Finish::Answer)
        } else {
            Some(Finish::Release)
        }
    }

    /// The runtime found the connection's own buffers full (beyond the
    /// outbox): it is closed as a slow consumer.
    pub fn outbound_full(&self, conn: &Conn) {
        self.drop_slow(std::slice::from_ref(&conn.0));
    }

    /// The connection's task has finished: nothing of it remains.
    pub fn closed(&self, conn: Conn) {
        let id = conn.0.id;
        self.unindex_user(id);
        self.with(|s| {
            s.hub.close(id);
        });
    }

    /// The writer of `conn` takes its next work, or registers to be woken.
    #[must_use = "work a task must carry out, or a waker registration it relies on"]
    pub fn poll_outgoing(&self, conn: &Conn, cx: &mut Context<'_>) -> Poll<Outgoing> {
        lock(&conn.0.outbox).take(cx.waker())
    }

    /// Ready when the connection must be dropped at once (a slow consumer):
    /// lets a runtime interrupt a writer blocked on a full socket, and end
    /// the connection the way this says instead.
    #[must_use = "work a task must carry out, or a waker registration it relies on"]
    pub fn poll_abort(&self, conn: &Conn, cx: &mut Context<'_>) -> Poll<Finish> {
        lock(&conn.0.outbox).watch_abort(cx.waker())
    }

    /// Whether the connection is closing (its writer may still be sending
    /// the close frame).
    pub fn is_closing(&self, conn: &Conn) -> bool {
        lock(&conn.0.outbox).is_closing()
    }

    /// Bytes queued for a connection and not yet taken by its writer.
    pub fn queued_bytes(&self, conn: &Conn) -> usize {
        lock(&conn.0.outbox).bytes()
    }

    /// The frames queued for a connection (tests).
    pub fn queued_frames(&self, conn: &Conn) -> Vec<Bytes> {
        lock(&conn.0.outbox).frames().cloned().collect()
    }

    /// The close waiting for a connection's writer, if any.
    pub fn queued_close(&self, conn: &Conn) -> Option<(u16, String)> {
        lock(&conn.0.outbox)
            .queued_close()
            .map(|(c, r)| (c, r.to_string()))
    }

    // ----- operations, for the protocol sessions -----

    /// Queues a frame for one connection (a reply); a full outbox makes it
    /// a slow consumer.
    fn send(&self, peer: &Arc<Peer>, frame: Bytes) {
        let max = self.cfg.hub.limits.max_outbound_bytes;
        let pushed = lock(&peer.outbox).push(frame, max);
        match pushed {
            Pushed::Queued(w) => wake_all([w]),
            Pushed::Full => self.drop_slow(std::slice::from_ref(peer)),
            Pushed::Closing => {}
        }
    }

    /// Closes a connection with this code and reason: the hub forgets it at
    /// once, the writer sends the close after what is queued.
    fn close(&self, peer: &Arc<Peer>, code: u16, reason: String) {
        let wakes = lock(&peer.outbox).close(code, reason, false);
        wake_all(wakes);
        let id = peer.id;
        self.with(|s| {
            s.hub.close(id);
        });
    }

    fn join(&self, peer: &Arc<Peer>, room: &str) -> Result<bool, crate::hub::Refusal> {
        let id = peer.id;
        self.with(|s| s.hub.join(id, room))
    }

    /// Joins a room and queues the reply `answer` makes of the outcome,
    /// both under the hub's lock: no publication to the room can reach the
    /// connection before the reply that it joined.
    fn join_then(
        &self,
        peer: &Arc<Peer>,
        room: &str,
        answer: impl FnOnce(Result<bool, crate::hub::Refusal>) -> Option<Bytes>,
    ) {
        let max = self.cfg.hub.limits.max_outbound_bytes;
        let id = peer.id;
        let pushed = self.with(|s| {
            let joined = s.hub.join(id, room);
            answer(joined).map(|frame| lock(&peer.outbox).push(frame, max))
        });
        match pushed {
            Some(Pushed::Queued(w)) => wake_all([w]),
            Some(Pushed::Full) => self.drop_slow(std::slice::from_ref(peer)),
            Some(Pushed::Closing) | None => {}
        }
    }

    fn is_member(&self, peer: &Arc<Peer>, room: &str) -> bool {
        self.inspect(|h| h.is_member(peer.id, room))
    }

    fn count_cf_bad_command(&self, label: &str) {
        if let Some(i) = CF_LABELS.iter().position(|l| *l == label) {
            add(&self.stats.cf_bad_commands[i], 1);
        }
    }

    fn leave(&self, peer: &Arc<Peer>, room: &str) -> bool {
        let id = peer.id;
        let left = self.with(|s| s.hub.leave(id, room));
        lock(&peer.outbox).remove_track(room);
        left
    }

    /// Publishes to a room: through the broker, or, embedded, straight to
    /// the local members; into its stream first if the room keeps history.
    fn publish(&self, publication: &Publication<'_>, now: Duration) {
        if let Some(o) = self.history_of(publication.room) {
            return self.publish_with_history(publication, &o, now);
        }
        match self.cfg.mode {
            BrokerMode::Local => {
                let members = self.inspect(|h| h.members(publication.room));
                if let Some(members) = members {
                    let mut wakes = Vec::new();
                    self.deliver(publication, &members, &mut wakes);
                    wakes.into_iter().for_each(Waker::wake);
                }
            }
            BrokerMode::Remote => {
                let payload = Bytes::from(envelope::encode(publication));
                let channel = envelope::channel_for(&self.cfg.hub.channel_prefix, publication.room);
                let out = Outbound::publish(&channel, payload);
                self.with(|s| match s.hub.broker_mut().publish(out) {
                    Queued::Sent | Queued::Held | Queued::Dropped => {}
                });
            }
        }
    }

    /// One message to every member in `members`: one frame per protocol,
    /// shared; one lock per member's own outbox; slow consumers dropped in
    /// one pass over the hub afterwards.
    ///
    /// The writers to wake are pushed to `wakes`: the caller wakes them once
    /// it has delivered what it had (a burst of broker messages), so a
    /// writer finds every frame of the burst in one wake-up and writes them
    /// in one syscall.
    fn deliver(
        &self,
        publication: &Publication<'_>,
        members: &Members<Arc<Peer>>,
        wakes: &mut Vec<Waker>,
    ) {
        let max = self.cfg.hub.limits.max_outbound_bytes;
        let mut seed_frame: Option<Bytes> = None;
        let mut cf_frame: Option<Bytes> = None;
        let mut slow: Vec<Arc<Peer>> = Vec::new();
        let mut lost: Vec<Arc<Peer>> = Vec::new();
        for (_, peer) in members.iter() {
            let frame = match peer.protocol {
                ClientProtocol::Seed => seed_frame
                    .get_or_insert_with(|| seed::encode(publication))
                    .clone(),
                ClientProtocol::Centrifugo => cf_frame
                    .get_or_insert_with(|| centrifugo::encode(publication))
                    .clone(),
            };
            let mut ob = lock(&peer.outbox);
            // A subscriber with a position in the room's stream takes only
            // the next publication of it.
            if let Some((offset, epoch)) = publication.position
                && let Some(track) = ob.track_mut(publication.room)
            {
                match track.step(offset, epoch, &frame) {
                    crate::hub::stream::Step::Send => {}
                    crate::hub::stream::Step::Skip => continue,
                    crate::hub::stream::Step::Lost => {
                        ob.remove_track(publication.room);
                        lost.push(peer.clone());
                        continue;
                    }
                }
            }
            let pushed = ob.push(frame, max);
            drop(ob);
            match pushed {
                Pushed::Queued(Some(w)) => wakes.push(w),
                Pushed::Queued(None) | Pushed::Closing => {}
                Pushed::Full => slow.push(peer.clone()),
            }
        }
        add(&self.stats.deliveries, members.len() as u64);
        if !slow.is_empty() {
            self.drop_slow(&slow);
        }
        for peer in lost {
            self.insufficient_state(&peer, publication.room);
        }
    }

    /// Closes slow consumers: their queue is discarded, their sockets let go.
    fn drop_slow(&self, peers: &[Arc<Peer>]) {
        let mut dropped = Vec::with_capacity(peers.len());
        for peer in peers {
            let (code, reason) = seed::slow_consumer_close(peer.protocol);
            let wakes = lock(&peer.outbox).close(code, reason.into(), true);
            if wakes.iter().any(Option::is_some) || !dropped.contains(&peer.id) {
                dropped.push(peer.id);
            }
            wake_all(wakes);
        }
        let n = self.with(|s| {
            dropped
                .iter()
                .filter(|&&id| s.hub.close(id).is_some())
                .count()
        });
        add(&self.stats.slow_consumer_closes, n as u64);
    }

    fn count_bad_frame(&self, label: &str) {
        if let Some(i) = FrameError::LABELS.iter().position(|l| *l == label) {
            add(&self.stats.bad_frames[i], 1);
        }
    }

    // ----- broker -----

    /// A message arrived on a subscribed channel. It reaches every local
    /// member of its room. The answer says what became of it (a runtime logs
    /// [`Taken::TooLarge`]).
    pub fn broker_message(&self, channel: &[u8], payload: &[u8]) -> Taken {
        let mut wakes = Vec::new();
        let taken = self.broker_message_deferred(channel, payload, &mut wakes);
        wakes.into_iter().for_each(Waker::wake);
        taken
    }

    /// [`Node::broker_message`], leaving the writers to wake in `wakes`:
    /// a runtime that has several messages at hand delivers them all, then
    /// wakes each writer once.
    pub fn broker_message_deferred(
        &self,
        channel: &[u8],
        payload: &[u8],
        wakes: &mut Vec<Waker>,
    ) -> Taken {
        add(&self.stats.broker_messages, 1);
        // A room may carry the probe channel's name; its messages are
        // delivered, the probes (which are no room's payload) are not.
        if self.probe_channel.as_bytes() == channel && crate::hub::Broker::is_probe(payload) {
            self.with(|s| {
                let now = s.now;
                s.hub.broker_mut().probe_echo(payload, now);
            });
            return Taken::Probe;
        }
        // A server-side command for this node's connections; anything else
        // on the control channel is a room's (a room may carry its name).
        if self.control_channel.as_bytes() == channel
            && let Some(c) = control::Control::parse(payload)
        {
            return Taken::Delivered(self.apply_control(&c));
        }
        if payload.len() > self.cfg.hub.limits.max_broker_payload_bytes {
            add(&self.stats.broker_payloads_too_large, 1);
            return Taken::TooLarge { len: payload.len() };
        }
        let env = match envelope::parse_for_channel(&self.cfg.hub.channel_prefix, channel, payload)
        {
            Ok(env) => env,
            Err(_) => {
                // A join or leave of a presence room rides its channel.
                if let Some((join, room, info)) = presence::parse_event(payload)
                    && envelope::room_of_channel(&self.cfg.hub.channel_prefix, channel)
                        == Some(room.as_bytes())
                {
                    return Taken::Delivered(self.presence_event(&room, join, &info));
                }
                add(&self.stats.broker_payloads_dropped, 1);
                return Taken::Dropped;
            }
        };
        let Envelope {
            room,
            message,
            info,
            position,
        } = env;
        let (members, now, released) = match &position {
            None => (self.inspect(|h| h.members(&room)), true, Vec::new()),
            Some((offset, epoch)) => {
                let payload = Bytes::copy_from_slice(payload);
                self.with(|s| {
                    let (now, released) = self.observe(s, &room, *offset, epoch, &payload);
                    (s.hub.members(&room), now, released)
                })
            }
        };
        let Some(members) = members else {
            return Taken::Delivered(0);
        };
        if !released.is_empty() {
            self.release(&room, &members, released);
        }
        if !now {
            return Taken::Delivered(0);
        }
        let publication = Publication {
            room: &room,
            message,
            info: info.as_deref(),
            position: position.as_ref().map(|(o, e)| (*o, &**e)),
        };
        self.deliver(&publication, &members, wakes);
        Taken::Delivered(members.len())
    }

    /// Broker messages too large to take (`--max-broker-payload-bytes`) so far.
    pub fn broker_payloads_too_large(&self) -> u64 {
        self.stats.broker_payloads_too_large.load(Ordering::Relaxed)
    }

    pub fn broker_connected(&self, session: Session, now: Duration) {
        self.with(|s| {
            s.now = s.now.max(now);
            s.hub.broker_connected(session, now);
        });
    }

    /// The links of `session` failed: `unknown` publishes were in the failed
    /// operation, `unsent` were queued behind it.
    pub fn broker_disconnected(
        &self,
        session: Session,
        unknown: usize,
        unsent: Vec<Outbound>,
        now: Duration,
    ) {
        self.with(|s| {
            s.now = s.now.max(now);
            s.hub
                .broker_mut()
                .disconnected(session, unknown, unsent, now);
        });
    }

    /// A subscribe or unsubscribe of `session` completed.
    pub fn broker_progress(&self, session: Session, now: Duration) {
        self.with(|s| {
            s.now = s.now.max(now);
            s.hub.broker_mut().progress(session, now);
        });
    }

    /// Publishes the runtime could not send: there was no link (it failed
    /// before their turn). They are held again, in order.
    pub fn broker_unsent(&self, unsent: Vec<Outbound>) {
        self.with(|s| s.hub.broker_mut().unsent(unsent));
    }

    /// Redis confirmed `n` publishes of `session`.
    pub fn broker_published(&self, session: Session, n: usize) {
        self.with(|s| s.hub.broker_mut().published(session, n));
    }

    /// The broker task takes every queued broker operation, or registers to
    /// be woken. After shutdown, once everything queued has been taken, it is
    /// ready with `None`: the broker task's cue to finish.
    #[must_use = "work a task must carry out, or a waker registration it relies on"]
    pub fn poll_broker(&self, cx: &mut Context<'_>) -> Poll<Option<Vec<BrokerOp>>> {
        self.with(|s| {
            let ops = s.hub.broker_mut().poll();
            if !ops.is_empty() {
                return Poll::Ready(Some(ops));
            }
            if s.hub.broker().is_stopped() {
                return Poll::Ready(None);
            }
            s.broker_waker = Some(cx.waker().clone());
            Poll::Pending
        })
    }

    // ----- time -----

    /// The node's next deadline (the broker session's).
    pub fn deadline(&self) -> Option<Duration> {
        lock(&self.shared).deadline()
    }

    /// Ready when the deadline differs from `seen`: the timer task sleeps
    /// until `seen` or until this fires, whichever comes first.
    #[must_use = "work a task must carry out, or a waker registration it relies on"]
    pub fn poll_deadline_change(
        &self,
        seen: Option<Duration>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Duration>> {
        let mut s = lock(&self.shared);
        let d = s.deadline();
        if d != seen {
            return Poll::Ready(d);
        }
        s.timer_seen = seen;
        s.timer_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Time passed. Call at [`Node::deadline`] (earlier is harmless).
    pub fn timeout(&self, now: Duration) {
        self.with(|s| {
            s.now = s.now.max(now);
            s.hub.broker_mut().timeout(now);
            if s.presence_due.is_some_and(|d| d <= now) {
                self.presence_refresh(s, now);
            }
            if s.announce_due.is_some_and(|d| d <= now) {
                self.announce(s, now);
            }
        });
    }

    fn is_stopped(&self) -> bool {
        self.inspect(|h| h.is_stopped())
    }

    /// Graceful shutdown: every connection is closed ("going away"), every
    /// subscription dropped, and the broker session ended once what is
    /// queued has gone out.
    pub fn shutdown(&self) {
        // Connections first: their presence entries are removed on the
        // way out (queued before the broker session ends), with this
        // node's announcement.
        let closed = self.with(|s| {
            self.withdraw(s);
            s.hub.close_all()
        });
        self.with(|s| s.hub.broker_mut().shutdown());
        for (_, peer) in closed {
            let (code, reason) = seed::shutdown_close(peer.protocol);
            let wakes = lock(&peer.outbox).close(code, reason.into(), false);
            wake_all(wakes);
        }
        // The broker task must see the stop even when nothing was queued.
        let w = lock(&self.shared).broker_waker.take();
        wake_all([w]);
    }

    // ----- metrics -----

    /// The numbers `/metrics` shows, copied out (the hub's lock is held only
    /// for the copy).
    pub fn snapshot(&self) -> Snapshot {
        let (connections, rooms, broker_up, subscriptions, buffered, pending_changes, counters) =
            self.inspect(|h| {
                let b = h.broker();
                (
                    h.connections(),
                    h.rooms(),
                    b.is_up(),
                    b.subscriptions(),
                    b.buffered(),
                    b.pending_changes(),
                    b.counters(),
                )
            });
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (presence_rooms, presence_capped_rooms) = {
            let book = lock(&self.presence);
            (book.rooms(), book.capped_rooms())
        };
        let io = self.admission.stats();
        Snapshot {
            connections,
            sockets: self.admission.sockets(),
            rooms,
            broker_up,
            subscriptions,
            publish_buffer_depth: buffered,
            pending_subscription_changes: pending_changes,
            broker: counters,
            connections_opened: load(&self.stats.connections_opened),
            frames_received: load(&self.stats.frames_received),
            broker_messages: load(&self.stats.broker_messages),
            deliveries: load(&self.stats.deliveries),
            slow_consumer_closes: load(&self.stats.slow_consumer_closes),
            broker_payloads_dropped: load(&self.stats.broker_payloads_dropped),
            broker_payloads_too_large: load(&self.stats.broker_payloads_too_large),
            rate_limited: load(&self.stats.rate_limited),
            no_pong_closes: load(&self.stats.no_pong_closes),
            origin_refused: load(&self.stats.origin_refused),
            auth_refused: load(&self.stats.auth_refused),
            recovered: load(&self.stats.recovered),
            not_recovered: load(&self.stats.not_recovered),
            insufficient_state: load(&self.stats.insufficient_state),
            heals: load(&self.stats.heals),
            history_gaps: load(&self.stats.history_gaps),
            presence_rooms,
            presence_capped_rooms,
            presence_capped: load(&self.stats.presence_capped),
            presence_refreshes: load(&self.stats.presence_refreshes),
            bad_frames: FrameError::LABELS
                .iter()
                .zip(&self.stats.bad_frames)
                .map(|(l, c)| (*l, load(c)))
                .collect(),
            cf_bad_commands: CF_LABELS
                .iter()
                .zip(&self.stats.cf_bad_commands)
                .map(|(l, c)| (*l, load(c)))
                .collect(),
            handshake_failures: io.handshake_failures,
            rejected_connections: io.rejected_connections,
            http_requests: io.http_requests,
            accept_errors: io.accept_errors,
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

#[cfg(test)]
mod tests;
