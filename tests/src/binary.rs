//! The real binaries (`roomcast-tokio`, `roomcast-smol`) as child processes:
//! for what only a process of its own shows (its resident memory, its
//! open-files limit, its log and exit code).
//!
//! `cargo test -p roomcast-tests` does not build other packages' binaries,
//! so [`binary`] builds the one it needs with the same `cargo` and takes its
//! path from cargo's JSON output.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{HttpResponse, Metrics, Runtime, TIMEOUT, http_get, spawn_child};

/// Time this process spent building binaries, in milliseconds.
pub static BUILD_MILLIS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Builds `roomcast-<runtime>` once per test process and returns its path.
pub fn binary(rt: Runtime) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<&'static str, PathBuf>>> = OnceLock::new();
    let name = match rt {
        Runtime::Tokio => "roomcast-tokio",
        #[cfg(feature = "smol")]
        Runtime::Smol => "roomcast-smol",
    };
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let building = Instant::now();
    let out = Command::new(cargo)
        .args(["build", "--message-format=json", "-p", name, "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    // Scenarios are not charged for the build (see crate::run_scenario).
    BUILD_MILLIS.fetch_add(
        building.elapsed().as_millis() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    assert!(out.status.success(), "cargo build -p {name} failed");
    let path = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for {name}"));
    built.insert(name, path.clone());
    path
}

/// How to run a binary.
#[derive(Debug, Clone, Default)]
pub struct Spawn {
    /// The process's soft and hard limit on open files (`RLIMIT_NOFILE`),
    /// set between fork and exec; `None` inherits this process's.
    pub open_files: Option<u64>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// A running binary. Its stderr (the log, `RUST_LOG=info`) is echoed with
/// a `[bin PID]` prefix and kept. Dropping it kills it.
pub struct BinaryNode {
    rt: Runtime,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    addr: Option<SocketAddr>,
}

impl BinaryNode {
    /// Runs `roomcast-<rt>` with `args` (nothing is added: pass `--listen`).
    pub fn spawn(rt: Runtime, args: &[&str], how: Spawn) -> BinaryNode {
        let mut cmd = Command::new(binary(rt));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &how.env {
            cmd.env(k, v);
        }
        if let Some(n) = how.open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = spawn_child(&mut cmd).expect("run the binary");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let pid = child.id();
        let reader = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[bin {pid}] {line}");
                    log.lock().unwrap().push(line);
                }
            })
        };
        BinaryNode {
            rt,
            child,
            log,
            reader: Some(reader),
            addr: None,
        }
    }

    /// Runs it with `--listen 127.0.0.1:0` and `args`, and waits for its
    /// start line.
    pub fn start(rt: Runtime, args: &[&str], how: Spawn) -> BinaryNode {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut node = BinaryNode::spawn(rt, &all, how);
        node.addr = Some(node.listening());
        node
    }

    /// Runs it listening on 127.0.0.1:`port` with `args`, and waits for
    /// its start line.
    pub fn start_on(rt: Runtime, port: u16, args: &[&str], how: Spawn) -> BinaryNode {
        let listen = format!("127.0.0.1:{port}");
        let mut all = vec!["--listen", listen.as_str()];
        all.extend_from_slice(args);
        let mut node = BinaryNode::spawn(rt, &all, how);
        node.addr = Some(node.listening());
        node
    }

    pub fn runtime(&self) -> Runtime {
        self.rt
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where it listens (from its start line).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("started with BinaryNode::start")
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let found = self.log().iter().find_map(|line| {
                let rest = line.split("roomcast listening on ws://").nth(1)?;
                rest.split(' ').next()?.parse().ok()
            });
            if let Some(addr) = found {
                return addr;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the binary exited ({status}) before listening: {:?}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no `roomcast listening on ws://…` line: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its resident set size in bytes (`VmRSS` of `/proc/PID/status`).
    pub fn rss_bytes(&self) -> u64 {
        rss_of(self.pid())
    }

    /// How many file descriptors it has open (`/proc/PID/fd`).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr(), path)
    }

    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "/metrics: {r:?}");
        Metrics::parse(&r.body)
    }

    pub fn metric(&self, key: &str) -> u64 {
        self.metrics().get(key)
    }

    /// Waits until a metric satisfies `pred`; returns its value.
    pub fn wait_metric(&self, key: &str, timeout: Duration, pred: impl Fn(u64) -> bool) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(key);
            if pred(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{} binary: metric {key} stuck at {v}",
                self.rt.name()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/healthz` answers `status`.
    pub fn wait_health(&self, status: u16) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let last = self.get("/healthz").status;
            if last == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} binary: /healthz stayed {last}, expected {status}",
                self.rt.name()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit (killing it after `limit`); returns the exit code
    /// and every log line.
    pub fn wait_exit(mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return (status.code(), self.log());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "the binary did not exit within {limit:?}; it logged {:?}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BinaryNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident set size of process `pid` in bytes (Linux).
pub fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/PID/status")
}
