//! Centrifugo's client protocol (JSON, `/connection/websocket`) end to end:
//! the real SDKs (`centrifuge` on npm, `centrifuge-python`, through the
//! agents of tests/sdk) and raw clients (`roomcast_tests::centrifugo`) on
//! real nodes, embedded and on a Redis of the test's own, next to seed
//! clients and the tutorial's Node.js server; heartbeats, timeouts, every
//! error code that applies without auth, batching, the subprotocol, slow
//! consumers, shutdown and a restart on the same port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use roomcast_tests::centrifugo::{CfClient, NodeOnPort, cf_url, upgrade_request};
use roomcast_tests::sdk::{Agent, Sdk, is, is_on};
use roomcast_tests::{
    Node, RedisServer, Runtime, SeedNode, TIMEOUT, Value, free_port, install_seed, json, scenarios,
    seed_unavailable, unique,
};

scenarios!(
    sdk_clients_across_two_nodes,
    sdk_clients_on_an_embedded_node,
    seed_and_sdk_clients_on_one_node,
    seed_and_sdk_clients_across_two_nodes,
    tutorial_server_and_sdk_clients,
    unsubscribe_stops_delivery,
    sdk_reconnects_after_a_restart,
    ping_pong,
    stale_connection_is_closed,
    error_replies,
    rate_limit,
    protocol_violations_close,
    sdk_error_codes,
    batched_commands,
    subprotocol_negotiation,
    slow_consumer_is_closed_3008,
    smallest_outbound_limit_serves,
    shutdown_closes_3001,
);

// ---------------------------------------------------------------------------
// SDK helpers
// ---------------------------------------------------------------------------

/// An agent of `sdk` connected to the node at `addr`; its client id.
fn connected(sdk: Sdk, addr: SocketAddr) -> (Agent, String) {
    let mut a = Agent::spawn(sdk);
    a.ok(json!({"cmd": "connect", "url": cf_url(addr), "wait": true}));
    let ev = a.wait_event(is("connected"), TIMEOUT);
    let client = ev["client"]
        .as_str()
        .unwrap_or_else(|| panic!("{sdk}: connected without a client id: {ev}"))
        .to_string();
    assert!(!client.is_empty(), "{sdk}: empty client id: {ev}");
    (a, client)
}

/// Subscribes (client-side) and waits for the `subscribed` event.
fn subscribe(a: &mut Agent, channel: &str) {
    let r = a.ok(json!({"cmd": "subscribe", "channel": channel, "wait": true}));
    assert_eq!(r["state"], "subscribed", "{}: {r}", a.sdk());
    a.wait_event(is_on("subscribed", channel), TIMEOUT);
}

/// Publishes through the client; panics on an error.
fn publish(a: &mut Agent, channel: &str, data: Value) {
    a.ok(json!({"cmd": "publish", "channel": channel, "data": data}));
}

/// The next publication event on `channel`.
fn publication(a: &mut Agent, channel: &str) -> Value {
    a.wait_event(is_on("publication", channel), TIMEOUT)
}

/// Asserts the publication carries `data` from client `from`.
fn assert_publication(ev: &Value, data: &Value, from: &str, who: &str) {
    assert_eq!(&ev["data"], data, "{who}: data of {ev}");
    assert_eq!(ev["info"]["client"], from, "{who}: info.client of {ev}");
    assert_eq!(ev["info"]["user"], "", "{who}: info.user of {ev}");
}

/// Every event after the agent's first `connected` whose name is one of
/// `names` (after taking in what the agent printed so far).
fn events_named(a: &mut Agent, names: &[&str]) -> Vec<Value> {
    a.drain();
    a.events()
        .iter()
        .skip_while(|e| e["event"] != "connected")
        .filter(|e| names.iter().any(|n| e["event"] == *n))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------
// 1. SDK clients: connect, subscribe, publish, receive
// ---------------------------------------------------------------------------

/// A JS client on `js_at` and a Python client on `py_at` (and a raw client
/// on `py_at`) in one channel: each one's publications reach all three, with
/// the publisher's client id as `info.client`.
fn sdk_exchange(js_at: SocketAddr, py_at: SocketAddr, redis: Option<&RedisServer>) {
    let room = unique("sdk-chat");
    let (mut js, js_id) = connected(Sdk::Js, js_at);
    let (mut py, py_id) = connected(Sdk::Py, py_at);
    assert_ne!(js_id, py_id, "two connections with one client id");
    let mut raw = CfClient::connect(py_at);
    subscribe(&mut js, &room);
    subscribe(&mut py, &room);
    raw.subscribe(&room);
    if let Some(redis) = redis {
        let nodes = if js_at == py_at { 1 } else { 2 };
        redis.wait_numsub(&room, nodes);
    }

    let data = json!({"text": "from js", "n": [1, 2.5, null], "nested": {"ok": true}});
    publish(&mut js, &room, data.clone());
    for a in [&mut js, &mut py] {
        let ev = publication(a, &room);
        assert_publication(&ev, &data, &js_id, a.sdk().name());
    }
    let p = raw.recv_publication(&room);
    assert_eq!(p["data"], data, "raw: {p}");
    assert_eq!(p["info"], json!({"user": "", "client": js_id}), "raw: {p}");

    let data = json!("from py: é ✓ \"quoted\"");
    publish(&mut py, &room, data.clone());
    for a in [&mut js, &mut py] {
        let ev = publication(a, &room);
        assert_publication(&ev, &data, &py_id, a.sdk().name());
    }
    let p = raw.recv_publication(&room);
    assert_eq!(p["data"], data, "raw: {p}");
    assert_eq!(p["info"]["client"], py_id.as_str(), "raw: {p}");

    // The raw client's own publication, to the SDKs.
    raw.publish(&room, json!(42));
    let raw_id = raw.client_id().to_string();
    for a in [&mut js, &mut py] {
        let ev = publication(a, &room);
        assert_publication(&ev, &json!(42), &raw_id, a.sdk().name());
    }
    assert_eq!(raw.recv_publication(&room)["data"], 42);
    js.exit();
    py.exit();
}

fn sdk_clients_across_two_nodes(rt: Runtime) {
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &[]);
    let n2 = Node::redis(rt, &redis, &[]);
    sdk_exchange(n1.addr(), n2.addr(), Some(&redis));
}

fn sdk_clients_on_an_embedded_node(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    sdk_exchange(node.addr(), node.addr(), None);
}

// ---------------------------------------------------------------------------
// 2. Seed clients and SDK clients in one room
// ---------------------------------------------------------------------------

/// For each SDK: a seed client on `seed_node` and an SDK client on
/// `sdk_node` in one room see each other's messages.
fn seed_and_sdk(seed_node: &Node, sdk_node: &Node, redis: Option<&RedisServer>) {
    for sdk in Sdk::ALL {
        let room = unique(&format!("mixed-{sdk}"));
        let mut seed = seed_node.client();
        seed.join(&room);
        let (mut a, id) = connected(sdk, sdk_node.addr());
        subscribe(&mut a, &room);
        if let Some(redis) = redis {
            redis.wait_numsub(&room, 2);
        }

        seed.send(&room, "hi");
        assert_eq!(seed.recv(), "hi", "the seed client's own message");
        let ev = publication(&mut a, &room);
        assert_eq!(ev["data"], "hi", "{sdk}: {ev}");

        publish(&mut a, &room, json!({"text": "yo"}));
        assert_eq!(
            seed.recv(),
            r#"{"text":"yo"}"#,
            "{sdk}'s message at the seed client"
        );
        let ev = publication(&mut a, &room);
        assert_publication(&ev, &json!({"text": "yo"}), &id, sdk.name());

        // Any JSON value, both ways.
        seed.send(&room, json!({"from": "seed", "n": 1}));
        assert_eq!(seed.recv(), r#"{"from":"seed","n":1}"#);
        let ev = publication(&mut a, &room);
        assert_eq!(ev["data"], json!({"from": "seed", "n": 1}), "{sdk}: {ev}");
        publish(&mut a, &room, json!("plain text"));
        assert_eq!(seed.recv(), "plain text");
        publication(&mut a, &room);
        a.exit();
    }
}

fn seed_and_sdk_clients_on_one_node(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    seed_and_sdk(&node, &node, None);
}

fn seed_and_sdk_clients_across_two_nodes(rt: Runtime) {
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &[]);
    let n2 = Node::redis(rt, &redis, &[]);
    seed_and_sdk(&n1, &n2, Some(&redis));
}

// ---------------------------------------------------------------------------
// 3. The tutorial's Node.js server and an SDK client on one Redis
// ---------------------------------------------------------------------------

fn tutorial_server_and_sdk_clients(rt: Runtime) {
    if let Some(why) = seed_unavailable() {
        panic!("the tutorial server needs Node.js and npm (Debian: nodejs, npm): {why}");
    }
    let dir = install_seed(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let redis = RedisServer::start();
    let node = Node::redis(rt, &redis, &[]);
    let tutorial = SeedNode::start(&dir, &redis.url());
    for sdk in Sdk::ALL {
        let room = unique(&format!("tutorial-{sdk}"));
        let mut t = tutorial.client();
        // The tutorial server subscribes in the background: wait for it.
        t.subscribe(&room);
        redis.wait_numsub(&room, 1);
        let (mut a, id) = connected(sdk, node.addr());
        subscribe(&mut a, &room);
        redis.wait_numsub(&room, 2);

        t.send(&room, "hi");
        assert_eq!(t.recv(), "hi", "the tutorial client's own message");
        let ev = publication(&mut a, &room);
        assert_eq!(ev["data"], "hi", "{sdk}: {ev}");

        publish(&mut a, &room, json!({"text": "yo"}));
        assert_eq!(
            t.recv(),
            r#"{"text":"yo"}"#,
            "{sdk}'s message at the tutorial client"
        );
        let ev = publication(&mut a, &room);
        assert_publication(&ev, &json!({"text": "yo"}), &id, sdk.name());
        a.exit();
    }
}

// ---------------------------------------------------------------------------
// 4. Unsubscribe
// ---------------------------------------------------------------------------

/// After unsubscribing, nothing more arrives from the channel: for each
/// SDK, and for a raw client (whose pushes no SDK filters).
fn unsubscribe_stops_delivery(rt: Runtime) {
    // Plain rooms: with open mode's history, an SDK subscribing again
    // recovers what was published meanwhile (tests/tests/recovery.rs).
    let cfg = roomcast_tests::auth::plain_config();
    let node = Node::embedded(rt, &["--config", cfg.path()]);
    let mut p = CfClient::connect(node.addr());
    for sdk in Sdk::ALL {
        let (gone, kept) = (unique("left"), unique("kept"));
        let (mut a, id) = connected(sdk, node.addr());
        subscribe(&mut a, &gone);
        subscribe(&mut a, &kept);
        p.publish(&gone, json!("before"));
        assert_eq!(publication(&mut a, &gone)["data"], "before", "{sdk}");

        let r = a.ok(json!({"cmd": "unsubscribe", "channel": gone}));
        assert_eq!(r["state"], "unsubscribed", "{sdk}: {r}");
        a.wait_event(is_on("unsubscribed", &gone), TIMEOUT);
        // The connection's commands are handled in order: once its own
        // publication after the unsubscribe is back, the node has left.
        publish(&mut a, &kept, json!("barrier"));
        let ev = publication(&mut a, &kept);
        assert_publication(&ev, &json!("barrier"), &id, sdk.name());

        p.publish(&gone, json!("after"));
        p.publish(&kept, json!("marker"));
        assert_eq!(publication(&mut a, &kept)["data"], "marker", "{sdk}");
        a.expect_no_event(is_on("publication", &gone), Duration::from_millis(300));

        // Subscribing again works.
        subscribe(&mut a, &gone);
        p.publish(&gone, json!("again"));
        assert_eq!(publication(&mut a, &gone)["data"], "again", "{sdk}");
        a.exit();
    }

    let (gone, kept) = (unique("raw-left"), unique("raw-kept"));
    let mut raw = CfClient::connect(node.addr());
    raw.subscribe(&gone);
    raw.subscribe(&kept);
    p.publish(&gone, json!("before"));
    assert_eq!(raw.recv_publication(&gone)["data"], "before");
    assert_eq!(raw.unsubscribe(&gone), json!({}));
    // Unsubscribing from a channel one is not in is no error.
    assert_eq!(raw.unsubscribe(&gone), json!({}));
    p.publish(&gone, json!("after"));
    p.publish(&kept, json!("marker"));
    // Published in this order to one node: "after" would come first.
    assert_eq!(raw.recv_publication(&kept)["data"], "marker");
    raw.expect_no_push(Duration::from_millis(300));
    assert_eq!(p.unclaimed_replies().len(), 0);
}

// ---------------------------------------------------------------------------
// 5. Reconnect after a restart on the same port
// ---------------------------------------------------------------------------

fn sdk_reconnects_after_a_restart(rt: Runtime) {
    let redis = RedisServer::start();
    let stable = Node::redis(rt, &redis, &[]);
    let port = free_port();
    let first = NodeOnPort::start(rt, port, Some(&redis.url()), &[]);
    let room = unique("restart");
    let mut p = CfClient::connect(stable.addr());
    p.subscribe(&room);
    let mut agents: Vec<(Agent, String)> = Sdk::ALL
        .into_iter()
        .map(|sdk| connected(sdk, first.addr()))
        .collect();
    for (a, _) in &mut agents {
        subscribe(a, &room);
    }
    redis.wait_numsub(&room, 2);
    p.publish(&room, json!("before"));
    assert_eq!(p.recv_publication(&room)["data"], "before");
    for (a, _) in &mut agents {
        assert_eq!(publication(a, &room)["data"], "before", "{}", a.sdk());
    }

    first.shutdown().expect("the first node shut down");
    // The SDKs were told 3001 "shutdown", which says: reconnect.
    for (a, _) in &mut agents {
        let ev = a.wait_event(|e| e["event"] == "connecting" && e["code"] == 3001, TIMEOUT);
        assert_eq!(ev["reason"], "shutdown", "{}: {ev}", a.sdk());
    }
    redis.wait_numsub(&room, 1);

    let second = NodeOnPort::start(rt, port, Some(&redis.url()), &[]);
    assert_eq!(second.addr(), SocketAddr::from(([127, 0, 0, 1], port)));
    for (a, old_id) in &mut agents {
        let ev = a.wait_event(is("connected"), TIMEOUT);
        assert_ne!(
            &ev["client"],
            old_id.as_str(),
            "{}: a new connection",
            a.sdk()
        );
        // The SDK resubscribes by itself.
        a.wait_event(is_on("subscribed", &room), TIMEOUT);
        *old_id = ev["client"].as_str().expect("client id").to_string();
    }
    redis.wait_numsub(&room, 2);
    p.publish(&room, json!("after the restart"));
    assert_eq!(p.recv_publication(&room)["data"], "after the restart");
    for (a, _) in &mut agents {
        assert_eq!(
            publication(a, &room)["data"],
            "after the restart",
            "{}",
            a.sdk()
        );
    }
    // And they publish on the new node, as themselves.
    for (a, id) in &mut agents {
        publish(a, &room, json!({"back": a.sdk().name()}));
        let got = p.recv_publication(&room);
        assert_eq!(got["data"], json!({"back": a.sdk().name()}));
        assert_eq!(got["info"]["client"], id.as_str());
    }
    for (a, _) in agents {
        a.exit();
    }
    drop(second);
}

// ---------------------------------------------------------------------------
// 6. Ping/pong
// ---------------------------------------------------------------------------

fn ping_pong(rt: Runtime) {
    let node = Node::embedded(
        rt,
        &[
            "--client-ping-interval",
            "1s",
            "--client-pong-timeout",
            "1s",
        ],
    );
    let room = unique("heartbeat");
    let mut agents: Vec<Agent> = Sdk::ALL
        .into_iter()
        .map(|sdk| {
            let (mut a, _) = connected(sdk, node.addr());
            subscribe(&mut a, &room);
            a
        })
        .collect();
    let mut deaf = CfClient::connect(node.addr());
    deaf.set_auto_pong(false);
    let connected_at = Instant::now();
    assert_eq!(
        deaf.connect_result()["ping"],
        1,
        "{}",
        deaf.connect_result()
    );
    assert_eq!(
        deaf.connect_result()["pong"],
        true,
        "{}",
        deaf.connect_result()
    );
    // A raw client that answers, reading (and so answering) on a thread of
    // its own while this one waits for the deaf one's close.
    let mut live = CfClient::connect(node.addr());
    live.subscribe(&room);
    let live = std::thread::spawn(move || {
        live.idle(Duration::from_secs(5));
        live
    });

    // One ping, then no pong within a second: closed.
    let took = deaf.expect_close(3012, "no pong");
    assert!(deaf.pings() >= 1, "closed for no pong without a ping");
    assert!(
        connected_at.elapsed() >= Duration::from_millis(1900),
        "closed {took:?} after connecting, before ping interval + pong timeout"
    );
    assert_eq!(node.metric("roomcast_no_pong_closes_total"), 1);

    // The others answer and stay.
    let mut live = live.join().expect("the live client's thread");
    assert!(live.pings() >= 4, "{} pings in 5 s", live.pings());
    live.publish(&room, json!("still here"));
    assert_eq!(live.recv_publication(&room)["data"], "still here");
    for a in &mut agents {
        assert_eq!(publication(a, &room)["data"], "still here", "{}", a.sdk());
        let trouble = events_named(a, &["connecting", "disconnected", "error"]);
        assert!(trouble.is_empty(), "{}: {trouble:?}", a.sdk());
    }
    assert_eq!(node.metric("roomcast_no_pong_closes_total"), 1);
    assert_eq!(node.metric("roomcast_connections"), 3);
    for a in agents {
        a.exit();
    }
}

// ---------------------------------------------------------------------------
// 7. No connect in time
// ---------------------------------------------------------------------------

fn stale_connection_is_closed(rt: Runtime) {
    let node = Node::embedded(rt, &["--client-connect-timeout", "1s"]);
    let opened = Instant::now();
    let mut idle = CfClient::open(node.addr());
    let mut prompt = CfClient::open(node.addr());
    std::thread::sleep(Duration::from_millis(300));
    prompt.handshake();
    idle.expect_close(3502, "stale");
    assert!(
        opened.elapsed() >= Duration::from_millis(900),
        "closed stale after {:?}, before the 1 s connect timeout",
        opened.elapsed()
    );
    // The one that connected in time is not closed.
    prompt.idle(Duration::from_millis(1500));
    let room = unique("prompt");
    prompt.subscribe(&room);
    prompt.publish(&room, json!("alive"));
    assert_eq!(prompt.recv_publication(&room)["data"], "alive");
}

// ---------------------------------------------------------------------------
// 8. Error codes
// ---------------------------------------------------------------------------

fn assert_error(e: &Value, code: u64, message: &str, what: &str) {
    assert_eq!(e["code"], code, "{what}: {e}");
    assert_eq!(e["message"], message, "{what}: {e}");
    assert_eq!(e.get("temporary"), None, "{what}: {e}");
}

fn bad_commands(node: &Node, reason: &str) -> u64 {
    node.metric(&format!(
        "roomcast_centrifugo_bad_commands_total{{reason=\"{reason}\"}}"
    ))
}

/// Every error a reply can carry without auth, from a raw client; the
/// connection stays up through all of them.
fn error_replies(rt: Runtime) {
    let node = Node::embedded(rt, &["--max-rooms-per-conn", "2"]);
    let mut c = CfClient::connect(node.addr());
    let (a, x) = (unique("a"), unique("x"));
    c.subscribe(&a);

    let e = c.err("subscribe", json!({"channel": a}));
    assert_error(&e, 105, "already subscribed", "subscribing twice");

    // Two methods in one command: refused, and neither runs.
    let mut watcher = CfClient::connect(node.addr());
    watcher.subscribe(&x);
    let id = c.take_id();
    c.send_text(&format!(
        r#"{{"id":{id},"subscribe":{{"channel":"{x}"}},"publish":{{"channel":"{x}","data":1}}}}"#
    ));
    let e = c.result(id, "subscribe").expect_err("two methods");
    assert_error(&e, 107, "bad request", "two methods");
    assert_eq!(bad_commands(&node, "multiple_methods"), 1);
    watcher.expect_no_push(Duration::from_millis(200));
    // (Had the subscribe run, this would be 105.)
    c.subscribe(&x);

    // A third channel.
    let e = c.err("subscribe", json!({"channel": unique("c")}));
    assert_error(&e, 106, "limit exceeded", "a third channel");

    // A missing channel, a missing data.
    let e = c.err("subscribe", json!({}));
    assert_error(&e, 107, "bad request", "subscribe without a channel");
    let e = c.err("publish", json!({"data": 1}));
    assert_error(&e, 107, "bad request", "publish without a channel");
    let e = c.err("publish", json!({"channel": a}));
    assert_error(&e, 107, "bad request", "publish without data");
    assert_eq!(bad_commands(&node, "missing_field"), 3);

    // Open mode's rooms track presence: this client is there.
    let p = c.ok("presence", json!({"channel": a}));
    assert!(p["presence"][c.client_id()].is_object(), "{p}");
    assert_eq!(
        c.ok("presence_stats", json!({"channel": a})),
        json!({"num_clients": 1, "num_users": 1})
    );
    // Open mode's rooms keep history: the position, no publications yet.
    let h = c.ok("history", json!({"channel": a}));
    assert!(h["epoch"].is_string(), "{h}");
    assert_eq!(h["offset"], 0, "{h}");
    assert!(
        h["publications"].as_array().is_none_or(Vec::is_empty),
        "{h}"
    );
    let e = c.err("ping", json!({}));
    assert_error(&e, 108, "not available", "the ping method");

    // No RPC handlers; no such method.
    let e = c.err("rpc", json!({"method": "sum", "data": {"a": 1}}));
    assert_error(&e, 104, "method not found", "rpc");
    let id = c.take_id();
    c.send_text(&format!(
        r#"{{"id":{id},"frobnicate":{{"channel":"{a}"}}}}"#
    ));
    let e = c.result(id, "frobnicate").expect_err("an unknown method");
    assert_error(&e, 104, "method not found", "an unknown method");
    assert_eq!(bad_commands(&node, "unknown_method"), 1);

    // Refreshing a subscription one does not have.
    let e = c.err("sub_refresh", json!({"channel": unique("z"), "token": "t"}));
    assert_error(
        &e,
        103,
        "permission denied",
        "sub_refresh of no subscription",
    );

    // Still connected and subscribed, with nothing unanswered.
    c.publish(&a, json!("still here"));
    assert_eq!(c.recv_publication(&a)["data"], "still here");
    c.publish(&x, json!("and here"));
    assert_eq!(c.recv_publication(&x)["data"], "and here");
    assert_eq!(watcher.recv_publication(&x)["data"], "and here");
    c.expect_no_push(Duration::from_millis(100));
    assert_eq!(
        c.unclaimed_replies().len(),
        0,
        "{:?}",
        c.unclaimed_replies()
    );
}

/// `--max-commands-per-sec 5`: in one frame, connect and four commands
/// pass, five more are refused with 111, the next closes 3013.
fn rate_limit(rt: Runtime) {
    let node = Node::embedded(rt, &["--max-commands-per-sec", "5"]);
    let room = unique("limited");
    let mut c = CfClient::open(node.addr());
    let mut lines = vec![c.line("connect", json!({})).1];
    for i in 0..12 {
        lines.push(c.line("publish", json!({"channel": room, "data": i})).1);
    }
    c.send_text(&lines.join("\n"));
    c.expect_close(3013, "too many requests");
    assert!(c.result(1, "connect").is_ok(), "connect");
    for id in 2..=5 {
        assert_eq!(c.result(id, "publish"), Ok(json!({})), "publish {id}");
    }
    for id in 6..=10 {
        let e = c.result(id, "publish").expect_err("over the rate");
        assert_eq!(e["code"], 111, "command {id}: {e}");
        assert_eq!(e["message"], "too many requests", "command {id}: {e}");
        assert_eq!(e["temporary"], true, "command {id}: {e}");
    }
    assert!(
        c.unclaimed_replies().is_empty(),
        "replies after the close: {:?}",
        c.unclaimed_replies()
    );
    assert_eq!(node.metric("roomcast_rate_limited_total"), 6);

    // Another connection has its own budget.
    let mut d = CfClient::connect(node.addr());
    d.subscribe(&room);
    d.publish(&room, json!("fine"));
    assert_eq!(d.recv_publication(&room)["data"], "fine");
}

/// Connection-level breaches close the connection with their code.
fn protocol_violations_close(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    let addr = node.addr();

    // A command before connect.
    let mut c = CfClient::open(addr);
    c.send_text(r#"{"id":1,"subscribe":{"channel":"early"}}"#);
    c.expect_close(3501, "bad request");
    let mut c = CfClient::open(addr);
    c.send_text(r#"{"id":1,"publish":{"channel":"early","data":1}}"#);
    c.expect_close(3501, "bad request");
    assert!(
        c.unclaimed_replies().is_empty(),
        "{:?}",
        c.unclaimed_replies()
    );

    // Binary frames, before and after connect.
    let mut c = CfClient::open(addr);
    c.send_binary(br#"{"id":1,"connect":{}}"#);
    c.expect_close(3506, "inappropriate protocol");
    let mut c = CfClient::connect(addr);
    c.send_binary(&[0x0a, 0x00]);
    c.expect_close(3506, "inappropriate protocol");

    // A frame that is not JSON, after and before connect.
    let mut c = CfClient::connect(addr);
    c.send_text("hello");
    c.expect_close(3501, "bad request");
    let mut c = CfClient::open(addr);
    c.send_text("{\"id\":1,\"connect\":{}");
    c.expect_close(3501, "bad request");
    let metrics = node.metrics();
    assert_eq!(
        metrics.get("roomcast_centrifugo_bad_commands_total{reason=\"not_json\"}"),
        2
    );

    // A second connect.
    let mut c = CfClient::connect(addr);
    c.command("connect", json!({}));
    c.expect_close(3501, "bad request");

    // The node is fine.
    let room = unique("after");
    let mut c = CfClient::connect(addr);
    c.subscribe(&room);
    c.publish(&room, json!("ok"));
    assert_eq!(c.recv_publication(&room)["data"], "ok");
    node.wait_metric("roomcast_connections", |v| v == 1);
}

/// The errors the SDKs expose: 108 for presence, presence stats and
/// history where the namespace has none, 104 for rpc, 106 for one channel
/// too many.
fn sdk_error_codes(rt: Runtime) {
    // Everything allowed, as open mode, but no history or presence.
    let cfg = roomcast_tests::auth::plain_config();
    let node = Node::embedded(rt, &["--max-rooms-per-conn", "2", "--config", cfg.path()]);
    for sdk in Sdk::ALL {
        let (mut a, _) = connected(sdk, node.addr());
        let room = unique("errors");
        for cmd in ["presence", "presenceStats", "history"] {
            let e = a.err(json!({"cmd": cmd, "channel": room}));
            assert_eq!(e["code"], 108, "{sdk} {cmd}: {e}");
            assert_eq!(e["message"], "not available", "{sdk} {cmd}: {e}");
        }
        let e = a.err(json!({"cmd": "rpc", "method": "sum", "data": {"a": 1}}));
        assert_eq!(e["code"], 104, "{sdk} rpc: {e}");
        assert_eq!(e["message"], "method not found", "{sdk} rpc: {e}");

        subscribe(&mut a, &unique("one"));
        subscribe(&mut a, &unique("two"));
        let third = unique("three");
        a.ok(json!({"cmd": "subscribe", "channel": third}));
        // Not temporary: the SDK gives the subscription up, saying why.
        let ev = a.wait_event(is_on("unsubscribed", &third), TIMEOUT);
        assert_eq!(ev["code"], 106, "{sdk}: {ev}");
        assert_eq!(ev["reason"], "limit exceeded", "{sdk}: {ev}");

        // Still connected.
        let trouble = events_named(&mut a, &["connecting", "disconnected"]);
        assert!(trouble.is_empty(), "{sdk}: {trouble:?}");
        a.exit();
    }
}

// ---------------------------------------------------------------------------
// 9. Batching
// ---------------------------------------------------------------------------

fn batched_commands(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    let room = unique("batch");
    let mut watcher = CfClient::connect(node.addr());
    watcher.subscribe(&room);

    let mut c = CfClient::open(node.addr());
    let (connect, l1) = c.line("connect", json!({"name": "batch"}));
    let (sub, l2) = c.line("subscribe", json!({"channel": room}));
    let (publ, l3) = c.line("publish", json!({"channel": room, "data": {"n": 0}}));
    c.send_text(&format!("{l1}\n{l2}\n{l3}"));
    let client = c.result(connect, "connect").expect("connect")["client"]
        .as_str()
        .expect("a client id")
        .to_string();
    // Open mode's rooms keep history: the reply says where the stream is.
    let r = c.result(sub, "subscribe").expect("subscribe");
    let epoch = r["epoch"].as_str().expect("an epoch").to_string();
    assert_eq!(
        r,
        json!({"recoverable": true, "positioned": true, "epoch": epoch})
    );
    assert_eq!(c.result(publ, "publish"), Ok(json!({})));
    for x in [&mut c, &mut watcher] {
        let p = x.recv_publication(&room);
        assert_eq!(p["data"], json!({"n": 0}));
        assert_eq!(p["info"]["client"], client.as_str());
    }

    // Fifty at once, with CRLF, blank lines and a trailing newline.
    let mut frame = String::new();
    let mut ids = Vec::new();
    for i in 1..=50 {
        let (id, line) = c.line("publish", json!({"channel": room, "data": {"n": i}}));
        ids.push(id);
        frame.push_str(&line);
        frame.push_str(if i % 2 == 0 { "\r\n" } else { "\n" });
        if i % 10 == 0 {
            frame.push('\n');
        }
    }
    c.send_text(&frame);
    for id in ids {
        assert_eq!(c.result(id, "publish"), Ok(json!({})), "publish {id}");
    }
    for x in [&mut c, &mut watcher] {
        for i in 1..=50 {
            assert_eq!(x.recv_publication(&room)["data"], json!({"n": i}));
        }
        x.expect_no_push(Duration::from_millis(100));
    }
    // A bad command in a batch is answered alone; the others run.
    let (ok1, l1) = c.line("publish", json!({"channel": room, "data": "x"}));
    let bad = c.take_id();
    let (ok2, l3) = c.line("publish", json!({"channel": room, "data": "y"}));
    c.send_text(&format!("{l1}\n{{\"id\":{bad},\"publish\":{{}}}}\n{l3}"));
    assert_eq!(c.result(ok1, "publish"), Ok(json!({})));
    assert_eq!(c.result(bad, "publish").expect_err("bad")["code"], 107);
    assert_eq!(c.result(ok2, "publish"), Ok(json!({})));
    assert_eq!(watcher.recv_publication(&room)["data"], "x");
    assert_eq!(watcher.recv_publication(&room)["data"], "y");
}

// ---------------------------------------------------------------------------
// 10. Subprotocol
// ---------------------------------------------------------------------------

fn subprotocol_negotiation(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    let addr = node.addr();
    for offered in [
        &["centrifuge-json"][..],
        &["centrifuge-protobuf", "centrifuge-json"],
    ] {
        let mut c = CfClient::open_offering(addr, offered);
        assert_eq!(
            c.subprotocol(),
            Some("centrifuge-json"),
            "offered {offered:?}"
        );
        c.handshake();
    }
    let mut c = CfClient::open(addr);
    assert_eq!(c.subprotocol(), None, "none offered");
    c.handshake();

    let r = upgrade_request(addr, &["centrifuge-protobuf"]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.contains("only the JSON protocol"),
        "the body should say JSON only: {r:?}"
    );
    assert!(
        !r.head
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol"),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------
// 11. Slow consumer, shutdown
// ---------------------------------------------------------------------------

/// One worker thread, so a publisher's whole frame is handled before the
/// member's writer runs: its pushes (twice the size of the commands) overflow
/// the member's outbound queue at once, with its socket empty, so the close
/// frame gets through.
fn slow_consumer_is_closed_3008(rt: Runtime) {
    let node = Node::embedded(
        rt,
        &[
            "--threads",
            "1",
            "--max-outbound-bytes",
            "2048",
            "--max-frame-bytes",
            "2048",
        ],
    );
    let room = "s";
    let mut member = CfClient::connect(node.addr());
    member.subscribe(room);
    let mut reader = CfClient::connect(node.addr());
    let mut publisher = CfClient::connect(node.addr());
    let mut lines = Vec::new();
    let mut ids = Vec::new();
    loop {
        let (id, line) = publisher.line("publish", json!({"channel": room, "data": 1}));
        let len: usize = lines.iter().map(|l: &String| l.len() + 1).sum::<usize>() + line.len();
        if len > 2048 {
            break;
        }
        ids.push(id);
        lines.push(line);
    }
    let frame = lines.join("\n");
    let push_len = r#"{"push":{"channel":"s","pub":{"data":1,"info":{"user":"","client":""}}}}"#
        .len()
        + member.client_id().len();
    assert!(
        ids.len() * push_len > 2048 + push_len,
        "{} pushes of {push_len} bytes would not overflow 2048",
        ids.len()
    );
    publisher.send_text(&frame);
    member.expect_close(3008, "slow");
    for id in ids {
        assert_eq!(publisher.result(id, "publish"), Ok(json!({})));
    }
    assert_eq!(node.metric("roomcast_slow_consumer_closes_total"), 1);
    // The others are served.
    reader.subscribe(room);
    publisher.publish(room, json!("on"));
    assert_eq!(reader.recv_publication(room)["data"], "on");
}

/// `--max-outbound-bytes` at its smallest accepted value (1024, with
/// `--max-frame-bytes` no larger, as start-up requires) serves clients of
/// both protocols.
fn smallest_outbound_limit_serves(rt: Runtime) {
    let node = Node::embedded(
        rt,
        &["--max-outbound-bytes", "1024", "--max-frame-bytes", "1024"],
    );
    let room = unique("small");
    let mut c = CfClient::connect(node.addr());
    c.subscribe(&room);
    let mut seed = node.client();
    seed.join(&room);
    seed.send(&room, "small");
    assert_eq!(seed.recv(), "small");
    assert_eq!(c.recv_publication(&room)["data"], "small");
}

/// Every client, raw or SDK, connected or not yet, is closed 3001
/// "shutdown" and finishes its close handshake: the shutdown returns long
/// before its grace runs out.
fn shutdown_closes_3001(rt: Runtime) {
    let node = Node::embedded(rt, &["--shutdown-grace", "10s"]);
    let room = unique("closing");
    let mut raw = CfClient::connect(node.addr());
    raw.subscribe(&room);
    let mut fresh = CfClient::open(node.addr());
    let mut agents: Vec<Agent> = Sdk::ALL
        .into_iter()
        .map(|sdk| {
            let (mut a, _) = connected(sdk, node.addr());
            subscribe(&mut a, &room);
            a
        })
        .collect();
    let pending = node.shutdown_in_background();
    raw.expect_close(3001, "shutdown");
    fresh.expect_close(3001, "shutdown");
    for a in &mut agents {
        let ev = a.wait_event(|e| e["event"] == "connecting" && e["code"] == 3001, TIMEOUT);
        assert_eq!(ev["reason"], "shutdown", "{}: {ev}", a.sdk());
    }
    let took = pending.wait(Duration::from_secs(20));
    eprintln!("{}: shutdown took {took:?}", rt.name());
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}: some close handshake did not finish"
    );
    for a in agents {
        a.exit();
    }
}
