//! Presence end to end: the real SDKs (`centrifuge` on npm,
//! `centrifuge-python`) and seed clients on two nodes sharing a Redis of the
//! test's own, and on an embedded node: `presence` and `presence_stats`
//! agree across nodes; join and leave pushes for subscribe, unsubscribe, a
//! dropped socket and a node shutdown; a SIGKILLed node's clients are gone
//! within the presence TTL; presence comes back after Redis restarts empty;
//! the member cap stops join/leave and keeps the stats right; permissions.
//! The Redis ones run twice: on the Redis on PATH, and on a Redis 8, where
//! presence lives in one hash with per-field expiry (`HEXPIRE`) instead of
//! a hash and a sorted set of expiries.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use roomcast_core::codec::redis::{PRESENCE_ADD_SCRIPT, PRESENCE_GET_SCRIPT, PresenceKeys};
use roomcast_tests::auth::ConfigFile;
use roomcast_tests::binary::{BinaryNode, Spawn};
use roomcast_tests::centrifugo::{CfClient, cf_url};
use roomcast_tests::sdk::{Agent, Sdk, is, is_on};
use roomcast_tests::{Node, RedisServer, Runtime, TIMEOUT, Value, json, scenarios, unique};

scenarios!(
    sdks_see_each_other_across_two_nodes,
    sdks_see_each_other_across_two_nodes_on_redis8,
    a_killed_node_s_clients_leave_within_the_ttl_on_redis8,
    sdks_see_each_other_on_an_embedded_node,
    a_killed_node_s_clients_leave_within_the_ttl,
    presence_is_rebuilt_after_redis_restarts_empty,
    the_member_cap_stops_join_leave_and_keeps_the_stats,
    presence_permissions,
);

/// An agent connected to `addr`, and its client id.
fn connected(sdk: Sdk, addr: std::net::SocketAddr) -> (Agent, String) {
    let mut a = Agent::spawn(sdk);
    a.ok(json!({"cmd": "connect", "url": cf_url(addr), "wait": true,
        "minReconnectDelay": 100, "maxReconnectDelay": 500}));
    let ev = a.wait_event(is("connected"), TIMEOUT);
    let id = ev["client"].as_str().expect("a client id").to_string();
    (a, id)
}

/// Subscribes with join/leave pushes and waits for `subscribed`.
fn subscribe(a: &mut Agent, room: &str) {
    a.ok(json!({"cmd": "subscribe", "channel": room, "joinLeave": true, "wait": true}));
    a.wait_event(is_on("subscribed", room), TIMEOUT);
}

/// The client ids `presence` lists.
fn presence(a: &mut Agent, room: &str) -> BTreeSet<String> {
    let r = a.ok(json!({"cmd": "presence", "channel": room}));
    r["clients"]
        .as_object()
        .unwrap_or_else(|| panic!("{}: {r}", a.sdk()))
        .keys()
        .cloned()
        .collect()
}

fn stats(a: &mut Agent, room: &str) -> (u64, u64) {
    let r = a.ok(json!({"cmd": "presenceStats", "channel": room}));
    (
        r["numClients"].as_u64().unwrap_or_else(|| panic!("{r}")),
        r["numUsers"].as_u64().unwrap_or_else(|| panic!("{r}")),
    )
}

/// Polls `presence` until it is `want` (presence is eventual across
/// nodes: a join is written through the other node's pipeline).
fn wait_presence(a: &mut Agent, room: &str, want: &BTreeSet<String>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = presence(a, room);
        if &got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: presence {got:?}, expected {want:?}",
            a.sdk()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The next join (or leave) event on `room` for client `client`.
fn wait_join_leave(a: &mut Agent, kind: &str, room: &str, client: &str) -> Value {
    a.wait_event(
        |e| is_on(kind, room)(e) && e["info"]["client"] == client,
        TIMEOUT,
    )
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// Two SDK clients (one of each) and a seed client on `n1`/`n2`: each
/// sees everyone, joins and leaves arrive for subscribe, unsubscribe, a
/// dropped socket, and the second node shutting down.
fn see_each_other(n1: &Node, n2: Node, redis: &RedisServer) {
    let room = unique("lobby");
    let (mut js, js_id) = connected(Sdk::Js, n1.addr());
    subscribe(&mut js, &room);
    let (mut py, py_id) = connected(Sdk::Py, n2.addr());
    subscribe(&mut py, &room);
    // js hears py join (its own join may come too).
    wait_join_leave(&mut js, "join", &room, &py_id);
    let mut seed = n1.client();
    seed.join(&room);
    redis.wait_numsub(&room, 2);
    // The seed client is listed too, anonymous: find its id as the third.
    let deadline = Instant::now() + TIMEOUT;
    let seed_id = loop {
        let p = presence(&mut js, &room);
        if p.len() == 3 {
            break p
                .into_iter()
                .find(|c| *c != js_id && *c != py_id)
                .expect("a third client");
        }
        assert!(Instant::now() < deadline, "presence {p:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let all = set(&[&js_id, &py_id, &seed_id]);
    wait_presence(&mut py, &room, &all, TIMEOUT);
    // All anonymous: three clients, one user ("").
    assert_eq!(stats(&mut js, &room), (3, 1));
    assert_eq!(stats(&mut py, &room), (3, 1));
    wait_join_leave(&mut py, "join", &room, &seed_id);

    // The seed client leaves: both SDKs hear it.
    drop(seed);
    wait_join_leave(&mut js, "leave", &room, &seed_id);
    wait_join_leave(&mut py, "leave", &room, &seed_id);
    wait_presence(&mut js, &room, &set(&[&js_id, &py_id]), TIMEOUT);

    // py unsubscribes: js hears it leave, and presence agrees.
    py.ok(json!({"cmd": "unsubscribe", "channel": room}));
    wait_join_leave(&mut js, "leave", &room, &py_id);
    wait_presence(&mut js, &room, &set(&[&js_id]), TIMEOUT);
    // And back.
    subscribe(&mut py, &room);
    wait_join_leave(&mut js, "join", &room, &py_id);

    // js's socket drops: py hears it leave, then join again as the SDK
    // reconnects (with a new client id).
    js.ok(json!({"cmd": "dropTransport"}));
    wait_join_leave(&mut py, "leave", &room, &js_id);
    let ev = js.wait_event(is("connected"), TIMEOUT);
    let js_id2 = ev["client"].as_str().unwrap().to_string();
    js.wait_event(is_on("subscribed", &room), TIMEOUT);
    wait_join_leave(&mut py, "join", &room, &js_id2);
    wait_presence(&mut py, &room, &set(&[&js_id2, &py_id]), TIMEOUT);

    // n2 shuts down cleanly: its client's entry goes at once.
    n2.shutdown().expect("shutdown");
    wait_join_leave(&mut js, "leave", &room, &py_id);
    wait_presence(&mut js, &room, &set(&[&js_id2]), Duration::from_secs(3));
    js.exit();
    drop(py);
}

fn sdks_see_each_other_across_two_nodes(rt: Runtime) {
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &[]);
    let n2 = Node::redis(rt, &redis, &[]);
    see_each_other(&n1, n2, &redis);
}

/// As above on a Redis with per-field expiry: the same answers, from one
/// hash whose fields expire on their own and no sorted set beside it.
fn sdks_see_each_other_across_two_nodes_on_redis8(rt: Runtime) {
    let redis = RedisServer::start_redis8();
    let n1 = Node::redis(rt, &redis, &[]);
    let n2 = Node::redis(rt, &redis, &[]);
    see_each_other(&n1, n2, &redis);
}

fn sdks_see_each_other_on_an_embedded_node(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    see_each_other_one_node(&node);
}

/// [`see_each_other`] with both SDKs on one embedded node.
fn see_each_other_one_node(node: &Node) {
    let room = unique("solo");
    let (mut js, js_id) = connected(Sdk::Js, node.addr());
    subscribe(&mut js, &room);
    let (mut py, py_id) = connected(Sdk::Py, node.addr());
    subscribe(&mut py, &room);
    wait_join_leave(&mut js, "join", &room, &py_id);
    assert_eq!(presence(&mut py, &room), set(&[&js_id, &py_id]));
    assert_eq!(stats(&mut js, &room), (2, 1));
    py.ok(json!({"cmd": "unsubscribe", "channel": room}));
    wait_join_leave(&mut js, "leave", &room, &py_id);
    assert_eq!(presence(&mut js, &room), set(&[&js_id]));
    subscribe(&mut py, &room);
    js.ok(json!({"cmd": "dropTransport"}));
    wait_join_leave(&mut py, "leave", &room, &js_id);
    js.exit();
    py.exit();
}

/// A node is SIGKILLed: nobody removes its clients' entries, and they
/// expire within the presence TTL (short here).
fn a_killed_node_s_clients_leave_within_the_ttl(rt: Runtime) {
    killed_node_s_clients_expire(rt, &RedisServer::start());
}

/// As above where the server expires each field itself: the fields carry
/// the ttl (`HTTL`), and there is no sorted set of expiries.
fn a_killed_node_s_clients_leave_within_the_ttl_on_redis8(rt: Runtime) {
    killed_node_s_clients_expire(rt, &RedisServer::start_redis8());
}

fn killed_node_s_clients_expire(rt: Runtime, redis: &RedisServer) {
    let fast = ["--presence-ttl", "2s", "--presence-refresh", "500ms"];
    let stable = Node::redis(rt, redis, &fast);
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend(fast);
    let doomed = BinaryNode::start(rt, &args, Spawn::default());
    doomed.wait_health(200);
    let room = unique("ghosts");
    let (mut watcher, w_id) = connected(Sdk::Js, stable.addr());
    subscribe(&mut watcher, &room);
    let mut ghosts: Vec<CfClient> = (0..3)
        .map(|_| {
            let mut c = CfClient::connect(doomed.addr());
            c.subscribe(&room);
            c
        })
        .collect();
    let ids: Vec<String> = ghosts.iter().map(|c| c.client_id().to_string()).collect();
    let mut all: BTreeSet<String> = ids.iter().cloned().collect();
    all.insert(w_id.clone());
    wait_presence(&mut watcher, &room, &all, TIMEOUT);
    let field_ttl = layout_has_field_ttl(redis, &room, &ids);
    // Past a refresh or two, still there.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(presence(&mut watcher, &room), all, "refreshed, not expired");
    let killed = Instant::now();
    drop(doomed);
    ghosts.clear();
    wait_presence(&mut watcher, &room, &set(&[&w_id]), Duration::from_secs(5));
    let gone = killed.elapsed();
    assert!(
        gone >= Duration::from_millis(500),
        "expired, not removed: {gone:?}"
    );
    assert_eq!(stats(&mut watcher, &room), (1, 1));
    eprintln!(
        "{rt:?}: a killed node's clients left presence {gone:?} after the kill \
         (ttl 2s, per-field expiry: {field_ttl})"
    );
    watcher.exit();
}

/// Whether `room`'s presence is kept with per-field expiry, which it must
/// be exactly when the server is Redis 7.4 or later; checked on the keys
/// themselves: with it, each of `clients` has a ttl of its own and there is
/// no sorted set; without it, the sorted set holds each client's expiry.
fn layout_has_field_ttl(redis: &RedisServer, room: &str, clients: &[String]) -> bool {
    let mut con = redis.conn();
    let version: String = redis::cmd("INFO").arg("server").query(&mut con).unwrap();
    let version = version
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .expect("redis_version in INFO")
        .trim()
        .to_string();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let has_field_ttl = (major, minor) >= (7, 4);
    let keys = PresenceKeys::new("", room);
    let zset: bool = redis::cmd("EXISTS")
        .arg(&keys.expiry)
        .query(&mut con)
        .unwrap();
    assert_eq!(zset, !has_field_ttl, "sorted set on Redis {version}");
    for c in clients {
        let in_hash: bool = redis::cmd("HEXISTS")
            .arg(&keys.data)
            .arg(c)
            .query(&mut con)
            .unwrap();
        assert!(in_hash, "{c} in {}", keys.data);
        if has_field_ttl {
            let ttl: Vec<i64> = redis::cmd("HTTL")
                .arg(&keys.data)
                .arg("FIELDS")
                .arg(1)
                .arg(c)
                .query(&mut con)
                .unwrap();
            assert!(
                matches!(ttl[..], [1..=2]),
                "{c}'s field ttl on Redis {version}: {ttl:?}"
            );
        } else {
            let score: Option<f64> = redis::cmd("ZSCORE")
                .arg(&keys.expiry)
                .arg(c)
                .query(&mut con)
                .unwrap();
            assert!(score.is_some(), "{c}'s expiry on Redis {version}");
        }
    }
    has_field_ttl
}

/// A room's presence written with a sorted set of expiries (by a server
/// without per-field expiry, before an upgrade) and then added to on a
/// Redis 8: the first add moves each live expiry onto its field, drops the
/// expired entries, and deletes the set; reads agree throughout.
#[test]
fn a_sorted_set_of_expiries_moves_onto_the_fields_on_redis8() {
    let redis = RedisServer::start_redis8();
    let mut con = redis.conn();
    let keys = PresenceKeys::new("", "upgraded");
    let now: Vec<i64> = redis::cmd("TIME").query(&mut con).unwrap();
    let now = now[0];
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(&keys.data)
        .arg("live")
        .arg("{}")
        .arg("dead")
        .arg("{}")
        .ignore()
        .cmd("ZADD")
        .arg(&keys.expiry)
        .arg(now + 100)
        .arg("live")
        .arg(now - 1)
        .arg("dead")
        .ignore()
        .query(&mut con)
        .unwrap();
    let get = || {
        let mut con = redis.conn();
        let flat: Vec<String> = redis::cmd("EVAL")
            .arg(PRESENCE_GET_SCRIPT.source)
            .arg(2)
            .arg(&keys.data)
            .arg(&keys.expiry)
            .query(&mut con)
            .unwrap();
        flat.chunks(2)
            .map(|kv| kv[0].clone())
            .collect::<BTreeSet<_>>()
    };
    // A read before any add already prunes by the sorted set.
    assert_eq!(get(), set(&["live"]));
    let n: i64 = redis::cmd("EVAL")
        .arg(PRESENCE_ADD_SCRIPT.source)
        .arg(2)
        .arg(&keys.data)
        .arg(&keys.expiry)
        .arg(60)
        .arg("new")
        .arg("{\"user\":\"u\"}")
        .query(&mut con)
        .unwrap();
    assert_eq!(n, 2);
    let zset: bool = redis::cmd("EXISTS")
        .arg(&keys.expiry)
        .query(&mut con)
        .unwrap();
    assert!(!zset, "the sorted set is gone");
    let ttl: Vec<i64> = redis::cmd("HTTL")
        .arg(&keys.data)
        .arg("FIELDS")
        .arg(2)
        .arg("live")
        .arg("new")
        .query(&mut con)
        .unwrap();
    assert!(
        (95..=100).contains(&ttl[0]),
        "live keeps its expiry: {ttl:?}"
    );
    assert!((55..=60).contains(&ttl[1]), "new has the ttl: {ttl:?}");
    assert_eq!(get(), set(&["live", "new"]));
}

/// Redis restarts with nothing: each node writes its live clients again
/// as soon as its link is back.
fn presence_is_rebuilt_after_redis_restarts_empty(rt: Runtime) {
    let mut redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &[]);
    let n2 = Node::redis(rt, &redis, &[]);
    let room = unique("rebuilt");
    let (mut a, a_id) = connected(Sdk::Js, n1.addr());
    subscribe(&mut a, &room);
    let mut b = CfClient::connect(n2.addr());
    b.subscribe(&room);
    let all = set(&[&a_id, b.client_id()]);
    wait_presence(&mut a, &room, &all, TIMEOUT);
    redis.restart();
    n1.wait_health(200);
    n2.wait_health(200);
    wait_presence(&mut a, &room, &all, TIMEOUT);
    assert_eq!(stats(&mut a, &room), (2, 1));
    a.exit();
}

fn capped_config(max: usize) -> ConfigFile {
    ConfigFile::new(&format!(
        "allow_anonymous_connect_without_token = true\n\
         [default_namespace]\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         allow_presence_for_client = true\n\
         allow_presence_for_anonymous = true\n\
         presence = true\n\
         join_leave = true\n\
         presence_max_members = {max}\n"
    ))
}

/// Over the cap, join/leave stop (on every node) while `presence_stats`
/// stays right.
fn the_member_cap_stops_join_leave_and_keeps_the_stats(rt: Runtime) {
    let cfg = capped_config(3);
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &["--config", cfg.path()]);
    let n2 = Node::redis(rt, &redis, &["--config", cfg.path()]);
    let embedded = Node::embedded(rt, &["--config", cfg.path()]);
    for (n_a, n_b) in [(&n1, &n2), (&embedded, &embedded)] {
        let room = unique("big");
        let (mut a, _) = connected(Sdk::Js, n_a.addr());
        subscribe(&mut a, &room);
        let mut others: Vec<CfClient> = Vec::new();
        for i in 0..2 {
            let mut c = CfClient::connect(n_b.addr());
            c.subscribe(&room);
            let id = c.client_id().to_string();
            wait_join_leave(&mut a, "join", &room, &id);
            others.push(c);
            assert_eq!(stats(&mut a, &room).0, 2 + i as u64);
        }
        // The fourth is over the cap of 3: no join for it, nor later.
        let mut c = CfClient::connect(n_b.addr());
        c.subscribe(&room);
        let over = c.client_id().to_string();
        others.push(c);
        let deadline = Instant::now() + TIMEOUT;
        while stats(&mut a, &room).0 != 4 {
            assert!(Instant::now() < deadline, "the stats count all four");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut c = CfClient::connect(n_b.addr());
        c.subscribe(&room);
        let fifth = c.client_id().to_string();
        others.push(c);
        a.expect_no_event(
            |e| {
                is_on("join", &room)(e)
                    && (e["info"]["client"] == over || e["info"]["client"] == fifth)
            },
            Duration::from_millis(500),
        );
        let deadline = Instant::now() + TIMEOUT;
        while stats(&mut a, &room) != (5, 1) {
            assert!(Instant::now() < deadline, "five clients, one user");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            n_b.metric("roomcast_presence_capped_total") >= 1,
            "the joining node saw the cap"
        );
        a.exit();
    }
}

/// 108 where the namespace has no presence; 103 without the permission;
/// seed clients have no presence frame at all.
fn presence_permissions(rt: Runtime) {
    let cfg = ConfigFile::new(
        "allow_anonymous_connect_without_token = true\n\
         [default_namespace]\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         [[namespace]]\n\
         name = \"seen\"\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         presence = true\n\
         allow_presence_for_subscriber = true\n\
         allow_presence_for_anonymous = true\n\
         [[namespace]]\n\
         name = \"secret\"\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         presence = true\n",
    );
    let node = Node::embedded(rt, &["--config", cfg.path()]);
    let mut c = CfClient::connect(node.addr());
    let e = c.err("presence", json!({"channel": "plain"}));
    assert_eq!(e["code"], 108, "{e}");
    let e = c.err("presence_stats", json!({"channel": "plain"}));
    assert_eq!(e["code"], 108, "{e}");
    let e = c.err("presence", json!({"channel": "secret:x"}));
    assert_eq!(e["code"], 103, "{e}");
    let e = c.err("presence", json!({"channel": "nope:x"}));
    assert_eq!(e["code"], 102, "{e}");
    // For subscribers only: not before subscribing, then yes.
    let e = c.err("presence", json!({"channel": "seen:x"}));
    assert_eq!(e["code"], 103, "{e}");
    c.subscribe("seen:x");
    let r = c.ok("presence", json!({"channel": "seen:x"}));
    let clients: Vec<&String> = r["presence"].as_object().unwrap().keys().collect();
    assert_eq!(clients, [&c.client_id().to_string()], "{r}");
    let r = c.ok("presence_stats", json!({"channel": "seen:x"}));
    assert_eq!(r, json!({"num_clients": 1, "num_users": 1}));
}
