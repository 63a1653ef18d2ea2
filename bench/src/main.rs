//! `roomcast-load`: a load generator for roomcast and the seed Node server.
//!
//! It speaks a client protocol over real WebSockets to one or more nodes
//! (`--nodes ws://127.0.0.1:A,ws://127.0.0.1:B`): subscribers join rooms,
//! publishers send messages, and every subscriber checks what it receives.
//! `--protocol seed` (the default) sends `SUBSCRIBE` and `sendMessage`
//! frames and receives each message as a text frame of its own;
//! `--protocol centrifugo` speaks Centrifugo's client protocol at
//! `/connection/websocket` (connect, subscribe, publish with the message as
//! the JSON string `data`, pushes read one or several per frame, pings
//! answered, error replies counted: see `centrifugo.rs`). Each message is a JSON string `P:R:K:T:xxx…` (publisher, room,
//! publisher's sequence number, send time in ns since this process started,
//! padding to `--size` bytes). Before publishing, one probe per room is
//! repeated until every subscriber has received it, so every node's
//! subscriptions are in place. The run ends when every expected delivery has
//! arrived, when nothing has moved for `--settle`, or at `--timeout`.
//!
//! Output: one JSON line on stdout, a human summary on stderr.

mod centrifugo;
mod stats;
mod sys;

use std::fmt::Write as _;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// C subscribers over R rooms, P publishers, M messages (default 1000/10/4/20000).
    Fanout,
    /// 2,000 subscribers in 1 room (4 publishers, 2,000 messages).
    OneRoom,
    /// 10,000 subscribers over 1,000 rooms (4 publishers, 10,000 messages).
    ManyRooms,
    /// C connections held in R rooms for --hold, no traffic but the probes (default 10000/100).
    Idle,
}

/// The client protocol every connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Protocol {
    /// The seed's JSON frames (`SUBSCRIBE`, `sendMessage`), on the node URL's path.
    Seed,
    /// Centrifugo's client protocol, JSON, at /connection/websocket.
    Centrifugo,
}

/// Load generator for roomcast and the seed server: fan-out throughput,
/// delivery checks, latency, connect rate and server memory.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
struct Args {
    /// What to run; its defaults apply to every count not given.
    #[arg(long, value_enum, default_value = "fanout")]
    scenario: Scenario,

    /// Node URLs, comma-separated (ws://HOST:PORT[/path]); connections go
    /// round-robin. With --protocol centrifugo a URL without a path gets
    /// /connection/websocket.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,

    /// The client protocol: seed (SUBSCRIBE / sendMessage frames) or
    /// centrifugo (connect, subscribe and publish commands; pushes).
    #[arg(long, value_enum, default_value = "seed")]
    protocol: Protocol,

    /// Subscriber connections (C), each in one room.
    #[arg(short = 'c', long)]
    subscribers: Option<usize>,

    /// Rooms (R); subscriber i joins room i mod R.
    #[arg(short = 'r', long)]
    rooms: Option<usize>,

    /// Publisher connections (P), separate from subscribers.
    #[arg(short = 'p', long)]
    publishers: Option<usize>,

    /// Messages in total (M), split evenly over the publishers; publisher p
    /// sends its k-th message to room (p + k) mod R.
    #[arg(short = 'm', long)]
    messages: Option<u64>,

    /// Fixed total send rate in messages/s (e.g. 500 or 500/s); without it,
    /// as fast as the --window allows.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,

    /// Most messages in flight (sent but not yet received by every member of
    /// their room) when no --rate is given.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    window: u32,

    /// Bound deliveries in flight instead of messages (replaces --window): a
    /// message to a room of n members holds n of these N slots (all N when
    /// n > N) until every member has received it. With equal rooms of n
    /// members that is N / n messages in flight.
    #[arg(long, conflicts_with = "rate", value_parser = clap::value_parser!(u32).range(1..=1_000_000_000))]
    window_deliveries: Option<u32>,

    /// Bytes of each message string (the padding makes it this long).
    #[arg(long, default_value_t = 64)]
    size: usize,

    /// Idle scenario: how long to hold the connections (e.g. 10, 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    hold: Duration,

    /// Upper bound for the whole run.
    #[arg(long, default_value = "120s", value_parser = parse_secs)]
    timeout: Duration,

    /// Stop waiting when no message was sent or delivered for this long.
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    settle: Duration,

    /// Server PIDs, comma-separated, in --nodes order: their VmRSS/VmHWM are
    /// read before connecting, once connected, and at the end.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,

    /// Redis's PID: its CPU time during the run is reported per message.
    #[arg(long)]
    redis_pid: Option<u32>,

    /// Connection attempts under way at once.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connect_concurrency: u32,

    /// Loopback source addresses used round-robin (127.0.0.1, .2, …);
    /// default: one per 25,000 connections.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=250))]
    sources: Option<u32>,

    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,

    /// Room names are this prefix plus the room number ([A-Za-z0-9_.-]).
    #[arg(long, default_value = "room")]
    room_prefix: String,

    /// Write this file once every subscription is in place (to coordinate
    /// several load processes).
    #[arg(long)]
    ready_file: Option<PathBuf>,

    /// A free-form label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,

    /// No human summary on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 10, 10s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let n = s.trim().trim_end_matches("/s");
    match n.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!(
            "invalid rate {s:?}: expected messages per second, e.g. 500"
        )),
    }
}

/// The counts of one run, scenario defaults filled in.
#[derive(Debug, Clone, Copy, Serialize)]
struct Plan {
    subscribers: usize,
    rooms: usize,
    publishers: usize,
    messages: u64,
}

impl Plan {
    fn new(a: &Args) -> Plan {
        let (c, r, p, m) = match a.scenario {
            Scenario::Fanout => (1000, 10, 4, 20_000),
            Scenario::OneRoom => (2000, 1, 4, 2000),
            Scenario::ManyRooms => (10_000, 1000, 4, 10_000),
            Scenario::Idle => (10_000, 100, 1, 0),
        };
        let mut plan = Plan {
            subscribers: a.subscribers.unwrap_or(c),
            rooms: a.rooms.unwrap_or(r).max(1),
            publishers: a.publishers.unwrap_or(p),
            messages: a.messages.unwrap_or(m),
        };
        if a.scenario == Scenario::Idle {
            plan.messages = 0;
        }
        plan
    }

    /// Messages publisher `p` sends.
    fn count(&self, p: usize) -> u64 {
        let n = self.publishers as u64;
        self.messages / n + u64::from((p as u64) < self.messages % n)
    }
}

/// One node under test.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    addr: SocketAddr,
}

fn parse_node(url: &str, protocol: Protocol) -> Result<Target, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("node URL {url:?} must start with ws://"))?;
    let hostport = rest.split('/').next().unwrap_or("");
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("node URL {url:?}: {e}"))?
        .min_by_key(|a| !a.is_ipv4())
        .ok_or_else(|| format!("node URL {url:?}: no address"))?;
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let url = match (protocol, path) {
        (Protocol::Centrifugo, "" | "/") => format!("ws://{hostport}{}", centrifugo::PATH),
        (_, "") => format!("{url}/"),
        _ => url.to_string(),
    };
    Ok(Target { url, addr })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Connecting,
    Probing,
    Running,
    Done,
}

/// State shared by every task.
struct Shared {
    plan: Plan,
    args: Args,
    targets: Vec<Target>,
    sources: usize,
    start: Instant,
    deadline: tokio::time::Instant,
    rooms: Vec<String>,
    ws_config: WebSocketConfig,
    phase: watch::Sender<Phase>,
    connect_sem: Semaphore,
    /// Connection attempts finished, successful or not.
    attempts: AtomicUsize,
    connected_subs: AtomicUsize,
    connected_pubs: AtomicUsize,
    pub_ok: Vec<AtomicBool>,
    connect_failures: AtomicUsize,
    first_error: Mutex<Option<String>>,
    /// Centrifugo: error replies, and pushes other than publications.
    protocol_errors: AtomicUsize,
    first_protocol_error: Mutex<Option<String>>,
    /// Subscriber connections that ended before the run was over.
    disconnects: AtomicUsize,
    publisher_errors: AtomicUsize,
    room_size: Vec<AtomicU32>,
    room_probed: Vec<AtomicU32>,
    probed: AtomicUsize,
    /// Which connected publisher probes room r: `probers[r % len]`.
    probers: OnceLock<Vec<usize>>,
    run_start: OnceLock<tokio::time::Instant>,
    /// Per message (publisher offset + k): members still to receive it.
    remaining: Vec<AtomicU32>,
    offsets: Vec<usize>,
    window: Semaphore,
    sent: AtomicU64,
    expected: AtomicU64,
    completed: AtomicU64,
    first_send_ns: AtomicU64,
    last_send_ns: AtomicU64,
    pubs_done: AtomicUsize,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Window slots a message to room `r` holds while in flight: 1, or with
    /// --window-deliveries the room's members (at least 1, at most the window).
    fn slots(&self, r: usize) -> u32 {
        slots(
            self.room_size[r].load(Ordering::Relaxed),
            self.args.window_deliveries,
        )
    }

    fn fail(&self, what: String) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(what);
        }
    }

    fn protocol_error(&self, what: String) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self
            .first_protocol_error
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if first.is_none() {
            *first = Some(what);
        }
    }

    fn cf(&self) -> bool {
        self.args.protocol == Protocol::Centrifugo
    }

    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    async fn wait_phase(&self, at_least: Phase) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= at_least).await;
    }

    /// Opens WebSocket connection number `i` to node `node`.
    async fn open(&self, i: usize, node: usize) -> Result<Ws, String> {
        let t = &self.targets[node];
        let attempt = async {
            let tcp = sys::connect(t.addr, sys::source_for(i, self.sources))
                .await
                .map_err(|e| format!("connect {}: {e}", t.addr))?;
            let handshake = match self.args.protocol {
                Protocol::Seed => {
                    async_tungstenite::tokio::client_async_with_config(
                        t.url.as_str(),
                        tcp,
                        Some(self.ws_config),
                    )
                    .await
                }
                Protocol::Centrifugo => {
                    // Offer the JSON subprotocol, as the SDKs do.
                    let mut req = t
                        .url
                        .as_str()
                        .into_client_request()
                        .map_err(|e| format!("handshake {}: {e}", t.url))?;
                    req.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        HeaderValue::from_static(centrifugo::SUBPROTOCOL),
                    );
                    async_tungstenite::tokio::client_async_with_config(
                        req,
                        tcp,
                        Some(self.ws_config),
                    )
                    .await
                }
            };
            let (ws, _) = handshake.map_err(|e| format!("handshake {}: {e}", t.url))?;
            Ok(ws)
        };
        match tokio::time::timeout_at(self.deadline, attempt).await {
            Ok(r) => r,
            Err(_) => Err("connect: --timeout reached".into()),
        }
    }
}

/// Window slots of a message to a room of `members`: see [`Shared::slots`].
fn slots(members: u32, window_deliveries: Option<u32>) -> u32 {
    match window_deliveries {
        None => 1,
        Some(n) => members.clamp(1, n),
    }
}

fn subscribe_frame(room: &str) -> String {
    format!(r#"{{"type":"SUBSCRIBE","room":"{room}"}}"#)
}

fn send_frame(room: &str, message: &str) -> String {
    format!(r#"{{"type":"sendMessage","roomId":"{room}","message":"{message}"}}"#)
}

/// The frame that sends `message` to `room`: `sendMessage`, or Centrifugo's
/// publish command number `id` with the message as the JSON string `data`.
fn message_frame(protocol: Protocol, id: u32, room: &str, message: &str) -> String {
    match protocol {
        Protocol::Seed => send_frame(room, message),
        Protocol::Centrifugo => centrifugo::publish_command(id, room, message),
    }
}

/// Sends what joins room `room`: `SUBSCRIBE`, or Centrifugo's connect and
/// subscribe commands (pipelined: a server runs a connection's commands in
/// order, and their replies are checked as they arrive).
async fn join(sh: &Shared, ws: &mut Ws, room: usize) -> Result<(), String> {
    let sent = match sh.args.protocol {
        Protocol::Seed => {
            ws.send(Message::text(subscribe_frame(&sh.rooms[room])))
                .await
        }
        Protocol::Centrifugo => {
            let subscribe = centrifugo::subscribe_command(2, &sh.rooms[room]);
            match ws.feed(Message::text(centrifugo::connect_command(1))).await {
                Ok(()) => ws.send(Message::text(subscribe)).await,
                Err(e) => Err(e),
            }
        }
    };
    sent.map_err(|e| format!("subscribe: {e}"))
}

type Tx = async_tungstenite::WebSocketSender<TokioAdapter<TcpStream>>;

/// Awaits `fut`; meanwhile, with the Centrifugo protocol (`pings` given),
/// answers every server ping the connection's reader reports. `Err`: a pong
/// could not be sent.
async fn serving_pings<F: Future>(
    tx: &mut Tx,
    pings: Option<&Notify>,
    fut: F,
) -> Result<F::Output, ()> {
    let Some(pings) = pings else {
        return Ok(fut.await);
    };
    tokio::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            _ = pings.notified() => {
                tx.send(Message::text(centrifugo::PONG)).await.map_err(|_| ())?;
            }
        }
    }
}

/// Reads what a Centrifugo server sends a publisher (replies, pings) until
/// the connection ends: error replies are counted, pings handed to the
/// publisher to answer.
async fn publisher_replies(
    sh: Arc<Shared>,
    p: usize,
    mut rx: async_tungstenite::WebSocketReceiver<TokioAdapter<TcpStream>>,
    pings: Arc<Notify>,
) {
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Text(t) = msg else { continue };
        for line in centrifugo::lines(t.as_str()) {
            match centrifugo::parse_line(line) {
                Ok(centrifugo::Line::Ping) => pings.notify_one(),
                Ok(centrifugo::Line::Reply { .. }) => {}
                Ok(centrifugo::Line::Error { id, code, message }) => sh.protocol_error(format!(
                    "publisher {p}: error reply to command {id}: {code} {message}"
                )),
                Ok(centrifugo::Line::OtherPush { channel, kind }) => {
                    sh.protocol_error(format!("publisher {p}: {kind} push on {channel:?}"))
                }
                // Publishers subscribe to nothing.
                Ok(centrifugo::Line::Publication { .. }) => {
                    stats::with(|rec| stats::bump(&rec.misrouted, 1))
                }
                Err(_) => stats::with(|rec| stats::bump(&rec.malformed, 1)),
            }
        }
    }
}

/// The message string: `P:R:K:T:` padded with `x` to `size` bytes.
fn payload(p: usize, r: usize, k: u64, ts: u64, size: usize) -> String {
    let mut s = String::with_capacity(size.max(48));
    let _ = write!(s, "{p}:{r}:{k}:{ts}:");
    while s.len() < size {
        s.push('x');
    }
    s
}

/// Parses `P:R:K:T:…`.
fn parse_payload(s: &str) -> Option<(usize, usize, u64, u64)> {
    let mut it = s.splitn(5, ':');
    let p = it.next()?.parse().ok()?;
    let r = it.next()?.parse().ok()?;
    let k = it.next()?.parse().ok()?;
    let t = it.next()?.parse().ok()?;
    it.next()?;
    Some((p, r, k, t))
}

/// What one subscriber has seen from one publisher.
#[derive(Default)]
struct Track {
    /// Highest sequence number seen, plus one (0: none yet).
    next: u64,
    /// Bit j: the publisher's message number j to this room has arrived.
    seen: Vec<u64>,
}

struct Subscriber {
    room: usize,
    probed: bool,
    tracks: Vec<Track>,
}

impl Subscriber {
    /// Reads a Centrifugo frame (one or more lines); true when it held a
    /// ping to answer.
    fn on_cf_frame(&mut self, sh: &Shared, frame: &str) -> bool {
        let mut ping = false;
        for line in centrifugo::lines(frame) {
            match centrifugo::parse_line(line) {
                Ok(centrifugo::Line::Publication { channel, data }) => {
                    if *channel != *sh.rooms[self.room] {
                        stats::with(|rec| stats::bump(&rec.misrouted, 1));
                        continue;
                    }
                    match data {
                        Some(d) => self.on_text(sh, &d),
                        None => stats::with(|rec| stats::bump(&rec.malformed, 1)),
                    }
                }
                Ok(centrifugo::Line::Ping) => ping = true,
                Ok(centrifugo::Line::Reply { .. }) => {}
                Ok(centrifugo::Line::Error { id, code, message }) => sh.protocol_error(format!(
                    "subscriber of {}: error reply to command {id}: {code} {message}",
                    sh.rooms[self.room]
                )),
                Ok(centrifugo::Line::OtherPush { channel, kind }) => sh.protocol_error(format!(
                    "subscriber of {}: {kind} push on {channel:?}",
                    sh.rooms[self.room]
                )),
                Err(_) => stats::with(|rec| stats::bump(&rec.malformed, 1)),
            }
        }
        ping
    }

    fn on_text(&mut self, sh: &Shared, s: &str) {
        if let Some(rest) = s.strip_prefix("probe:") {
            stats::with(|r| stats::bump(&r.probes, 1));
            if !self.probed && rest.parse::<usize>().ok() == Some(self.room) {
                self.probed = true;
                sh.room_probed[self.room].fetch_add(1, Ordering::Relaxed);
                sh.probed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let now = sh.now_ns();
        let Some((p, r, k, ts)) = parse_payload(s) else {
            stats::with(|rec| stats::bump(&rec.malformed, 1));
            return;
        };
        if p >= self.tracks.len() || k >= sh.plan.count(p) {
            stats::with(|rec| stats::bump(&rec.malformed, 1));
            return;
        }
        if r != self.room {
            stats::with(|rec| stats::bump(&rec.misrouted, 1));
            return;
        }
        let track = &mut self.tracks[p];
        // Publisher p's messages to this room are k = r - p (mod R) + j*R.
        let j = (k / sh.plan.rooms as u64) as usize;
        let (word, bit) = (j / 64, 1u64 << (j % 64));
        if track.seen.len() <= word {
            track.seen.resize(word + 1, 0);
        }
        if track.seen[word] & bit != 0 {
            stats::with(|rec| stats::bump(&rec.duplicates, 1));
            return;
        }
        track.seen[word] |= bit;
        let late = k < track.next;
        track.next = track.next.max(k + 1);
        stats::with(|rec| {
            if late {
                rec.out_of_order(p);
            }
            rec.delivery(now.saturating_sub(ts), now);
        });
        let slot = &sh.remaining[sh.offsets[p] + k as usize];
        if slot.fetch_sub(1, Ordering::AcqRel) == 1 {
            sh.completed.fetch_add(1, Ordering::Relaxed);
            sh.window.add_permits(sh.slots(r) as usize);
        }
    }
}

async fn subscriber(sh: Arc<Shared>, i: usize) {
    let room = i % sh.plan.rooms;
    let node = i % sh.targets.len();
    let mut ws = {
        let _permit = sh.connect_sem.acquire().await;
        let ws = match sh.open(i, node).await {
            Ok(mut ws) => match join(&sh, &mut ws, room).await {
                Ok(()) => Some(ws),
                Err(e) => {
                    sh.fail(e);
                    None
                }
            },
            Err(e) => {
                sh.fail(e);
                None
            }
        };
        if ws.is_some() {
            sh.room_size[room].fetch_add(1, Ordering::Relaxed);
            sh.connected_subs.fetch_add(1, Ordering::Relaxed);
        }
        sh.attempts.fetch_add(1, Ordering::Release);
        match ws {
            Some(ws) => ws,
            None => return,
        }
    };
    let mut me = Subscriber {
        room,
        probed: false,
        tracks: (0..sh.plan.publishers).map(|_| Track::default()).collect(),
    };
    match sh.args.protocol {
        Protocol::Seed => {
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(Message::Text(t)) => me.on_text(&sh, t.as_str()),
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        Protocol::Centrifugo => {
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(Message::Text(t)) => {
                        if me.on_cf_frame(&sh, t.as_str())
                            && ws.send(Message::text(centrifugo::PONG)).await.is_err()
                        {
                            break;
                        }
                    }
                    Ok(Message::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }
    if sh.phase() < Phase::Done {
        sh.disconnects.fetch_add(1, Ordering::Relaxed);
    }
    // Keep the task (and its figures) until the end of the run.
    sh.wait_phase(Phase::Done).await;
}

async fn publisher(sh: Arc<Shared>, p: usize) {
    let i = sh.plan.subscribers + p;
    let node = p % sh.targets.len();
    let ws = {
        let _permit = sh.connect_sem.acquire().await;
        let opened = match sh.open(i, node).await {
            Ok(mut ws) if sh.cf() => ws
                .send(Message::text(centrifugo::connect_command(1)))
                .await
                .map(|()| ws)
                .map_err(|e| format!("connect command: {e}")),
            r => r,
        };
        let ws = match opened {
            Ok(ws) => {
                sh.connected_pubs.fetch_add(1, Ordering::Relaxed);
                sh.pub_ok[p].store(true, Ordering::Relaxed);
                Some(ws)
            }
            Err(e) => {
                sh.fail(e);
                None
            }
        };
        sh.attempts.fetch_add(1, Ordering::Release);
        ws
    };
    let Some(ws) = ws else {
        sh.pubs_done.fetch_add(1, Ordering::Release);
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let protocol = sh.args.protocol;
    // Centrifugo: the reader reports server pings here; the publisher answers.
    let pings = sh.cf().then(|| Arc::new(Notify::new()));
    match &pings {
        // Publishers join no room; drain whatever comes (a close).
        None => tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} }),
        Some(pings) => tokio::spawn(publisher_replies(sh.clone(), p, rx, pings.clone())),
    };
    let pings = pings.as_deref();
    // Centrifugo command ids (1 was connect): 2, 3, … u32::MAX, 1, 2, …
    // (the seed protocol has none).
    let commands = AtomicU64::new(1);
    let cf = sh.cf();
    let command_id = || {
        if !cf {
            return 0;
        }
        (commands.fetch_add(1, Ordering::Relaxed) % u64::from(u32::MAX)) as u32 + 1
    };

    sh.wait_phase(Phase::Probing).await;
    let probers = sh.probers.get().cloned().unwrap_or_default();
    let mine: Vec<usize> = (0..sh.plan.rooms)
        .filter(|r| probers.get(r % probers.len().max(1)) == Some(&p))
        .collect();
    let mut phase = sh.phase.subscribe();
    loop {
        if *phase.borrow_and_update() >= Phase::Running {
            break;
        }
        let mut any = false;
        for &r in &mine {
            let size = sh.room_size[r].load(Ordering::Relaxed);
            if sh.room_probed[r].load(Ordering::Relaxed) < size {
                let frame =
                    message_frame(protocol, command_id(), &sh.rooms[r], &format!("probe:{r}"));
                if tx.feed(Message::text(frame)).await.is_err() {
                    sh.publisher_errors.fetch_add(1, Ordering::Relaxed);
                    sh.pubs_done.fetch_add(1, Ordering::Release);
                    return;
                }
                any = true;
            }
        }
        if any && tx.flush().await.is_err() {
            sh.publisher_errors.fetch_add(1, Ordering::Relaxed);
            sh.pubs_done.fetch_add(1, Ordering::Release);
            return;
        }
        let wait = async {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = phase.changed() => {}
            }
        };
        if serving_pings(&mut tx, pings, wait).await.is_err() {
            sh.publisher_errors.fetch_add(1, Ordering::Relaxed);
            sh.pubs_done.fetch_add(1, Ordering::Release);
            return;
        }
    }
    if sh.phase() >= Phase::Done {
        sh.pubs_done.fetch_add(1, Ordering::Release);
        return;
    }

    let n = sh.plan.count(p);
    let rooms = sh.plan.rooms;
    let publishers = sh.plan.publishers as f64;
    let t0 = *sh.run_start.get().expect("run start set before Running");
    let size = sh.args.size;
    // Prepares message k (its expectations first) and returns its frame.
    let prepare = |k: u64| -> String {
        let r = (p + k as usize) % rooms;
        let members = sh.room_size[r].load(Ordering::Relaxed);
        sh.expected.fetch_add(u64::from(members), Ordering::Relaxed);
        sh.remaining[sh.offsets[p] + k as usize].store(members, Ordering::Release);
        if members == 0 {
            sh.completed.fetch_add(1, Ordering::Relaxed);
            sh.window.add_permits(sh.slots(r) as usize);
        }
        let ts = sh.now_ns();
        sh.first_send_ns.fetch_min(ts, Ordering::Relaxed);
        sh.last_send_ns.fetch_max(ts, Ordering::Relaxed);
        sh.sent.fetch_add(1, Ordering::Relaxed);
        message_frame(
            protocol,
            command_id(),
            &sh.rooms[r],
            &payload(p, r, k, ts, size),
        )
    };
    let mut k = 0u64;
    let ok = 'send: {
        while k < n {
            if sh.phase() >= Phase::Done {
                break 'send true;
            }
            match sh.args.rate {
                Some(rate) => {
                    let at =
                        t0 + Duration::from_secs_f64((k as f64 * publishers + p as f64) / rate);
                    if at > sh.deadline {
                        break 'send true;
                    }
                    if serving_pings(&mut tx, pings, tokio::time::sleep_until(at))
                        .await
                        .is_err()
                    {
                        break 'send false;
                    }
                    let frame = prepare(k);
                    k += 1;
                    if tx.send(Message::text(frame)).await.is_err() {
                        break 'send false;
                    }
                }
                None => {
                    let slots = |k: u64| sh.slots((p + k as usize) % rooms);
                    let wait = async {
                        tokio::select! {
                            p = sh.window.acquire_many(slots(k)) => p.ok(),
                            _ = tokio::time::sleep_until(sh.deadline) => None,
                        }
                    };
                    let Ok(permit) = serving_pings(&mut tx, pings, wait).await else {
                        break 'send false;
                    };
                    let Some(permit) = permit else {
                        break 'send true;
                    };
                    permit.forget();
                    let mut batch = 0;
                    loop {
                        let frame = prepare(k);
                        k += 1;
                        batch += 1;
                        if tx.feed(Message::text(frame)).await.is_err() {
                            break 'send false;
                        }
                        if k >= n || batch >= 64 {
                            break;
                        }
                        match sh.window.try_acquire_many(slots(k)) {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        }
                    }
                    if tx.flush().await.is_err() {
                        break 'send false;
                    }
                }
            }
        }
        true
    };
    if !ok {
        sh.publisher_errors.fetch_add(1, Ordering::Relaxed);
    }
    sh.pubs_done.fetch_add(1, Ordering::Release);
    // Hold the connection open until the end: closing it early could make
    // a server drop what it has not yet published.
    if serving_pings(&mut tx, pings, sh.wait_phase(Phase::Done))
        .await
        .is_err()
    {
        sh.wait_phase(Phase::Done).await;
    }
    drop(tx);
}

/// CPU seconds used so far by the nodes (--pids order), Redis, and us.
struct Cpu {
    nodes: Vec<Option<f64>>,
    redis: Option<f64>,
    load: Option<f64>,
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

/// Memory of one node at the three points of a run.
#[derive(Debug, Clone, Serialize)]
struct NodeMem {
    pid: u32,
    node: String,
    rss_before_kib: u64,
    rss_connected_kib: u64,
    rss_end_kib: u64,
    peak_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    label: String,
    scenario: Scenario,
    protocol: Protocol,
    nodes: usize,
    subscribers: usize,
    rooms: usize,
    publishers: usize,
    messages: u64,
    size: usize,
    rate: Option<f64>,
    /// Messages in flight at most (without --rate or --window-deliveries).
    window: Option<u32>,
    /// Deliveries in flight at most (--window-deliveries).
    window_deliveries: Option<u32>,
    sources: usize,
    connected_subscribers: usize,
    connected_publishers: usize,
    connect_failures: usize,
    first_error: Option<String>,
    /// Seconds from the first connection attempt to the last connection open and subscribed.
    connect_s: f64,
    /// Connections per second over connect_s.
    connect_rate: f64,
    /// Seconds from then until every subscriber had its room's probe.
    warmup_s: f64,
    subscribed: usize,
    sent: u64,
    expected: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    out_of_order: u64,
    out_of_order_by_publisher: Vec<u64>,
    misrouted: u64,
    malformed: u64,
    disconnects: usize,
    publisher_errors: usize,
    /// Centrifugo: error replies, and pushes other than publications.
    protocol_errors: usize,
    first_protocol_error: Option<String>,
    /// Seconds from the first message sent to the last delivery.
    run_s: f64,
    deliveries_per_s: f64,
    messages_per_s: f64,
    /// Send → receipt, in microseconds.
    latency_us: Latency,
    held_s: f64,
    node_mem: Vec<NodeMem>,
    /// (Σ RSS once connected − Σ RSS before) / connections, in bytes.
    mem_per_conn_bytes: Option<f64>,
    /// Per node (--pids order): CPU seconds (user + system) used during the
    /// run, from the first send to the end of the run.
    node_cpu_run_s: Vec<Option<f64>>,
    /// Σ node_cpu_run_s.
    node_cpu_s: Option<f64>,
    /// node_cpu_s in µs per delivery.
    node_cpu_us_per_delivery: Option<f64>,
    /// Redis's CPU seconds during the run (--redis-pid).
    redis_cpu_s: Option<f64>,
    /// redis_cpu_s in µs per message sent.
    redis_cpu_us_per_message: Option<f64>,
    /// This load generator's own CPU seconds during the run.
    load_cpu_s: Option<f64>,
    load_cpu_us_per_delivery: Option<f64>,
    /// Resolution of the CPU figures (one clock tick) in seconds.
    cpu_tick_s: f64,
    timed_out: bool,
    stalled: bool,
    /// Nothing lost, duplicated, misrouted or refused, and within the timeout.
    ok: bool,
    total_s: f64,
}

impl Shared {
    /// The state of a run about to start.
    fn new(args: Args, targets: Vec<Target>, plan: Plan) -> Shared {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + args.timeout;
        let total_conns = plan.subscribers + plan.publishers;
        let sources = args
            .sources
            .map(|s| s as usize)
            .unwrap_or(total_conns.div_ceil(25_000).max(1));
        let mut offsets = Vec::with_capacity(plan.publishers);
        let mut off = 0usize;
        for p in 0..plan.publishers {
            offsets.push(off);
            off += plan.count(p) as usize;
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(16 * 1024)
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20));
        let (phase, _) = watch::channel(Phase::Connecting);
        Shared {
            plan,
            targets,
            sources,
            start,
            deadline,
            rooms: (0..plan.rooms)
                .map(|r| format!("{}{r}", args.room_prefix))
                .collect(),
            ws_config,
            phase,
            connect_sem: Semaphore::new(args.connect_concurrency as usize),
            attempts: AtomicUsize::new(0),
            connected_subs: AtomicUsize::new(0),
            connected_pubs: AtomicUsize::new(0),
            pub_ok: (0..plan.publishers)
                .map(|_| AtomicBool::new(false))
                .collect(),
            connect_failures: AtomicUsize::new(0),
            first_error: Mutex::new(None),
            protocol_errors: AtomicUsize::new(0),
            first_protocol_error: Mutex::new(None),
            disconnects: AtomicUsize::new(0),
            publisher_errors: AtomicUsize::new(0),
            room_size: (0..plan.rooms).map(|_| AtomicU32::new(0)).collect(),
            room_probed: (0..plan.rooms).map(|_| AtomicU32::new(0)).collect(),
            probed: AtomicUsize::new(0),
            probers: OnceLock::new(),
            run_start: OnceLock::new(),
            remaining: (0..off).map(|_| AtomicU32::new(0)).collect(),
            offsets,
            window: Semaphore::new(args.window_deliveries.unwrap_or(args.window) as usize),
            sent: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            first_send_ns: AtomicU64::new(u64::MAX),
            last_send_ns: AtomicU64::new(0),
            pubs_done: AtomicUsize::new(0),
            args,
        }
    }
}

async fn run(args: Args, targets: Vec<Target>, plan: Plan) -> Report {
    let sh = Arc::new(Shared::new(args, targets, plan));
    let (start, deadline, sources) = (sh.start, sh.deadline, sh.sources);
    let total_conns = plan.subscribers + plan.publishers;
    let tick = Duration::from_millis(10);
    let mem_before: Vec<sys::Mem> = sh
        .args
        .pids
        .iter()
        .map(|&pid| sys::read_mem(pid).unwrap_or_default())
        .collect();

    // Connect: subscribers (each sends its SUBSCRIBE), then publishers.
    let connect_start = Instant::now();
    let mut tasks = Vec::with_capacity(total_conns);
    for i in 0..plan.subscribers {
        tasks.push(tokio::spawn(subscriber(sh.clone(), i)));
    }
    for p in 0..plan.publishers {
        tasks.push(tokio::spawn(publisher(sh.clone(), p)));
    }
    while sh.attempts.load(Ordering::Acquire) < total_conns
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(tick).await;
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    let connected = sh.connected_subs.load(Ordering::Relaxed);
    let connected_pubs = sh.connected_pubs.load(Ordering::Relaxed);

    // Warm up: probe every room until each of its members has received a probe.
    let warm_start = Instant::now();
    // Only connected publishers probe.
    let _ = sh.probers.set(
        (0..plan.publishers)
            .filter(|&p| sh.pub_ok[p].load(Ordering::Relaxed))
            .collect(),
    );
    let _ = sh.phase.send(Phase::Probing);
    if connected_pubs > 0 {
        while sh.probed.load(Ordering::Relaxed) < sh.connected_subs.load(Ordering::Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(tick).await;
        }
    }
    let warmup_s = warm_start.elapsed().as_secs_f64();
    let subscribed = sh.probed.load(Ordering::Relaxed);
    let mem_connected: Vec<sys::Mem> = sh
        .args
        .pids
        .iter()
        .map(|&pid| sys::read_mem(pid).unwrap_or_default())
        .collect();
    if let Some(path) = &sh.args.ready_file {
        let _ = std::fs::write(path, format!("{subscribed}\n"));
    }

    // Run. CPU times are read around it only: connecting and warm-up excluded.
    let read_cpu = |sh: &Shared| Cpu {
        nodes: sh
            .args
            .pids
            .iter()
            .map(|&pid| sys::read_cpu_s(pid))
            .collect(),
        redis: sh.args.redis_pid.and_then(sys::read_cpu_s),
        load: sys::read_cpu_s(0),
    };
    let cpu_before = read_cpu(&sh);
    let run_start = tokio::time::Instant::now();
    let _ = sh.run_start.set(run_start);
    let _ = sh.phase.send(Phase::Running);
    let mut stalled = false;
    let mut held_s = 0.0;
    if sh.args.scenario == Scenario::Idle {
        let until = (run_start + sh.args.hold).min(deadline);
        tokio::time::sleep_until(until).await;
        held_s = run_start.elapsed().as_secs_f64();
    } else {
        let mut last = (u64::MAX, u64::MAX);
        let mut last_change = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let sent = sh.sent.load(Ordering::Relaxed);
            let delivered = stats::delivered();
            let done = sh.pubs_done.load(Ordering::Acquire) >= plan.publishers;
            if done && delivered >= sh.expected.load(Ordering::Relaxed) {
                break;
            }
            if (sent, delivered) != last {
                last = (sent, delivered);
                last_change = now;
            } else if now - last_change >= sh.args.settle {
                stalled = true;
                break;
            }
            tokio::time::sleep(tick).await;
        }
    }
    let timed_out = tokio::time::Instant::now() >= deadline;
    let cpu_after = read_cpu(&sh);
    let mem_end: Vec<sys::Mem> = sh
        .args
        .pids
        .iter()
        .map(|&pid| sys::read_mem(pid).unwrap_or_default())
        .collect();
    let _ = sh.phase.send(Phase::Done);

    let t = stats::totals();
    let first_send = sh.first_send_ns.load(Ordering::Relaxed);
    let run_s = if first_send == u64::MAX || t.last_ns <= first_send {
        0.0
    } else {
        (t.last_ns - first_send) as f64 / 1e9
    };
    let sent = sh.sent.load(Ordering::Relaxed);
    let expected = sh.expected.load(Ordering::Relaxed);
    let send_s = if first_send == u64::MAX {
        0.0
    } else {
        (sh.last_send_ns.load(Ordering::Relaxed) - first_send) as f64 / 1e9
    };
    let per_s = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
    let us = |ns: u64| (ns as f64 / 1e3 * 10.0).round() / 10.0;
    let node_mem: Vec<NodeMem> = sh
        .args
        .pids
        .iter()
        .enumerate()
        .map(|(i, &pid)| NodeMem {
            pid,
            node: sh.targets.get(i).map(|t| t.url.clone()).unwrap_or_default(),
            rss_before_kib: mem_before[i].rss_kib,
            rss_connected_kib: mem_connected[i].rss_kib,
            rss_end_kib: mem_end[i].rss_kib,
            peak_kib: mem_end[i].hwm_kib,
        })
        .collect();
    let conns = connected + connected_pubs;
    let mem_per_conn_bytes = (!node_mem.is_empty() && conns > 0).then(|| {
        let before: u64 = node_mem.iter().map(|m| m.rss_before_kib).sum();
        let after: u64 = node_mem.iter().map(|m| m.rss_connected_kib).sum();
        ((after as f64 - before as f64) * 1024.0 / conns as f64).round()
    });
    let spent = |a: Option<f64>, b: Option<f64>| Some(round3(b? - a?));
    let node_cpu_run_s: Vec<Option<f64>> = cpu_before
        .nodes
        .iter()
        .zip(&cpu_after.nodes)
        .map(|(&a, &b)| spent(a, b))
        .collect();
    let node_cpu_s = (!node_cpu_run_s.is_empty())
        .then(|| node_cpu_run_s.iter().copied().sum::<Option<f64>>())
        .flatten()
        .map(round3);
    let redis_cpu_s = spent(cpu_before.redis, cpu_after.redis);
    let load_cpu_s = spent(cpu_before.load, cpu_after.load);
    let per = |cpu_s: Option<f64>, n: u64| {
        (n > 0)
            .then_some(cpu_s)
            .flatten()
            .map(|c| round3(c * 1e6 / n as f64))
    };
    let connect_failures = sh.connect_failures.load(Ordering::Relaxed);
    let lost = expected.saturating_sub(t.delivered);
    let disconnects = sh.disconnects.load(Ordering::Relaxed);
    let publisher_errors = sh.publisher_errors.load(Ordering::Relaxed);
    let protocol_errors = sh.protocol_errors.load(Ordering::Relaxed);
    let ok = lost == 0
        && protocol_errors == 0
        && t.duplicates == 0
        && t.misrouted == 0
        && t.malformed == 0
        && connect_failures == 0
        && disconnects == 0
        && publisher_errors == 0
        && subscribed == connected
        && sent == plan.messages
        && !timed_out;
    let args = &sh.args;
    Report {
        label: args.label.clone(),
        scenario: args.scenario,
        protocol: args.protocol,
        nodes: sh.targets.len(),
        subscribers: plan.subscribers,
        rooms: plan.rooms,
        publishers: plan.publishers,
        messages: plan.messages,
        size: args.size,
        rate: args.rate,
        window: (args.rate.is_none() && args.window_deliveries.is_none()).then_some(args.window),
        window_deliveries: args
            .rate
            .is_none()
            .then_some(args.window_deliveries)
            .flatten(),
        sources,
        connected_subscribers: connected,
        connected_publishers: connected_pubs,
        connect_failures,
        first_error: sh
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        connect_s,
        connect_rate: per_s(conns as u64, connect_s),
        warmup_s,
        subscribed,
        sent,
        expected,
        delivered: t.delivered,
        lost,
        duplicates: t.duplicates,
        out_of_order: t.out_of_order.iter().sum(),
        out_of_order_by_publisher: t.out_of_order.clone(),
        misrouted: t.misrouted,
        malformed: t.malformed,
        disconnects,
        publisher_errors,
        protocol_errors,
        first_protocol_error: sh
            .first_protocol_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        run_s,
        deliveries_per_s: per_s(t.delivered, run_s),
        messages_per_s: per_s(sent, send_s.max(run_s)),
        latency_us: Latency {
            p50: us(t.quantile(0.50)),
            p90: us(t.quantile(0.90)),
            p99: us(t.quantile(0.99)),
            max: us(t.max_ns),
        },
        held_s,
        node_mem,
        mem_per_conn_bytes,
        node_cpu_run_s,
        node_cpu_us_per_delivery: per(node_cpu_s, t.delivered),
        node_cpu_s,
        redis_cpu_us_per_message: per(redis_cpu_s, sent),
        redis_cpu_s,
        load_cpu_us_per_delivery: per(load_cpu_s, t.delivered),
        load_cpu_s,
        cpu_tick_s: 1.0 / sys::clock_ticks_per_s(),
        timed_out,
        stalled,
        ok,
        total_s: start.elapsed().as_secs_f64(),
    }
}

fn summary(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} {:?} ({:?} protocol): {} nodes, {} subscribers in {} rooms, {} publishers, {} messages of {} B{}",
        if r.label.is_empty() { "run" } else { &r.label },
        r.scenario,
        r.protocol,
        r.nodes,
        r.subscribers,
        r.rooms,
        r.publishers,
        r.messages,
        r.size,
        match (r.rate, r.window, r.window_deliveries) {
            (Some(rate), _, _) => format!(" at {rate}/s"),
            (None, Some(w), _) => format!(", window {w}"),
            (None, None, Some(d)) => format!(", at most {d} deliveries in flight"),
            _ => String::new(),
        }
    );
    let _ = writeln!(
        s,
        "  connect: {}+{} open ({} failed) in {:.2} s = {:.0} conn/s; all subscribed after {:.2} s more ({}/{} probed)",
        r.connected_subscribers,
        r.connected_publishers,
        r.connect_failures,
        r.connect_s,
        r.connect_rate,
        r.warmup_s,
        r.subscribed,
        r.connected_subscribers
    );
    if let Some(e) = &r.first_error {
        let _ = writeln!(s, "  first error: {e}");
    }
    if r.protocol_errors > 0 || r.protocol == Protocol::Centrifugo {
        let _ = writeln!(s, "  protocol errors: {}", r.protocol_errors);
    }
    if let Some(e) = &r.first_protocol_error {
        let _ = writeln!(s, "  first protocol error: {e}");
    }
    if r.scenario == Scenario::Idle {
        let _ = writeln!(s, "  held {:.1} s", r.held_s);
    } else {
        let _ = writeln!(
            s,
            "  deliveries: {} of {} expected in {:.3} s = {:.0}/s ({} messages sent, {:.0}/s)",
            r.delivered, r.expected, r.run_s, r.deliveries_per_s, r.sent, r.messages_per_s
        );
        let _ = writeln!(
            s,
            "  lost {}, duplicates {}, out of order {}, misrouted {}, malformed {}, disconnects {}",
            r.lost, r.duplicates, r.out_of_order, r.misrouted, r.malformed, r.disconnects
        );
        let l = &r.latency_us;
        let _ = writeln!(
            s,
            "  latency send→receipt: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            l.p50, l.p90, l.p99, l.max
        );
    }
    for m in &r.node_mem {
        let _ = writeln!(
            s,
            "  pid {} ({}): RSS {} KiB before, {} KiB connected, {} KiB at end, peak {} KiB",
            m.pid, m.node, m.rss_before_kib, m.rss_connected_kib, m.rss_end_kib, m.peak_kib
        );
    }
    if let Some(c) = r.node_cpu_s {
        let _ = write!(s, "  CPU during the run: nodes {c:.2} s");
        if let Some(u) = r.node_cpu_us_per_delivery {
            let _ = write!(s, " = {u:.2} µs per delivery");
        }
        if let Some(c) = r.redis_cpu_s {
            let _ = write!(s, "; Redis {c:.2} s");
            if let Some(u) = r.redis_cpu_us_per_message {
                let _ = write!(s, " = {u:.1} µs per message");
            }
        }
        if let Some(c) = r.load_cpu_s {
            let _ = write!(s, "; load generator {c:.2} s");
        }
        let _ = writeln!(s);
    }
    if let Some(b) = r.mem_per_conn_bytes {
        let _ = writeln!(
            s,
            "  memory per connection: {:.0} B ({:.2} KiB)",
            b,
            b / 1024.0
        );
    }
    let _ = write!(
        s,
        "  {}{}{} in {:.1} s",
        if r.ok { "OK" } else { "NOT OK" },
        if r.timed_out { " (timed out)" } else { "" },
        if r.stalled { " (stalled)" } else { "" },
        r.total_s
    );
    s
}

fn main() -> ExitCode {
    let args = Args::parse();
    let plan = Plan::new(&args);
    if plan.publishers == 0 && plan.messages > 0 {
        eprintln!("error: --messages needs at least one publisher");
        return ExitCode::from(2);
    }
    if !args
        .room_prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        eprintln!("error: --room-prefix may hold only [A-Za-z0-9_.-]");
        return ExitCode::from(2);
    }
    if !args.pids.is_empty() && args.pids.len() != args.nodes.len() {
        eprintln!("error: --pids needs one PID per node, in --nodes order");
        return ExitCode::from(2);
    }
    let targets: Vec<Target> = match args
        .nodes
        .iter()
        .map(|n| parse_node(n, args.protocol))
        .collect()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let nofile = match sys::raise_nofile() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: cannot raise RLIMIT_NOFILE: {e}");
            return ExitCode::from(1);
        }
    };
    let need = (plan.subscribers + plan.publishers) as u64 + 64;
    if need > nofile {
        eprintln!(
            "warning: {} connections need ~{need} file descriptors but the limit is {nofile}; \
             split the load over several processes",
            plan.subscribers + plan.publishers
        );
    }
    stats::init(plan.publishers);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let quiet = args.quiet;
    let report = rt.block_on(run(args, targets, plan));
    println!(
        "{}",
        serde_json::to_string(&report).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    );
    if !quiet {
        eprintln!("{}", summary(&report));
    }
    // Leave without tearing down thousands of connections one by one.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let s = payload(3, 7, 12345, 987654321, 64);
        assert_eq!(s.len(), 64);
        assert_eq!(parse_payload(&s), Some((3, 7, 12345, 987654321)));
        let long = payload(3, 7, 12345, 987654321, 4);
        assert_eq!(parse_payload(&long), Some((3, 7, 12345, 987654321)));
        assert_eq!(parse_payload("probe:3"), None);
        assert_eq!(parse_payload("1:2:3"), None);
    }

    #[test]
    fn frames_are_json() {
        let f: serde_json::Value =
            serde_json::from_str(&send_frame("room1", &payload(0, 1, 2, 3, 64))).unwrap();
        assert_eq!(f["type"], "sendMessage");
        assert_eq!(f["roomId"], "room1");
        assert_eq!(f["message"].as_str().unwrap().len(), 64);
        let s: serde_json::Value = serde_json::from_str(&subscribe_frame("room1")).unwrap();
        assert_eq!(s["room"], "room1");
    }

    #[test]
    fn plan_splits_messages() {
        let args = Args::parse_from(["x", "--nodes", "ws://127.0.0.1:1", "-m", "10", "-p", "3"]);
        let plan = Plan::new(&args);
        assert_eq!((0..3).map(|p| plan.count(p)).collect::<Vec<_>>(), [4, 3, 3]);
        let idle = Args::parse_from(["x", "--nodes", "ws://a:1", "--scenario", "idle"]);
        assert_eq!(Plan::new(&idle).messages, 0);
    }

    #[test]
    fn delivery_window() {
        assert_eq!(slots(100, None), 1);
        assert_eq!(slots(100, Some(10_000)), 100);
        assert_eq!(slots(20_000, Some(10_000)), 10_000);
        assert_eq!(slots(0, Some(10_000)), 1);
        let args = ["x", "--nodes", "ws://a:1", "--window-deliveries", "10000"];
        assert_eq!(Args::parse_from(args).window_deliveries, Some(10_000));
        let both = [
            "x",
            "--nodes",
            "ws://a:1",
            "--window-deliveries",
            "5",
            "--rate",
            "9",
        ];
        assert!(Args::try_parse_from(both).is_err());
        let zero = ["x", "--nodes", "ws://a:1", "--window-deliveries", "0"];
        assert!(Args::try_parse_from(zero).is_err());
    }

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_secs("x").is_err());
        assert_eq!(parse_rate("500/s"), Ok(500.0));
        assert!(parse_rate("0").is_err());
    }

    #[test]
    fn node_urls() {
        let t = parse_node("ws://127.0.0.1:9000", Protocol::Seed).unwrap();
        assert_eq!(t.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(t.url, "ws://127.0.0.1:9000/");
        assert!(parse_node("http://127.0.0.1:1", Protocol::Seed).is_err());
        let cf = |u| parse_node(u, Protocol::Centrifugo).unwrap().url;
        assert_eq!(
            cf("ws://127.0.0.1:9000"),
            "ws://127.0.0.1:9000/connection/websocket"
        );
        assert_eq!(
            cf("ws://127.0.0.1:9000/"),
            "ws://127.0.0.1:9000/connection/websocket"
        );
        assert_eq!(cf("ws://127.0.0.1:9000/cf/ws"), "ws://127.0.0.1:9000/cf/ws");
        let seed = parse_node("ws://127.0.0.1:9000/x", Protocol::Seed).unwrap();
        assert_eq!(seed.url, "ws://127.0.0.1:9000/x");
    }

    #[test]
    fn protocol_flag_and_frames() {
        let a = Args::parse_from(["x", "--nodes", "ws://a:1"]);
        assert_eq!(a.protocol, Protocol::Seed);
        let a = Args::parse_from(["x", "--nodes", "ws://a:1", "--protocol", "centrifugo"]);
        assert_eq!(a.protocol, Protocol::Centrifugo);
        assert!(Args::try_parse_from(["x", "--nodes", "ws://a:1", "--protocol", "x"]).is_err());
        let m = payload(1, 2, 3, 4, 64);
        assert_eq!(
            message_frame(Protocol::Seed, 7, "room2", &m),
            send_frame("room2", &m)
        );
        let f: serde_json::Value =
            serde_json::from_str(&message_frame(Protocol::Centrifugo, 7, "room2", &m)).unwrap();
        assert_eq!(f["id"], 7);
        assert_eq!(f["publish"]["channel"], "room2");
        assert_eq!(f["publish"]["data"], m.as_str());
    }

    /// A subscriber's reading of Centrifugo frames feeds the same checks as
    /// the seed protocol's: deliveries, duplicates, misrouting, probes.
    #[test]
    fn centrifugo_frames_reach_the_checks() {
        let args = Args::parse_from([
            "x",
            "--nodes",
            "ws://127.0.0.1:1",
            "--protocol",
            "centrifugo",
            "-c",
            "2",
            "-r",
            "2",
            "-p",
            "1",
            "-m",
            "4",
        ]);
        let plan = Plan::new(&args);
        let targets = vec![parse_node("ws://127.0.0.1:1", args.protocol).unwrap()];
        let sh = Shared::new(args, targets, plan);
        // Publisher 0's messages 0 and 2 go to room0, of one member.
        sh.remaining[0].store(1, Ordering::Relaxed);
        sh.remaining[2].store(1, Ordering::Relaxed);
        let mut me = Subscriber {
            room: 0,
            probed: false,
            tracks: vec![Track::default()],
        };
        let push = |channel: &str, data: &str| {
            format!(
                r#"{{"push":{{"channel":"{channel}","pub":{{"data":"{data}","info":{{"user":"","client":"n-1"}}}}}}}}"#
            )
        };
        let counts = || {
            stats::with(|r| {
                [
                    &r.delivered,
                    &r.duplicates,
                    &r.misrouted,
                    &r.malformed,
                    &r.probes,
                ]
                .map(|c| c.load(Ordering::Relaxed))
            })
        };
        let before = counts();
        let frame = [
            r#"{"id":1,"connect":{"client":"n-1","version":"v","ping":25,"pong":true}}"#
                .to_string(),
            r#"{"id":2,"subscribe":{}}"#.to_string(),
            push("room0", "probe:0"),
            push("room0", &payload(0, 0, 2, 0, 64)),
            push("room0", &payload(0, 0, 0, 0, 64)),
            push("room0", &payload(0, 0, 0, 0, 64)),
            push("room1", &payload(0, 1, 1, 0, 64)),
            r#"{"push":{"channel":"room0","pub":{"data":{"not":"a string"}}}}"#.to_string(),
            "not json".to_string(),
        ]
        .join("\n");
        assert!(!me.on_cf_frame(&sh, &frame), "no ping in it");
        let after = counts();
        let delta: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
        // delivered, duplicates, misrouted, malformed, probes
        assert_eq!(delta, [2, 1, 1, 2, 1]);
        assert!(me.probed);
        assert_eq!(sh.probed.load(Ordering::Relaxed), 1);
        assert_eq!(sh.completed.load(Ordering::Relaxed), 2);
        let t = &me.tracks[0];
        assert_eq!(t.next, 3);
        assert_eq!(sh.protocol_errors.load(Ordering::Relaxed), 0);

        let frame = concat!(
            "{}\r\n",
            r#"{"id":3,"error":{"code":106,"message":"limit exceeded"}}"#,
            "\n",
            r#"{"push":{"channel":"room0","unsubscribe":{"code":2000}}}"#,
        );
        assert!(me.on_cf_frame(&sh, frame), "a ping to answer");
        assert_eq!(sh.protocol_errors.load(Ordering::Relaxed), 2);
        let first = sh.first_protocol_error.lock().unwrap().clone().unwrap();
        assert_eq!(
            first,
            "subscriber of room0: error reply to command 3: 106 limit exceeded"
        );
    }
}
