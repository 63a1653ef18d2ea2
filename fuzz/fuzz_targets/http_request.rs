//! Arbitrary bytes as the start of a connection on the listening port.
//!
//! `route` never panics, and its decision is a function of the request head
//! alone. The runtimes call it again each time more bytes arrive, so what
//! must hold is consistency between a buffer and any extension of it:
//!
//! - a complete decision (`Route` or `Upgrade`) on some bytes stays the same
//!   whatever follows them (pipelined bytes, the WebSocket stream);
//! - below `MAX_HEAD_BYTES`, a prefix of the bytes is either `Incomplete` or
//!   already has the final decision: `Invalid` never heals, and a head that
//!   completes never looked `Invalid` or different on the way.
//!
//! Nothing is claimed of `Incomplete` beyond that (more bytes may complete
//! it any way, or make it invalid), nor of prefixes at or past the limit,
//! where a partial head is `Invalid` by size while a longer buffer holding a
//! complete head is routed (the runtimes never hand over more than the limit).
//!
//! Also: `Incomplete` only below the limit; an upgrade's `head_len` lies in
//! the buffer, its key is non-empty and trimmed, and re-routing just the head
//! gives the same upgrade; `index` only turns `/`'s 404 into the page (or a 405).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::http::{Decision, MAX_HEAD_BYTES, Route, route};

/// Line ends checked as split points, at most.
const MAX_LINE_SPLITS: usize = 24;

fn complete(d: &Decision) -> bool {
    matches!(d, Decision::Route { .. } | Decision::Upgrade { .. })
}

fn check_prefix(data: &[u8], k: usize, full: &Decision) {
    let pre = route(&data[..k], true);
    if complete(&pre) || k < MAX_HEAD_BYTES {
        assert!(
            pre == Decision::Incomplete || pre == *full,
            "prefix of {k} bytes gives {pre:?}, all {} bytes give {full:?}",
            data.len()
        );
    }
}

fn check(data: &[u8]) {
    let full = route(data, true);
    match &full {
        Decision::Incomplete => assert!(data.len() < MAX_HEAD_BYTES, "Incomplete past the limit"),
        Decision::Upgrade { key, head_len } => {
            assert!(
                *head_len > 0 && *head_len <= data.len(),
                "head_len {head_len}"
            );
            assert!(!key.is_empty() && key.trim() == key, "key {key:?}");
            assert_eq!(route(&data[..*head_len], true), full, "head alone");
            check_prefix(data, head_len - 1, &full);
        }
        Decision::Route { .. } | Decision::Invalid => {}
    }

    // `index` only matters for `/`.
    let plain = route(data, false);
    if plain != full {
        match (&full, &plain) {
            (
                Decision::Route {
                    route: Route::Index | Route::MethodNotAllowed,
                    head_only: a,
                },
                Decision::Route {
                    route: Route::NotFound,
                    head_only: b,
                },
            ) if a == b => {}
            _ => panic!("index changes {plain:?} into {full:?}"),
        }
    }

    // Prefixes ending at or just before each line end, where heads end, plus
    // a few spread over the buffer.
    let n = data.len();
    let mut splits: Vec<usize> = data
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .take(MAX_LINE_SPLITS)
        .flat_map(|(i, _)| [i, i + 1])
        .collect();
    splits.extend([0, n / 4, n / 2, 3 * n / 4, n.saturating_sub(1)]);
    splits.sort_unstable();
    splits.dedup();
    for k in splits.into_iter().filter(|k| *k < n) {
        check_prefix(data, k, &full);
    }
}

fuzz_target!(|data: &[u8]| check(data));
