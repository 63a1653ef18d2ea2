//! # roomcast-core
//!
//! The sans-IO core of roomcast: every decision of the server, and none of
//! its I/O. No sockets, no async runtime, no threads of its own, no clock:
//! time comes in as a [`Duration`](std::time::Duration) since an origin the
//! caller chooses.
//!
//! ## Layers (each uses only those above it)
//!
//! 1. [`codec`]: bytes ↔ values. Each client protocol ([`codec::seed`]),
//!    the Redis envelope ([`codec::envelope`]), the HTTP head and responses
//!    ([`codec::http`]). No codec knows the hub or the node.
//! 2. [`hub`]: protocol-neutral state — rooms and their local members, the
//!    broker session ([`hub::broker`]: the link to Redis as a state
//!    machine, coalesced subscription changes, accounted publishes,
//!    backoff). Operations in, refusals out; no frame ever reaches it.
//! 3. [`node`]: the hub wired to per-connection outboxes, each client
//!    protocol's session (decoding frames into hub operations, encoding the
//!    answers), socket admission and the metrics snapshot, shared by every
//!    task of a runtime (`Node: Sync`).
//!
//! [`metrics`] renders plain numbers; [`config`] holds every setting and
//! [`cli`] (feature `cli`) the flags both binaries share; [`settings`]
//! parses the configuration file (`roomcast.toml`) from its text.
//! [`auth`] decides, purely, who may connect and use which room: tokens
//! (JWT), namespaces and permissions, the upgrade's `Origin`.
//!
//! ## Driving contract
//!
//! See [`node`]: a runtime admits sockets, answers their heads, feeds each
//! connection's frames and drains its outbox, runs the broker operations
//! the node asks for and reports back, and calls the node's timeouts at its
//! deadlines. Misbehaving peers are not API errors: the node answers them
//! (a close, or an error reply) and says so through the outbox. Ids the
//! node does not know (closed connections, stale broker sessions) are
//! ignored, so late events are safe.

pub mod auth;
pub mod codec;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod settings;

#[cfg(feature = "cli")]
pub mod cli;

#[cfg(feature = "testing")]
pub mod testing;

pub use codec::http::{ClientProtocol, HeadReader};
pub use codec::seed::{ClientFrame, FrameError, Message};
pub use codec::{Publication, envelope, http, seed};
pub use config::{ClientTimers, HubConfig, Limits, NodeConfig};
pub use hub::{BrokerMode, BrokerOp, BrokerState, ConnId, Hub, Refusal, Session};
pub use node::{
    ABORT_CLOSE_WAIT, ACCEPT_BACKOFF, BROKER_STOP_WAIT, Conn, Finish, Inbound, Node, Outgoing,
    Reply, WRITE_BATCH_BYTES,
};

/// The chat page served at `GET /` (HTML, CSS and JS in one file).
pub const CHAT_PAGE: &str = include_str!("../assets/chat.html");

/// The admin page (`GET /admin` with `--admin`): one self-contained file
/// that reads the fleet from the server API and `/metrics`.
pub const ADMIN_PAGE: &str = include_str!("../assets/admin.html");
