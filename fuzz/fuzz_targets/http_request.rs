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
//!
//! Then the bytes go through `HeadReader` and `Node::answer` as a runtime
//! feeds them, in reads of a few sizes: the reader stops no later than one
//! read past the limit, it stops exactly where `route` on what it was given
//! is decided, and the answer agrees: an upgrade's 101 carries the key's
//! accept value and hands on exactly the bytes past the head; a plain
//! request gets a response; anything else (or a stream that ends first) is
//! dropped.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use roomcast_core::http::{Decision, HeadReader, MAX_HEAD_BYTES, Reply, Route, accept_key, route};
use roomcast_core::{BrokerMode, HubConfig, Node};

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

fn check_reader(data: &[u8], chunk: usize) {
    let mut head = HeadReader::new(true);
    let mut fed = 0;
    loop {
        let buf = head.buf();
        assert!(!buf.is_empty(), "no room to read into");
        let n = buf.len().min(chunk).min(data.len() - fed);
        buf[..n].copy_from_slice(&data[fed..fed + n]);
        fed += n;
        let stop = head.advance(n);
        let seen = route(&data[..fed], true);
        assert_eq!(
            stop,
            n == 0 || seen != Decision::Incomplete,
            "stopped {stop} after {fed} bytes decided {seen:?}"
        );
        if stop {
            break;
        }
        assert!(fed < MAX_HEAD_BYTES, "still reading past the limit");
    }
    let seen = route(&data[..fed], true);
    let mut node = Node::new(HubConfig::default(), BrokerMode::Local, Duration::ZERO);
    match node.answer(head) {
        Reply::Upgrade { response, rest } => {
            let Decision::Upgrade { key, head_len } = seen else {
                panic!("upgraded on {seen:?}")
            };
            assert_eq!(rest, &data[head_len..fed], "bytes past the head");
            let response = String::from_utf8(response).expect("ASCII response");
            assert!(response.starts_with("HTTP/1.1 101 "));
            let accept = format!("Sec-WebSocket-Accept: {}\r\n", accept_key(&key));
            assert!(response.contains(&accept), "{response}");
        }
        Reply::Respond(r) => {
            assert!(matches!(seen, Decision::Route { .. }), "answered {seen:?}");
            assert!(r.starts_with(b"HTTP/1.1 "));
            assert_eq!(node.io_stats().http_requests, 1);
        }
        Reply::Drop => {
            match seen {
                Decision::Invalid => {}
                Decision::Incomplete => assert_eq!(fed, data.len(), "dropped mid-head"),
                other => panic!("dropped {other:?}"),
            }
            assert_eq!(node.io_stats().handshake_failures, 1);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check_reader(data, 1024);
    check_reader(data, 3 + data.len() % 61);
    if data.len() <= 256 {
        check_reader(data, 1);
    }
});
