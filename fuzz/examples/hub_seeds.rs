//! Writes the seed corpus of the `hub_sequence` target: byte strings that
//! decode (the way `fuzz_target!` decodes them, with `arbitrary`) to the
//! setups and operation sequences below. Each is checked by decoding it
//! back and by running it through the harness.
//!
//!     cd fuzz && cargo run --example hub_seeds
//!
//! Re-run it when `roomcast_core::testing::Op` or `Setup` changes shape:
//! the encoding follows the order of their variants and fields.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use roomcast_core::testing::{Harness, Op, Proto, Setup};

/// Number of variants of `Op`.
const VARIANTS: u64 = 23;

fn variant(op: &Op) -> u64 {
    match op {
        Op::Open(..) => 0,
        Op::Subscribe(..) => 1,
        Op::Unsubscribe(..) => 2,
        Op::Send(..) => 3,
        Op::Bad(..) => 4,
        Op::Pong(..) => 5,
        Op::Connect(..) => 6,
        Op::Drain(..) => 7,
        Op::End(..) => 8,
        Op::OutboundFull(..) => 9,
        Op::Http(..) => 10,
        Op::AcceptFailed => 11,
        Op::BrokerPoll => 12,
        Op::BrokerStep(..) => 13,
        Op::Deliver => 14,
        Op::BrokerRun => 15,
        Op::External(..) => 16,
        Op::Stray(..) => 17,
        Op::SubscriberLost => 18,
        Op::Stale(..) => 19,
        Op::Advance(..) => 20,
        Op::Late(..) => 21,
        Op::Shutdown => 22,
    }
}

/// Number of variants of `Proto`, and each one's index.
const PROTOS: u64 = 3;

fn proto(p: Proto) -> u64 {
    match p {
        Proto::Seed => 0,
        Proto::Centrifugo => 1,
        Proto::CentrifugoLate => 2,
    }
}

/// The smallest u32 the derive maps onto variant `v` of `n`: it picks
/// (u32 * n) >> 32.
fn variant_bytes(v: u64, n: u64) -> [u8; 4] {
    ((v << 32).div_ceil(n) as u32).to_le_bytes()
}

/// The inverse of `arbitrary`'s decoding of `(Setup, Vec<Op>)`: the setup's
/// fields (a byte per `bool`), then per element a "more" byte (odd), the
/// variant as a u32 scaled onto the variant count, then the fields in order
/// (little-endian integers, a `Proto` as its variant); a zero byte ends the
/// list.
fn encode(setup: Setup, ops: &[Op]) -> Vec<u8> {
    let Setup {
        local,
        rate_limit,
        no_keepalive,
    } = setup;
    let mut out = vec![
        u8::from(local),
        u8::from(rate_limit),
        u8::from(no_keepalive),
    ];
    for op in ops {
        out.push(1);
        out.extend_from_slice(&variant_bytes(variant(op), VARIANTS));
        match *op {
            Op::AcceptFailed
            | Op::BrokerPoll
            | Op::Deliver
            | Op::BrokerRun
            | Op::SubscriberLost
            | Op::Shutdown => {}
            Op::Open(b, p) => {
                out.push(u8::from(b));
                out.extend_from_slice(&variant_bytes(proto(p), PROTOS));
            }
            Op::BrokerStep(b) => out.push(u8::from(b)),
            Op::Pong(a)
            | Op::Connect(a)
            | Op::Drain(a)
            | Op::OutboundFull(a)
            | Op::Http(a)
            | Op::Stale(a) => out.push(a),
            Op::End(a, b) => out.extend([a, u8::from(b)]),
            Op::Subscribe(a, b)
            | Op::Unsubscribe(a, b)
            | Op::Bad(a, b)
            | Op::External(a, b)
            | Op::Stray(a, b) => out.extend([a, b]),
            Op::Send(a, b, c) => out.extend([a, b, c]),
            Op::Advance(ms) | Op::Late(ms) => out.extend(ms.to_le_bytes()),
        }
    }
    out.push(0);
    out
}

fn sequences() -> Vec<(&'static str, Setup, Vec<Op>)> {
    use Op::*;
    use Proto::{Centrifugo as Cf, CentrifugoLate as CfLate, Seed};
    let remote = Setup::REMOTE;
    let local = Setup::LOCAL;
    let mut seqs = vec![
        (
            "chat",
            remote,
            vec![
                Open(false, Seed),
                Open(false, Seed),
                Subscribe(0, 0),
                Subscribe(1, 0),
                BrokerRun,
                Send(0, 0, 0),
                Send(1, 0, 5),
                BrokerRun,
                External(0, 2),
                External(0, 3),
                BrokerRun,
                Drain(0),
                Drain(1),
                Subscribe(1, 3),
                Send(1, 3, 7),
                Unsubscribe(0, 0),
                Unsubscribe(0, 0),
                BrokerRun,
                Drain(0),
                Drain(1),
                End(1, true),
                Advance(60),
                BrokerRun,
                Advance(60),
                BrokerRun,
                Http(0),
                Http(2),
            ],
        ),
        (
            "local",
            local,
            vec![
                Open(false, Seed),
                Open(false, Seed),
                Open(false, Seed),
                Subscribe(0, 1),
                Subscribe(1, 1),
                Send(0, 1, 4),
                Send(0, 1, 4),
                Drain(0),
                Send(2, 1, 0),
                External(1, 1),
                External(1, 10),
                External(1, 9),
                Drain(1),
                BrokerPoll,
                Advance(299),
                Advance(1),
                Drain(2),
                Pong(2),
                Advance(250),
                Drain(0),
                Shutdown,
                Drain(2),
                End(0, false),
            ],
        ),
        (
            "outage",
            remote,
            vec![
                Open(false, Seed),
                Open(false, Seed),
                Subscribe(0, 1),
                Subscribe(1, 2),
                Send(0, 1, 0),
                Send(0, 1, 1),
                Send(1, 2, 2),
                Send(1, 2, 3),
                Send(0, 1, 4),
                BrokerPoll,
                Stale(0),
                BrokerStep(true),
                BrokerPoll,
                BrokerStep(true),
                BrokerStep(true),
                Deliver,
                BrokerPoll,
                BrokerStep(false),
                Send(1, 2, 1),
                Advance(5),
                Advance(30),
                BrokerRun,
                SubscriberLost,
                Unsubscribe(1, 2),
                Advance(250),
                BrokerRun,
                Late(400),
                BrokerRun,
            ],
        ),
        (
            "paused",
            remote,
            vec![
                Open(false, Seed),
                Subscribe(0, 0),
                Send(0, 0, 0),
                BrokerPoll,
                BrokerStep(true),
                BrokerPoll,
                BrokerStep(true),
                BrokerStep(true),
                Advance(150),
                Advance(20),
                BrokerPoll,
                BrokerStep(true),
                BrokerPoll,
                BrokerStep(true),
                Advance(150),
                BrokerStep(false),
                Advance(50),
                BrokerRun,
                Advance(100),
            ],
        ),
        (
            "limits",
            Setup {
                rate_limit: true,
                ..Setup::LOCAL
            },
            vec![
                Open(false, Seed),
                Subscribe(0, 0),
                Subscribe(0, 1),
                Subscribe(0, 2),
                Subscribe(0, 2),
                Subscribe(0, 3),
                Open(false, Seed),
                Subscribe(1, 4),
                Send(1, 4, 4),
                Send(1, 4, 4),
                Send(1, 4, 0),
                Open(false, Seed),
                Open(false, Seed),
                Open(false, Seed),
                Open(false, Seed),
                Open(false, Seed),
                Open(false, Seed),
                Open(false, Seed),
                Open(false, Seed),
                Http(1),
                Bad(2, 0),
                Bad(3, 8),
                Bad(4, 10),
                Bad(5, 12),
                Bad(6, 13),
                Bad(7, 16),
                OutboundFull(1),
                Stray(0, 0),
                Stray(0, 5),
                AcceptFailed,
                AcceptFailed,
                Drain(2),
                End(3, false),
            ],
        ),
        (
            "shutdown",
            remote,
            vec![
                Open(false, Seed),
                Subscribe(0, 0),
                BrokerRun,
                Send(0, 0, 0),
                BrokerPoll,
                Shutdown,
                Open(true, Seed),
                Open(false, Seed),
                BrokerStep(true),
                BrokerPoll,
                BrokerPoll,
                Drain(0),
                Drain(1),
                Http(0),
                Shutdown,
            ],
        ),
        (
            "centrifugo",
            Setup {
                rate_limit: true,
                ..local
            },
            vec![
                Open(false, Cf),
                Open(false, Seed),
                Open(false, CfLate),
                Subscribe(0, 0),
                Subscribe(1, 0),
                Send(1, 0, 0),
                Send(0, 0, 2),
                Send(0, 0, 16),
                Drain(0),
                Drain(1),
                Subscribe(0, 0),
                Subscribe(0, 1),
                Subscribe(0, 2),
                Subscribe(0, 3),
                Unsubscribe(0, 4),
                Bad(0, 6),
                Bad(0, 17),
                Bad(0, 26),
                Connect(2),
                Subscribe(2, 1),
                Send(2, 1, 7),
                Drain(0),
                Drain(2),
                Advance(200),
                Pong(0),
                Advance(200),
                Advance(200),
                Advance(50),
                Connect(1),
                Open(false, CfLate),
                Advance(150),
                Bad(0, 0),
                Shutdown,
                Drain(0),
                Drain(0),
            ],
        ),
        (
            "centrifugo_remote",
            remote,
            vec![
                Open(false, Cf),
                Open(false, Seed),
                Subscribe(0, 1),
                Subscribe(1, 1),
                BrokerRun,
                Send(0, 1, 0),
                Send(1, 1, 5),
                BrokerRun,
                External(1, 2),
                External(1, 3),
                BrokerRun,
                Drain(0),
                Drain(1),
                SubscriberLost,
                Send(0, 1, 8),
                Advance(20),
                BrokerRun,
                OutboundFull(0),
                Drain(0),
                Shutdown,
                BrokerRun,
            ],
        ),
    ];
    // A long mixed one, from a fixed generator.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut long = Vec::new();
    for _ in 0..300 {
        let r = next();
        let (a, b, c) = ((r >> 8) as u8 % 4, (r >> 16) as u8 % 3, (r >> 24) as u8);
        long.push(match r % 24 {
            0..=1 => Open(
                r & (1 << 40) == 0,
                [Seed, Cf, Seed, Cf, CfLate][(r >> 44) as usize % 5],
            ),
            2..=4 => Subscribe(a, b),
            5 => Unsubscribe(a, b),
            6..=7 => Send(a, b, c),
            8 => Bad(a, c),
            9 => Drain(a),
            10 => End(a, c & 1 == 0),
            11..=12 => BrokerRun,
            13 => BrokerPoll,
            14 => BrokerStep(c % 5 != 0),
            15 => Deliver,
            16 => External(b, c),
            17 => SubscriberLost,
            18..=19 => Advance(((r >> 32) % 60) as u16),
            20 => Pong(a),
            21 => Stale(c),
            22 => Late(((r >> 32) % 400) as u16),
            23 if c % 4 == 0 => Connect(a),
            _ => OutboundFull(a),
        });
    }
    seqs.push(("mixed", remote, long.clone()));
    seqs.push(("mixed_local", local, long));
    seqs
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/hub_sequence");
    if dir.exists() {
        // Seeds of an older shape decode to other sequences: start afresh.
        std::fs::remove_dir_all(&dir).expect("remove old seeds");
    }
    std::fs::create_dir_all(&dir).expect("create seeds dir");
    for (name, setup, ops) in sequences() {
        let bytes = encode(setup, &ops);
        let decoded = <(Setup, Vec<Op>)>::arbitrary_take_rest(Unstructured::new(&bytes))
            .expect("seed decodes");
        assert_eq!(
            decoded,
            (setup, ops.clone()),
            "{name}: encoding does not match arbitrary's decoding"
        );
        // Each seed must run clean against the model.
        let mut harness = Harness::new(setup);
        harness.run(&ops);
        let path = dir.join(format!("{name}.bin"));
        std::fs::write(&path, &bytes).expect("write seed");
        println!(
            "{} ({} ops, {} bytes)",
            path.display(),
            ops.len(),
            bytes.len()
        );
    }
}
