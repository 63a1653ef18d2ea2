//! A `redis-server` process of the test's own.

use std::io;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::signal;
use crate::{TIMEOUT, free_port, spawn_child, unique};

/// A `redis-server` of this test's own on a free 127.0.0.1 port. Dropping it
/// kills it.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra `redis-server` arguments (after the defaults, so they win).
    extra: Vec<String>,
    /// The server program: `redis-server` on PATH, or another build.
    binary: PathBuf,
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

    /// A server that logs every write to its append-only file and fsyncs
    /// it before answering (`appendfsync always`): a restart
    /// ([`restart`](Self::restart), SIGKILL then start on the same
    /// directory) loses nothing it acknowledged.
    pub fn start_durable() -> RedisServer {
        let mut last = String::new();
        for _ in 0..10 {
            match RedisServer::try_start_with(
                free_port(),
                &["--appendonly", "yes", "--appendfsync", "always"],
            ) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    /// A Redis 8 server, which has per-field expiry (`HEXPIRE`, Redis 7.4
    /// and later), where the Redis on PATH may not: built once from source
    /// by `tests/sdk/install.sh redis8` (see [`crate::sdk::ensure_redis8`]).
    pub fn start_redis8() -> RedisServer {
        let binary = crate::sdk::ensure_redis8().join("redis-server");
        let mut last = String::new();
        for _ in 0..10 {
            match RedisServer::try_start_program(free_port(), &[], binary.clone()) {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        panic!("could not start {}: {last}", binary.display());
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
        RedisServer::try_start_with(port, &[])
    }

    fn try_start_with(port: u16, extra: &[&str]) -> Result<RedisServer, String> {
        RedisServer::try_start_program(port, extra, PathBuf::from("redis-server"))
    }

    fn try_start_program(
        port: u16,
        extra: &[&str],
        binary: PathBuf,
    ) -> Result<RedisServer, String> {
        let dir = std::env::temp_dir().join(unique("roomcast-redis"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut r = RedisServer {
            port,
            dir,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            binary,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.log_path()).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let port = self.port.to_string();
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
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

    /// `PUBSUB CHANNELS`, sorted, without the nodes' probe channels and the
    /// fleet's control channel: the rooms' channels. (Every roomcast node on
    /// Redis also holds its own probe channel, `__roomcast.probe.<node>`
    /// (see [`Self::probe_channels`]), and `__roomcast.control`.)
    pub fn channels(&self) -> Vec<String> {
        let mut v = self.all_channels();
        v.retain(|c| !c.contains("__roomcast.probe.") && !c.ends_with("__roomcast.control"));
        v
    }

    /// The roomcast nodes' probe channels now subscribed.
    pub fn probe_channels(&self) -> Vec<String> {
        let mut v = self.all_channels();
        v.retain(|c| c.contains("__roomcast.probe."));
        v
    }

    fn all_channels(&self) -> Vec<String> {
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

    /// `CLIENT PAUSE ms mode` (`mode`: `"WRITE"` or `"ALL"`): for `ms`
    /// milliseconds Redis holds back every command of every client (`ALL`),
    /// or only those that may change the data set, `PUBLISH` included
    /// (`WRITE`), while it keeps its connections open. Returns at once; the
    /// pause ends by itself. (Any admin call of this helper would wait out an
    /// `ALL` pause too: issue none before it ends, or [`client_unpause`].)
    ///
    /// [`client_unpause`]: Self::client_unpause
    pub fn client_pause(&self, ms: u64, mode: &str) {
        assert!(
            matches!(mode, "WRITE" | "ALL"),
            "CLIENT PAUSE mode {mode:?}: WRITE or ALL"
        );
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg(mode)
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("CLIENT PAUSE {ms} {mode}: {e}"));
    }

    /// `CLIENT UNPAUSE`: ends a [`client_pause`](Self::client_pause) early.
    pub fn client_unpause(&self) {
        let _: () = redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query(&mut self.conn())
            .expect("CLIENT UNPAUSE");
    }

    /// `PUBSUB CHANNELS pattern`, sorted (a glob, e.g. `herd-*`).
    pub fn channels_matching(&self, pattern: &str) -> Vec<String> {
        let mut v: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg(pattern)
            .query(&mut self.conn())
            .expect("PUBSUB CHANNELS pattern");
        v.sort();
        v
    }

    /// A subscriber of this test's own on `channel` (not a roomcast node):
    /// what Redis actually published there.
    pub fn subscriber(&self, channel: &str) -> Subscriber {
        Subscriber::start(self.port, channel)
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

/// A plain Redis subscriber on one channel, on a thread of its own, that
/// records every payload Redis publishes there (see
/// [`RedisServer::subscriber`]). It speaks RESP over its own socket, reads
/// without a timeout (so no message is ever cut), and is stopped by shutting
/// that socket down. It has subscribed when `start` returns.
pub struct Subscriber {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    socket: TcpStream,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    fn start(port: u16, channel: &str) -> Subscriber {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect a subscriber");
        socket.set_write_timeout(Some(TIMEOUT)).unwrap();
        let cmd = format!(
            "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
            channel.len()
        );
        socket.write_all(cmd.as_bytes()).expect("SUBSCRIBE");
        let mut reader = BufReader::new(socket.try_clone().unwrap());
        reader.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
        let confirm = read_resp(&mut reader).expect("SUBSCRIBE confirmation");
        assert_eq!(
            confirm.first().map(Vec::as_slice),
            Some(&b"subscribe"[..]),
            "SUBSCRIBE answered {confirm:?}"
        );
        reader.get_ref().set_read_timeout(None).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let got = got.clone();
            std::thread::spawn(move || {
                // Ends when the socket is shut down (or Redis goes away).
                while let Some(mut parts) = read_resp(&mut reader) {
                    if parts.len() == 3 && parts[0] == b"message" {
                        got.lock().unwrap().push(parts.pop().unwrap());
                    }
                }
            })
        };
        Subscriber {
            got,
            socket,
            thread: Some(thread),
        }
    }

    /// Room messages so far: presence's join/leave events, which ride the
    /// same channel, are not counted (see [`Self::payloads`] for all).
    pub fn count(&self) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|p| {
                !p.starts_with(br#"{"type":"join""#) && !p.starts_with(br#"{"type":"leave""#)
            })
            .count()
    }

    /// Every payload so far, in arrival order.
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One RESP array of bulk strings (what a subscriber receives), or `None`
/// at the end of the stream or on anything else.
fn read_resp(r: &mut impl BufRead) -> Option<Vec<Vec<u8>>> {
    fn line(r: &mut impl BufRead) -> Option<String> {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(l.trim_end_matches("\r\n").to_string()),
        }
    }
    let head = line(r)?;
    let n: usize = head.strip_prefix('*')?.parse().ok()?;
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let item = line(r)?;
        if let Some(int) = item.strip_prefix(':') {
            parts.push(int.as_bytes().to_vec());
            continue;
        }
        let len: usize = item.strip_prefix('$')?.parse().ok()?;
        let mut buf = vec![0u8; len + 2];
        r.read_exact(&mut buf).ok()?;
        buf.truncate(len);
        parts.push(buf);
    }
    Some(parts)
}
