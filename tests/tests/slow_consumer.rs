//! A member that never reads is closed as a slow consumer, while the other
//! members get every message and the node's memory stays bounded; a member
//! that never reads and is then closed for bad input does not hold its
//! socket open; and one that floods its own room is dropped at once.
//!
//! This file holds only these tests, and they take a lock: the memory check
//! reads this process's resident set size.

use std::sync::Mutex;
use std::time::Duration;

use roomcast_tests::{Client, Node, RedisServer, Runtime, rss_bytes, scenarios};

scenarios!(
    slow_consumer_is_closed,
    refused_client_that_does_not_read_is_let_go,
    member_that_floods_itself_is_dropped_at_once
);

static SERIAL: Mutex<()> = Mutex::new(());

const MESSAGES: usize = 6144;
const MESSAGE_BYTES: usize = 8 * 1024;
/// Messages in flight at once: 32 KiB, half of --max-outbound-bytes, so a
/// member that reads can never be taken for a slow one.
const WINDOW: usize = 4;

fn slow_consumer_is_closed(rt: Runtime) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let redis = RedisServer::start();
    // Redis must not cut the node's subscriber off for falling behind.
    redis.config_set("client-output-buffer-limit", "pubsub 0 0 0");
    let node = Node::redis(rt, &redis, &["--max-outbound-bytes", "65536"]);
    let mut fast1 = node.client();
    let mut fast2 = node.client();
    let mut slow = node.client();
    for c in [&mut fast1, &mut fast2, &mut slow] {
        c.join("firehose");
    }
    redis.wait_numsub("firehose", 1);

    let payload = |i: usize| {
        let head = format!("{i}:");
        let mut m = head.clone();
        m.push_str(&"x".repeat(MESSAGE_BYTES - head.len()));
        m
    };
    // Warm up, then take the baseline.
    for i in 0..WINDOW {
        redis.publish(
            "firehose",
            &roomcast_tests::seed_payload("firehose", &payload(i).into()),
        );
    }
    for c in [&mut fast1, &mut fast2] {
        for i in 0..WINDOW {
            assert!(c.recv().starts_with(&format!("{i}:")));
        }
    }
    let baseline = rss_bytes();
    let mut peak = baseline;

    // `slow` never reads again. Publish in windows the fast members keep up
    // with, so Redis never holds much and the node is the only buffer, until
    // the node closes `slow` (or MESSAGES were sent), then 256 more.
    let mut con = redis.conn();
    let mut closed_at = None;
    let mut end = MESSAGES;
    let mut start = WINDOW;
    while start < end {
        let mut pipe = redis::pipe();
        for i in start..start + WINDOW {
            pipe.cmd("PUBLISH")
                .arg("firehose")
                .arg(roomcast_tests::seed_payload("firehose", &payload(i).into()))
                .ignore();
        }
        pipe.exec(&mut con).expect("PUBLISH window");
        for c in [&mut fast1, &mut fast2] {
            for i in start..start + WINDOW {
                let got = c.recv();
                assert!(
                    got.starts_with(&format!("{i}:")) && got.len() == MESSAGE_BYTES,
                    "expected message {i}, got {:?}…",
                    &got[..got.len().min(20)]
                );
            }
        }
        start += WINDOW;
        if start.is_multiple_of(32 * WINDOW) {
            peak = peak.max(rss_bytes());
            if closed_at.is_none() && node.metric("roomcast_slow_consumer_closes_total") == 1 {
                closed_at = Some(start);
                end = (start + 256).min(MESSAGES);
            }
        }
    }
    peak = peak.max(rss_bytes());
    let closed_at = closed_at.unwrap_or_else(|| {
        panic!(
            "the member that never reads was not closed after {} MiB",
            (MESSAGES * MESSAGE_BYTES) >> 20
        )
    });
    assert_eq!(node.metric("roomcast_slow_consumer_closes_total"), 1);
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "{}: slow consumer closed after {} KiB published; resident set grew by at most {} KiB",
        rt.name(),
        (closed_at * MESSAGE_BYTES) >> 10,
        growth >> 10
    );
    // Unbounded, the node would hold nearly everything the slow member did
    // not read: up to 48 MiB here.
    assert!(
        growth < 16 << 20,
        "resident set grew by {growth} bytes before the slow consumer was closed"
    );

    // The slow member's connection is gone: what the kernel had buffered,
    // then a close frame or a reset/EOF, never all the messages.
    let mut received = 0usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ended = loop {
        match slow.next_event(deadline) {
            Some(roomcast_tests::Event::Text(_)) => received += 1,
            Some(roomcast_tests::Event::Close(f)) => break format!("close {f:?}"),
            Some(roomcast_tests::Event::Gone(e)) => break format!("gone: {e}"),
            Some(other) => panic!("slow consumer got {other:?}"),
            None => panic!("the slow consumer's connection is still open"),
        }
    };
    eprintln!("slow consumer: {received} messages, then {ended}");
    assert!(received < MESSAGES, "the slow consumer got everything");
    if ended.starts_with("close") {
        assert_eq!(ended, "close Some((1008, \"slow consumer\"))");
    }
    assert_eq!(node.wait_metric("roomcast_connections", |v| v == 2), 2);

    // The fast members are still served.
    fast1.send("firehose", "still flowing");
    assert_eq!(fast1.recv(), "still flowing");
    assert_eq!(fast2.recv(), "still flowing");
}

/// How much a loopback connection's kernel buffers can hold, so a test can
/// send more: the `tcp_rmem` and `tcp_wmem` maxima (16 MiB each if they
/// cannot be read), at most 14 MiB in all. A receiver that does not read
/// never grows its buffer far (about 4 MiB was seen held here with 32 MiB
/// maxima), and the cap keeps these tests' traffic bounded on a slow CI
/// machine.
fn kernel_socket_buffers() -> usize {
    let max = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
            .unwrap_or(16 << 20)
    };
    (max("/proc/sys/net/ipv4/tcp_rmem") + max("/proc/sys/net/ipv4/tcp_wmem")).min(14 << 20)
}

const BIG: usize = 60_000;

/// A node with a member in room "wall" that has stopped reading, and its
/// writes to that member stuck on a full socket: a sender filled the room
/// with more than the kernel's socket buffers hold, all still under the
/// outbound limit (the outbox holds the rest). The limit leaves room for
/// about `headroom` more bytes before the member is a slow consumer.
fn stuck_member(rt: Runtime, grace: &str, headroom: usize) -> (Node, Client, Client) {
    let total = 2 * kernel_socket_buffers() + (4 << 20);
    let outbound = (total + headroom).to_string();
    let node = Node::embedded(
        rt,
        &["--max-outbound-bytes", &outbound, "--shutdown-grace", grace],
    );
    let mut stuck = node.client();
    stuck.join("wall");
    let mut sender = node.client();
    let text = "y".repeat(BIG);
    for _ in 0..total / BIG {
        sender.send("wall", text.as_str());
    }
    sender.sync();
    // The stuck member, the sender, and this scrape.
    assert_eq!(node.metric("roomcast_sockets"), 3);
    assert_eq!(node.metric("roomcast_slow_consumer_closes_total"), 0);
    (node, stuck, sender)
}

/// Reads what the stuck member can still get: part of the stream, then its
/// end, never the rest of the messages nor a close frame (it was behind the
/// writes that were stuck).
fn read_to_the_end(rt: Runtime, stuck: &mut Client) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut received = 0usize;
    let ended = loop {
        match stuck.next_event(deadline) {
            Some(roomcast_tests::Event::Text(_)) => received += 1,
            Some(roomcast_tests::Event::Gone(e)) => break e,
            Some(other) => panic!("after {received} messages: {other:?}"),
            None => panic!("the socket is still open"),
        }
    };
    eprintln!("{}: {received} messages read, then {ended}", rt.name());
    assert!(received < 2 * kernel_socket_buffers() / BIG);
}

/// The stuck member sends a frame that is refused. The node cannot deliver
/// the close frame behind the stuck writes: it lets the socket go after
/// `--shutdown-grace` instead of holding it (and what it buffered) until the
/// client reads.
fn refused_client_that_does_not_read_is_let_go(rt: Runtime) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (node, mut stuck, mut sender) = stuck_member(rt, "1s", 64 << 20);
    stuck.send_binary(b"refused");
    assert_eq!(node.wait_metric("roomcast_connections", |v| v == 1), 1);
    node.wait_metric("roomcast_sockets", |v| v == 2);
    assert_eq!(node.metric("roomcast_slow_consumer_closes_total"), 0);
    read_to_the_end(rt, &mut stuck);
    sender.send("wall", "still served");
    sender.sync();
}

/// The stuck member sends to its own room until its outbound queue
/// overflows: a slow consumer, closed from its own frame while its writer is
/// stuck. It is dropped at once, as every slow consumer, not after the
/// shutdown grace (long here) that a writer with a close to send gets.
/// (tokio stops watching for the abort once the reader has ended, so there
/// this depends on `Node::reading_ended`; smol keeps racing the abort watch
/// and would pass without it.)
fn member_that_floods_itself_is_dropped_at_once(rt: Runtime) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let headroom = 2 << 20;
    let (node, mut stuck, _sender) = stuck_member(rt, "60s", headroom);
    let text = "z".repeat(BIG);
    // The kernel took some of what was sent: at most that, plus the
    // headroom, overflows the outbox. Writes fail once the node let go.
    let enough = (kernel_socket_buffers() + headroom) / BIG + 16;
    let frame = roomcast_tests::json!({"type": "sendMessage", "roomId": "wall", "message": text});
    let frame = frame.to_string();
    let mut sent = 0;
    while sent < enough
        && node.metric("roomcast_slow_consumer_closes_total") == 0
        && stuck
            .try_write(tungstenite::Message::text(frame.as_str()))
            .is_ok()
    {
        sent += 1;
    }
    node.wait_metric("roomcast_slow_consumer_closes_total", |v| v == 1);
    // Well within the 60 s grace.
    node.wait_metric("roomcast_sockets", |v| v == 2);
    assert_eq!(node.metric("roomcast_connections"), 1);
    eprintln!("{}: dropped after {sent} frames of its own", rt.name());
    read_to_the_end(rt, &mut stuck);
}
