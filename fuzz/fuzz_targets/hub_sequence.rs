//! A node's setup (embedded or remote broker, rate limit, keepalive) and a
//! sequence of operations on it, checked step by step against the
//! reference model in `roomcast_core::testing` (invariants a–k: the harness
//! panics on any disagreement).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::testing::{Harness, Op, Setup};

/// Longest sequence run; the rest of a longer input is ignored.
const MAX_OPS: usize = 500;

fuzz_target!(|input: (Setup, Vec<Op>)| {
    let (setup, ops) = input;
    let mut harness = Harness::new(setup);
    for op in ops.into_iter().take(MAX_OPS) {
        harness.apply(op);
    }
});
