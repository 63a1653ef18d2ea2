//! Delivery across nodes, Redis subscription bookkeeping, backend publishes
//! and the embedded broker.

use std::time::Duration;

use roomcast_tests::{Client, Node, RedisServer, Runtime, json, scenarios, seed_payload};

scenarios!(
    seed_scenario_two_nodes,
    one_subscription_per_room_per_node,
    churn_leaves_no_subscription,
    backend_publish_reaches_every_node,
    embedded_broker,
    many_members_on_two_nodes,
);

/// The messages of `got` that `sender` sent, in the order received.
fn from_sender<'a>(got: &'a [String], sender: &str) -> Vec<&'a str> {
    got.iter()
        .map(String::as_str)
        .filter(|m| m.starts_with(sender))
        .collect()
}

/// The seed's scenario: two nodes on one Redis, a user on each, one room;
/// every message reaches both users, in order per sender.
fn seed_scenario_two_nodes(rt: Runtime) {
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &[]);
    let n2 = Node::redis(rt, &redis, &[]);
    let mut a = n1.client();
    let mut b = n2.client();
    let mut outsider = n1.client();
    outsider.join("elsewhere");
    a.subscribe("room1");
    b.subscribe("room1");
    redis.wait_numsub("room1", 2);

    const N: usize = 100;
    let a_sent: Vec<String> = (0..N).map(|i| format!("a:{i}")).collect();
    let b_sent: Vec<String> = (0..N).map(|i| format!("b:{i}")).collect();
    for i in 0..N {
        a.send("room1", a_sent[i].as_str());
        b.send("room1", b_sent[i].as_str());
    }
    for (name, c) in [("a", &mut a), ("b", &mut b)] {
        let got = c.recv_n(2 * N);
        assert_eq!(from_sender(&got, "a:"), a_sent, "{name}: a's messages");
        assert_eq!(from_sender(&got, "b:"), b_sent, "{name}: b's messages");
    }

    // Strings arrive unescaped; other JSON values as compact JSON, spelled
    // as the sender wrote them.
    // (Order holds per sender only: wait for each before the next sender.)
    a.send("room1", "tab\there \"quoted\" é ✓");
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv(), "tab\there \"quoted\" é ✓");
    }
    b.send_text(
        r#"{"type":"sendMessage","roomId":"room1","message":{ "b": 1.50, "a": [1, 2], "s": "x y" }}"#,
    );
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv(), r#"{"b":1.50,"a":[1,2],"s":"x y"}"#);
    }
    a.send("room1", json!(null));
    assert_eq!(b.recv(), "null");
    assert_eq!(a.recv(), "null");
    // A non-member may send; only members receive.
    outsider.send("room1", "from outside");
    assert_eq!(a.recv(), "from outside");
    assert_eq!(b.recv(), "from outside");
    outsider.expect_silence(Duration::from_millis(300));
}

/// One Redis subscription per room per node, however many local members;
/// dropped when the last local member unsubscribes, closes, or vanishes.
fn one_subscription_per_room_per_node(rt: Runtime) {
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &[]);
    let n2 = Node::redis(rt, &redis, &[]);
    let room = "shared";

    let mut c1 = n1.client();
    let mut c2 = n1.client();
    let mut c3 = n1.client();
    let mut witness1 = n1.client();
    for c in [&mut c1, &mut c2, &mut c3] {
        c.join(room);
    }
    // Joining twice changes nothing.
    c1.join(room);
    redis.wait_numsub(room, 1);
    // (`join` leaves a room of its own afterwards; wait for that too.)
    n1.wait_metric("roomcast_broker_subscriptions", |v| v == 1);

    let mut d1 = n2.client();
    let mut d2 = n2.client();
    d1.join(room);
    redis.wait_numsub(room, 2);
    d2.join(room);
    witness1.sync();
    assert_eq!(redis.numsub(room), 2);

    // Everyone gets a message once.
    d2.send(room, "hello");
    for c in [&mut c1, &mut c2, &mut c3, &mut d1, &mut d2] {
        assert_eq!(c.recv(), "hello");
        c.expect_silence(Duration::from_millis(50));
    }

    // n1 loses members one way after the other; its subscription stays
    // until the last one is gone.
    c1.unsubscribe(room);
    c1.unsubscribe(room); // leaving twice changes nothing
    c1.sync();
    assert_eq!(redis.numsub(room), 2, "after one of three unsubscribed");
    c2.close();
    witness1.sync();
    assert_eq!(redis.numsub(room), 2, "after two of three left");
    d1.send(room, "still here");
    assert_eq!(c3.recv(), "still here");
    c1.expect_silence(Duration::from_millis(200));
    c3.drop_abruptly();
    redis.wait_numsub(room, 1);
    n1.wait_metric("roomcast_broker_subscriptions", |v| v == 0);
    n1.wait_metric("roomcast_rooms", |v| v == 0);

    // Same on n2: unsubscribe, then close.
    d1.unsubscribe(room);
    d1.sync();
    assert_eq!(redis.numsub(room), 1);
    d2.close();
    redis.wait_numsub(room, 0);
    n2.wait_metric("roomcast_broker_subscriptions", |v| v == 0);

    // And the room comes back when someone joins again.
    c1.join(room);
    redis.wait_numsub(room, 1);
    c1.send(room, "again");
    assert_eq!(c1.recv(), "again");
    // The last member unsubscribing drops it too.
    c1.unsubscribe(room);
    redis.wait_numsub(room, 0);
    c1.send(room, "nobody");
    c1.expect_silence(std::time::Duration::from_millis(200));
    witness1.close();
}

/// 10 clients on two nodes joining and leaving 1,000 rooms (unsubscribe,
/// close, abrupt drop, rejoin) leave no Redis subscription behind.
fn churn_leaves_no_subscription(rt: Runtime) {
    let redis = RedisServer::start();
    let nodes = [Node::redis(rt, &redis, &[]), Node::redis(rt, &redis, &[])];
    let mut clients: Vec<Client> = (0..10).map(|i| nodes[i % 2].client()).collect();
    let rooms_of = |i: usize| -> Vec<String> {
        (0..1000)
            .filter(|j| j % 10 == i || (j / 10) % 10 == i)
            .map(|j| format!("churn-{j}"))
            .collect()
    };
    for (i, c) in clients.iter_mut().enumerate() {
        for r in rooms_of(i) {
            c.subscribe(&r);
        }
    }
    for c in &mut clients {
        c.sync();
    }
    roomcast_tests::wait_until(
        "1000 channels are subscribed",
        roomcast_tests::TIMEOUT,
        || redis.channels().len() == 1000,
    );
    let total_rooms: u64 = nodes.iter().map(|n| n.metric("roomcast_rooms")).sum();
    assert!(total_rooms >= 1000, "rooms over both nodes: {total_rooms}");

    // Churn: leave every room and rejoin half of them, quickly.
    for (i, c) in clients.iter_mut().enumerate() {
        let rooms = rooms_of(i);
        for r in &rooms {
            c.unsubscribe(r);
        }
        for r in rooms.iter().step_by(2) {
            c.subscribe(r);
        }
        for r in rooms.iter().step_by(4) {
            c.unsubscribe(r);
            c.subscribe(r);
        }
    }
    for c in &mut clients {
        c.sync();
    }
    // A message still reaches a rejoined room.
    clients[0].send("churn-0", "after churn");
    assert_eq!(clients[0].recv(), "after churn");

    // Leave for good: four unsubscribe, three close, three drop their TCP.
    for (i, mut c) in clients.into_iter().enumerate() {
        match i {
            0..=3 => {
                for r in rooms_of(i) {
                    c.unsubscribe(&r);
                }
                c.sync();
                drop(c);
            }
            4..=6 => c.close(),
            _ => c.drop_abruptly(),
        }
    }
    redis.wait_no_channels();
    for n in &nodes {
        n.wait_metric("roomcast_rooms", |v| v == 0);
        n.wait_metric("roomcast_broker_subscriptions", |v| v == 0);
        n.wait_metric("roomcast_connections", |v| v == 0);
    }
}

/// A backend publishing the seed's payload with a plain Redis client reaches
/// the members on every node.
fn backend_publish_reaches_every_node(rt: Runtime) {
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &[]);
    let n2 = Node::redis(rt, &redis, &[]);
    let mut a = n1.client();
    let mut b = n2.client();
    let mut a2 = n1.client();
    a.subscribe("news");
    b.subscribe("news");
    a2.join("other");
    redis.wait_numsub("news", 2);

    assert_eq!(
        redis.publish("news", &seed_payload("news", &json!("deploy finished"))),
        2
    );
    // An object message, published with white space, arrives compact.
    redis.publish(
        "news",
        r#"{"type":"sendMessage","roomId":"news","message":{ "level": "info", "n": [1, 2.0] }}"#,
    );
    redis.publish(
        "news",
        &seed_payload("news", &json!({"k": {"nested": true}})),
    );
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv(), "deploy finished");
        assert_eq!(c.recv(), r#"{"level":"info","n":[1,2.0]}"#);
        assert_eq!(c.recv(), r#"{"k":{"nested":true}}"#);
    }

    // Payloads that are not the seed's are dropped and counted, and the
    // next good one still arrives.
    let dropped_before = n1.metric("roomcast_broker_payloads_dropped_total");
    redis.publish("news", "not json");
    redis.publish("news", &seed_payload("other", &json!("wrong room")));
    redis.publish("news", r#"{"type":"SUBSCRIBE","room":"news"}"#);
    redis.publish("news", &seed_payload("news", &json!("after junk")));
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv(), "after junk");
    }
    n1.wait_metric("roomcast_broker_payloads_dropped_total", |v| {
        v == dropped_before + 3
    });
    a2.expect_silence(Duration::from_millis(200));
}

/// Without --redis, the embedded broker delivers between clients of the
/// node, and the node is healthy.
fn embedded_broker(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    assert_eq!(node.get("/healthz").status, 200);
    let mut a = node.client();
    let mut b = node.client();
    a.join("lobby");
    b.join("lobby");
    for i in 0..20 {
        a.send("lobby", format!("a{i}"));
        b.send("lobby", json!({"i": i}));
    }
    for c in [&mut a, &mut b] {
        let got = c.recv_n(40);
        let a_got: Vec<&str> = from_sender(&got, "a");
        let want: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
        assert_eq!(a_got, want);
        let b_got: Vec<&str> = from_sender(&got, "{");
        let want: Vec<String> = (0..20).map(|i| format!("{{\"i\":{i}}}")).collect();
        assert_eq!(b_got, want);
    }
    b.unsubscribe("lobby");
    b.sync();
    a.send("lobby", "only a");
    assert_eq!(a.recv(), "only a");
    b.expect_silence(Duration::from_millis(200));
    let m = node.metrics();
    assert_eq!(m.get("roomcast_broker_up"), 1);
    assert_eq!(m.get("roomcast_connections"), 2);
}

/// 200 members over two nodes, 20 senders among them: everyone gets every
/// message, each sender's in order, and each node holds one subscription.
fn many_members_on_two_nodes(rt: Runtime) {
    let redis = RedisServer::start();
    let nodes = [Node::redis(rt, &redis, &[]), Node::redis(rt, &redis, &[])];
    let mut clients: Vec<Client> = (0..200).map(|i| nodes[i % 2].client()).collect();
    for c in &mut clients {
        c.subscribe("crowd");
    }
    for c in &mut clients {
        c.sync();
    }
    redis.wait_numsub("crowd", 2);
    for round in 0..3 {
        for s in 0..20 {
            clients[s * 10 + s % 2].send("crowd", format!("s{s}:{round}"));
        }
    }
    for c in &mut clients {
        let got = c.recv_n(60);
        for s in 0..20 {
            let prefix = format!("s{s}:");
            let want: Vec<String> = (0..3).map(|r| format!("{prefix}{r}")).collect();
            assert_eq!(from_sender(&got, &prefix), want);
        }
    }
    for n in &nodes {
        assert_eq!(n.metric("roomcast_connections"), 100);
    }
}
