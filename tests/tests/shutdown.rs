//! Graceful shutdown (`Running::shutdown`, the path SIGTERM takes): every
//! client gets 1001 "going away", no Redis subscription is left, and it
//! returns within a few seconds even when Redis hangs or a client never
//! reads.

use std::time::Duration;

use roomcast_tests::{Client, FAST_REDIS, Node, RedisServer, Runtime, TIMEOUT, scenarios};

scenarios!(
    shutdown_sends_going_away_and_unsubscribes,
    shutdown_with_redis_frozen,
    shutdown_with_embedded_broker,
    shutdown_before_redis_ever_answered,
);

/// Generous: the grace is 2 s plus 1 s for the broker; the machine is slow.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(15);

fn shutdown_sends_going_away_and_unsubscribes(rt: Runtime) {
    let redis = RedisServer::start();
    let n1 = Node::redis(rt, &redis, &[]);
    let n2 = Node::redis(rt, &redis, &[]);
    let mut clients: Vec<Client> = (0..4).map(|_| n1.client()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.subscribe("all");
        c.subscribe(&format!("own-{i}"));
        c.sync();
    }
    // A client in no room, and one that never reads again.
    let idle = n1.client();
    let mut deaf = n1.client();
    deaf.join("all");
    let mut other = n2.client();
    other.join("all");
    redis.wait_numsub("all", 2);
    // (`join` leaves a room of its own afterwards; wait for that too.)
    roomcast_tests::wait_until("only the clients' rooms are subscribed", TIMEOUT, || {
        redis.channels() == ["all", "own-0", "own-1", "own-2", "own-3"]
    });

    let pending = n1.shutdown_in_background();
    for c in clients {
        c.expect_close(1001, "going away");
    }
    idle.expect_close(1001, "going away");
    let took = pending.wait(SHUTDOWN_LIMIT);
    eprintln!("shutdown took {took:?}");

    // The node unsubscribed before it returned.
    assert_eq!(redis.channels(), ["all"]);
    assert_eq!(redis.numsub("all"), 1);
    // The other node is untouched.
    other.send("all", "n2 lives");
    assert_eq!(other.recv(), "n2 lives");
    drop(deaf);
}

fn shutdown_with_redis_frozen(rt: Runtime) {
    let mut redis = RedisServer::start();
    let node = Node::redis(rt, &redis, FAST_REDIS);
    let mut a = node.client();
    let mut b = node.client();
    a.join("x");
    b.join("x");
    redis.wait_numsub("x", 1);

    redis.stop();
    let pending = node.shutdown_in_background();
    a.expect_close(1001, "going away");
    b.expect_close(1001, "going away");
    let took = pending.wait(SHUTDOWN_LIMIT);
    eprintln!("shutdown with Redis frozen took {took:?}");

    // Once Redis runs again it sees the node's connections gone.
    redis.cont();
    redis.wait_no_channels();
}

fn shutdown_with_embedded_broker(rt: Runtime) {
    let node = Node::embedded(rt, &[]);
    let mut a = node.client();
    a.join("e");
    let b = node.client();
    let pending = node.shutdown_in_background();
    a.expect_close(1001, "going away");
    b.expect_close(1001, "going away");
    pending.wait(SHUTDOWN_LIMIT);
}

/// Redis hangs from the start (the node never completes a connection):
/// shutdown still returns promptly.
fn shutdown_before_redis_ever_answered(rt: Runtime) {
    let mut redis = RedisServer::start();
    redis.stop();
    let node = Node::start(rt, Some(&redis.url()), &[]);
    let a = node.client();
    assert_eq!(node.get("/healthz").status, 503);
    let pending = node.shutdown_in_background();
    a.expect_close(1001, "going away");
    pending.wait(SHUTDOWN_LIMIT);
    redis.cont();
}
