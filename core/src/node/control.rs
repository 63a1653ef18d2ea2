//! Server-side commands for a user's connections on every node: the API's
//! `subscribe`, `unsubscribe` and `disconnect`.
//!
//! On Redis a command travels on the fleet's control channel
//! (`{prefix}__roomcast.control`), which every node subscribes to on each
//! link as it does its probe channel; each node, the sender included,
//! applies it to its own connections of that user (and client, if named)
//! when it arrives. Embedded, the node applies it at once. Pub/Sub
//! delivers at most once: a node whose link is down when a command is
//! published never sees it.
//!
//! - `subscribe`: a Centrifugo-protocol connection joins the room and gets
//!   the `subscribe` push (a server-side subscription, as a connection
//!   token's `channels`);
//! - `unsubscribe`: it leaves the room and gets the `unsubscribe` push,
//!   code 2000;
//! - `disconnect`: the connection (either protocol) is closed with the
//!   command's code and reason.
//!
//! Connections are found by user through a small index: a Centrifugo
//! connection's user is its token's `sub` once connected, a seed
//! connection's its upgrade token's; anonymous connections are not listed.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{Node, Peer, lock};
use crate::codec::centrifugo::{self as cf, UnsubscribeCode};
use crate::codec::http::ClientProtocol;
use crate::hub::ConnId;

/// The control channel's name, after the channel prefix.
pub const CONTROL_CHANNEL: &str = "__roomcast.control";

/// A control payload's marker, so that nothing else on the channel reads
/// as a command.
const MARK: &str = "roomcast.control";

/// A command for a user's connections.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Control {
    Subscribe {
        user: String,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    Unsubscribe {
        user: String,
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    Disconnect {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        code: u16,
        reason: String,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(flatten)]
    command: Control,
}

impl Control {
    /// Its payload on the control channel.
    pub fn encode(&self) -> Bytes {
        let w = Wire {
            kind: MARK.into(),
            command: self.clone(),
        };
        Bytes::from(serde_json::to_vec(&w).unwrap_or_default())
    }

    /// A payload from the control channel; `None`: not a command.
    pub fn parse(payload: &[u8]) -> Option<Control> {
        let w: Wire = serde_json::from_slice(payload).ok()?;
        (w.kind == MARK).then_some(w.command)
    }

    fn target(&self) -> (&str, Option<&str>) {
        match self {
            Control::Subscribe { user, client, .. }
            | Control::Unsubscribe { user, client, .. }
            | Control::Disconnect { user, client, .. } => (user, client.as_deref()),
        }
    }
}

/// A connection of a known user: its peer and its client info (what its
/// presence entries say).
#[derive(Debug, Clone)]
struct UserConn {
    peer: Arc<Peer>,
    info: Box<str>,
}

/// Connections by user.
#[derive(Debug, Default)]
pub(super) struct Users {
    by_user: HashMap<Box<str>, HashMap<ConnId, UserConn>>,
    user_of: HashMap<ConnId, Box<str>>,
}

impl Node {
    /// `peer` is `user`'s (not anonymous), with this client info.
    pub(super) fn index_user(&self, peer: &Arc<Peer>, user: &str, info: &str) {
        if user.is_empty() || peer.id.0 == 0 {
            return;
        }
        let mut u = lock(&self.users);
        u.user_of.insert(peer.id, user.into());
        u.by_user.entry(user.into()).or_default().insert(
            peer.id,
            UserConn {
                peer: peer.clone(),
                info: info.into(),
            },
        );
    }

    /// The connection is gone.
    pub(super) fn unindex_user(&self, id: ConnId) {
        let mut u = lock(&self.users);
        let Some(user) = u.user_of.remove(&id) else {
            return;
        };
        if let Some(conns) = u.by_user.get_mut(&user) {
            conns.remove(&id);
            if conns.is_empty() {
                u.by_user.remove(&user);
            }
        }
    }

    /// Applies a command to this node's matching connections; returns how
    /// many it reached.
    pub(super) fn apply_control(&self, c: &Control) -> usize {
        let (user, client) = c.target();
        let targets: Vec<UserConn> = match lock(&self.users).by_user.get(user) {
            None => return 0,
            Some(conns) => conns
                .iter()
                .filter(|(id, _)| {
                    client
                        .is_none_or(|cl| super::presence::client_id(&self.cfg.node_id, **id) == cl)
                })
                .map(|(_, c)| c.clone())
                .collect(),
        };
        let mut reached = 0;
        for t in targets {
            let peer = &t.peer;
            if lock(&peer.outbox).is_closing() {
                continue;
            }
            match c {
                Control::Subscribe { channel, .. } => {
                    if peer.protocol != ClientProtocol::Centrifugo
                        || self.auth.policy().resolve(channel).is_err()
                        || crate::codec::seed::check_room(channel, &self.cfg.hub.limits).is_err()
                    {
                        continue;
                    }
                    let mut joined = false;
                    self.join_then(peer, channel, |j| {
                        joined = j.is_ok();
                        joined.then(|| {
                            Bytes::from(cf::encode_subscribe_push(
                                channel,
                                &cf::SubscribePush::default(),
                            ))
                        })
                    });
                    if joined {
                        reached += 1;
                        self.presence_join(peer, channel, &t.info, false);
                    }
                }
                Control::Unsubscribe { channel, .. } => {
                    if peer.protocol != ClientProtocol::Centrifugo {
                        continue;
                    }
                    if self.leave(peer, channel) {
                        reached += 1;
                        let push = UnsubscribeCode::SERVER.encode_push(channel);
                        self.send(peer, Bytes::from(push));
                    }
                }
                Control::Disconnect { code, reason, .. } => {
                    reached += 1;
                    self.close(peer, *code, reason.clone());
                }
            }
        }
        reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_nothing_else_is_one() {
        for c in [
            Control::Subscribe {
                user: "42".into(),
                channel: "chat:1".into(),
                client: None,
            },
            Control::Unsubscribe {
                user: "42".into(),
                channel: "a\"b".into(),
                client: Some("n-1".into()),
            },
            Control::Disconnect {
                user: "u".into(),
                client: None,
                code: 3503,
                reason: "force disconnect".into(),
            },
        ] {
            assert_eq!(Control::parse(&c.encode()), Some(c.clone()));
        }
        for bad in [
            &br#"{"op":"subscribe","user":"1","channel":"c"}"#[..],
            br#"{"type":"roomcast.control","op":"explode","user":"1"}"#,
            br#"{"type":"roomcast.control","op":"disconnect","user":"1"}"#,
            br#"{"type":"sendMessage","roomId":"r","message":"x"}"#,
            b"probe:1",
            b"",
        ] {
            assert_eq!(
                Control::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
