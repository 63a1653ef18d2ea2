//! Roomcast nodes started in-process through each runtime's `start` API.

use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::{Client, HttpResponse, Metrics, RedisServer, Runtime, TIMEOUT, http_get};

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
