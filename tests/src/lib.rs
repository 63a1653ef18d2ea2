//! # roomcast-tests
//!
//! End-to-end harness: real `redis-server` processes on free ports, real
//! roomcast nodes started through each runtime's `start` API, and real
//! WebSocket clients (sync `tungstenite`, one socket per client, every
//! operation bounded by a timeout).
//!
//! Every scenario in `tests/*.rs` is a plain `fn name(rt: Runtime)`; the
//! [`scenarios!`] macro turns each into one `#[test]` per runtime:
//! `name::tokio`, and `name::smol` when the crate's `smol` feature is on.
//!
//! Everything listens on and connects to 127.0.0.1 only. Nothing is shared
//! between tests: each test starts its own Redis and its own nodes, so the
//! tests run in parallel.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
pub use serde_json::{Value, json};
use tungstenite::protocol::WebSocket;
use tungstenite::{Message, Utf8Bytes};

/// Real Centrifugo SDK clients (JS and Python) driven as child processes.
pub mod sdk;

/// How long a single wait (a message, a close, a Redis condition) may take.
/// Generous: the machine is small and busy; nothing asserts speed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The longest any one scenario may run before it fails.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

/// Flags that make a node notice a lost Redis and reconnect quickly.
pub const FAST_REDIS: &[&str] = &[
    "--reconnect-min",
    "50ms",
    "--reconnect-max",
    "500ms",
    "--redis-ping-interval",
    "500ms",
    "--redis-timeout",
    "1s",
    "--redis-connect-timeout",
    "1s",
];

// ---------------------------------------------------------------------------
// Runtimes and the per-runtime test macro
// ---------------------------------------------------------------------------

/// Which runtime crate serves a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Tokio,
    #[cfg(feature = "smol")]
    Smol,
}

impl Runtime {
    /// Every runtime this build tests.
    pub const ALL: &'static [Runtime] = &[
        Runtime::Tokio,
        #[cfg(feature = "smol")]
        Runtime::Smol,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Tokio => "tokio",
            #[cfg(feature = "smol")]
            Runtime::Smol => "smol",
        }
    }
}

/// Expands each named scenario `fn name(rt: Runtime)` into a module `name`
/// holding one `#[test]` per runtime: `name::tokio` and (feature `smol`)
/// `name::smol`. Each runs under [`run_scenario`]'s time limit.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn tokio() {
                $crate::run_scenario(
                    concat!(stringify!($name), "::tokio"),
                    $crate::Runtime::Tokio,
                    super::$name,
                );
            }

            #[cfg(feature = "smol")]
            #[test]
            fn smol() {
                $crate::run_scenario(
                    concat!(stringify!($name), "::smol"),
                    $crate::Runtime::Smol,
                    super::$name,
                );
            }
        }
    )*};
}

/// Runs one scenario on a thread of its own and fails the test if it panics
/// or outlives [`SCENARIO_LIMIT`]. (A scenario that overruns is left behind;
/// the processes it started die with the test process, see [`spawn_child`].)
pub fn run_scenario(name: &str, rt: Runtime, scenario: fn(Runtime)) {
    let started = Instant::now();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || scenario(rt))
        .expect("spawn scenario thread");
    while !thread.is_finished() {
        if started.elapsed() > SCENARIO_LIMIT {
            panic!("{name}: still running after {SCENARIO_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
    eprintln!("{name}: passed in {:.1?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A name no other test in this process uses (rooms, temporary folders).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free TCP port on 127.0.0.1 outside the kernel's ephemeral range, so no
/// outgoing connection can take it between this check and its use. (Never
/// 6379: a Redis may run there and the tests must not touch it.)
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    // Prefer the 10,000 ports just below the ephemeral range.
    let (start, span) = if lo >= 12_000 {
        (lo - 10_000, 10_000)
    } else {
        (hi + 1, 65_535 - hi)
    };
    let seed = std::process::id().wrapping_mul(2_654_435_761)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let base = NEXT.fetch_add(1, Ordering::Relaxed);
    for i in 0..span {
        let port = start + (seed.wrapping_add(base.wrapping_mul(7919)).wrapping_add(i)) % span;
        let port = port as u16;
        if port == 6379 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {start}..{}", start + span);
}

/// Spawns a child process that the kernel kills when the spawning thread
/// ends (`PR_SET_PDEATHSIG`), so a test process that dies or is killed
/// leaves no `redis-server` or `node` behind. Spawn from the scenario's own
/// thread, which outlives the child's owner.
pub fn spawn_child(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a child we own and have not reaped.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(
        r,
        0,
        "kill({}, {sig}): {}",
        child.id(),
        io::Error::last_os_error()
    );
}

/// This process's resident set size in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// A `redis-server` of this test's own on a free 127.0.0.1 port. Dropping it
/// kills it.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..10 {
            match RedisServer::try_start_on(free_port()) {
                Ok(r) => return r,
                // Another process took the port first: pick another.
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    /// Starts a server on `port` (e.g. one reserved with [`free_port`]).
    pub fn start_on(port: u16) -> RedisServer {
        let mut last = String::new();
        for _ in 0..5 {
            match RedisServer::try_start_on(port) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("could not start redis-server on port {port}: {last}");
    }

    fn try_start_on(port: u16) -> Result<RedisServer, String> {
        let dir = std::env::temp_dir().join(unique("roomcast-redis"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut r = RedisServer {
            port,
            dir,
            child: None,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.log_path()).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let child = match spawn_child(&mut cmd) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "`redis-server` is not on PATH: the end-to-end tests start their own Redis. \
                 Install the Debian package `redis-server` (apt-get install redis-server)."
            ),
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "redis-server on port {} exited ({status}): {}",
                    self.port,
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ));
            }
            if self.ping() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "redis-server on port {} never answered PING",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        redis_url(self.port)
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
            return false;
        };
        let _ = con.set_read_timeout(Some(Duration::from_secs(1)));
        redis::cmd("PING").query::<String>(&mut con).is_ok()
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts a new server on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        for _ in 0..10 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("could not restart redis-server: {last}");
    }

    /// SIGSTOP: the server hangs with its sockets open.
    pub fn stop(&mut self) {
        signal(self.child.as_ref().expect("redis running"), libc::SIGSTOP);
    }

    /// SIGCONT after [`stop`](Self::stop).
    pub fn cont(&mut self) {
        signal(self.child.as_ref().expect("redis running"), libc::SIGCONT);
    }

    /// A fresh admin connection (fresh each time, so it survives restarts).
    pub fn conn(&self) -> redis::Connection {
        let client = redis::Client::open(self.url()).expect("redis url");
        let con = client
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to redis on {}: {e}", self.port));
        con.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        con.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        con
    }

    /// `PUBSUB NUMSUB channel`
    pub fn numsub(&self, channel: &str) -> i64 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut self.conn())
            .expect("PUBSUB NUMSUB");
        n
    }

    /// `PUBSUB CHANNELS`, sorted.
    pub fn channels(&self) -> Vec<String> {
        let mut v: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query(&mut self.conn())
            .expect("PUBSUB CHANNELS");
        v.sort();
        v
    }

    /// Waits until `PUBSUB NUMSUB channel` is `n`.
    pub fn wait_numsub(&self, channel: &str, n: i64) {
        let mut last = -1;
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            last = self.numsub(channel);
            if last == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("PUBSUB NUMSUB {channel:?} stayed {last}, expected {n}");
    }

    /// Waits until no channel has a subscriber.
    pub fn wait_no_channels(&self) {
        let mut last = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            last = self.channels();
            if last.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} channels still subscribed, e.g. {:?}",
            last.len(),
            &last[..last.len().min(10)]
        );
    }

    /// `PUBLISH channel payload`; returns the number of receivers.
    pub fn publish(&self, channel: &str, payload: &str) -> i64 {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query(&mut self.conn())
            .expect("PUBLISH")
    }

    /// `CLIENT KILL TYPE pubsub`; returns how many clients were killed.
    pub fn kill_pubsub_clients(&self) -> i64 {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut self.conn())
            .expect("CLIENT KILL TYPE pubsub")
    }

    /// `CONFIG SET key value`
    pub fn config_set(&self, key: &str, value: &str) {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(key)
            .arg(value)
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("CONFIG SET {key} {value}: {e}"));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn redis_url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// The seed's payload for a message to `room`.
pub fn seed_payload(room: &str, message: &Value) -> String {
    json!({"type": "sendMessage", "roomId": room, "message": message}).to_string()
}

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

enum Handle {
    Tokio(roomcast_tokio::Running),
    #[cfg(feature = "smol")]
    Smol(roomcast_smol::Running),
}

/// A roomcast node started through a runtime's `start` API on 127.0.0.1:0.
/// Dropping it shuts it down (gracefully, like SIGTERM).
pub struct Node {
    rt: Runtime,
    addr: SocketAddr,
    handle: Option<Handle>,
}

impl Node {
    /// Starts a node with `--redis url` (if given) and the extra flags.
    pub fn start(rt: Runtime, redis: Option<&str>, extra: &[&str]) -> Node {
        let mut args: Vec<String> =
            vec!["roomcast".into(), "--listen".into(), "127.0.0.1:0".into()];
        if let Some(url) = redis {
            args.push("--redis".into());
            args.push(url.into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let handle = match rt {
            Runtime::Tokio => {
                let cli = roomcast_tokio::Cli::try_parse_from(&args)
                    .unwrap_or_else(|e| panic!("bad flags {args:?}: {e}"));
                Handle::Tokio(roomcast_tokio::start(cli).expect("start tokio node"))
            }
            #[cfg(feature = "smol")]
            Runtime::Smol => {
                let cli = roomcast_smol::Cli::try_parse_from(&args)
                    .unwrap_or_else(|e| panic!("bad flags {args:?}: {e}"));
                Handle::Smol(roomcast_smol::start(cli).expect("start smol node"))
            }
        };
        let addr = match &handle {
            Handle::Tokio(r) => r.addr(),
            #[cfg(feature = "smol")]
            Handle::Smol(r) => r.addr(),
        };
        Node {
            rt,
            addr,
            handle: Some(handle),
        }
    }

    /// A node on `redis` and waits until it reports the broker up.
    pub fn redis(rt: Runtime, redis: &RedisServer, extra: &[&str]) -> Node {
        let node = Node::start(rt, Some(&redis.url()), extra);
        node.wait_health(200);
        node
    }

    /// A node with the embedded broker (no `--redis`).
    pub fn embedded(rt: Runtime, extra: &[&str]) -> Node {
        Node::start(rt, None, extra)
    }

    pub fn runtime(&self) -> Runtime {
        self.rt
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// A WebSocket client connected to this node.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path)
    }

    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {r:?}");
        Metrics::parse(&r.body)
    }

    /// The value of one metric (`name` or `name{labels}`).
    pub fn metric(&self, key: &str) -> u64 {
        self.metrics().get(key)
    }

    /// Waits until a metric satisfies `pred`.
    pub fn wait_metric(&self, key: &str, pred: impl Fn(u64) -> bool) -> u64 {
        let mut last = 0;
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            last = self.metric(key);
            if pred(last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} node {}: metric {key} stuck at {last}",
            self.rt.name(),
            self.addr
        );
    }

    /// Waits until `/healthz` answers `status`.
    pub fn wait_health(&self, status: u16) {
        let mut last = 0;
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            last = self.get("/healthz").status;
            if last == status {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} node {}: /healthz stayed {last}, expected {status}",
            self.rt.name(),
            self.addr
        );
    }

    /// Graceful shutdown; returns what the runtime's `shutdown` returned.
    pub fn shutdown(mut self) -> io::Result<()> {
        match self.handle.take().expect("running") {
            Handle::Tokio(r) => r.shutdown(),
            #[cfg(feature = "smol")]
            Handle::Smol(r) => r.shutdown(),
        }
    }

    /// Starts the graceful shutdown on another thread (so the test can
    /// serve the clients' close handshakes meanwhile); join the result with
    /// [`PendingShutdown::wait`].
    pub fn shutdown_in_background(self) -> PendingShutdown {
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            let _ = tx.send(self.shutdown());
        });
        PendingShutdown { rx, started }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(self.handle.take());
    }
}

/// A shutdown running on another thread.
pub struct PendingShutdown {
    rx: mpsc::Receiver<io::Result<()>>,
    started: Instant,
}

impl PendingShutdown {
    /// Waits for the shutdown to return; panics if it takes longer than `limit`.
    pub fn wait(self, limit: Duration) -> Duration {
        let left = limit.saturating_sub(self.started.elapsed());
        match self.rx.recv_timeout(left) {
            Ok(r) => {
                r.expect("shutdown returned an error");
                self.started.elapsed()
            }
            Err(_) => panic!("shutdown did not return within {limit:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// A parsed `/metrics` page: `name` or `name{labels}` → value.
#[derive(Debug, Clone)]
pub struct Metrics(pub HashMap<String, u64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut m = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.rsplit_once(' ').expect("metric line: key value");
            let value: u64 = value
                .parse()
                .unwrap_or_else(|_| panic!("metric value in {line:?}"));
            m.insert(key.to_string(), value);
        }
        Metrics(m)
    }

    /// One value; panics if the node does not export it.
    pub fn get(&self, key: &str) -> u64 {
        *self
            .0
            .get(key)
            .unwrap_or_else(|| panic!("no metric {key} in {:?}", self.0.keys()))
    }

    /// `roomcast_bad_frames_total{reason="…"}`
    pub fn bad_frames(&self, reason: &str) -> u64 {
        self.get(&format!("roomcast_bad_frames_total{{reason=\"{reason}\"}}"))
    }
}

// ---------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// The head (status line and headers), as received.
    pub head: String,
    pub body: String,
}

/// `GET path` over a fresh connection.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Sends `raw` and reads the response until the server closes.
pub fn http_request(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect for HTTP");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(raw).expect("write HTTP request");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("read HTTP response from {addr}: {e}"));
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete HTTP head in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Reads from `s` until the peer closes (EOF or reset), for at most
/// `timeout`; returns the bytes read, or `None` if it was still open then.
pub fn read_until_closed(s: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(got),
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------

/// What a client saw next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: code and reason (`None` if it had no payload).
    Close(Option<(u16, String)>),
    /// The connection ended without (further) frames: EOF, reset, error.
    Gone(String),
}

/// The start of every `sync` marker; `recv` never returns one.
const SYNC_MARKER: &str = "\u{1}sync-marker";

/// A blocking WebSocket client. Every operation has a deadline.
pub struct Client {
    ws: WebSocket<TcpStream>,
    /// Text messages read while waiting for something else.
    pending: VecDeque<String>,
    addr: SocketAddr,
}

impl Client {
    /// Connects to `ws://addr/` and completes the handshake.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_path(addr, "/")
    }

    /// Connects to `ws://addr{path}`.
    pub fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let (ws, _response) = tungstenite::client(format!("ws://{addr}{path}"), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {addr}: {e}"));
        Client {
            ws,
            pending: VecDeque::new(),
            addr,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    /// The client's TCP socket (for raw access).
    pub fn tcp(&self) -> &TcpStream {
        self.ws.get_ref()
    }

    fn write(&mut self, msg: Message) {
        if let Err(e) = self.try_write(msg) {
            panic!("send to {}: {e}", self.addr);
        }
    }

    /// Sends a message; a failure (e.g. the server already closed) is returned.
    pub fn try_write(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.get_mut().set_write_timeout(Some(TIMEOUT)).unwrap();
        self.ws.send(msg)
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.write(Message::text(text));
    }

    /// Sends a raw binary frame.
    pub fn send_binary(&mut self, data: &[u8]) {
        self.write(Message::binary(data.to_vec()));
    }

    /// Sends a JSON value as one text frame.
    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// `{"type":"SUBSCRIBE","room":room}`
    pub fn subscribe(&mut self, room: &str) {
        self.send_json(&json!({"type": "SUBSCRIBE", "room": room}));
    }

    /// `{"type":"UNSUBSCRIBE","room":room}`
    pub fn unsubscribe(&mut self, room: &str) {
        self.send_json(&json!({"type": "UNSUBSCRIBE", "room": room}));
    }

    /// `{"type":"sendMessage","roomId":room,"message":message}`; a `&str`
    /// becomes a JSON string, a `Value` is sent as it is.
    pub fn send(&mut self, room: &str, message: impl Into<Value>) {
        let message: Value = message.into();
        self.send_json(&json!({"type": "sendMessage", "roomId": room, "message": message}));
    }

    /// Joins `room` and returns once the node has processed the join
    /// (see [`sync`](Self::sync)).
    pub fn join(&mut self, room: &str) {
        self.subscribe(room);
        self.sync();
    }

    /// A barrier: returns once the node has processed every frame this
    /// client sent before. It joins a private room, sends itself a marker
    /// there until it comes back (each connection's frames are handled in
    /// order, and a node subscribes before it publishes), then leaves the
    /// room again. Messages of other rooms read meanwhile are kept for
    /// [`recv`](Self::recv).
    pub fn sync(&mut self) {
        let room = unique("sync");
        let marker = unique(SYNC_MARKER);
        self.subscribe(&room);
        let deadline = Instant::now() + TIMEOUT;
        'outer: loop {
            self.send(&room, marker.as_str());
            // Resend if a broker outage lost the marker.
            let retry = (Instant::now() + Duration::from_secs(2)).min(deadline);
            loop {
                match self.next_event(retry) {
                    Some(Event::Text(t)) if t == marker => break 'outer,
                    Some(Event::Text(t)) if t.starts_with(SYNC_MARKER) => {}
                    Some(Event::Text(t)) => self.pending.push_back(t),
                    Some(other) => panic!("sync with {}: got {other:?}", self.addr),
                    None if Instant::now() >= deadline => {
                        panic!("sync with {}: marker never came back", self.addr)
                    }
                    None => break,
                }
            }
        }
        self.unsubscribe(&room);
    }

    /// Reads the next event, or `None` when `deadline` passes first.
    pub fn next_event(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.ws.get_mut().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(Message::Text(t)) => return Some(Event::Text(t.as_str().to_string())),
                Ok(Message::Binary(b)) => return Some(Event::Binary(b.to_vec())),
                Ok(Message::Close(f)) => {
                    return Some(Event::Close(
                        f.map(|f| (u16::from(f.code), f.reason.as_str().to_string())),
                    ));
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Some(Event::Gone(e.to_string())),
            }
        }
    }

    /// The next text message within [`TIMEOUT`]; panics on anything else.
    pub fn recv(&mut self) -> String {
        self.recv_within(TIMEOUT)
            .unwrap_or_else(|| panic!("no message from {} within {TIMEOUT:?}", self.addr))
    }

    /// The next text message, or `None` if none comes within `timeout`;
    /// panics on a close or a broken connection.
    pub fn recv_within(&mut self, timeout: Duration) -> Option<String> {
        if let Some(t) = self.pending.pop_front() {
            return Some(t);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_event(deadline) {
                // A late duplicate of a `sync` marker.
                Some(Event::Text(t)) if t.starts_with(SYNC_MARKER) => continue,
                Some(Event::Text(t)) => return Some(t),
                Some(other) => panic!("expected a message from {}, got {other:?}", self.addr),
                None => return None,
            }
        }
    }

    /// Receives `n` messages.
    pub fn recv_n(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.recv()).collect()
    }

    /// Receives until `want` arrives, skipping other messages that `skip`
    /// accepts; panics on any other message.
    pub fn recv_skipping(&mut self, want: &str, skip: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self
                .recv_within(left)
                .unwrap_or_else(|| panic!("{want:?} never arrived from {}", self.addr));
            if got == want {
                return;
            }
            assert!(
                skip(&got),
                "expected {want:?} from {}, got {got:?}",
                self.addr
            );
        }
    }

    /// Asserts that no message arrives within `timeout`.
    pub fn expect_silence(&mut self, timeout: Duration) {
        if let Some(t) = self.recv_within(timeout) {
            panic!("unexpected message from {}: {t:?}", self.addr);
        }
    }

    /// Waits for a close frame with `code` and `reason` (skipping messages
    /// that were queued before it), then lets the close handshake finish.
    pub fn expect_close(mut self, code: u16, reason: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.next_event(deadline) {
                Some(Event::Text(_) | Event::Binary(_)) => continue,
                Some(Event::Close(Some((c, r)))) => {
                    assert_eq!(
                        (c, r.as_str()),
                        (code, reason),
                        "close frame from {}",
                        self.addr
                    );
                    break;
                }
                Some(other) => panic!(
                    "expected close {code} {reason:?} from {}, got {other:?}",
                    self.addr
                ),
                None => panic!(
                    "no close {code} {reason:?} from {} within {TIMEOUT:?}",
                    self.addr
                ),
            }
        }
        // Sends our close reply and reads until the server closes the TCP,
        // which it must do once the handshake is done (RFC 6455 §7.1.1), not
        // when its --shutdown-grace runs out.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.next_event(deadline) {
                Some(Event::Gone(_)) => break,
                Some(_) => continue,
                None => panic!(
                    "{} did not end the TCP stream after the close handshake",
                    self.addr
                ),
            }
        }
    }

    /// Waits until the connection ends (a close frame or the TCP going away),
    /// discarding messages; returns the close frame if one came.
    pub fn wait_closed(mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_event(deadline) {
                Some(Event::Text(_) | Event::Binary(_)) => continue,
                Some(Event::Close(f)) => return f,
                Some(Event::Gone(_)) => return None,
                None => panic!("connection to {} still open after {timeout:?}", self.addr),
            }
        }
    }

    /// A normal close handshake from the client side.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(ev) = self.next_event(deadline) {
            if matches!(ev, Event::Gone(_)) {
                break;
            }
        }
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_abruptly(self) {
        let _ = self.ws.get_ref().shutdown(Shutdown::Both);
    }

    /// Sends a text frame of `len` bytes (`x` repeated), e.g. one over the
    /// node's frame limit; the node may close before reading all of it, so
    /// a failure is returned rather than raised.
    pub fn send_raw_text_len(&mut self, len: usize) -> Result<(), tungstenite::Error> {
        let text: String = std::iter::repeat_n('x', len).collect();
        self.try_write(Message::Text(Utf8Bytes::from(text)))
    }
}

// ---------------------------------------------------------------------------
// The seed (tutorial) Node.js server
// ---------------------------------------------------------------------------

/// `tests/seed-node`, the reconstructed tutorial server.
pub fn seed_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seed-node")
}

/// Why the seed cannot run here (`node` or `npm` missing), if so.
pub fn seed_unavailable() -> Option<String> {
    for tool in ["node", "npm"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` is not on PATH"));
        }
    }
    None
}

/// Installs the seed's npm packages (once per content of package.json and
/// server.js) into a folder under `cache_root` and returns that folder.
pub fn install_seed(cache_root: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    static INSTALLED: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut guard = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = &*guard {
        return dir.clone();
    }
    let src = seed_source_dir();
    let package = std::fs::read(src.join("package.json")).expect("seed-node/package.json");
    let server = std::fs::read(src.join("server.js")).expect("seed-node/server.js");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&package, &server).hash(&mut h);
    let dir = cache_root.join(format!("seed-node-{:016x}", h.finish()));
    if !dir.join("node_modules/ws").is_dir() || !dir.join("node_modules/redis").is_dir() {
        let staging = cache_root.join(unique("seed-node-staging"));
        std::fs::create_dir_all(&staging).expect("create seed staging folder");
        std::fs::write(staging.join("package.json"), &package).unwrap();
        std::fs::write(staging.join("server.js"), &server).unwrap();
        let out = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&staging)
            .stdin(Stdio::null())
            .output()
            .expect("run npm install");
        assert!(
            out.status.success(),
            "npm install --prefix {} failed: {}\n{}",
            staging.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if std::fs::rename(&staging, &dir).is_err() {
            // Another process installed it first.
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    *guard = Some(dir.clone());
    dir
}

/// The tutorial server, `node server.js`, on a free port.
pub struct SeedNode {
    child: Child,
    port: u16,
}

impl SeedNode {
    /// Runs the installed seed with `PORT` and `REDIS_URL` and waits for its
    /// `seed listening on` line.
    pub fn start(install_dir: &Path, redis_url: &str) -> SeedNode {
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg("server.js")
            .current_dir(install_dir)
            .env("PORT", port.to_string())
            .env("REDIS_URL", redis_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_child(&mut cmd).expect("run node server.js");
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for pipe in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("[seed] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) if line.contains("seed listening on") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the seed never said `seed listening on`; it printed {seen:?}");
                }
            }
        }
        SeedNode { child, port }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }
}

impl Drop for SeedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
