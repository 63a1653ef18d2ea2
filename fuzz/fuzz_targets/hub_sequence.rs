//! A sequence of operations on a node and its broker, checked step by step
//! against the reference model in `roomcast_core::testing` (invariants a–h:
//! the harness panics on any disagreement).
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::testing::{Harness, Op};

/// Longest sequence run; the rest of a longer input is ignored.
const MAX_OPS: usize = 500;

fuzz_target!(|ops: Vec<Op>| {
    let mut harness = Harness::default();
    for op in ops.into_iter().take(MAX_OPS) {
        harness.apply(op);
    }
});
