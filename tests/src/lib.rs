//! # roomcast-tests
//!
//! End-to-end harness: real `redis-server` processes on free ports, real
//! roomcast nodes started through each runtime's `start` API, and real
//! WebSocket clients (sync `tungstenite`, one socket per client, every
//! operation bounded by a timeout).
//!
//! Every scenario in `tests/*.rs` is a plain `fn name(rt: Runtime)`; the
//! [`scenarios!`] macro turns each into one `#[test]` per runtime:
//! `name::tokio`, and `name::smol` when the crate's `smol` feature is on.
//!
//! Everything listens on and connects to 127.0.0.1 only. Nothing is shared
//! between tests: each test starts its own Redis and its own nodes, so the
//! tests run in parallel.
//!
//! The modules, all re-exported here: `scenarios` (runtimes, the macro),
//! `util` (waits, names, ports, child processes), `redis` (the
//! `redis-server` helper), `node` (in-process nodes), `metrics`, `http`
//! (raw HTTP), `client` (the WebSocket client), `seed` (the tutorial Node.js
//! server).

use std::time::Duration;

pub use serde_json::{Value, json};

pub mod auth;
pub mod centrifugo;
mod client;
mod http;
mod metrics;
mod node;
mod redis;
mod scenarios;
mod seed;
mod util;

pub use client::{CLOSE_TIMEOUT, Client, Event};
pub use http::{HttpResponse, http_get, http_request, read_until_closed};
pub use metrics::Metrics;
pub use node::{Node, PendingShutdown};
pub use redis::{RedisServer, Subscriber, redis_url};
pub use scenarios::{Runtime, run_scenario};
pub use seed::{SeedNode, install_seed, seed_payload, seed_source_dir, seed_unavailable};
pub use util::{free_port, rss_bytes, skip_or_fail, spawn_child, unique, wait_until};

/// Real Centrifugo SDK clients (JS and Python) driven as child processes.
pub mod sdk;

/// The real binaries as child processes (memory, limits, log, exit code).
pub mod binary;

/// How long a single wait (a message, a close, a Redis condition) may take.
/// Generous: the machine is small and busy; nothing asserts speed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The longest any one scenario may run before it fails.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

/// Flags that make a node notice a lost Redis and reconnect quickly.
pub const FAST_REDIS: &[&str] = &[
    "--reconnect-min",
    "50ms",
    "--reconnect-max",
    "500ms",
    "--redis-probe-interval",
    "500ms",
    "--redis-timeout",
    "1s",
    "--redis-connect-timeout",
    "1s",
];
