//! # roomcast-core
//!
//! The sans-IO core of roomcast: the client protocol, the broker envelope,
//! and the [`Hub`] — a deterministic state machine that owns connections,
//! room memberships, broker subscriptions and the broker session. No
//! sockets, no async runtime, no threads, no clock: time comes in as a
//! [`Duration`](std::time::Duration) since an origin the caller chooses.
//!
//! ## Driving contract
//!
//! 1. Create the hub with [`Hub::new`]. Its first command is
//!    [`Command::BrokerConnect`].
//! 2. Feed every event through exactly one input method:
//!    [`Hub::handle_open`], [`Hub::handle_frame`], [`Hub::handle_close`],
//!    [`Hub::handle_outbound_full`], [`Hub::handle_broker_message`],
//!    [`Hub::handle_broker_connected`], [`Hub::handle_broker_disconnected`],
//!    [`Hub::handle_broker_pong`], [`Hub::handle_timeout`],
//!    [`Hub::handle_shutdown`].
//! 3. **After every input, drain [`Hub::poll_command`] until it returns
//!    `None`**, executing the commands in the order given: they form one
//!    FIFO, so a `Close` never overtakes the `SendTo`s queued before it and a
//!    `BrokerSubscribe` never overtakes the `BrokerPublish` it precedes.
//! 4. Call [`Hub::handle_timeout`] no later than [`Hub::poll_timeout`]
//!    (re-read it after each input; calling early is harmless).
//!
//! Misbehaving peers are not API errors: the hub answers them with
//! [`Command::Close`] and a reason. Ids the hub does not know (closed
//! connections, stale broker sessions) are ignored, so late events are safe.
//!
//! While the broker is down the hub emits no subscription commands; when a
//! session comes up it subscribes every room that has members, in batches of
//! [`HubConfig::subscribe_batch`] channels, then publishes what it held
//! (bounded by [`Limits::publish_buffer`]).
//!
//! ## Runtimes
//!
//! [`Node`] wraps a hub with what both runtimes need around it: socket
//! admission, the request-head reader and its answer ([`Reply`]),
//! byte-bounded per-connection outboxes, how a connection ends ([`Finish`]),
//! the broker queue grouped into [`BrokerOp`]s, the embedded single-node
//! broker, and `std::task::Waker` hooks for the tasks that drain them.
//! `roomcast-tokio` and `roomcast-smol` only move bytes: a socket's life is
//!
//! 1. [`Node::admit`] → read into the [`HeadReader`] → [`Node::answer`];
//! 2. on [`Reply::Upgrade`], [`Node::open`]; the reader feeds
//!    [`Node::frame`] until it says stop, then asks [`Node::reading_ended`];
//!    the writer drains [`Node::poll_outgoing`]; [`Node::poll_abort`]
//!    interrupts it; whichever [`Finish`] comes first is carried out;
//! 3. [`Node::closed`], then [`Node::socket_closed`].

pub mod codec;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod node;

#[cfg(feature = "cli")]
pub mod cli;

#[cfg(feature = "testing")]
pub mod testing;

pub use codec::http::{HeadReader, Reply};
pub use codec::seed::{ClientFrame, FrameError, Message};
pub use codec::{envelope, http, seed};
pub use config::{HubConfig, Limits};
pub use hub::{BrokerState, Command, ConnId, Hub, Inbound, Session};
pub use node::{
    ABORT_CLOSE_WAIT, ACCEPT_BACKOFF, BROKER_STOP_WAIT, BrokerMode, BrokerOp, Finish, IoStats,
    Node, Outgoing, WRITE_BATCH_BYTES,
};

/// The chat page served at `GET /` (HTML, CSS and JS in one file).
pub const CHAT_PAGE: &str = include_str!("../assets/chat.html");
