//! The real binaries (`roomcast-tokio`, `roomcast-smol`): the start line,
//! serving, SIGTERM → 1001 "going away" and exit 0, flags from the
//! environment, and one-line errors for bad flags.
//!
//! `cargo test -p roomcast-tests` does not build other packages' binaries,
//! so the test builds the one it needs with the same `cargo` (it holds no
//! lock while tests run) and takes its path from cargo's JSON output.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use roomcast_tests::binary::binary;
use roomcast_tests::{
    Client, FAST_REDIS, RedisServer, Runtime, TIMEOUT, http_get, scenarios, spawn_child,
};

scenarios!(
    binary_serves_and_stops_on_sigterm,
    binary_with_redis_from_env,
    binary_rejects_bad_flags
);

/// A running binary; its stderr lines arrive on `lines`.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(rt: Runtime, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(binary(rt));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = spawn_child(&mut cmd).expect("run the binary");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[bin] {line}");
                let _ = tx.send(line);
            }
        });
        Proc { child, lines }
    }

    /// Waits for the start line and returns the address it names.
    fn listening(&self) -> SocketAddr {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("no `roomcast listening on ws://…` line");
            if let Some(rest) = line.split("roomcast listening on ws://").nth(1) {
                let addr = rest.split(' ').next().unwrap();
                return addr
                    .parse()
                    .unwrap_or_else(|_| panic!("address in {line:?}"));
            }
        }
    }

    fn sigterm(&self) {
        // SAFETY: kill(2) on our own unreaped child.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0);
    }

    /// Waits for the exit; returns the status code and every stderr line.
    fn wait_exit(mut self, limit: Duration) -> (Option<i32>, Vec<String>) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut lines = Vec::new();
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    lines.push(l);
                }
                return (status.code(), lines);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the binary did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary_serves_and_stops_on_sigterm(rt: Runtime) {
    let p = Proc::spawn(rt, &["--listen", "127.0.0.1:0"], &[]);
    let addr = p.listening();
    assert_eq!(http_get(addr, "/healthz").status, 200);
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    a.join("bin");
    b.join("bin");
    a.send("bin", "through the binary");
    assert_eq!(b.recv(), "through the binary");
    assert_eq!(a.recv(), "through the binary");

    p.sigterm();
    a.expect_close(1001, "going away");
    b.expect_close(1001, "going away");
    let (code, _) = p.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0), "exit status after SIGTERM");
}

fn binary_with_redis_from_env(rt: Runtime) {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(FAST_REDIS);
    let p = Proc::spawn(
        rt,
        &args,
        &[("ROOMCAST_REDIS", &url), ("ROOMCAST_CHANNEL_PREFIX", "rc:")],
    );
    let addr = p.listening();
    roomcast_tests::wait_until("the binary reports Redis up", TIMEOUT, || {
        http_get(addr, "/healthz").status == 200
    });
    let mut a = Client::connect(addr);
    a.subscribe("env");
    redis.wait_numsub("rc:env", 1);
    redis.publish(
        "rc:env",
        &roomcast_tests::seed_payload("env", &roomcast_tests::json!("prefixed")),
    );
    assert_eq!(a.recv(), "prefixed");

    p.sigterm();
    a.expect_close(1001, "going away");
    let (code, _) = p.wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0));
    // It unsubscribed before it exited.
    redis.wait_no_channels();
}

fn binary_rejects_bad_flags(rt: Runtime) {
    // Refused at flag parsing, and (a wildcard host) by redis-rs before serving.
    for url in [
        "http://127.0.0.1:1",
        "redis://127.0.0.1:port",
        "redis://0.0.0.0:6379",
    ] {
        let (code, lines) =
            Proc::spawn(rt, &["--redis", url], &[]).wait_exit(Duration::from_secs(15));
        assert_eq!(code, Some(2), "{url}");
        assert!(
            lines.iter().any(|l| l.contains("invalid Redis URL")),
            "{lines:?}"
        );
    }

    let (code, lines) =
        Proc::spawn(rt, &["--handshake-timeout", "ten"], &[]).wait_exit(Duration::from_secs(15));
    assert_ne!(code, Some(0));
    assert!(
        lines.iter().any(|l| l.contains("invalid duration")),
        "{lines:?}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let (code, lines) =
        Proc::spawn(rt, &["--listen", &taken_addr], &[]).wait_exit(Duration::from_secs(15));
    assert_ne!(code, Some(0));
    assert!(
        lines.iter().any(|l| l.contains("cannot listen")),
        "{lines:?}"
    );

    let (code, _) = Proc::spawn(rt, &["--help"], &[]).wait_exit(Duration::from_secs(15));
    assert_eq!(code, Some(0));
}

/// A `--redis` URL redis-rs can open always passes the flag check (core,
/// at parsing); one it cannot open is refused by the flag check or, for what
/// only redis-rs knows (wildcard hosts, `protocol` values, encodings), by
/// each runtime's check before serving, which also stops `start`.
#[test]
fn redis_url_checks_agree_with_redis_rs() {
    use clap::Parser;
    let urls = [
        "redis://127.0.0.1:6379",
        "redis://localhost",
        "redis://localhost/",
        "redis://:secret@10.0.0.5:7000/2",
        "redis://user:secret@h:1/0?protocol=resp3",
        "redis://[::1]:6379",
        "redis://[::1]/3",
        "redis://h:",
        "redis://[::1]:",
        "redis://h:1/0/",
        "redis://h//",
        "redis://h:1#x",
        "redis://h/0#x",
        "REDIS://h:1",
        "valkey://h:1",
        "valkey+unix:///s",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=1",
        "unix://localhost/run/r.sock",
        "unix:///",
        "redis+unix:///run/redis.sock",
        "redis://0.0.0.0:6379",
        "redis://[::]:6379",
        "redis://[::]",
        "redis://h:1?protocol=bogus",
        "redis://h:1/0?protocol=",
        "redis://h:1?protocol=RESP3",
        "unix:///s.sock?db=x",
        "unix:///s.sock?protocol=9",
        "redis://%ff@h",
        "redis://:%ff@h",
        "redis://[::1]x",
        "redis://[zz]",
        "redis://[1.2.3.4]",
        "redis://h:1:2",
        "redis://h:+1",
        "redis://exa<mple",
        "redis://h\\x",
        "redis://",
        "redis://:6379",
        "redis://h:port",
        "redis://h:99999",
        "redis://h:1/db",
        "redis://[::1",
        "rediss://h:6380",
        "valkeys://h:6380",
        "http://h:1",
        "unix://relative",
        "h:6379",
        "",
        "unix:/run/redis.sock",
        "redis+unix:/s",
        "unix:/s#frag",
        " redis://h:1",
        "redis://h:1\n",
        "redis://h\t:1",
        "redis://h/./0",
        "redis://h/0/..",
        "redis://h/%2e/0",
        "redis://h:1/0 ",
        "redis:h",
        "redis://user:secret@[::]:1",
    ];
    for url in urls {
        let redis_rs = redis::Client::open(url).is_ok();
        let args = ["roomcast", "--listen", "127.0.0.1:0", "--redis", url];
        let flag = roomcast_tokio::Cli::try_parse_from(args);
        if redis_rs {
            assert!(
                flag.is_ok(),
                "{url:?}: redis-rs opens it, the flag check refuses it"
            );
        }
        let Ok(cli) = flag else { continue };
        // What each runtime checks before serving; a URL redis-rs refuses
        // must also stop `start` itself. (A URL it accepts is not started:
        // its node would dial that host, and the tests dial 127.0.0.1 only.)
        let checks = [
            ("tokio", roomcast_tokio::redis_client(&cli).map(drop)),
            #[cfg(feature = "smol")]
            ("smol", roomcast_smol::redis_client(&cli).map(drop)),
        ];
        for (rt, checked) in checks {
            match checked {
                Ok(()) => assert!(redis_rs, "{rt} takes {url:?}, which redis-rs refuses"),
                Err(e) => {
                    assert!(!redis_rs, "{rt} refused {url:?}: {e}");
                    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput, "{url:?}: {e}");
                    assert!(!e.to_string().contains("secret"), "password shown: {e}");
                }
            }
        }
        if !redis_rs {
            let tokio = roomcast_tokio::start(cli.clone()).map(|n| n.shutdown());
            assert!(tokio.is_err(), "tokio started with {url:?}");
            #[cfg(feature = "smol")]
            assert!(
                roomcast_smol::start(cli).map(|n| n.shutdown()).is_err(),
                "smol started with {url:?}"
            );
        }
    }
}
