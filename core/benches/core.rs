//! Micro-benchmarks of the hot paths, through the whole node where a
//! runtime would go through it:
//!
//! - `node_fanout`: a broker message reaching N members' outboxes
//!   (`Node::broker_message`: parse, one hub lookup, one shared frame, one
//!   outbox lock per member), N = 100 and 10,000;
//! - `node_publish`: a client's publish through `Node::frame` in embedded
//!   mode (parse, rate check, delivery to the room's members);
//! - `node_threads`: the broker-message path from one thread and from two
//!   at once on different rooms, and the part of a message done under the
//!   hub's lock (the probe-channel check and the member lookup): the lock
//!   is held for a small fraction of a message, so two threads should come
//!   close to twice the throughput of one on two idle cores;
//! - `parse`: client frames;
//! - `hub_churn`: joins and leaves on the hub alone.
//!
//! Outboxes are drained between iterations, outside the measurement.

use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use roomcast_core::{
    BrokerMode, BrokerOp, ClientProtocol, Conn, Hub, HubConfig, Inbound, Limits, Node, NodeConfig,
    Outgoing, Session, seed as protocol,
};

const T0: Duration = Duration::ZERO;

const PAYLOAD: &[u8] = br#"{"type":"sendMessage","roomId":"big","message":"0123456789012345678901234567890123456789012345678901234567890123"}"#;

fn config(mode: BrokerMode) -> NodeConfig {
    let mut hub = HubConfig::default();
    hub.limits.max_outbound_bytes = usize::MAX;
    NodeConfig {
        hub,
        mode,
        ..NodeConfig::default()
    }
}

/// A node whose broker session is up (remote), or an embedded one.
fn node(mode: BrokerMode) -> Node {
    let node = Node::new(config(mode), T0);
    if mode == BrokerMode::Remote {
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(Some(_connect)) = node.poll_broker(&mut cx) else {
            panic!("a connect")
        };
        node.broker_connected(Session(1), T0);
        let Poll::Ready(Some(ops)) = node.poll_broker(&mut cx) else {
            panic!("subscriptions and a probe")
        };
        let Some(BrokerOp::Probe { channel, payload }) = ops.last() else {
            panic!("{ops:?}")
        };
        node.broker_message(channel.as_bytes(), payload);
        assert!(node.broker_up());
    }
    node
}

/// `n` connections in `room`.
fn members(node: &Node, room: &str, n: usize) -> Vec<Conn> {
    let sub = format!(r#"{{"type":"SUBSCRIBE","room":"{room}"}}"#);
    (0..n)
        .map(|_| {
            let c = node.open(ClientProtocol::Seed, None, T0);
            assert!(node.frame(&c, Inbound::Text(sub.as_bytes()), T0));
            c
        })
        .collect()
}

/// Every writer takes what is queued for it.
fn drain(node: &Node, conns: &[Conn]) {
    let mut cx = Context::from_waker(Waker::noop());
    for c in conns {
        while let Poll::Ready(Outgoing::Frames(f)) = node.poll_outgoing(c, &mut cx) {
            black_box(f);
        }
    }
}

fn node_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("node_fanout");
    for n in [100, 10_000] {
        let node = node(BrokerMode::Remote);
        let conns = members(&node, "big", n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("broker_message_to_{n}_members"), |b| {
            b.iter_batched(
                || drain(&node, &conns),
                |()| node.broker_message(b"big", black_box(PAYLOAD)),
                BatchSize::PerIteration,
            )
        });
        assert_eq!(node.snapshot().slow_consumer_closes, 0);
    }
    g.finish();
}

fn node_publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("node_publish");
    for n in [1, 100] {
        let node = node(BrokerMode::Local);
        let conns = members(&node, "big", n);
        let sender = conns[0].clone();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("embedded_frame_to_{n}_members"), |b| {
            b.iter_batched(
                || drain(&node, &conns),
                |()| assert!(node.frame(&sender, Inbound::Text(black_box(PAYLOAD)), T0)),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

fn node_threads(c: &mut Criterion) {
    const MEMBERS: usize = 1_000;
    const ROUNDS: usize = 50;
    let node = node(BrokerMode::Remote);
    let rooms = ["room-a", "room-b"];
    let payloads: Vec<Vec<u8>> = rooms
        .iter()
        .map(|r| {
            format!(r#"{{"type":"sendMessage","roomId":"{r}","message":"0123456789012345678901234567890123456789012345678901234567890123"}}"#)
                .into_bytes()
        })
        .collect();
    let conns: Vec<Vec<Conn>> = rooms.iter().map(|r| members(&node, r, MEMBERS)).collect();
    let all: Vec<Conn> = conns.iter().flatten().cloned().collect();
    let work = |i: usize| {
        for _ in 0..ROUNDS {
            node.broker_message(rooms[i].as_bytes(), &payloads[i]);
        }
    };
    let mut g = c.benchmark_group("node_threads");
    // The same work either way: ROUNDS messages to each of the two rooms.
    g.throughput(Throughput::Elements((2 * ROUNDS * MEMBERS) as u64));
    g.bench_function("broker_messages_2_rooms_1_thread", |b| {
        b.iter_batched(
            || drain(&node, &all),
            |()| {
                work(0);
                work(1);
            },
            BatchSize::PerIteration,
        )
    });
    // What a broker message does under the hub's lock: the probe-channel
    // check and the member lookup (a snapshot of the member list). Against
    // a whole message, this bounds how busy the lock can be.
    g.throughput(Throughput::Elements(1));
    g.bench_function("hub_lock_part_of_one_message", |b| {
        b.iter(|| {
            let probe = node.inspect(|h| h.broker().probe_channel().as_bytes() == b"room-a");
            let members = node.inspect(|h| h.members(black_box("room-a")));
            black_box((probe, members))
        })
    });
    g.throughput(Throughput::Elements((2 * ROUNDS * MEMBERS) as u64));
    g.bench_function("broker_messages_2_rooms_2_threads", |b| {
        b.iter_batched(
            || drain(&node, &all),
            |()| {
                std::thread::scope(|s| {
                    s.spawn(|| work(0));
                    s.spawn(|| work(1));
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn parse(c: &mut Criterion) {
    let limits = Limits::default();
    let frames: [&[u8]; 3] = [
        br#"{"type":"SUBSCRIBE","room":"room-42"}"#,
        br#"{"type":"sendMessage","roomId":"room-42","message":"0123456789012345678901234567890123456789012345678901234567890123"}"#,
        br#"{"type":"sendMessage","roomId":"room-42","message":{"from":"ann","text":"hello there","n":[1,2,3]}}"#,
    ];
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.bench_function("client_frames", |b| {
        b.iter(|| {
            for f in frames {
                black_box(protocol::parse_client_frame(black_box(f), &limits).is_ok());
            }
        })
    });
    g.finish();
}

fn hub_churn(c: &mut Criterion) {
    const CONNS: usize = 1_000;
    const ROOMS: usize = 100;
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("room-{r}")).collect();
    let mut g = c.benchmark_group("hub_churn");
    // Each connection joins 4 rooms then leaves them: 8 operations each.
    g.throughput(Throughput::Elements((CONNS * 8) as u64));
    g.bench_function("join_leave", |b| {
        b.iter_batched(
            || {
                let mut hub: Hub<u32> =
                    Hub::new(HubConfig::default(), BrokerMode::Local, "probe".into(), T0);
                let ids: Vec<_> = (0..CONNS as u32).map(|i| hub.open(i).unwrap()).collect();
                (hub, ids)
            },
            |(mut hub, ids)| {
                for (i, &id) in ids.iter().enumerate() {
                    for k in 0..4 {
                        hub.join(id, &rooms[(i + k * 7) % ROOMS]).unwrap();
                    }
                }
                for (i, &id) in ids.iter().enumerate() {
                    for k in 0..4 {
                        assert!(hub.leave(id, &rooms[(i + k * 7) % ROOMS]));
                    }
                }
                assert_eq!(hub.rooms(), 0);
                hub
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    node_fanout,
    node_publish,
    node_threads,
    parse,
    hub_churn
);
criterion_main!(benches);
