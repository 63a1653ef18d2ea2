//! Codecs: the bytes on each wire, and nothing else. No codec knows the hub
//! or the node; they turn bytes into values and values into bytes.
//!
//! - [`seed`]: the tutorial server's client protocol (any WebSocket path
//!   but `/connection/websocket`).
//! - [`centrifugo`]: Centrifugo's bidirectional client protocol, JSON
//!   encoding (`/connection/websocket`), so its SDKs are roomcast clients.
//! - [`envelope`]: the Redis channel names and payloads, identical to the
//!   tutorial server's.
//! - [`http`]: the request head of a new socket (route, upgrade check) and
//!   the plain HTTP responses.
//! - [`redis`]: Redis commands and replies as values, the keys of a room's
//!   data and the Lua scripts the node runs.

pub mod api;
pub mod centrifugo;
pub mod envelope;
pub mod http;
pub mod redis;
pub mod seed;

use seed::Message;

/// A message for a room, as every codec needs it: the node encodes it once
/// per protocol per message, whatever the number of recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication<'a> {
    pub room: &'a str,
    pub message: Message<'a>,
    /// The publisher's client info (a JSON object), when it came from a
    /// client of the Centrifugo protocol.
    pub info: Option<&'a str>,
    /// In a room with history: its offset and its stream's epoch.
    pub position: Option<(u64, &'a str)>,
}
