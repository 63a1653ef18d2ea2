//! The seed protocol's session: a connection's frames decoded into hub
//! operations, its answers (every refusal is a close with a 1xxx code), and
//! its keepalive (WebSocket pings; a silent peer is closed).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::limiter::{RateLimiter, Verdict};
use super::{Inbound, Node, Peer, Publication, add, lock, wake_all};
use crate::auth::{ConnClaims, User};
use crate::codec::http::ClientProtocol;
use crate::codec::seed::{self, CLOSE_GOING_AWAY, CLOSE_POLICY, ClientFrame, FrameError};
use crate::config::NodeConfig;
use crate::hub::Refusal;

/// Close reason for a peer that did not answer a keepalive ping.
pub const NO_PONG: &str = "no pong";
/// Close reason for a peer over `--max-commands-per-sec`.
pub const TOO_MANY_REQUESTS: &str = "too many requests";

/// The close for a slow consumer, in each protocol's terms.
pub(super) fn slow_consumer_close(protocol: ClientProtocol) -> (u16, &'static str) {
    match protocol {
        ClientProtocol::Seed => (CLOSE_POLICY, "slow consumer"),
        ClientProtocol::Centrifugo => (3008, "slow"),
    }
}

/// The close at shutdown, in each protocol's terms.
pub(super) fn shutdown_close(protocol: ClientProtocol) -> (u16, &'static str) {
    match protocol {
        ClientProtocol::Seed => (CLOSE_GOING_AWAY, "going away"),
        ClientProtocol::Centrifugo => (3001, "shutdown"),
    }
}

#[derive(Debug)]
pub(super) struct SeedSession {
    /// Who the upgrade's `?token=` says the client is (anonymous without).
    user: User,
    limiter: RateLimiter,
    ping_interval: Duration,
    pong_timeout: Duration,
    /// The last time anything arrived.
    heard: Duration,
    /// A keepalive ping is out since then.
    pinged: Option<Duration>,
}

impl SeedSession {
    pub(super) fn new(cfg: &NodeConfig, claims: ConnClaims, now: Duration) -> SeedSession {
        SeedSession {
            user: claims.user(),
            limiter: RateLimiter::new(cfg.hub.limits.max_commands_per_sec, now),
            ping_interval: cfg.timers.ws_ping_interval,
            pong_timeout: cfg.timers.ws_pong_timeout,
            heard: now,
            pinged: None,
        }
    }

    pub(super) fn deadline(&self) -> Option<Duration> {
        if self.ping_interval.is_zero() {
            return None;
        }
        Some(match self.pinged {
            Some(at) => at + self.pong_timeout,
            None => self.heard + self.ping_interval,
        })
    }

    pub(super) fn timeout(&mut self, node: &Node, peer: &Arc<Peer>, now: Duration) {
        let Some(deadline) = self.deadline() else {
            return;
        };
        if now < deadline {
            return;
        }
        if self.pinged.is_some() {
            add(&node.stats.no_pong_closes, 1);
            node.close(peer, CLOSE_POLICY, NO_PONG.into());
        } else {
            self.pinged = Some(now);
            let w = lock(&peer.outbox).ping();
            wake_all([w]);
        }
    }

    pub(super) fn frame(
        &mut self,
        node: &Node,
        peer: &Arc<Peer>,
        input: Inbound<'_>,
        now: Duration,
    ) {
        self.heard = now;
        self.pinged = None;
        let limits = &node.cfg.hub.limits;
        let parsed = match input {
            Inbound::Control => return,
            Inbound::Text(bytes) => seed::parse_client_frame(bytes, limits),
            Inbound::Binary => Err(FrameError::Binary),
            Inbound::TooLarge => Err(FrameError::TooLarge {
                max: limits.max_frame_bytes,
            }),
            Inbound::NotUtf8 => Err(FrameError::NotUtf8),
            Inbound::ProtocolError => Err(FrameError::Protocol),
        };
        let frame = match parsed {
            Ok(frame) => frame,
            Err(e) => return refuse(node, peer, &e),
        };
        match self.limiter.check(now) {
            Verdict::Allowed => {}
            Verdict::Refused | Verdict::Exceeded => {
                add(&node.stats.rate_limited, 1);
                node.close(peer, CLOSE_POLICY, TOO_MANY_REQUESTS.into());
                return;
            }
        }
        let allowed = if node.auth.is_open() {
            Ok(())
        } else {
            match &frame {
                ClientFrame::Subscribe { room } => node.auth.seed_subscribe(&self.user, room),
                ClientFrame::Unsubscribe { .. } => Ok(()),
                ClientFrame::SendMessage { room, .. } => {
                    node.auth
                        .seed_publish(&self.user, room, node.is_member(peer, room))
                }
            }
        };
        if let Err(denial) = allowed {
            let (code, reason) = denial.seed_close();
            node.close(peer, code, reason.into());
            return;
        }
        match frame {
            ClientFrame::Subscribe { room } => match node.join(peer, &room) {
                Ok(_) => {
                    // Listed as an anonymous client; no join/leave frames.
                    let client = super::presence::client_id(&node.cfg.node_id, peer.id);
                    node.presence_join(peer, &room, &super::presence::seed_info(&client), false);
                }
                Err(Refusal::AlreadyMember | Refusal::ShuttingDown) => {}
                Err(Refusal::TooManyRooms { max }) => {
                    refuse(node, peer, &FrameError::TooManyRooms { max })
                }
            },
            ClientFrame::Unsubscribe { room } => {
                node.leave(peer, &room);
            }
            ClientFrame::SendMessage { room, message } => node.publish(
                &Publication {
                    room: &room,
                    message,
                    info: None,
                    position: None,
                },
                now,
            ),
        }
    }
}

fn refuse(node: &Node, peer: &Arc<Peer>, e: &FrameError) {
    node.count_bad_frame(e.label());
    node.close(peer, e.close_code(), e.to_string());
}

/// The frame a seed-protocol member receives for a publication.
pub(super) fn encode(publication: &Publication<'_>) -> Bytes {
    Bytes::copy_from_slice(publication.message.delivered().as_bytes())
}
