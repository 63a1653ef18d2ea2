//! Writes the seed corpus of the `hub_sequence` target: byte strings that
//! decode (the way `fuzz_target!` decodes them, with `arbitrary`) to the
//! operation sequences below. Each is checked by decoding it back.
//!
//!     cd fuzz && cargo run --example hub_seeds
//!
//! Re-run it when `roomcast_core::testing::Op` changes shape: the encoding
//! follows the order of its variants and fields.

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use roomcast_core::testing::{Harness, Op};

/// Number of variants of `Op`.
const VARIANTS: u64 = 19;

fn variant(op: &Op) -> u64 {
    match op {
        Op::Open => 0,
        Op::Close(..) => 1,
        Op::Subscribe(..) => 2,
        Op::Unsubscribe(..) => 3,
        Op::Send(..) => 4,
        Op::BadFrame(..) => 5,
        Op::Binary(..) => 6,
        Op::TooLarge(..) => 7,
        Op::OutboundFull(..) => 8,
        Op::Drain(..) => 9,
        Op::BrokerMessage(..) => 10,
        Op::BrokerJunk(..) => 11,
        Op::BrokerConnected(..) => 12,
        Op::BrokerDisconnected(..) => 13,
        Op::BrokerPong => 14,
        Op::Advance(..) => 15,
        Op::Shutdown => 16,
        Op::NotUtf8(..) => 17,
        Op::ProtocolError(..) => 18,
    }
}

/// The inverse of `arbitrary`'s decoding of `Vec<Op>` from the rest of the
/// input: per element a "more" byte (odd), the variant as a u32 scaled onto
/// the variant count, then the fields in order (little-endian integers).
fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        out.push(1);
        let v = variant(op);
        // The derive picks variant (u32 * VARIANTS) >> 32: take the smallest
        // u32 that lands on v.
        let x = (v << 32).div_ceil(VARIANTS);
        out.extend_from_slice(&(x as u32).to_le_bytes());
        match *op {
            Op::Open | Op::BrokerPong | Op::Shutdown => {}
            Op::Close(a)
            | Op::Binary(a)
            | Op::TooLarge(a)
            | Op::NotUtf8(a)
            | Op::ProtocolError(a)
            | Op::OutboundFull(a)
            | Op::Drain(a)
            | Op::BrokerJunk(a) => out.push(a),
            Op::Subscribe(a, b)
            | Op::Unsubscribe(a, b)
            | Op::BadFrame(a, b)
            | Op::BrokerMessage(a, b) => out.extend([a, b]),
            Op::Send(a, b, c) => out.extend([a, b, c]),
            Op::BrokerConnected(s) | Op::BrokerDisconnected(s) => out.push(u8::from(s)),
            Op::Advance(ms) => out.extend(ms.to_le_bytes()),
        }
    }
    out.push(0);
    out
}

fn sequences() -> Vec<(&'static str, Vec<Op>)> {
    use Op::*;
    let mut seqs = vec![
        (
            "chat",
            vec![
                Open,
                Open,
                BrokerConnected(false),
                Subscribe(0, 0),
                Subscribe(1, 0),
                Send(0, 0, 0),
                BrokerMessage(0, 0),
                BrokerMessage(0, 2),
                Drain(0),
                Drain(1),
                Subscribe(1, 3),
                Send(1, 3, 1),
                BrokerMessage(3, 1),
                Unsubscribe(0, 0),
                Unsubscribe(0, 0),
                BrokerMessage(0, 0),
                Drain(0),
                Drain(1),
                Close(1),
                Advance(150),
                BrokerPong,
                Advance(200),
            ],
        ),
        (
            "outage",
            vec![
                Open,
                Open,
                Subscribe(0, 1),
                Subscribe(1, 2),
                Send(0, 1, 0),
                Send(0, 1, 1),
                Send(1, 2, 2),
                Send(1, 2, 3),
                Send(0, 1, 4),
                Send(0, 1, 0),
                BrokerConnected(true),
                BrokerConnected(false),
                Send(0, 1, 0),
                BrokerDisconnected(true),
                BrokerDisconnected(false),
                Send(1, 2, 1),
                Advance(5),
                Advance(30),
                BrokerConnected(false),
                Unsubscribe(1, 2),
                BrokerDisconnected(false),
                Advance(250),
                Advance(400),
                BrokerConnected(false),
            ],
        ),
        (
            "limits",
            vec![
                BrokerConnected(false),
                Open,
                Subscribe(0, 0),
                Subscribe(0, 1),
                Subscribe(0, 2),
                Subscribe(0, 2),
                Subscribe(0, 3),
                Drain(0),
                Open,
                Subscribe(1, 4),
                BrokerMessage(4, 4),
                BrokerMessage(4, 4),
                Drain(1),
                Open,
                Open,
                Open,
                Open,
                Open,
                Open,
                Open,
                BadFrame(2, 0),
                BadFrame(3, 1),
                BadFrame(4, 2),
                BadFrame(5, 3),
                BadFrame(6, 4),
                BadFrame(7, 5),
                BadFrame(8, 6),
                Binary(9),
                TooLarge(0),
                Open,
                Open,
                NotUtf8(10),
                ProtocolError(11),
                OutboundFull(1),
                BrokerJunk(0),
                Drain(2),
                Drain(9),
                Close(3),
            ],
        ),
        (
            "timers",
            vec![
                Open,
                Subscribe(0, 0),
                Advance(301),
                Advance(10),
                BrokerConnected(false),
                Advance(100),
                BrokerPong,
                Advance(100),
                Advance(160),
                Advance(1000),
                BrokerConnected(false),
                Advance(100),
                Advance(100),
                BrokerPong,
                Advance(65535),
            ],
        ),
        (
            "shutdown",
            vec![
                Open,
                Subscribe(0, 0),
                BrokerConnected(false),
                Send(0, 0, 0),
                BrokerMessage(0, 1),
                Shutdown,
                Open,
                Subscribe(1, 1),
                Send(0, 0, 0),
                Drain(0),
                Drain(1),
                BrokerDisconnected(false),
                Advance(1000),
                Shutdown,
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
        let (a, b, c) = ((r >> 8) as u8 % 4, (r >> 16) as u8, (r >> 24) as u8);
        long.push(match r % 20 {
            0..=2 => Open,
            3 => Close(a),
            4..=6 => Subscribe(a, b),
            7 => Unsubscribe(a, b),
            8..=9 => Send(a, b, c),
            10 => BadFrame(a, b),
            11 => Drain(a),
            12..=13 => BrokerMessage(b, c),
            14 => BrokerConnected(false),
            15 => BrokerDisconnected(r & (1 << 40) != 0),
            16 => BrokerPong,
            17..=18 => Advance(((r >> 32) % 400) as u16),
            _ => OutboundFull(a),
        });
    }
    seqs.push(("mixed", long));
    seqs
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/hub_sequence");
    std::fs::create_dir_all(&dir).expect("create seeds dir");
    for (name, ops) in sequences() {
        let bytes = encode(&ops);
        let decoded =
            Vec::<Op>::arbitrary_take_rest(Unstructured::new(&bytes)).expect("seed decodes");
        assert_eq!(
            decoded, ops,
            "{name}: encoding does not match arbitrary's decoding"
        );
        // Each seed must run clean against the model.
        let mut harness = Harness::default();
        for op in &ops {
            harness.apply(*op);
        }
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
