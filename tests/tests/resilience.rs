//! Redis going away and coming back: killed and restarted, its pubsub
//! clients killed, frozen with SIGSTOP, or not there yet when a node starts.
//! WebSocket clients stay connected throughout and delivery resumes.

use std::time::Duration;

use roomcast_tests::{
    Client, FAST_REDIS, Node, RedisServer, Runtime, free_port, redis_url, scenarios,
};

scenarios!(
    redis_killed_and_restarted,
    pubsub_clients_killed,
    redis_frozen_then_resumed,
    node_started_before_redis,
    resubscribes_exactly_what_changed_during_the_outage,
    publish_buffer_overflow_is_counted,
    publisher_connection_killed,
);

/// Sends `a-<tag>-<i>` from `a` and `b-<tag>-<i>` from `b` (waiting for each
/// sender's batch in turn) and checks both clients get all of them in order.
fn exchange(a: &mut Client, b: &mut Client, room: &str, tag: &str) {
    for sender in ["a", "b"] {
        let msgs: Vec<String> = (0..5).map(|i| format!("{sender}-{tag}-{i}")).collect();
        let from = if sender == "a" { &mut *a } else { &mut *b };
        for m in &msgs {
            from.send(room, m.as_str());
        }
        for c in [&mut *a, &mut *b] {
            assert_eq!(c.recv_n(msgs.len()), msgs, "{tag}: {sender}'s messages");
        }
    }
}

/// A message sent while Redis was down may or may not arrive elsewhere
/// (delivery is at most once); tests skip it where it may show up.
fn is_outage_message(m: &str) -> bool {
    m.starts_with("during-outage")
}

fn redis_killed_and_restarted(rt: Runtime) {
    let mut redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, FAST_REDIS);
    let n2 = Node::redis(rt, &redis, FAST_REDIS);
    let mut a = n1.client();
    let mut a2 = n1.client();
    let mut b = n2.client();
    a.subscribe("r");
    a2.subscribe("r");
    b.subscribe("r");
    redis.wait_numsub("r", 2);
    a2.sync();
    exchange(&mut a, &mut b, "r", "before");
    a2.recv_n(10);

    redis.kill();
    n1.wait_health(503);
    n2.wait_health(503);
    // The node holds what its clients send meanwhile and publishes it, in
    // order, once it has resubscribed: members on the same node get it.
    a.send("r", "during-outage-1");
    a.send("r", "during-outage-2");
    n1.wait_metric("roomcast_publish_buffer_depth", |v| v == 2);

    redis.restart();
    n1.wait_health(200);
    n2.wait_health(200);
    redis.wait_numsub("r", 2);
    for c in [&mut a, &mut a2] {
        assert_eq!(c.recv(), "during-outage-1");
        assert_eq!(c.recv(), "during-outage-2");
    }
    // b may or may not have them: n2 may have resubscribed after n1
    // published. Skip them there.
    let probe = "after-restart-probe";
    a.send("r", probe);
    b.recv_skipping(probe, is_outage_message);
    assert_eq!(a.recv(), probe);
    assert_eq!(a2.recv(), probe);
    exchange(&mut a, &mut b, "r", "after");
    assert_eq!(n1.metric("roomcast_connections"), 2);
    assert_eq!(n2.metric("roomcast_connections"), 1);
    assert_eq!(n1.metric("roomcast_publish_buffer_depth"), 0);
}

/// `CLIENT KILL TYPE pubsub` drops the nodes' subscriber connections; each
/// node reconnects and resubscribes.
fn pubsub_clients_killed(rt: Runtime) {
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, FAST_REDIS);
    let n2 = Node::redis(rt, &redis, FAST_REDIS);
    let mut a = n1.client();
    let mut b = n2.client();
    for room in ["k1", "k2"] {
        a.subscribe(room);
        b.subscribe(room);
        redis.wait_numsub(room, 2);
    }
    exchange(&mut a, &mut b, "k1", "before");
    let connects = n1.metric("roomcast_broker_connects_total");

    for round in 0..2 {
        let killed = redis.kill_pubsub_clients();
        assert!(killed >= 2, "killed {killed} pubsub clients");
        redis.wait_numsub("k1", 2);
        redis.wait_numsub("k2", 2);
        exchange(&mut a, &mut b, "k2", &format!("round{round}"));
    }
    n1.wait_metric("roomcast_broker_connects_total", |v| v >= connects + 2);
}

/// Redis hangs (SIGSTOP) for about 5 s: the nodes notice through their ping
/// timeout, and when Redis resumes (SIGCONT) delivery resumes.
fn redis_frozen_then_resumed(rt: Runtime) {
    let mut redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, FAST_REDIS);
    let n2 = Node::redis(rt, &redis, FAST_REDIS);
    let mut a = n1.client();
    let mut b = n2.client();
    a.subscribe("f");
    b.subscribe("f");
    redis.wait_numsub("f", 2);
    exchange(&mut a, &mut b, "f", "before");

    redis.stop();
    n1.wait_health(503);
    n2.wait_health(503);
    a.send("f", "during-outage");
    std::thread::sleep(Duration::from_secs(3));
    redis.cont();

    n1.wait_health(200);
    n2.wait_health(200);
    redis.wait_numsub("f", 2);
    a.recv_skipping("during-outage", |_| false);
    let probe = "after-freeze-probe";
    a.send("f", probe);
    b.recv_skipping(probe, is_outage_message);
    assert_eq!(a.recv(), probe);
    exchange(&mut a, &mut b, "f", "after");
    assert!(n1.metric("roomcast_broker_failures_total") >= 1);
}

/// A node started before its Redis exists serves WebSockets, holds what its
/// clients send, and delivers once Redis appears.
fn node_started_before_redis(rt: Runtime) {
    let port = free_port();
    let n1 = Node::start(rt, Some(&redis_url(port)), FAST_REDIS);
    assert_eq!(n1.get("/healthz").status, 503);
    let mut a = n1.client();
    let mut a2 = n1.client();
    a.subscribe("early");
    a2.subscribe("early");
    a.send("early", "sent before redis existed");
    n1.wait_metric("roomcast_publish_buffer_depth", |v| v == 1);

    let redis = RedisServer::start_on(port);
    n1.wait_health(200);
    redis.wait_numsub("early", 1);
    for c in [&mut a, &mut a2] {
        assert_eq!(c.recv(), "sent before redis existed");
    }
    let n2 = Node::redis(rt, &redis, FAST_REDIS);
    let mut b = n2.client();
    b.subscribe("early");
    redis.wait_numsub("early", 2);
    exchange(&mut a, &mut b, "early", "after");
    a2.recv_n(10);
}

/// Joins and leaves during an outage are reflected exactly when Redis
/// returns: many rooms come back (in batches), left rooms do not.
fn resubscribes_exactly_what_changed_during_the_outage(rt: Runtime) {
    let mut redis = RedisServer::start();
    let mut flags = vec!["--max-rooms-per-conn", "1000"];
    flags.extend_from_slice(FAST_REDIS);
    let node = Node::redis(rt, &redis, &flags);
    let mut a = node.client();
    let mut b = node.client();
    let many: Vec<String> = (0..600).map(|i| format!("many-{i:03}")).collect();
    for (i, r) in many.iter().enumerate() {
        if i % 2 == 0 {
            a.subscribe(r)
        } else {
            b.subscribe(r)
        }
    }
    a.subscribe("left-during-outage");
    a.sync();
    b.sync();
    roomcast_tests::wait_until("601 channels", roomcast_tests::TIMEOUT, || {
        redis.channels().len() == 601
    });

    redis.kill();
    node.wait_health(503);
    a.unsubscribe("left-during-outage");
    a.subscribe("joined-during-outage");
    b.subscribe("joined-during-outage");
    b.unsubscribe("many-001");
    b.close();

    redis.restart();
    node.wait_health(200);
    let mut want: Vec<String> = many.iter().step_by(2).cloned().collect();
    want.push("joined-during-outage".into());
    want.sort();
    roomcast_tests::wait_until(
        "the resubscription settles",
        roomcast_tests::TIMEOUT,
        || redis.channels().len() == want.len(),
    );
    // (`sync` leaves a room of its own behind for a moment.)
    a.sync();
    roomcast_tests::wait_until(
        "exactly the rooms with members",
        roomcast_tests::TIMEOUT,
        || redis.channels() == want,
    );
    assert_eq!(
        node.metric("roomcast_broker_subscriptions"),
        want.len() as u64
    );
    a.send("joined-during-outage", "back");
    assert_eq!(a.recv(), "back");
    a.send("many-598", "many");
    assert_eq!(a.recv(), "many");
}

/// While Redis is down a node holds at most --publish-buffer messages; more
/// are dropped and counted, and what was held goes out in order.
fn publish_buffer_overflow_is_counted(rt: Runtime) {
    let port = free_port();
    let mut flags = vec!["--publish-buffer", "3"];
    flags.extend_from_slice(FAST_REDIS);
    let node = Node::start(rt, Some(&redis_url(port)), &flags);
    let mut a = node.client();
    a.subscribe("buf");
    for i in 0..5 {
        a.send("buf", format!("held-{i}"));
    }
    node.wait_metric("roomcast_publish_buffer_dropped_total", |v| v == 2);
    assert_eq!(node.metric("roomcast_publish_buffer_depth"), 3);

    let redis = RedisServer::start_on(port);
    node.wait_health(200);
    assert_eq!(a.recv_n(3), ["held-0", "held-1", "held-2"]);
    a.send("buf", "live");
    assert_eq!(a.recv(), "live");
    assert_eq!(node.metric("roomcast_publish_buffer_depth"), 0);
    drop(redis);
}

/// `CLIENT KILL TYPE normal` drops the node's publishing connection (its
/// subscriber stays): the node notices on its next publish, reconnects, and
/// delivery resumes. (The publish that hit the dead link may be lost:
/// delivery is at most once.)
fn publisher_connection_killed(rt: Runtime) {
    let redis = RedisServer::start();
    let node = Node::redis(rt, &redis, FAST_REDIS);
    let mut a = node.client();
    a.join("p");
    a.send("p", "before");
    assert_eq!(a.recv(), "before");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut redis.conn())
        .expect("CLIENT KILL TYPE normal");
    assert!(killed >= 1);
    let deadline = std::time::Instant::now() + roomcast_tests::TIMEOUT;
    let mut i = 0;
    loop {
        a.send("p", format!("probe-{i}"));
        if let Some(m) = a.recv_within(Duration::from_millis(500)) {
            assert!(m.starts_with("probe-"), "{m}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery after the kill"
        );
        i += 1;
    }
    node.wait_health(200);
    // Whatever probes were still on their way arrive before this.
    a.send("p", "after");
    a.recv_skipping("after", |m| m.starts_with("probe-"));
    assert!(node.metric("roomcast_broker_connects_total") >= 2);
}
