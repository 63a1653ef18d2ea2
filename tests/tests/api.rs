//! The HTTP server API end to end, with raw HTTP requests (the shapes
//! Centrifugo's API libraries send), on both runtimes, embedded and on two
//! nodes sharing a test-owned Redis: publish reaches Centrifugo-protocol
//! and seed clients on every node, broadcast answers per channel, an
//! idempotent publish retried is applied once, history reads and removes,
//! keep-alive carries several requests, and every bad request is refused
//! the way the API says; server-side subscribe, unsubscribe and disconnect
//! reach a user's connections on every node; presence and presence stats;
//! info and channels list the whole fleet.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use roomcast_tests::auth::{self as tokens, ConfigFile};
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
    server_side_commands_embedded,
    server_side_commands_on_two_nodes,
    presence_embedded,
    presence_on_two_nodes,
    info_and_channels_list_the_fleet,
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

fn broadcast_and_history(publisher: &Node, reader: &Node, nodes: usize) {
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
    assert_eq!(
        info["nodes"].as_array().map(Vec::len),
        Some(nodes),
        "{info}"
    );
    for n in info["nodes"].as_array().unwrap() {
        assert!(n["uptime"].as_u64().is_some_and(|u| u < 60), "{info}");
    }
}

fn broadcast_and_history_embedded(rt: Runtime) {
    let cfg = config();
    let n = Node::embedded(rt, &flags(&cfg));
    broadcast_and_history(&n, &n, 1);
}

fn broadcast_and_history_on_redis(rt: Runtime) {
    let cfg = config();
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &flags(&cfg));
    let n2 = Node::redis(rt, &redis, &flags(&cfg));
    broadcast_and_history(&n1, &n2, 2);
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
    // A browser's request from another site is refused (a key-less API
    // would otherwise take a publish from any page open in an operator's
    // browser); from the node's own origin (the admin page) it is not.
    let before = n.metric("roomcast_origin_refused_total");
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let r = post(
            api_addr,
            "publish",
            r#"{"channel":"x","data":1}"#,
            &[&format!("Origin: {origin}")],
        );
        assert_eq!(r.status, 403, "{origin}: {r:?}");
    }
    assert_eq!(n.metric("roomcast_origin_refused_total"), before + 3);
    let own = format!("Origin: http://{listen}");
    let r = post(api_addr, "info", "{}", &[&own]);
    assert_eq!(r.status, 200, "same origin: {r:?}");
}

/// With tokens (anonymous connections still allowed), a presence
/// namespace `pres`, and `plain` without presence.
fn token_config() -> ConfigFile {
    ConfigFile::new(&format!(
        "token_hmac_secret = \"{}\"\n\
         allow_anonymous_connect_without_token = true\n\
         [default_namespace]\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         allow_publish_for_client = true\n\
         [[namespace]]\n\
         name = \"pres\"\n\
         allow_subscribe_for_client = true\n\
         presence = true\n\
         [[namespace]]\n\
         name = \"plain\"\n\
         allow_subscribe_for_client = true\n",
        tokens::SECRET
    ))
}

/// A raw Centrifugo client connected as `user`; its client id.
fn connect_as(addr: SocketAddr, user: &str) -> (CfClient, String) {
    let mut c = CfClient::open(addr);
    let token = tokens::hs256(&tokens::conn_claims(user, Some(3600)));
    let r = c.ok("connect", json!({"token": token}));
    let id = r["client"].as_str().expect("a client id").to_string();
    (c, id)
}

/// Waits for a push on `channel` carrying `kind` (`subscribe`,
/// `unsubscribe`); returns that object.
fn recv_push_of(c: &mut CfClient, channel: &str, kind: &str) -> Value {
    let p = c.recv_push();
    assert_eq!(p["channel"], channel, "{p}");
    p.get(kind)
        .cloned()
        .unwrap_or_else(|| panic!("expected a {kind} push on {channel}, got {p}"))
}

/// `api` and `other` serve the same fleet (the same node when embedded).
fn server_side_commands(api_node: &Node, other: &Node, redis: Option<&RedisServer>) {
    let api_addr = api_node.addr();
    let room = unique("ss");
    let alice = unique("alice");
    let bob = unique("bob");
    // Alice twice on the other node, once on the API's; Bob on the other.
    let (mut a1, _) = connect_as(other.addr(), &alice);
    let (mut a2, a2_id) = connect_as(other.addr(), &alice);
    let (mut a3, _) = connect_as(api_addr, &alice);
    let (mut b, _) = connect_as(other.addr(), &bob);
    b.subscribe(&room);
    // A seed client of Alice's, by its upgrade token.
    let seed_token = tokens::hs256(&tokens::conn_claims(&alice, Some(3600)));
    let seed = roomcast_tests::Client::connect_path(other.addr(), &format!("/?token={seed_token}"));
    // Subscribe: every connection of Alice's, on both nodes, gets the push.
    let r = result(
        api_addr,
        "subscribe",
        json!({"user": alice, "channel": room}),
    );
    assert_eq!(r, json!({}));
    for c in [&mut a1, &mut a2, &mut a3] {
        recv_push_of(c, &room, "subscribe");
    }
    if let Some(r) = redis {
        r.wait_numsub(&room, 2);
    }
    result(
        api_addr,
        "publish",
        json!({"channel": room, "data": {"n": 1}}),
    );
    for c in [&mut a1, &mut a2, &mut a3, &mut b] {
        assert_eq!(c.recv_publication(&room)["data"], json!({"n": 1}));
    }
    // Unsubscribe of one client: only it leaves, with code 2000.
    result(
        api_addr,
        "unsubscribe",
        json!({"user": alice, "channel": room, "client": a2_id}),
    );
    let u = recv_push_of(&mut a2, &room, "unsubscribe");
    assert_eq!(u["code"], 2000, "{u}");
    result(api_addr, "publish", json!({"channel": room, "data": 2}));
    for c in [&mut a1, &mut a3, &mut b] {
        assert_eq!(c.recv_publication(&room)["data"], json!(2));
    }
    a2.expect_no_push(Duration::from_millis(300));
    // A user nobody is: no effect, no error.
    assert_eq!(
        result(api_addr, "disconnect", json!({"user": unique("nobody")})),
        json!({})
    );
    // Bad commands are refused and reach nobody.
    for (method, body) in [
        (
            "disconnect",
            json!({"user": alice, "disconnect": {"code": 1000, "reason": "x"}}),
        ),
        (
            "disconnect",
            json!({"user": alice, "disconnect": {"code": 3503, "reason": "r".repeat(124)}}),
        ),
        ("subscribe", json!({"user": alice, "channel": "nope:1"})),
        ("subscribe", json!({"channel": room})),
    ] {
        let e = error(api_addr, method, body.clone());
        assert!(e["code"] == 107 || e["code"] == 102, "{method} {body}: {e}");
    }
    // Disconnect: every connection of Alice's, either protocol, closes
    // with the default code; Bob stays.
    result(api_addr, "disconnect", json!({"user": alice}));
    for c in [&mut a1, &mut a2, &mut a3] {
        c.expect_close(3503, "force disconnect");
    }
    seed.expect_close(3503, "force disconnect");
    // With a code and reason, for one client.
    let (mut b2, b2_id) = connect_as(api_addr, &bob);
    result(
        api_addr,
        "disconnect",
        json!({"user": bob, "client": b2_id, "disconnect": {"code": 4001, "reason": "bye"}}),
    );
    b2.expect_close(4001, "bye");
    result(api_addr, "publish", json!({"channel": room, "data": 3}));
    assert_eq!(b.recv_publication(&room)["data"], json!(3));
}

fn server_side_commands_embedded(rt: Runtime) {
    let cfg = token_config();
    let n = Node::embedded(rt, &flags(&cfg));
    server_side_commands(&n, &n, None);
}

fn server_side_commands_on_two_nodes(rt: Runtime) {
    let cfg = token_config();
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &flags(&cfg));
    let n2 = Node::redis(rt, &redis, &flags(&cfg));
    server_side_commands(&n1, &n2, Some(&redis));
}

fn presence_of(addr: SocketAddr, room: &str) -> Value {
    result(addr, "presence", json!({"channel": room}))["presence"].clone()
}

fn presence(api_node: &Node, other: &Node) {
    let room = format!("pres:{}", unique("p"));
    let (alice, bob) = (unique("alice"), unique("bob"));
    let (mut a1, a1_id) = connect_as(api_node.addr(), &alice);
    let (mut a2, a2_id) = connect_as(other.addr(), &alice);
    let (mut b, b_id) = connect_as(other.addr(), &bob);
    for c in [&mut a1, &mut a2, &mut b] {
        c.subscribe(&room);
    }
    roomcast_tests::wait_until("three clients present", TIMEOUT, || {
        presence_of(api_node.addr(), &room)
            .as_object()
            .is_some_and(|p| p.len() == 3)
    });
    let p = presence_of(api_node.addr(), &room);
    for (id, user) in [(&a1_id, &alice), (&a2_id, &alice), (&b_id, &bob)] {
        assert_eq!(p[id]["client"], id.as_str(), "{p}");
        assert_eq!(p[id]["user"], user.as_str(), "{p}");
    }
    let s = result(api_node.addr(), "presence_stats", json!({"channel": room}));
    assert_eq!(s, json!({"num_clients": 3, "num_users": 2}));
    b.unsubscribe(&room);
    roomcast_tests::wait_until("bob gone", TIMEOUT, || {
        result(api_node.addr(), "presence_stats", json!({"channel": room}))
            == json!({"num_clients": 2, "num_users": 1})
    });
    // No presence in the namespace: 108; no namespace: 102.
    let e = error(api_node.addr(), "presence", json!({"channel": "plain:x"}));
    assert_eq!(e["code"], 108, "{e}");
    let e = error(
        api_node.addr(),
        "presence_stats",
        json!({"channel": "plain:x"}),
    );
    assert_eq!(e["code"], 108, "{e}");
    let e = error(api_node.addr(), "presence", json!({"channel": "nope:x"}));
    assert_eq!(e["code"], 102, "{e}");
}

fn presence_embedded(rt: Runtime) {
    let cfg = token_config();
    let n = Node::embedded(rt, &flags(&cfg));
    presence(&n, &n);
}

fn presence_on_two_nodes(rt: Runtime) {
    let cfg = token_config();
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &flags(&cfg));
    let n2 = Node::redis(rt, &redis, &flags(&cfg));
    presence(&n1, &n2);
}

fn info_and_channels_list_the_fleet(rt: Runtime) {
    let cfg = config();
    let redis = RedisServer::start();
    let mut f = flags(&cfg);
    f.extend(["--node-announce-interval", "300ms"]);
    let n1 = Node::redis(rt, &redis, &f);
    let n2 = Node::redis(rt, &redis, &f);
    let (a, b) = (unique("fleet-a"), unique("fleet-b"));
    let mut clients = Vec::new();
    for (node, room) in [(&n1, &a), (&n1, &a), (&n2, &a), (&n2, &b)] {
        let mut c = CfClient::connect(node.addr());
        c.subscribe(room);
        clients.push(c);
    }
    // Each node's numbers reach the other within an announce interval.
    for n in [&n1, &n2] {
        roomcast_tests::wait_until("both nodes' rooms in channels", TIMEOUT, || {
            let c = result(n.addr(), "channels", json!({}))["channels"].clone();
            c[&a]["num_clients"] == 3 && c[&b]["num_clients"] == 1
        });
        roomcast_tests::wait_until("both nodes in info", TIMEOUT, || {
            let info = result(n.addr(), "info", json!({}));
            let nodes = info["nodes"].as_array().cloned().unwrap_or_default();
            let mut counts: Vec<u64> = nodes
                .iter()
                .map(|n| n["num_clients"].as_u64().unwrap_or(99))
                .collect();
            counts.sort();
            counts == [2, 2]
                && nodes
                    .iter()
                    .all(|n| n["uid"].as_str().is_some_and(|u| !u.is_empty()))
        });
    }
    let c = result(n1.addr(), "channels", json!({"pattern": "fleet-b*"}));
    assert_eq!(
        c,
        json!({"channels": {b.clone(): {"num_clients": 1}}}),
        "{c}"
    );
    // A node that shuts down leaves the list.
    drop(clients);
    n2.shutdown().expect("a clean shutdown");
    roomcast_tests::wait_until("one node left", TIMEOUT, || {
        result(n1.addr(), "info", json!({}))["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 1)
    });
}
