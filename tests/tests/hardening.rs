//! The findings of the adversarial sweep, end to end: subscription churn and
//! a connection herd keep a node healthy and its subscriptions exact (F1); a
//! paused Redis is noticed and every publish is accounted for (F2); the
//! client's close handshake is echoed (F3); big messages are capped, or
//! delivered within raised limits without closing anyone, and leave memory
//! as it was (F4); a node at its open-files limit refuses before it runs
//! out of descriptors (F5); seed keepalive and the HTTP head's limits (F6).
//!
//! Figures measured along the way (rates, times, memory) are printed as
//! `[hardening] …` lines; nothing asserts speed.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use roomcast_tests::binary::{BinaryNode, Spawn};
use roomcast_tests::{
    CLOSE_TIMEOUT, Client, FAST_REDIS, Node, RedisServer, Runtime, TIMEOUT, json,
    read_until_closed, scenarios, seed_payload,
};
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

scenarios!(
    subscription_churn_keeps_the_node_healthy,
    connection_herd_is_subscribed,
    redis_paused_for_writes,
    redis_paused_entirely,
    close_handshake_is_echoed,
    invalid_close_codes_are_answered_with_1002,
    oversized_backend_publish_is_dropped,
    big_messages_within_raised_limits,
    contradictory_limits_refuse_to_start,
    big_messages_leave_memory_near_baseline,
    full_node_refuses_before_running_out_of_descriptors,
    seed_keepalive_closes_a_silent_peer,
    oversized_heads_get_431,
    bad_upgrades_get_400,
    absolute_form_request_target,
);

const MIB: u64 = 1024 * 1024;

/// How far a node's resident memory may stay above its baseline once a
/// burst is over.
const RSS_SLACK: u64 = 20 * MIB;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

// ----- raw WebSocket and HTTP -----

/// A client frame (masked, as clients must) with this first byte (FIN and
/// opcode) and payload.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend((n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend((n as u64).to_be_bytes());
        }
    }
    f.extend(mask);
    f.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f
}

/// A masked text frame.
fn text_frame(text: &str) -> Vec<u8> {
    masked(0x81, text.as_bytes())
}

fn subscribe_frame(room: &str) -> Vec<u8> {
    text_frame(&json!({"type": "SUBSCRIBE", "room": room}).to_string())
}

fn unsubscribe_frame(room: &str) -> Vec<u8> {
    text_frame(&json!({"type": "UNSUBSCRIBE", "room": room}).to_string())
}

/// The RFC 6455 example key, as a header line.
const KEY_HEADER: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";

/// A WebSocket upgrade request for `/` with these extra header lines.
fn upgrade_request(version: &str, headers: &[&str]) -> String {
    let mut r = format!(
        "GET / {version}\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

/// The status line's code and the rest of an HTTP response.
fn status_of(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, text)
}

/// Sends `raw` on a fresh connection and reads until the server ends it
/// (the bytes it sent before a reset count too: a server that answers a
/// head it did not read whole may reset after its answer). A server that
/// keeps the connection open is asked no further after [`TIMEOUT`]: what it
/// sent by then is its answer.
fn ask(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(raw);
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    status_of(&got)
}

/// Reads an HTTP response head (up to its blank line) within `timeout`.
fn read_head(s: &mut TcpStream, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no response within {timeout:?} (got {:?})",
                String::from_utf8_lossy(&got)
            ));
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut byte) {
            Ok(0) => {
                return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
            }
            Ok(_) => got.push(byte[0]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&got))),
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// A raw tungstenite client over a TCP stream of our own.
fn raw_ws(addr: SocketAddr) -> tungstenite::WebSocket<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    tungstenite::client(format!("ws://{addr}/"), s)
        .expect("WebSocket handshake")
        .0
}

// ----- watching a node while something happens -----

/// Polls `/healthz` and `/metrics` (`roomcast_broker_up`) on a thread of
/// its own every 20 ms, and the node's memory if given a PID, until
/// [`Watch::stop`].
struct Watch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<WatchReport>,
}

#[derive(Debug, Default)]
struct WatchReport {
    polls: usize,
    /// Every answer that was not `/healthz` 200 or `roomcast_broker_up` 1,
    /// with its time since the watch started.
    bad: Vec<(Duration, String)>,
    peak_rss: u64,
    /// The longest a `/healthz` took to answer.
    slowest: Duration,
}

impl Watch {
    fn start(addr: SocketAddr, pid: Option<u32>) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut r = WatchReport::default();
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let h = roomcast_tests::http_get(addr, "/healthz");
                    r.slowest = r.slowest.max(asked.elapsed());
                    if h.status != 200 {
                        r.bad.push((
                            started.elapsed(),
                            format!("/healthz {} {:?}", h.status, h.body),
                        ));
                    }
                    let m = roomcast_tests::http_get(addr, "/metrics");
                    let up = roomcast_tests::Metrics::parse(&m.body).get("roomcast_broker_up");
                    if m.status != 200 || up != 1 {
                        r.bad.push((
                            started.elapsed(),
                            format!("/metrics {} roomcast_broker_up {up}", m.status),
                        ));
                    }
                    if let Some(pid) = pid {
                        r.peak_rss = r.peak_rss.max(roomcast_tests::binary::rss_of(pid));
                    }
                    r.polls += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                r
            })
        };
        Watch { stop, thread }
    }

    fn stop(self) -> WatchReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the watch thread panicked")
    }
}

/// Waits until the node's resident memory is within [`RSS_SLACK`] of
/// `baseline` (an allocator may give memory back a little late); returns
/// the last reading.
fn wait_rss_near(node: &BinaryNode, baseline: u64, what: &str) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let rss = node.rss_bytes();
        if rss <= baseline + RSS_SLACK {
            return rss;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the node's RSS stayed at {:.1} MiB, {:.1} MiB above its baseline of {:.1} MiB \
             (allowed: {:.0} MiB)",
            mib(rss),
            mib(rss - baseline),
            mib(baseline),
            mib(RSS_SLACK)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ----- F1: churn and herd -----

/// One connection sends SUBSCRIBE/UNSUBSCRIBE pairs of new rooms as fast as
/// it can while a member of an unrelated room on the same node gets every
/// message a third connection sends there: the broker stays up (no probe
/// lost behind the churn, no reconnect), the subscriptions end exact, the
/// coalesced queue empties, and memory returns to where it was.
fn subscription_churn_keeps_the_node_healthy(rt: Runtime) {
    const PAIRS: usize = 100_000;
    const WRITES: usize = 8;
    let redis = RedisServer::start();
    // Probes every 500 ms that must come back within 1 s: several of them
    // go out during the churn.
    let url = redis.url();
    let mut flags = vec!["--redis", url.as_str()];
    flags.extend_from_slice(FAST_REDIS);
    let node = BinaryNode::start(rt, &flags, Spawn::default());
    node.wait_health(200);
    let addr = node.addr();

    let mut steady = Client::connect(addr);
    steady.subscribe("steady");
    redis.wait_numsub("steady", 1);
    let mut publisher = Client::connect(addr);
    let mut churner = Client::connect(addr);
    publisher.send("steady", "warm-up");
    assert_eq!(steady.recv(), "warm-up");

    // The churn, encoded up front: PAIRS × 2 frames in WRITES writes.
    let mut chunks: Vec<Vec<u8>> = vec![Vec::new(); WRITES];
    for i in 0..PAIRS {
        let room = format!("churn-{i}");
        let chunk = &mut chunks[i * WRITES / PAIRS];
        chunk.extend(subscribe_frame(&room));
        chunk.extend(unsubscribe_frame(&room));
    }
    let churn_bytes: usize = chunks.iter().map(Vec::len).sum();

    let m0 = node.metrics();
    let rss0 = node.rss_bytes();
    let watch = Watch::start(addr, Some(node.pid()));

    // The unrelated room's traffic, throughout: one message every 10 ms,
    // then an end marker; the member collects until the marker.
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publishing = {
        let stop = stop_publishing.clone();
        std::thread::spawn(move || {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                publisher.send("steady", format!("s-{n}"));
                n += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            publisher.send("steady", "end");
            (publisher, n)
        })
    };
    let receiving = std::thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            let m = steady.recv();
            if m == "end" {
                return (steady, got);
            }
            got.push(m);
        }
    });

    let started = Instant::now();
    {
        let mut tcp = churner.tcp();
        tcp.set_write_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        for chunk in &chunks {
            tcp.write_all(chunk).expect("write the churn");
        }
    }
    let written = started.elapsed();
    // Every churn frame handled: the frame count passes the churn's, and a
    // barrier on the churning connection itself comes back.
    node.wait_metric(
        "roomcast_frames_received_total",
        Duration::from_secs(90),
        |v| v >= m0.get("roomcast_frames_received_total") + 2 * PAIRS as u64,
    );
    churner.sync();
    let handled = started.elapsed();

    stop_publishing.store(true, Ordering::Relaxed);
    let (publisher, sent) = publishing.join().expect("the publisher panicked");
    let (steady, got) = receiving.join().expect("the steady member panicked");
    let report = watch.stop();

    let want: Vec<String> = (0..sent).map(|i| format!("s-{i}")).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "the unrelated room got {} of {sent} messages",
        got.len()
    );
    assert_eq!(got, want, "the unrelated room's messages, in order");
    assert!(
        report.bad.is_empty(),
        "during the churn ({} polls): {:?}",
        report.polls,
        &report.bad[..report.bad.len().min(20)]
    );
    assert!(report.polls >= 5, "only {} polls", report.polls);

    // Exactly the rooms with members remain subscribed, and nothing waits.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let channels = redis.channels();
        if channels == ["steady"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the churn, {} channels are subscribed, not just `steady`: {:?}; the node says \
             {} subscriptions, {} rooms, {} pending changes",
            channels.len(),
            &channels[..channels.len().min(10)],
            node.metric("roomcast_broker_subscriptions"),
            node.metric("roomcast_rooms"),
            node.metric("roomcast_broker_pending_subscription_changes"),
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.wait_metric(
        "roomcast_broker_pending_subscription_changes",
        TIMEOUT,
        |v| v == 0,
    );
    let m1 = node.metrics();
    for key in [
        "roomcast_broker_connects_total",
        "roomcast_broker_failures_total",
    ] {
        assert_eq!(
            m1.get(key),
            m0.get(key),
            "{key}: the link was lost during the churn"
        );
    }
    assert_eq!(m1.get("roomcast_broker_subscriptions"), 1);
    assert_eq!(m1.get("roomcast_rooms"), 1);
    assert_eq!(m1.get("roomcast_connections"), 3);

    let rss1 = wait_rss_near(&node, rss0, "after the churn");
    eprintln!(
        "[hardening] churn {}: {PAIRS} SUBSCRIBE/UNSUBSCRIBE pairs ({:.1} MiB in {WRITES} writes) \
         written in {written:.1?}, handled in {handled:.1?}: {:.0} pairs/s; {sent} messages in the \
         unrelated room, all delivered in order; {} health polls, all 200 and broker up; RSS \
         {:.1} MiB before, peak {:.1} MiB, {:.1} MiB after",
        rt.name(),
        mib(churn_bytes as u64),
        PAIRS as f64 / handled.as_secs_f64(),
        report.polls,
        mib(rss0),
        mib(report.peak_rss),
        mib(rss1),
    );
    churner.close();
    steady.close();
    publisher.close();
}

/// 2,000 connections arrive at once, each with 20 rooms of its own (its
/// upgrade request and its 20 SUBSCRIBEs in one write): `/healthz` stays
/// 200 and all 40,000 rooms end up subscribed, and unsubscribed once the
/// herd is gone.
fn connection_herd_is_subscribed(rt: Runtime) {
    const CLIENTS: usize = 2000;
    const ROOMS: usize = 20;
    const THREADS: usize = 4;
    let redis = RedisServer::start();
    let node = Node::redis(rt, &redis, &[]);
    let addr = node.addr();
    let m0 = node.metrics();
    let watch = Watch::start(addr, None);

    let started = Instant::now();
    let connectors: Vec<JoinHandle<Vec<TcpStream>>> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                (t * CLIENTS / THREADS..(t + 1) * CLIENTS / THREADS)
                    .map(|c| {
                        let mut req = upgrade_request("HTTP/1.1", &[KEY_HEADER]).into_bytes();
                        for r in 0..ROOMS {
                            req.extend(subscribe_frame(&format!("herd-{c}-{r}")));
                        }
                        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
                            .unwrap_or_else(|e| panic!("herd client {c}: connect: {e}"));
                        s.set_write_timeout(Some(TIMEOUT)).unwrap();
                        s.write_all(&req)
                            .unwrap_or_else(|e| panic!("herd client {c}: write: {e}"));
                        s
                    })
                    .collect()
            })
        })
        .collect();
    let mut herd = Vec::with_capacity(CLIENTS);
    for c in connectors {
        herd.extend(c.join().expect("a herd thread panicked"));
    }
    let connected = started.elapsed();
    for (c, s) in herd.iter_mut().enumerate() {
        let head = read_head(s, TIMEOUT).unwrap_or_else(|e| panic!("herd client {c}: {e}"));
        assert!(
            head.starts_with("HTTP/1.1 101 "),
            "herd client {c}: {head:?}"
        );
    }
    let upgraded = started.elapsed();

    let want: Vec<String> = {
        let mut v: Vec<String> = (0..CLIENTS)
            .flat_map(|c| (0..ROOMS).map(move |r| format!("herd-{c}-{r}")))
            .collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = redis.channels_matching("herd-*");
        if got == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} herd rooms subscribed after 60 s",
            got.len(),
            want.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let subscribed = started.elapsed();
    let report = watch.stop();
    assert!(
        report.bad.is_empty(),
        "during the herd ({} polls): {:?}",
        report.polls,
        &report.bad[..report.bad.len().min(20)]
    );
    for room in ["herd-0-0", "herd-1999-19", "herd-1000-7"] {
        assert_eq!(redis.numsub(room), 1, "{room}");
    }
    let m1 = node.metrics();
    assert_eq!(m1.get("roomcast_connections"), CLIENTS as u64);
    assert_eq!(m1.get("roomcast_rooms"), (CLIENTS * ROOMS) as u64);
    assert_eq!(
        m1.get("roomcast_broker_subscriptions"),
        (CLIENTS * ROOMS) as u64
    );
    assert_eq!(m1.get("roomcast_broker_pending_subscription_changes"), 0);
    assert_eq!(
        m1.get("roomcast_broker_connects_total"),
        m0.get("roomcast_broker_connects_total"),
        "the link was lost during the herd"
    );
    eprintln!(
        "[hardening] herd {}: {CLIENTS} connections with {ROOMS} rooms each written in \
         {connected:.1?}, all upgraded at {upgraded:.1?}, all {} rooms subscribed at \
         {subscribed:.1?} (PUBSUB CHANNELS herd-*); {} health polls, all 200 and broker up",
        rt.name(),
        CLIENTS * ROOMS,
        report.polls
    );

    // The herd leaves at once (its sockets closed): every room is dropped,
    // and the broker stays up meanwhile.
    let watch = Watch::start(addr, None);
    drop(herd);
    let left = Instant::now();
    roomcast_tests::wait_until(
        "every herd room is unsubscribed",
        Duration::from_secs(60),
        || redis.channels_matching("herd-*").is_empty(),
    );
    let unsubscribed = left.elapsed();
    node.wait_metric("roomcast_connections", |v| v == 0);
    let report_leaving = watch.stop();
    assert!(
        report_leaving.bad.is_empty(),
        "while the herd left ({} polls): {:?}",
        report_leaving.polls,
        &report_leaving.bad[..report_leaving.bad.len().min(20)]
    );
    eprintln!(
        "[hardening] herd {}: slowest /healthz {:.1?} while it arrived; all rooms unsubscribed \
         {unsubscribed:.1?} after the herd left, slowest /healthz meanwhile {:.1?}",
        rt.name(),
        report.slowest,
        report_leaving.slowest,
    );
}

// ----- F2: a paused Redis -----

fn redis_paused_for_writes(rt: Runtime) {
    redis_paused(rt, "WRITE");
}

fn redis_paused_entirely(rt: Runtime) {
    redis_paused(rt, "ALL");
}

/// `CLIENT PAUSE 5000 <mode>` while a client publishes numbered messages at
/// about 200/s into a room whose member is on another node. The publishing
/// node turns unhealthy within its probe interval and timeout, stays so
/// throughout the pause (a paused Redis answers PING under WRITE, but no
/// probe comes back), confirms nothing meanwhile, and afterwards every
/// message is delivered or counted.
///
/// The member's node runs with a Redis timeout longer than the pause, so it
/// keeps its subscription throughout: every publish Redis carries out
/// reaches the member (a test subscriber of our own counts them too).
fn redis_paused(rt: Runtime, mode: &str) {
    const PAUSE_MS: u64 = 5000;
    const PING_INTERVAL: Duration = Duration::from_millis(500);
    const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
    let redis = RedisServer::start();
    let flags = [
        "--publish-buffer",
        "100000",
        "--redis-probe-interval",
        "500ms",
        "--redis-timeout",
        "1s",
        "--redis-connect-timeout",
        "1s",
        "--reconnect-min",
        "50ms",
        "--reconnect-max",
        "500ms",
    ];
    let n1 = Node::redis(rt, &redis, &flags);
    let n2 = Node::redis(
        rt,
        &redis,
        &["--redis-probe-interval", "2s", "--redis-timeout", "20s"],
    );
    let room = "paused";
    let mut member = n2.client();
    member.subscribe(room);
    redis.wait_numsub(room, 1);
    let tap = redis.subscriber(room);
    let mut sender = n1.client();
    sender.send(room, "warm-up");
    assert_eq!(member.recv(), "warm-up");
    roomcast_tests::wait_until("the tap saw the warm-up", TIMEOUT, || tap.count() == 1);
    let m0 = n1.metrics();

    // The member collects until told to stop (and then until quiet).
    let stop_receiving = Arc::new(AtomicBool::new(false));
    let receiving = {
        let stop = stop_receiving.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            loop {
                match member.recv_within(Duration::from_millis(300)) {
                    Some(m) => got.push(m),
                    None if stop.load(Ordering::Relaxed) => return got,
                    None => {}
                }
            }
        })
    };
    // The sender: message i at i × 5 ms, until told to stop.
    let stop_sending = Arc::new(AtomicBool::new(false));
    let sending = {
        let stop = stop_sending.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                sender.send(room, format!("m-{n}"));
                n += 1;
                let next = t0 + Duration::from_millis(5) * n;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            n as usize
        })
    };

    std::thread::sleep(Duration::from_secs(1));
    let paused_at = Instant::now();
    redis.client_pause(PAUSE_MS, mode);
    let pause_ends = paused_at + Duration::from_millis(PAUSE_MS);
    // Unhealthy within the probe interval and timeout (and some slack for a
    // busy machine).
    let limit = PING_INTERVAL + REDIS_TIMEOUT + Duration::from_secs(1);
    let noticed = loop {
        let h = n1.get("/healthz");
        if h.status == 503 {
            break paused_at.elapsed();
        }
        assert!(
            paused_at.elapsed() < limit,
            "{mode} pause: /healthz still {} after {limit:?}",
            h.status
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let during = n1.metrics();
    assert_eq!(during.get("roomcast_broker_up"), 0, "{mode} pause");
    let tap_during = tap.count();
    // Unhealthy until the pause ends: a link that connects (and answers
    // PING, under WRITE) but cannot publish is never up. (Watched until a
    // second before the end, so that the readings below are surely taken
    // within the pause.)
    let mut polls = 0;
    while Instant::now() + Duration::from_secs(1) < pause_ends {
        let h = n1.get("/healthz");
        assert_eq!(
            h.status,
            503,
            "{mode} pause: /healthz {} {:?} at {:?} into the pause",
            h.status,
            h.body,
            paused_at.elapsed()
        );
        polls += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let late = n1.metrics();
    assert_eq!(late.get("roomcast_broker_up"), 0, "{mode} pause");
    assert_eq!(
        late.get("roomcast_messages_published_total"),
        during.get("roomcast_messages_published_total"),
        "{mode} pause: publishes confirmed while Redis carried out none"
    );
    assert_eq!(tap.count(), tap_during, "{mode} pause: Redis published");
    let held = late.get("roomcast_publish_buffer_depth");
    assert!(
        Instant::now() < pause_ends,
        "{mode} pause: the readings took until after the pause"
    );

    n1.wait_health(200);
    let recovered = paused_at.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop_sending.store(true, Ordering::Relaxed);
    let sent = sending.join().expect("the sender panicked");
    // Settled: nothing held, and Redis has stopped publishing.
    n1.wait_metric("roomcast_publish_buffer_depth", |v| v == 0);
    let mut seen = tap.count();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = tap.count();
        if now == seen {
            break;
        }
        seen = now;
    }
    stop_receiving.store(true, Ordering::Relaxed);
    let got = receiving.join().expect("the member panicked");
    let m1 = n1.metrics();

    let delta = |k: &str| m1.get(k) - m0.get(k);
    let published = delta("roomcast_messages_published_total");
    let unknown = delta("roomcast_publishes_unknown_total");
    let dropped = delta("roomcast_publish_buffer_dropped_total");
    let redis_published = tap.count() as u64 - 1;
    let mut delivered = HashSet::new();
    for m in &got {
        let i: usize = m
            .strip_prefix("m-")
            .and_then(|i| i.parse().ok())
            .unwrap_or_else(|| panic!("{mode} pause: unexpected message {m:?}"));
        assert!(i < sent, "{mode} pause: {m} was never sent");
        assert!(delivered.insert(i), "{mode} pause: {m} delivered twice");
    }
    let delivered = delivered.len() as u64;
    eprintln!(
        "[hardening] pause {mode} {}: /healthz 503 after {noticed:.1?} and through the pause \
         ({polls} polls), 200 again {recovered:.1?} after it began; {held} held at the end of the \
         pause; sent {sent}, delivered {delivered}, published (confirmed) {published}, unknown \
         {unknown}, dropped {dropped}; Redis published {redis_published}",
        rt.name()
    );
    assert_eq!(
        dropped, 0,
        "{mode} pause: the publish buffer is large enough"
    );
    assert!(
        delivered + unknown >= sent as u64,
        "{mode} pause: {sent} sent, {delivered} delivered, {unknown} unknown: {} unaccounted for",
        sent as u64 - delivered - unknown
    );
    assert!(
        published <= redis_published,
        "{mode} pause: {published} counted as published, Redis published {redis_published}"
    );
    assert_eq!(
        delivered, redis_published,
        "{mode} pause: the member's node held its subscription, so it got all Redis published"
    );
}

// ----- F3: the close handshake -----

/// Starts the close handshake on `ws` with `code`; returns the code of
/// the close frame the node answers with, after checking that the node then
/// ends the stream with a FIN (not a reset) within [`CLOSE_TIMEOUT`].
fn close_ws(mut ws: tungstenite::WebSocket<TcpStream>, code: u16) -> u16 {
    ws.close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "bye".into(),
    }))
    .expect("send the close frame");
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    let answer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "close {code}: no answer within {CLOSE_TIMEOUT:?}"
        );
        ws.get_mut().set_read_timeout(Some(left)).unwrap();
        match ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(other) => panic!("close {code}: got {other:?} before the close answer"),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("close {code}: {e} instead of the close answer"),
        }
    };
    let answer = answer.unwrap_or_else(|| panic!("close {code}: answered with no status code"));
    // Then the end of the stream: EOF, with nothing after the close frame.
    let tcp = ws.get_mut();
    tcp.set_read_timeout(Some(CLOSE_TIMEOUT)).unwrap();
    let mut rest = [0u8; 64];
    match tcp.read(&mut rest) {
        Ok(0) => {}
        Ok(n) => panic!("close {code}: {n} bytes after the close answer"),
        Err(e) => panic!("close {code}: {e} instead of the end of the stream"),
    }
    u16::from(answer.code)
}

fn close_with(addr: SocketAddr, code: u16) -> u16 {
    close_ws(raw_ws(addr), code)
}

/// A client's close 1000 is echoed (RFC 6455 §5.5.1), then the node ends
/// the stream; the node forgets the connection.
fn close_handshake_is_echoed(rt: Runtime) {
    let redis = RedisServer::start();
    let node = Node::redis(rt, &redis, &[]);
    assert_eq!(close_with(node.addr(), 1000), 1000);
    // A member that leaves this way leaves its room too.
    let mut ws = raw_ws(node.addr());
    ws.send(Message::text(
        json!({"type": "SUBSCRIBE", "room": "leaving"}).to_string(),
    ))
    .unwrap();
    redis.wait_numsub("leaving", 1);
    assert_eq!(close_ws(ws, 1000), 1000);
    redis.wait_numsub("leaving", 0);
    node.wait_metric("roomcast_connections", |v| v == 0);
}

/// Close codes a client may not send (999, 5000) are answered with 1002.
fn invalid_close_codes_are_answered_with_1002(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    for code in [999, 5000] {
        assert_eq!(close_with(node.addr(), code), 1002, "close {code}");
    }
    // Codes a client may send are echoed.
    for code in [1001, 3000, 4999] {
        assert_eq!(close_with(node.addr(), code), code, "close {code}");
    }
    node.wait_metric("roomcast_connections", |v| v == 0);
}

// ----- F4: big messages -----

/// A backend payload of `len` bytes for `room`: a string message of `x`s.
fn big_payload(room: &str, len: usize, tag: &str) -> String {
    let overhead = seed_payload(room, &json!(tag)).len();
    let message = format!("{tag}{}", "x".repeat(len - overhead));
    let p = seed_payload(room, &json!(message));
    assert_eq!(p.len(), len);
    p
}

/// With the default limits, a backend PUBLISH of 1.05 MiB (over the
/// outbound limit and the broker payload cap, both 1 MiB) is dropped and
/// counted; nobody is closed.
fn oversized_backend_publish_is_dropped(rt: Runtime) {
    let redis = RedisServer::start();
    let node = Node::redis(rt, &redis, &[]);
    let mut members: Vec<Client> = (0..3).map(|_| node.client()).collect();
    for m in &mut members {
        m.join("big");
    }
    redis.wait_numsub("big", 1);
    let payload = big_payload("big", (1.05 * MIB as f64) as usize, "big:");
    assert_eq!(redis.publish("big", &payload), 1);
    node.wait_metric("roomcast_broker_payloads_too_large_total", |v| v == 1);
    redis.publish("big", &seed_payload("big", &json!("small")));
    for m in &mut members {
        assert_eq!(m.recv(), "small", "the big payload must not arrive");
    }
    let m = node.metrics();
    assert_eq!(m.get("roomcast_slow_consumer_closes_total"), 0);
    assert_eq!(m.get("roomcast_connections"), 3);
    assert_eq!(m.get("roomcast_broker_payloads_dropped_total"), 0);
    for c in members {
        c.close();
    }
}

/// With `--max-outbound-bytes 4194304 --max-broker-payload-bytes 2097152`,
/// a 1.5 MiB backend publish reaches every member that reads, and closes
/// none of them.
fn big_messages_within_raised_limits(rt: Runtime) {
    let redis = RedisServer::start();
    let node = Node::redis(
        rt,
        &redis,
        &[
            "--max-outbound-bytes",
            "4194304",
            "--max-broker-payload-bytes",
            "2097152",
        ],
    );
    let mut members: Vec<Client> = (0..3).map(|_| node.client()).collect();
    for m in &mut members {
        m.join("big");
    }
    redis.wait_numsub("big", 1);
    let len = (1.5 * MIB as f64) as usize;
    for round in 0..2 {
        let tag = format!("big-{round}:");
        let payload = big_payload("big", len, &tag);
        let want: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let want = want["message"].as_str().unwrap();
        assert_eq!(redis.publish("big", &payload), 1);
        for (i, m) in members.iter_mut().enumerate() {
            let got = m.recv();
            assert!(
                got == want,
                "member {i}, round {round}: got {} bytes starting {:?}",
                got.len(),
                &got[..got.len().min(20)]
            );
        }
    }
    redis.publish("big", &seed_payload("big", &json!("small")));
    for m in &mut members {
        assert_eq!(m.recv(), "small");
    }
    let m = node.metrics();
    assert_eq!(m.get("roomcast_slow_consumer_closes_total"), 0);
    assert_eq!(m.get("roomcast_broker_payloads_too_large_total"), 0);
    assert_eq!(m.get("roomcast_connections"), 3);
    for c in members {
        c.close();
    }
}

/// Limits that contradict each other stop the real binary before it
/// serves: exit code 2, and the message names both flags.
fn contradictory_limits_refuse_to_start(rt: Runtime) {
    for (flag, value) in [
        ("--max-frame-bytes", "2000000"),
        ("--max-broker-payload-bytes", "2000000"),
    ] {
        let node = BinaryNode::spawn(
            rt,
            &["--listen", "127.0.0.1:0", flag, value],
            Spawn::default(),
        );
        let (code, log) = node.wait_exit(TIMEOUT);
        assert_eq!(code, Some(2), "{flag} {value}: exit code; log {log:?}");
        assert!(
            log.iter()
                .any(|l| l.contains(flag) && l.contains("--max-outbound-bytes")),
            "{flag} {value}: no line names both flags: {log:?}"
        );
        assert!(
            !log.iter().any(|l| l.contains("listening on")),
            "{flag} {value}: it served: {log:?}"
        );
    }
}

/// A few 1.5 MiB messages to 100 members who read them: the node's memory
/// comes back to within [`RSS_SLACK`] of where it was before.
fn big_messages_leave_memory_near_baseline(rt: Runtime) {
    const MEMBERS: usize = 100;
    const THREADS: usize = 4;
    const ROUNDS: usize = 3;
    let redis = RedisServer::start();
    let node = BinaryNode::start(
        rt,
        &[
            "--redis",
            &redis.url(),
            "--max-outbound-bytes",
            "4194304",
            "--max-broker-payload-bytes",
            "2097152",
        ],
        Spawn::default(),
    );
    node.wait_health(200);
    let mut members: Vec<Client> = (0..MEMBERS).map(|_| Client::connect(node.addr())).collect();
    for m in &mut members {
        m.subscribe("bigmem");
    }
    members[MEMBERS - 1].sync();
    redis.wait_numsub("bigmem", 1);
    redis.publish("bigmem", &seed_payload("bigmem", &json!("warm-up")));
    for m in &mut members {
        assert_eq!(m.recv(), "warm-up");
    }
    let rss0 = node.rss_bytes();

    // The members read on THREADS threads; a round ends when all have its
    // message, and only then is the next one published.
    let len = (1.5 * MIB as f64) as usize;
    let payloads: Vec<String> = (0..ROUNDS)
        .map(|round| big_payload("bigmem", len, &format!("round-{round}:")))
        .collect();
    let wants: Arc<Vec<String>> = Arc::new(
        payloads
            .iter()
            .map(|p| {
                let v: serde_json::Value = serde_json::from_str(p).unwrap();
                v["message"].as_str().unwrap().to_string()
            })
            .collect(),
    );
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut groups: Vec<Vec<Client>> = (0..THREADS).map(|_| Vec::new()).collect();
    for (i, m) in members.into_iter().enumerate() {
        groups[i % THREADS].push(m);
    }
    let readers: Vec<JoinHandle<Vec<Client>>> = groups
        .into_iter()
        .map(|mut group| {
            let (barrier, failures, wants) = (barrier.clone(), failures.clone(), wants.clone());
            std::thread::spawn(move || {
                for (round, want) in wants.iter().enumerate() {
                    for m in &mut group {
                        match m.recv_within(TIMEOUT) {
                            Some(got) if got == *want => {}
                            other => failures.lock().unwrap().push(format!(
                                "round {round}: got {:?} bytes",
                                other.map(|s| s.len())
                            )),
                        }
                    }
                    barrier.wait();
                }
                group
            })
        })
        .collect();
    let mut peak = rss0;
    for payload in &payloads {
        assert_eq!(redis.publish("bigmem", payload), 1);
        barrier.wait();
        peak = peak.max(node.rss_bytes());
        let f = failures.lock().unwrap().clone();
        assert!(f.is_empty(), "{f:?}");
    }
    let members: Vec<Client> = readers
        .into_iter()
        .flat_map(|r| r.join().expect("a reader panicked"))
        .collect();
    let m = node.metrics();
    assert_eq!(m.get("roomcast_slow_consumer_closes_total"), 0);
    assert_eq!(m.get("roomcast_connections"), MEMBERS as u64);
    let settled_at = Instant::now();
    let after = node.rss_bytes();
    eprintln!(
        "[hardening] big messages {}: {ROUNDS} × {:.1} MiB to {MEMBERS} members; RSS {:.1} MiB \
         before, peak {:.1} MiB, {:.1} MiB right after",
        rt.name(),
        mib(len as u64),
        mib(rss0),
        mib(peak),
        mib(after),
    );
    let settled = wait_rss_near(&node, rss0, "after the big messages");
    eprintln!(
        "[hardening] big messages {}: RSS {:.1} MiB {:.1?} later",
        rt.name(),
        mib(settled),
        settled_at.elapsed()
    );
    drop(members);
}

// ----- F5: a full node -----

/// What became of one WebSocket upgrade attempt.
enum Attempt {
    Upgraded(TcpStream),
    /// Answered with this status and response.
    Refused(u16, String),
    /// Neither: dropped, reset, or no answer in time.
    Failed(String),
}

fn try_upgrade(addr: SocketAddr, timeout: Duration) -> Attempt {
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return Attempt::Failed(format!("connect: {e}")),
    };
    s.set_write_timeout(Some(timeout)).unwrap();
    let req = upgrade_request("HTTP/1.1", &[KEY_HEADER]);
    if let Err(e) = s.write_all(req.as_bytes()) {
        return Attempt::Failed(format!("write: {e}"));
    }
    match read_head(&mut s, timeout) {
        Ok(head) if head.starts_with("HTTP/1.1 101 ") => Attempt::Upgraded(s),
        Ok(head) => {
            let body = read_until_closed(&mut s, timeout).unwrap_or_default();
            let (status, _) = status_of(head.as_bytes());
            Attempt::Refused(status, head + &String::from_utf8_lossy(&body))
        }
        Err(e) => Attempt::Failed(e),
    }
}

/// Under `RLIMIT_NOFILE` 256 the default `--max-connections` is 256 − 64:
/// the node refuses upgrades there (503) while /healthz says 503 "full"
/// and /metrics answers from the operator reserve; past the reserve it
/// drops sockets at once. It never runs out of descriptors: no `accept
/// failed` storm in its log.
fn full_node_refuses_before_running_out_of_descriptors(rt: Runtime) {
    const NOFILE: u64 = 256;
    const RESERVE: usize = 64;
    const OPERATOR_RESERVE: usize = 32;
    let max = NOFILE as usize - RESERVE;
    let redis = RedisServer::start();
    let node = BinaryNode::start(
        rt,
        &["--redis", &redis.url(), "--handshake-timeout", "60s"],
        Spawn {
            open_files: Some(NOFILE),
            ..Spawn::default()
        },
    );
    node.wait_health(200);
    let addr = node.addr();

    let mut open = Vec::new();
    let mut refused = Vec::new();
    for attempt in 0..2 * NOFILE as usize {
        match try_upgrade(addr, Duration::from_secs(5)) {
            Attempt::Upgraded(s) => open.push(s),
            Attempt::Refused(status, text) => {
                assert_eq!(status, 503, "attempt {attempt}: {text:?}");
                assert!(text.ends_with("connection limit reached\n"), "{text:?}");
                refused.push(open.len());
                if refused.len() == 3 {
                    break;
                }
                // A socket of a moment ago may still be counted.
                std::thread::sleep(Duration::from_millis(200));
            }
            Attempt::Failed(e) => panic!(
                "attempt {attempt}, with {} connections open, was neither upgraded nor refused: \
                 {e}; the node has {} descriptors open; its log ends {:?}",
                open.len(),
                node.open_fds(),
                node.log().iter().rev().take(5).collect::<Vec<_>>()
            ),
        }
    }
    assert_eq!(refused.len(), 3, "never refused with {} open", open.len());
    assert_eq!(
        open.len(),
        max,
        "the limit under RLIMIT_NOFILE {NOFILE}: refused with {refused:?} open"
    );
    let fds_at_limit = node.open_fds();

    // At the limit, the operators are still answered.
    let h = node.get("/healthz");
    assert_eq!((h.status, h.body.as_str()), (503, "full\n"), "{h:?}");
    let m = node.metrics();
    assert_eq!(m.get("roomcast_connections"), max as u64);
    assert!(m.get("roomcast_rejected_connections_total") >= 3);

    // Idle sockets take the operator reserve; past it, sockets are dropped
    // at once. Still no descriptor runs out.
    let mut extra: Vec<TcpStream> = (0..OPERATOR_RESERVE + 40)
        .map(|_| TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut held = 0;
    for s in &mut extra {
        s.set_nonblocking(true).unwrap();
        match s.read(&mut [0u8; 16]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held += 1,
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("an idle socket was sent {n} bytes"),
        }
    }
    let fds_full = node.open_fds();
    assert!(
        held <= OPERATOR_RESERVE,
        "{held} idle sockets held past the limit (reserve {OPERATOR_RESERVE})"
    );
    assert!(
        held + 2 >= OPERATOR_RESERVE,
        "only {held} idle sockets held: the reserve is {OPERATOR_RESERVE}"
    );
    assert!(
        fds_full < NOFILE as usize,
        "{fds_full} descriptors open of {NOFILE}"
    );
    // More while the reserve is taken: each is dropped (EOF or reset) at once.
    for i in 0..50 {
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        assert!(
            read_until_closed(&mut s, Duration::from_secs(5)).is_some(),
            "socket {i} past the reserve was not dropped"
        );
    }
    // Once the idle sockets are gone (the node notices soon), the reserve
    // answers the operators again.
    drop(extra);
    let deadline = Instant::now() + TIMEOUT;
    let health = loop {
        let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let got = read_until_closed(&mut s, TIMEOUT).unwrap_or_default();
        if !got.is_empty() {
            break String::from_utf8_lossy(&got).into_owned();
        }
        assert!(Instant::now() < deadline, "/healthz still dropped");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(health.starts_with("HTTP/1.1 503 "), "{health:?}");
    assert!(health.ends_with("\r\n\r\nfull\n"), "{health:?}");
    let m = node.metrics();
    let accept_errors = m.get("roomcast_accept_errors_total");
    let accept_log = node
        .log()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    eprintln!(
        "[hardening] full node {}: refused after {} connections (RLIMIT_NOFILE {NOFILE}), {} \
         descriptors open then, {fds_full} with the reserve taken; {} refused in all; accept \
         errors {accept_errors}, {accept_log} `accept failed` log lines",
        rt.name(),
        open.len(),
        fds_at_limit,
        m.get("roomcast_rejected_connections_total"),
    );
    assert!(accept_log <= 2, "{accept_log} `accept failed` lines");
    assert!(accept_errors <= 2, "{accept_errors} accept errors");

    drop(open);
    node.wait_health(200);
}

// ----- F6: keepalive and the HTTP head -----

/// With `--ws-ping-interval 500ms --ws-pong-timeout 500ms`, a client that
/// never reads (so never answers a ping) is closed 1008 "no pong"; one
/// that reads (its library answers each ping) stays.
fn seed_keepalive_closes_a_silent_peer(rt: Runtime) {
    let node = Node::embedded(
        rt,
        &["--ws-ping-interval", "500ms", "--ws-pong-timeout", "500ms"],
    );
    let silent = node.client();
    let mut answering = node.client();
    answering.join("alive");
    // Six ping intervals: the answering client reads, so it answers.
    answering.expect_silence(Duration::from_secs(3));
    node.wait_metric("roomcast_no_pong_closes_total", |v| v == 1);
    silent.expect_close(1008, "no pong");
    answering.send("alive", "still here");
    assert_eq!(answering.recv(), "still here");
    assert_eq!(node.metric("roomcast_connections"), 1);
    assert_eq!(node.metric("roomcast_no_pong_closes_total"), 1);
    answering.close();
}

/// A request head with more than 64 header lines, or over 8 KiB, is
/// answered 431 (an upgrade too); one at the limits is served.
fn oversized_heads_get_431(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    let addr = node.addr();
    let with_headers = |n: usize| {
        let mut r = "GET /healthz HTTP/1.1\r\n".to_string();
        for i in 0..n {
            r.push_str(&format!("x-h{i}: v\r\n"));
        }
        r.push_str("\r\n");
        r
    };
    assert_eq!(ask(addr, with_headers(64).as_bytes()).0, 200);
    let (status, text) = ask(addr, with_headers(65).as_bytes());
    assert_eq!(status, 431, "65 headers: {text:?}");
    assert!(
        text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{text:?}"
    );

    // A head of exactly 8 KiB is served; one byte more is 431.
    let padded = |len: usize| {
        let base = "GET /healthz HTTP/1.1\r\nHost: x\r\nx-pad: \r\n\r\n".len();
        format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nx-pad: {}\r\n\r\n",
            "p".repeat(len - base)
        )
    };
    assert_eq!(ask(addr, padded(8192).as_bytes()).0, 200);
    assert_eq!(ask(addr, padded(8193).as_bytes()).0, 431);
    // A browser's upgrade with a big cookie.
    let cookie = format!("Cookie: session={}", "c".repeat(9000));
    let req = upgrade_request("HTTP/1.1", &[KEY_HEADER, &cookie]);
    let (status, text) = ask(addr, req.as_bytes());
    assert_eq!(status, 431, "an upgrade with a 9 KB cookie: {text:?}");
    // The node goes on serving.
    let mut c = node.client();
    c.join("after");
    c.send("after", "served");
    assert_eq!(c.recv(), "served");
}

/// An upgrade with two Sec-WebSocket-Key headers, a key that is not the
/// base64 of 16 bytes, or HTTP/1.0 is answered 400, saying why.
fn bad_upgrades_get_400(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    let addr = node.addr();
    let key = KEY_HEADER;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "two keys",
            upgrade_request(
                "HTTP/1.1",
                &[key, "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA=="],
            ),
            "more than one Sec-WebSocket-Key",
        ),
        (
            "the same key twice",
            upgrade_request("HTTP/1.1", &[key, key]),
            "more than one Sec-WebSocket-Key",
        ),
        (
            // base64 of the 10 bytes "the sample"
            "a key of 10 bytes",
            upgrade_request("HTTP/1.1", &["Sec-WebSocket-Key: dGhlIHNhbXBsZQ=="]),
            "Sec-WebSocket-Key is not base64 of 16 bytes",
        ),
        (
            "a key that is not base64",
            upgrade_request("HTTP/1.1", &["Sec-WebSocket-Key: not*base64*at*all!!!!!"]),
            "Sec-WebSocket-Key is not base64 of 16 bytes",
        ),
        (
            "HTTP/1.0",
            upgrade_request("HTTP/1.0", &[key]),
            "an upgrade needs HTTP/1.1",
        ),
    ];
    for (what, req, reason) in cases {
        let (status, text) = ask(addr, req.as_bytes());
        assert_eq!(status, 400, "{what}: {text:?}");
        assert!(text.contains(reason), "{what}: {text:?}");
    }
    // The same request with one good key is upgraded.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(upgrade_request("HTTP/1.1", &[key]).as_bytes())
        .unwrap();
    let head = read_head(&mut s, TIMEOUT).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    // The connection is counted once its task has opened it, just after the 101.
    roomcast_tests::wait_until("the upgraded connection is counted", TIMEOUT, || {
        node.metric("roomcast_connections") == 1
    });
}

/// A request target in absolute form (`GET http://host/metrics`, RFC 9112
/// §3.2.2) is routed like its path.
fn absolute_form_request_target(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    let addr = node.addr();
    let (status, text) = ask(
        addr,
        format!("GET http://{addr}/metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    );
    assert_eq!(status, 200, "{text:?}");
    assert!(
        text.contains("# TYPE roomcast_connections gauge"),
        "{text:?}"
    );
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        roomcast_tests::Metrics::parse(body).get("roomcast_connections"),
        0
    );
    let (status, text) = ask(
        addr,
        format!("GET http://{addr}/healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes(),
    );
    assert_eq!(
        (status, text.ends_with("\r\n\r\nok\n")),
        (200, true),
        "{text:?}"
    );
}
