//! The plain-HTTP side of the port: /healthz, /metrics, the chat page, 404s,
//! garbage and idle connections.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use roomcast_tests::{
    Client, FAST_REDIS, Node, RedisServer, Runtime, TIMEOUT, free_port, http_request,
    read_until_closed, redis_url, scenarios,
};

scenarios!(
    healthz_follows_redis,
    metrics_count_what_happened,
    routes,
    garbage_is_dropped_at_once,
    idle_connection_dropped_after_handshake_timeout,
    connections_over_the_limit_are_refused,
    frames_sent_with_the_upgrade_request_are_kept,
);

/// /healthz is 503 while Redis is unreachable and 200 while it is connected.
fn healthz_follows_redis(rt: Runtime) {
    // Redis does not exist yet.
    let port = free_port();
    let node = Node::start(rt, Some(&redis_url(port)), FAST_REDIS);
    let r = node.get("/healthz");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body, "broker unavailable\n");
    assert_eq!(node.metric("roomcast_broker_up"), 0);

    let mut redis = RedisServer::start_on(port);
    node.wait_health(200);
    assert_eq!(node.get("/healthz").body, "ok\n");
    assert_eq!(node.metric("roomcast_broker_up"), 1);

    redis.kill();
    node.wait_health(503);
    redis.restart();
    node.wait_health(200);
    assert!(node.metric("roomcast_broker_connects_total") >= 2);
    assert!(node.metric("roomcast_broker_failures_total") >= 1);
}

/// /metrics counts connections, rooms, deliveries and bad frames by reason.
fn metrics_count_what_happened(rt: Runtime) {
    let redis = RedisServer::start();
    // Plain rooms: open mode's presence would add its joins and leaves to
    // the broker's messages.
    let cfg = roomcast_tests::auth::plain_config();
    let node = Node::redis(rt, &redis, &["--config", cfg.path()]);
    let m0 = node.metrics();
    assert_eq!(m0.get("roomcast_connections"), 0);
    assert_eq!(m0.get("roomcast_rooms"), 0);
    assert_eq!(m0.get("roomcast_broker_up"), 1);

    let mut a = node.client();
    let mut b = node.client();
    a.join("m1");
    a.join("m2");
    b.join("m1");
    // `join` leaves a room of its own afterwards: wait until that is done.
    node.wait_metric("roomcast_rooms", |v| v == 2);
    let m1 = node.metrics();
    for i in 0..3 {
        a.send("m1", format!("x{i}"));
    }
    assert_eq!(a.recv_n(3), ["x0", "x1", "x2"]);
    assert_eq!(b.recv_n(3), ["x0", "x1", "x2"]);
    b.send("m2", "to m2");
    assert_eq!(a.recv(), "to m2");
    let m2 = node.metrics();
    let delta = |k: &str| m2.get(k) - m1.get(k);
    assert_eq!(m2.get("roomcast_connections"), 2);
    assert_eq!(m2.get("roomcast_connections_opened_total"), 2);
    assert_eq!(m2.get("roomcast_rooms"), 2);
    assert_eq!(m2.get("roomcast_broker_subscriptions"), 2);
    assert_eq!(delta("roomcast_frames_received_total"), 4);
    assert_eq!(delta("roomcast_messages_published_total"), 4);
    assert_eq!(delta("roomcast_broker_messages_total"), 4);
    assert_eq!(delta("roomcast_deliveries_total"), 7);
    assert!(delta("roomcast_http_requests_total") >= 1);
    assert_eq!(m2.get("roomcast_publish_buffer_depth"), 0);
    assert_eq!(m2.get("roomcast_slow_consumer_closes_total"), 0);

    // Bad input, by reason.
    let mut bad = node.client();
    bad.send_text("not json");
    bad.expect_close(1008, "frame is not valid JSON");
    let mut bad = node.client();
    bad.send_binary(b"\x01");
    bad.expect_close(1003, "binary frames are not supported");
    let mut bad = node.client();
    bad.send_text("[]");
    bad.expect_close(1008, "frame is not a JSON object");
    let m3 = node.wait_metric("roomcast_connections", |v| v == 2);
    assert_eq!(m3, 2);
    let m3 = node.metrics();
    assert_eq!(m3.get("roomcast_connections_opened_total"), 5);
    assert_eq!(m3.bad_frames("not_json"), 1);
    assert_eq!(m3.bad_frames("binary"), 1);
    assert_eq!(m3.bad_frames("not_object"), 1);
    assert_eq!(m3.bad_frames("unknown_type"), 0);

    // Leaving shows in the gauges.
    a.close();
    b.close();
    node.wait_metric("roomcast_connections", |v| v == 0);
    node.wait_metric("roomcast_rooms", |v| v == 0);
    node.wait_metric("roomcast_broker_subscriptions", |v| v == 0);
}

fn routes(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    let addr = node.addr();

    let r = node.get("/nope");
    assert_eq!(r.status, 404, "{r:?}");
    let r = node.get("/");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("content-type: text/html"),
        "{}",
        r.head
    );
    assert!(r.body.contains("<title>roomcast</title>"), "{}", r.body);
    assert!(r.body.contains("<h1>roomcast</h1>"));
    let r = node.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = node.get("/metrics?x=1");
    assert_eq!(r.status, 200);
    assert!(r.body.contains("# TYPE roomcast_connections gauge"));

    let r = http_request(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405, "{r:?}");
    let r = http_request(addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((r.status, r.body.as_str()), (200, ""));
    let r = http_request(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(r.status, 400, "upgrade without a key: {r:?}");

    // The WebSocket answers at any path.
    let mut c = Client::connect_path(addr, "/chat/room?x=1");
    c.join("p");
    c.send("p", "at any path");
    assert_eq!(c.recv(), "at any path");

    let bare = Node::embedded(rt, &["--no-chat-page"]);
    assert_eq!(bare.get("/").status, 404);
    assert_eq!(bare.get("/healthz").status, 200);
}

/// Bytes that are not HTTP close the connection at once (long before the
/// handshake timeout); the node goes on serving.
fn garbage_is_dropped_at_once(rt: Runtime) {
    let node = Node::embedded(rt, &["--handshake-timeout", "60s"]);
    let before = node.metric("roomcast_handshake_failures_total");
    let garbage: [&[u8]; 3] = [
        b"hello there\r\n\r\n",
        // The start of a TLS ClientHello.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\x00\x00\x00\x00\r\n\r\n",
    ];
    for g in garbage {
        let mut s = TcpStream::connect(node.addr()).unwrap();
        s.write_all(g).unwrap();
        let got = read_until_closed(&mut s, Duration::from_secs(15));
        assert!(got.is_some(), "{g:?}: connection still open");
    }
    node.wait_metric("roomcast_handshake_failures_total", |v| v >= before + 3);
    let mut c = node.client();
    c.join("still");
    c.send("still", "serving");
    assert_eq!(c.recv(), "serving");
}

/// A connection that sends nothing (or half a request) is dropped after
/// --handshake-timeout.
fn idle_connection_dropped_after_handshake_timeout(rt: Runtime) {
    let node = Node::embedded(rt, &["--handshake-timeout", "1s"]);
    let started = Instant::now();
    let mut idle = TcpStream::connect(node.addr()).unwrap();
    let mut half = TcpStream::connect(node.addr()).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    for s in [&mut idle, &mut half] {
        let got = read_until_closed(s, TIMEOUT + TIMEOUT);
        assert_eq!(got, Some(Vec::new()), "dropped without a response");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "dropped before the handshake timeout: {:?}",
        started.elapsed()
    );
    node.wait_metric("roomcast_handshake_failures_total", |v| v >= 2);
    // A handshake that completes in time is unaffected.
    let mut c = node.client();
    std::thread::sleep(Duration::from_millis(1500));
    c.join("late");
    c.send("late", "ok");
    assert_eq!(c.recv(), "ok");
}

/// At --max-connections a node still answers its operators: /healthz says
/// 503 "full" and /metrics answers, from a small reserve of sockets past
/// the limit, while a WebSocket upgrade there is refused with 503 and
/// counted; a freed slot is usable again.
fn connections_over_the_limit_are_refused(rt: Runtime) {
    let node = Node::embedded(rt, &["--max-connections", "2"]);
    let mut a = node.client();
    let b = node.client();
    a.join("full");
    let ask = |req: &str| {
        let mut s = TcpStream::connect(node.addr()).unwrap();
        let _ = s.write_all(req.as_bytes());
        String::from_utf8_lossy(&read_until_closed(&mut s, TIMEOUT).expect("answered and closed"))
            .into_owned()
    };
    let health = ask("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.ends_with("full\n"), "{health}");
    let metrics = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    let upgrade = ask(
        "GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(upgrade.starts_with("HTTP/1.1 503"), "{upgrade}");
    b.close();
    let mut answered = false;
    roomcast_tests::wait_until("a slot is free again", TIMEOUT, || {
        let text = ask("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        answered = text.starts_with("HTTP/1.1 200");
        answered
    });
    let metrics = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let m = roomcast_tests::Metrics::parse(metrics.split_once("\r\n\r\n").unwrap().1);
    assert_eq!(m.get("roomcast_rejected_connections_total"), 1);
    a.send("full", "still served");
    assert_eq!(a.recv(), "still served");
}

/// A masked client text frame (RFC 6455 §5.3) of at most 125 bytes.
fn masked_text_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 125);
    let key = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Frames that arrive in the same packet as the upgrade request (and header
/// names in any case, `Connection` with several tokens) are handled.
fn frames_sent_with_the_upgrade_request_are_kept(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    let mut s = TcpStream::connect(node.addr()).unwrap();
    let mut req = b"GET /room HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Upgrade\r\nupgrade: WebSocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n".to_vec();
    req.extend(masked_text_frame(br#"{"type":"SUBSCRIBE","room":"p"}"#));
    req.extend(masked_text_frame(
        br#"{"type":"sendMessage","roomId":"p","message":"pipelined"}"#,
    ));
    s.write_all(&req).unwrap();
    // The 101 response, then one unmasked text frame holding the message.
    let want_head = "HTTP/1.1 101 Switching Protocols\r\n";
    let mut want_frame = vec![0x81, 9];
    want_frame.extend_from_slice(b"pipelined");
    let mut got = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 1024];
    while !got.ends_with(&want_frame) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no message; got {:?}",
            String::from_utf8_lossy(&got)
        );
        s.set_read_timeout(Some(left)).unwrap();
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(0) => panic!("closed; got {:?}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with(want_head), "{text:?}");
    // The RFC 6455 example key's accept value.
    assert!(
        text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{text:?}"
    );
}
