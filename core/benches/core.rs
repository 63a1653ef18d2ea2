//! Micro-benchmarks of the hot paths: fan-out, parsing, membership churn.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use roomcast_core::{Command, Hub, HubConfig, Inbound, Limits, Session, seed as protocol};

fn connected_hub() -> Hub {
    let mut cfg = HubConfig::default();
    cfg.limits.max_outbound_bytes = usize::MAX;
    let mut hub = Hub::new(cfg, Duration::ZERO);
    hub.handle_broker_connected(Session(1), Duration::ZERO);
    while hub.poll_command().is_some() {}
    hub
}

fn fanout(c: &mut Criterion) {
    const MEMBERS: usize = 10_000;
    let mut hub = connected_hub();
    for _ in 0..MEMBERS {
        let id = hub.handle_open();
        hub.handle_frame(id, Inbound::Text(br#"{"type":"SUBSCRIBE","room":"big"}"#));
    }
    while hub.poll_command().is_some() {}
    let payload = br#"{"type":"sendMessage","roomId":"big","message":"0123456789012345678901234567890123456789012345678901234567890123"}"#;
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(MEMBERS as u64));
    g.bench_function("broker_message_to_10k_members", |b| {
        b.iter(|| {
            hub.handle_broker_message(b"big", payload);
            let mut n = 0;
            while let Some(cmd) = hub.poll_command() {
                if let Command::SendTo(_, f) = cmd {
                    black_box(&f);
                    n += 1;
                }
            }
            assert_eq!(n, MEMBERS);
        })
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

fn churn(c: &mut Criterion) {
    const CONNS: usize = 1_000;
    const ROOMS: usize = 100;
    let rooms: Vec<Vec<u8>> = (0..ROOMS)
        .map(|r| format!(r#"{{"type":"SUBSCRIBE","room":"room-{r}"}}"#).into_bytes())
        .collect();
    let unsubs: Vec<Vec<u8>> = (0..ROOMS)
        .map(|r| format!(r#"{{"type":"UNSUBSCRIBE","room":"room-{r}"}}"#).into_bytes())
        .collect();
    let mut g = c.benchmark_group("churn");
    // Each connection joins 4 rooms then leaves them: 8 operations each.
    g.throughput(Throughput::Elements((CONNS * 8) as u64));
    g.bench_function("subscribe_unsubscribe", |b| {
        b.iter_batched(
            || {
                let mut hub = connected_hub();
                let ids: Vec<_> = (0..CONNS).map(|_| hub.handle_open()).collect();
                (hub, ids)
            },
            |(mut hub, ids)| {
                for (i, &id) in ids.iter().enumerate() {
                    for k in 0..4 {
                        hub.handle_frame(id, Inbound::Text(&rooms[(i + k * 7) % ROOMS]));
                    }
                }
                for (i, &id) in ids.iter().enumerate() {
                    for k in 0..4 {
                        hub.handle_frame(id, Inbound::Text(&unsubs[(i + k * 7) % ROOMS]));
                    }
                }
                while hub.poll_command().is_some() {}
                assert_eq!(hub.rooms(), 0);
                hub
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, fanout, parse, churn);
criterion_main!(benches);
