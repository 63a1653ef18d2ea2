//! Codecs: the bytes on each wire, and nothing else. No codec knows the hub
//! or the node; they turn bytes into values and values into bytes.
//!
//! - [`seed`]: the tutorial server's client protocol (any WebSocket path
//!   but `/connection/websocket`).
//! - [`envelope`]: the Redis channel names and payloads, identical to the
//!   tutorial server's.
//! - [`http`]: the request head of a new socket (route, upgrade check) and
//!   the plain HTTP responses.

pub mod envelope;
pub mod http;
pub mod seed;
