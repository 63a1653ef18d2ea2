//! The HTTP server API end to end, with raw HTTP requests (the shapes
//! Centrifugo's API libraries send), on both runtimes, embedded and on two
//! nodes sharing a test-owned Redis: publish reaches Centrifugo-protocol
//! and seed clients on every node, broadcast answers per channel, an
//! idempotent publish retried is applied once, history reads and removes,
//! keep-alive carries several requests, and every bad request is refused
//! the way the API says.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use roomcast_tests::auth::ConfigFile;
use roomcast_tests::centrifugo::CfClient;
use roomcast_tests::{
    HttpResponse, Node, RedisServer, Runtime, TIMEOUT, Value, http_request, json, scenarios, unique,
};

scenarios!(
    publish_reaches_every_client_embedded,
    publish_reaches_every_client_on_two_nodes,
    idempotent_publish_is_applied_once_embedded,
    idempotent_publish_is_applied_once_on_redis,
    broadcast_and_history_embedded,
    broadcast_and_history_on_redis,
    bad_requests_are_refused,
    keep_alive_carries_requests,
    the_api_is_off_without_a_key,
);

const KEY: &str = "test-api-key-5f1c";

/// A namespace `h` with history; every other room without.
fn config() -> ConfigFile {
    ConfigFile::new(
        "[default_namespace]\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         allow_publish_for_client = true\n\
         allow_publish_for_anonymous = true\n\
         [[namespace]]\n\
         name = \"hist\"\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         allow_history_for_client = true\n\
         allow_history_for_anonymous = true\n\
         history_size = 100\n\
         history_ttl = \"5m\"\n",
    )
}

fn flags(cfg: &ConfigFile) -> Vec<&str> {
    vec!["--config", cfg.path(), "--api-key", KEY]
}

/// `POST /api/<method>` with `body` and these extra header lines.
fn post(addr: SocketAddr, method: &str, body: &str, headers: &[&str]) -> HttpResponse {
    let mut raw = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        raw.push_str(h);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    http_request(addr, raw.as_bytes())
}

/// An API call with the key; the JSON answer (HTTP 200).
fn api(addr: SocketAddr, method: &str, body: Value) -> Value {
    let key = format!("X-API-Key: {KEY}");
    let r = post(addr, method, &body.to_string(), &[&key]);
    assert_eq!(r.status, 200, "{method} {body}: {r:?}");
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{r:?}"
    );
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method}: {:?}: {e}", r.body))
}

fn result(addr: SocketAddr, method: &str, body: Value) -> Value {
    let v = api(addr, method, body.clone());
    assert!(v.get("error").is_none(), "{method} {body}: {v}");
    v["result"].clone()
}

fn error(addr: SocketAddr, method: &str, body: Value) -> Value {
    let v = api(addr, method, body.clone());
    assert!(v.get("result").is_none(), "{method} {body}: {v}");
    v["error"].clone()
}

/// Waits until `addr` has a local member in `room` (the API's `channels`).
fn wait_member(addr: SocketAddr, room: &str) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let c = result(addr, "channels", json!({}));
        if c["channels"][room]["num_clients"].as_u64().unwrap_or(0) > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no member of {room} on {addr}: {c}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn publish_reaches_every_client(nodes: &[&Node], settle: impl Fn()) {
    let room = unique("room");
    let mut cfs = Vec::new();
    let mut seeds = Vec::new();
    for n in nodes {
        let mut cf = CfClient::connect(n.addr());
        cf.subscribe(&room);
        cfs.push(cf);
        let mut s = n.client();
        s.join(&room);
        seeds.push(s);
        wait_member(n.addr(), &room);
    }
    settle();
    let r = result(
        nodes[0].addr(),
        "publish",
        json!({"channel": room, "data": {"n": 1}}),
    );
    assert_eq!(r, json!({}), "a room without history answers {{}}");
    for cf in &mut cfs {
        assert_eq!(cf.recv_publication(&room)["data"], json!({"n": 1}));
    }
    for s in &mut seeds {
        let m = s.recv();
        assert!(m.contains("\"n\":1"), "{m}");
    }
    // A JSON string reaches seed clients as the string itself.
    result(
        nodes[0].addr(),
        "publish",
        json!({"channel": room, "data": "hello"}),
    );
    for cf in &mut cfs {
        assert_eq!(cf.recv_publication(&room)["data"], json!("hello"));
    }
    for s in &mut seeds {
        assert!(s.recv().contains("hello"));
    }
}

fn publish_reaches_every_client_embedded(rt: Runtime) {
    let cfg = config();
    let n = Node::embedded(rt, &flags(&cfg));
    publish_reaches_every_client(&[&n], || {});
}

fn publish_reaches_every_client_on_two_nodes(rt: Runtime) {
    let cfg = config();
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &flags(&cfg));
    let n2 = Node::redis(rt, &redis, &flags(&cfg));
    publish_reaches_every_client(&[&n1, &n2], || {});
    // And from the other node.
    let room = unique("room");
    let mut cf = CfClient::connect(n1.addr());
    cf.subscribe(&room);
    redis.wait_numsub(&room, 1);
    result(n2.addr(), "publish", json!({"channel": room, "data": 7}));
    assert_eq!(cf.recv_publication(&room)["data"], json!(7));
}

fn idempotent_publish_is_applied_once(
    publisher: &Node,
    reader: &Node,
    redis: Option<&RedisServer>,
) {
    let room = format!("hist:{}", unique("idem"));
    let mut cf = CfClient::connect(reader.addr());
    cf.subscribe(&room);
    if let Some(r) = redis {
        r.wait_numsub(&room, 1);
    }
    let body = json!({"channel": room, "data": {"x": 1}, "idempotency_key": "order-42"});
    let first = result(publisher.addr(), "publish", body.clone());
    assert_eq!(first["offset"], 1, "{first}");
    assert!(
        first["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{first}"
    );
    let again = result(publisher.addr(), "publish", body.clone());
    assert_eq!(again, first, "a retry answers the first result");
    let other = result(
        publisher.addr(),
        "publish",
        json!({"channel": room, "data": {"x": 2}, "idempotency_key": "order-43"}),
    );
    assert_eq!(other["offset"], 2, "{other}");
    assert_eq!(cf.recv_publication(&room)["data"], json!({"x": 1}));
    assert_eq!(cf.recv_publication(&room)["data"], json!({"x": 2}));
    cf.expect_no_push(Duration::from_millis(300));
    // In a room without history too.
    let plain = unique("plain");
    let mut cf = CfClient::connect(reader.addr());
    cf.subscribe(&plain);
    if let Some(r) = redis {
        r.wait_numsub(&plain, 1);
    }
    let body = json!({"channel": plain, "data": 5, "idempotency_key": "k"});
    assert_eq!(result(publisher.addr(), "publish", body.clone()), json!({}));
    assert_eq!(result(publisher.addr(), "publish", body), json!({}));
    assert_eq!(cf.recv_publication(&plain)["data"], json!(5));
    cf.expect_no_push(Duration::from_millis(300));
}

fn idempotent_publish_is_applied_once_embedded(rt: Runtime) {
    let cfg = config();
    let n = Node::embedded(rt, &flags(&cfg));
    idempotent_publish_is_applied_once(&n, &n, None);
}

fn idempotent_publish_is_applied_once_on_redis(rt: Runtime) {
    let cfg = config();
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &flags(&cfg));
    let n2 = Node::redis(rt, &redis, &flags(&cfg));
    idempotent_publish_is_applied_once(&n1, &n2, Some(&redis));
}

fn broadcast_and_history(publisher: &Node, reader: &Node) {
    let (a, b) = (format!("hist:{}", unique("a")), unique("b"));
    let r = result(
        publisher.addr(),
        "broadcast",
        json!({"channels": [a, "nope:1", b], "data": {"m": 1}}),
    );
    let responses = r["responses"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(responses.len(), 3, "{r}");
    assert_eq!(responses[0]["result"]["offset"], 1, "{r}");
    assert_eq!(
        responses[1]["error"]["code"], 102,
        "an unknown namespace: {r}"
    );
    assert_eq!(responses[2]["result"], json!({}), "{r}");
    for i in 2..=4 {
        result(
            publisher.addr(),
            "publish",
            json!({"channel": a, "data": i}),
        );
    }
    let h = result(reader.addr(), "history", json!({"channel": a, "limit": 10}));
    let data: Vec<Value> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(data, [json!({"m": 1}), json!(2), json!(3), json!(4)], "{h}");
    assert_eq!(h["offset"], 4, "{h}");
    let epoch = h["epoch"].as_str().unwrap().to_string();
    let h = result(
        reader.addr(),
        "history",
        json!({"channel": a, "limit": 2, "reverse": true}),
    );
    let offsets: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [4, 3], "{h}");
    let h = result(
        reader.addr(),
        "history",
        json!({"channel": a, "limit": 10, "since": {"offset": 2, "epoch": epoch}}),
    );
    assert_eq!(h["publications"].as_array().unwrap().len(), 2, "{h}");
    let e = error(
        reader.addr(),
        "history",
        json!({"channel": a, "limit": 10, "since": {"offset": 2, "epoch": "stale"}}),
    );
    assert_eq!(e["code"], 112, "{e}");
    // Position only without a limit.
    let h = result(reader.addr(), "history", json!({"channel": a}));
    assert_eq!(h["publications"], json!([]), "{h}");
    assert_eq!(h["offset"], 4, "{h}");
    assert_eq!(
        error(reader.addr(), "history", json!({"channel": b}))["code"],
        108
    );
    assert_eq!(
        result(publisher.addr(), "history_remove", json!({"channel": a})),
        json!({})
    );
    let h = result(reader.addr(), "history", json!({"channel": a, "limit": 10}));
    assert_eq!(h["publications"], json!([]), "{h}");
    assert_eq!(h["offset"], 4, "the position stays: {h}");
    assert_eq!(h["epoch"], epoch.as_str(), "{h}");
    let info = result(publisher.addr(), "info", json!({}));
    assert_eq!(info["nodes"].as_array().map(Vec::len), Some(1), "{info}");
}

fn broadcast_and_history_embedded(rt: Runtime) {
    let cfg = config();
    let n = Node::embedded(rt, &flags(&cfg));
    broadcast_and_history(&n, &n);
}

fn broadcast_and_history_on_redis(rt: Runtime) {
    let cfg = config();
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &flags(&cfg));
    let n2 = Node::redis(rt, &redis, &flags(&cfg));
    broadcast_and_history(&n1, &n2);
}

fn bad_requests_are_refused(rt: Runtime) {
    let cfg = config();
    let mut f = flags(&cfg);
    f.extend(["--api-max-body", "4096"]);
    let n = Node::embedded(rt, &f);
    let addr = n.addr();
    let key = format!("X-API-Key: {KEY}");
    let body = r#"{"channel":"c","data":1}"#;
    assert_eq!(post(addr, "publish", body, &[]).status, 401, "no key");
    let r = post(addr, "publish", body, &["X-API-Key: wrong"]);
    assert_eq!(r.status, 401, "wrong key");
    assert!(!r.body.contains(KEY) && !r.head.contains(KEY), "{r:?}");
    assert_eq!(n.metric("roomcast_api_unauthorized_total"), 2);
    let huge = format!(r#"{{"channel":"c","data":"{}"}}"#, "x".repeat(5000));
    assert_eq!(
        post(addr, "publish", &huge, &[&key]).status,
        413,
        "huge body"
    );
    assert_eq!(n.metric("roomcast_api_body_too_large_total"), 1);
    let raw = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\n{key}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    assert_eq!(http_request(addr, raw.as_bytes()).status, 411, "chunked");
    let raw = format!("GET /api/publish HTTP/1.1\r\nHost: x\r\n{key}\r\n\r\n");
    assert_eq!(http_request(addr, raw.as_bytes()).status, 405);
    let cases: [(&str, &str, u64, u16); 8] = [
        ("publish", "{\"channel\":\"c\",", 107, 400),
        ("publish", "[1,2]", 107, 400),
        ("publish", "\u{1}garbage", 107, 400),
        ("nope", "{}", 104, 404),
        ("publish", r#"{"channel":5,"data":1}"#, 107, 422),
        ("history", r#"{"channel":"hist:x","limit":"ten"}"#, 107, 422),
        ("broadcast", r#"{"channels":"c","data":1}"#, 107, 422),
        ("publish", r#"{"channel":"nope:1","data":1}"#, 102, 404),
    ];
    for (method, body, code, status) in cases {
        let r = post(addr, method, body, &[&key]);
        assert_eq!(r.status, 200, "{method} {body}: {r:?}");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["error"]["code"], code, "{method} {body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        // The same with errors as HTTP statuses.
        let r = post(
            addr,
            method,
            body,
            &[&key, "X-Centrifugo-Error-Mode: transport"],
        );
        assert_eq!(r.status, status, "{method} {body}: {r:?}");
    }
    assert!(
        n.metric("roomcast_api_requests_total{method=\"publish\",result=\"bad_request\"}") >= 8
    );
    // Still serving.
    assert_eq!(
        result(addr, "info", json!({}))["nodes"][0]["num_clients"],
        0
    );
    let m = n.get("/metrics").body;
    assert!(
        m.contains("roomcast_api_request_duration_seconds_bucket{method=\"info\",le=\"+Inf\"} 1"),
        "{m}"
    );
    drop(n);
    // --api-http-errors for every request.
    let mut f = flags(&cfg);
    f.push("--api-http-errors");
    let n = Node::embedded(rt, &f);
    let r = post(
        n.addr(),
        "publish",
        r#"{"channel":"nope:1","data":1}"#,
        &[&key],
    );
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("\"code\":102"), "{r:?}");
}

/// Reads one response of known framing (Content-Length) from `s`.
fn read_response(s: &mut TcpStream) -> (String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read a response head");
        assert_eq!(
            n,
            1,
            "closed mid-head after {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn keep_alive_carries_requests(rt: Runtime) {
    let cfg = config();
    let n = Node::embedded(rt, &flags(&cfg));
    let mut s = TcpStream::connect(n.addr()).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let room = format!("hist:{}", unique("ka"));
    let one = |i: u32| {
        let body = json!({"channel": room, "data": i}).to_string();
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    // Two requests written at once (pipelined), then three one by one.
    s.write_all(format!("{}{}", one(1), one(2)).as_bytes())
        .unwrap();
    for i in 1..=5 {
        if i >= 3 {
            s.write_all(one(i).as_bytes()).unwrap();
        }
        let (head, body) = read_response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("connection: keep-alive"), "{head}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["result"]["offset"], i, "{v}");
    }
    // A close ends it after the answer.
    let body = "{}";
    let close = format!(
        "POST /api/info HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(close.as_bytes()).unwrap();
    let (head, _) = read_response(&mut s);
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");
}

fn the_api_is_off_without_a_key(rt: Runtime) {
    let n = Node::embedded(rt, &[]);
    let r = post(n.addr(), "info", "{}", &["X-API-Key: anything"]);
    assert_eq!(r.status, 404, "{r:?}");
    // On its own loopback listener, --api-insecure serves without a key,
    // and the main port does not serve the API.
    let port = roomcast_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let n = Node::embedded(rt, &["--api-listen", &listen, "--api-insecure"]);
    let api_addr: SocketAddr = listen.parse().unwrap();
    // The API's listener is bound as the node starts serving.
    roomcast_tests::wait_until("the API listener", TIMEOUT, || {
        TcpStream::connect(api_addr).is_ok()
    });
    let r = post(api_addr, "info", "{}", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"nodes\""), "{r:?}");
    assert_eq!(post(n.addr(), "info", "{}", &[]).status, 404);
}
