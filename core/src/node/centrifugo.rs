//! The Centrifugo protocol's session: a connection's commands decoded into
//! hub operations and answered with replies (errors are replies with
//! Centrifugo's codes; only connection-level breaches close, with 35xx /
//! 30xx codes), its connect handshake, and its heartbeat (`{}` pings the
//! client must answer).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::history::{HistoryOpts, SubscribeWait};
use super::limiter::{RateLimiter, Verdict};
use super::{Inbound, Node, Peer, Publication, add, lock};
use crate::auth::{Answer, ConnClaims, User};
use crate::codec::centrifugo::{
    self as cf, Command, ConnectResult, Disconnect, ErrorCode, Method, Request,
};
use crate::codec::seed::{Message, write_json_string};
use crate::config::{ClientTimers, NodeConfig};
use crate::hub::Refusal;
use crate::hub::stream::{RecoverFrom, StreamPos};

/// The server version the connect reply announces.
pub const VERSION: &str = concat!("roomcast ", env!("CARGO_PKG_VERSION"));

#[derive(Debug)]
pub(super) struct CfSession {
    limiter: RateLimiter,
    timers: ClientTimers,
    wall_origin: u64,
    opened: Duration,
    client: String,
    /// The connection token's `sub` (anonymous without a token).
    user: User,
    /// `{"user":…,"client":…,"conn_info":…}`: the publisher info of this
    /// client's publications.
    info: String,
    /// The connection token's `exp` (wall-clock seconds): closed 3005 once
    /// it has passed by the grace, unless refreshed.
    expires_at: Option<u64>,
    expire_grace: Duration,
    /// Rooms joined with a subscription token that expires (wall-clock
    /// `exp`): left, with the unsubscribe push 2501, once it has passed by
    /// the grace unless `sub_refresh` renewed it.
    sub_expiries: std::collections::BTreeMap<Box<str>, u64>,
    connected: bool,
    next_ping: Option<Duration>,
    pong_deadline: Option<Duration>,
}

impl CfSession {
    pub(super) fn new(cfg: &NodeConfig, id: crate::hub::ConnId, now: Duration) -> CfSession {
        let client = format!("{}-{}", cfg.node_id, id.0);
        let info = client_info(&User::anonymous(), &client, None);
        CfSession {
            limiter: RateLimiter::new(cfg.hub.limits.max_commands_per_sec, now),
            timers: cfg.timers.clone(),
            wall_origin: cfg.wall_origin,
            opened: now,
            client,
            user: User::anonymous(),
            info,
            expires_at: None,
            expire_grace: Duration::ZERO,
            sub_expiries: std::collections::BTreeMap::new(),
            connected: false,
            next_ping: None,
            pong_deadline: None,
        }
    }

    pub(super) fn deadline(&self) -> Option<Duration> {
        if !self.connected {
            return Some(self.opened + self.timers.connect_timeout);
        }
        [
            self.next_ping,
            self.pong_deadline,
            self.expiry(),
            self.sub_expiries
                .values()
                .map(|&e| self.deadline_of(e))
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next server ping after `now`; none with an interval of 0 (pings
    /// off, as `--ws-ping-interval 0` for the seed protocol).
    fn ping_after(&self, now: Duration) -> Option<Duration> {
        (!self.timers.ping_interval.is_zero()).then(|| now + self.timers.ping_interval)
    }

    /// When an `exp` plus the grace has passed, on the node's clock.
    fn deadline_of(&self, exp: u64) -> Duration {
        Duration::from_secs(exp.saturating_sub(self.wall_origin)) + self.expire_grace
    }

    /// When an unrefreshed token closes the connection, on the node's clock.
    fn expiry(&self) -> Option<Duration> {
        self.expires_at.map(|exp| {
            Duration::from_secs(exp.saturating_sub(self.wall_origin)) + self.expire_grace
        })
    }

    fn wall(&self, now: Duration) -> u64 {
        self.wall_origin + now.as_secs()
    }

    /// `expires` and `ttl` for a reply, from an `exp`: the whole seconds
    /// left until `exp` on the clock the 3005 deadline is measured on
    /// ([`Self::expiry`]), rounded down. (Not `exp - wall(now)`: `wall`
    /// drops the fraction of the current second, so that ttl ran up to a
    /// second past `exp` and a client refreshing when told lost up to a
    /// second of its grace — all of it with a grace of 1 s.)
    fn ttl(&self, exp: Option<u64>, now: Duration) -> (bool, u32) {
        match exp {
            Some(exp) => {
                let at = Duration::from_secs(exp.saturating_sub(self.wall_origin));
                let left = at.saturating_sub(now).as_secs();
                (true, left.min(u64::from(u32::MAX)) as u32)
            }
            None => (false, 0),
        }
    }

    pub(super) fn timeout(&mut self, node: &Node, peer: &Arc<Peer>, now: Duration) {
        if !self.connected {
            if now >= self.opened + self.timers.connect_timeout {
                close(node, peer, Disconnect::STALE);
            }
            return;
        }
        if self.expiry().is_some_and(|d| now >= d) {
            return close(node, peer, Disconnect::EXPIRED);
        }
        let expired: Vec<Box<str>> = self
            .sub_expiries
            .iter()
            .filter(|&(_, &exp)| now >= self.deadline_of(exp))
            .map(|(room, _)| room.clone())
            .collect();
        for room in expired {
            self.sub_expiries.remove(&room);
            // Gone already (a server-side unsubscribe): no push.
            if node.leave(peer, &room) {
                let push = cf::UnsubscribeCode::EXPIRED.encode_push(&room);
                node.send(peer, Bytes::from(push));
            }
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            add(&node.stats.no_pong_closes, 1);
            close(node, peer, Disconnect::NO_PONG);
            return;
        }
        if self.next_ping.is_some_and(|d| now >= d) {
            node.send(peer, Bytes::from_static(cf::PING.as_bytes()));
            self.next_ping = self.ping_after(now);
            if self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + self.timers.pong_timeout);
            }
        }
    }

    pub(super) fn frame(
        &mut self,
        node: &Node,
        peer: &Arc<Peer>,
        input: Inbound<'_>,
        now: Duration,
    ) {
        let limits = &node.cfg.hub.limits;
        let text = match input {
            Inbound::Control => return,
            Inbound::Text(t) => t,
            Inbound::Binary => return close(node, peer, Disconnect::INAPPROPRIATE_PROTOCOL),
            Inbound::TooLarge | Inbound::NotUtf8 | Inbound::ProtocolError => {
                return close(node, peer, Disconnect::BAD_REQUEST);
            }
        };
        // Anything from the client shows it is alive.
        self.pong_deadline = None;
        let commands = match cf::parse_frame(text, limits) {
            Ok(c) => c,
            Err(e) => {
                node.count_cf_bad_command(e.label());
                return close(node, peer, e.disconnect());
            }
        };
        for parsed in commands {
            if lock(&peer.outbox).is_closing() {
                return;
            }
            let cmd = match parsed {
                Ok(cmd) => cmd,
                Err(e) => {
                    node.count_cf_bad_command(e.label());
                    if !self.connected {
                        // Nothing but a valid connect before connect.
                        return close(node, peer, Disconnect::BAD_REQUEST);
                    }
                    match e.encode_reply() {
                        Some(reply) => node.send(peer, Bytes::from(reply)),
                        None => return close(node, peer, Disconnect::BAD_REQUEST),
                    }
                    continue;
                }
            };
            if cmd.request == Request::Pong {
                continue;
            }
            match self.limiter.check(now) {
                Verdict::Allowed => {}
                Verdict::Refused => {
                    add(&node.stats.rate_limited, 1);
                    // A `send` is never answered (a reply without an id
                    // reads as a ping): refused, it is dropped.
                    if !matches!(cmd.request, Request::Send { .. }) {
                        reply_error(node, peer, cmd.id, ErrorCode::TOO_MANY_REQUESTS);
                    }
                    continue;
                }
                Verdict::Exceeded => {
                    add(&node.stats.rate_limited, 1);
                    return close(node, peer, Disconnect::TOO_MANY_REQUESTS);
                }
            }
            self.command(node, peer, cmd, now);
        }
    }

    fn command(&mut self, node: &Node, peer: &Arc<Peer>, cmd: Command<'_>, now: Duration) {
        let id = cmd.id;
        if !self.connected {
            // Nothing but connect before a successful connect.
            if !matches!(cmd.request, Request::Connect { .. }) {
                return close(node, peer, Disconnect::BAD_REQUEST);
            }
        }
        let stats = matches!(cmd.request, Request::PresenceStats { .. });
        match cmd.request {
            Request::Connect { token, .. } => {
                if self.connected {
                    return close(node, peer, Disconnect::BAD_REQUEST);
                }
                let claims = match node.auth.connect(token.as_deref(), self.wall(now)) {
                    Ok(claims) => claims,
                    Err(denied) => {
                        add(&node.stats.auth_refused, 1);
                        return answer(node, peer, id, denied.centrifugo());
                    }
                };
                self.connected = true;
                self.next_ping = self.ping_after(now);
                self.accept_claims(node, &claims);
                node.index_user(peer, &self.user.id, &self.info);
                let (expires, ttl) = self.ttl(claims.expires_at, now);
                let reply = cf::encode_connect_reply(
                    id,
                    &ConnectResult {
                        client: &self.client,
                        version: VERSION,
                        expires,
                        ttl,
                        ping: self.timers.ping_interval.as_secs() as u32,
                        pong: true,
                        node: &node.cfg.node_id,
                        ..ConnectResult::default()
                    },
                );
                node.send(peer, Bytes::from(reply));
                // The token's channels: subscribed by the server, each
                // announced with a subscribe push.
                for channel in &claims.channels {
                    if node.auth.policy().decide_token_channel(channel).is_err()
                        || crate::codec::seed::check_room(channel, &node.cfg.hub.limits).is_err()
                    {
                        continue;
                    }
                    node.join_then(peer, channel, |joined| {
                        joined.ok().map(|_| {
                            Bytes::from(cf::encode_subscribe_push(
                                channel,
                                &cf::SubscribePush::default(),
                            ))
                        })
                    });
                    if node.is_member(peer, channel) {
                        node.presence_join(peer, channel, &self.info, false);
                    }
                }
            }
            Request::Subscribe {
                channel,
                token,
                recover,
                epoch,
                offset,
                join_leave,
                ..
            } => {
                let grant =
                    node.auth
                        .subscribe(&self.user, &channel, token.as_deref(), self.wall(now));
                let grant = match grant {
                    Ok(grant) => grant,
                    Err(denial) => return answer(node, peer, id, denial.centrifugo()),
                };
                let (expires, ttl) = self.ttl(grant.expires_at, now);
                let refused = move |e: Refusal| match e {
                    Refusal::AlreadyMember => error(id, ErrorCode::ALREADY_SUBSCRIBED),
                    Refusal::TooManyRooms { .. } => error(id, ErrorCode::LIMIT_EXCEEDED),
                    Refusal::ShuttingDown => error(id, ErrorCode::INTERNAL),
                };
                if let Some(o) = HistoryOpts::of(&grant.options) {
                    // The SDKs send `recover` after a reconnect; a namespace
                    // with `force_recovery` recovers whenever a position is
                    // given.
                    let asked = recover || (o.force_recovery && offset.is_some());
                    let from = asked.then(|| RecoverFrom {
                        offset: offset.unwrap_or(0),
                        epoch: epoch.as_deref().unwrap_or("").to_string(),
                    });
                    let wait = SubscribeWait {
                        peer: peer.clone(),
                        id,
                        room: channel.as_ref().into(),
                        from,
                        was_recovering: asked,
                        expires,
                        ttl,
                    };
                    node.subscribe_with_history(peer, wait, &o, refused, now);
                } else {
                    node.join_then(peer, &channel, |joined| {
                        Some(match joined {
                            Ok(_) => Bytes::from(cf::encode_subscribe_reply(
                                id,
                                &cf::SubscribeResult {
                                    expires,
                                    ttl,
                                    ..cf::SubscribeResult::default()
                                },
                            )),
                            Err(e) => refused(e),
                        })
                    });
                }
                let member = node.is_member(peer, &channel);
                if let Some(exp) = grant.expires_at
                    && member
                {
                    self.sub_expiries.insert(channel.as_ref().into(), exp);
                }
                if grant.options.presence && member {
                    // Join/leave pushes for those who ask and may see
                    // presence.
                    let listens = join_leave
                        && node
                            .auth
                            .policy()
                            .decide_presence(&self.user, &channel, true)
                            .is_ok();
                    let info = self.presence_info(grant.chan_info.as_ref());
                    node.presence_join(peer, &channel, &info, listens);
                }
            }
            Request::Unsubscribe { channel } => {
                self.sub_expiries.remove(channel.as_ref());
                node.leave(peer, &channel);
                node.send(
                    peer,
                    Bytes::from(cf::encode_reply(id, Method::Unsubscribe, None)),
                );
            }
            Request::Publish { channel, data } => {
                if !node.auth.is_open() {
                    let member = node.is_member(peer, &channel);
                    if let Err(denial) = node.auth.publish(&self.user, &channel, member) {
                        return answer(node, peer, id, denial.centrifugo());
                    }
                }
                node.publish(
                    &Publication {
                        room: &channel,
                        message: message_of(data.as_str()),
                        info: Some(&self.info),
                        position: None,
                    },
                    now,
                );
                node.send(
                    peer,
                    Bytes::from(cf::encode_reply(id, Method::Publish, None)),
                );
            }
            Request::Refresh { token } => {
                let claims = match node.auth.refresh(&self.user, &token, self.wall(now)) {
                    Ok(claims) => claims,
                    Err(denied) => return answer(node, peer, id, denied.centrifugo()),
                };
                self.expires_at = claims.expires_at;
                let (expires, ttl) = self.ttl(claims.expires_at, now);
                let reply = cf::encode_refresh_reply(
                    id,
                    &cf::RefreshResult {
                        client: &self.client,
                        version: VERSION,
                        expires,
                        ttl,
                    },
                );
                node.send(peer, Bytes::from(reply));
            }
            Request::SubRefresh { channel, token } => {
                if !node.is_member(peer, &channel) {
                    return reply_error(node, peer, id, ErrorCode::PERMISSION_DENIED);
                }
                match node
                    .auth
                    .subscribe(&self.user, &channel, Some(&token), self.wall(now))
                {
                    Ok(grant) => {
                        match grant.expires_at {
                            Some(exp) => self.sub_expiries.insert(channel.as_ref().into(), exp),
                            None => self.sub_expiries.remove(channel.as_ref()),
                        };
                        let (expires, ttl) = self.ttl(grant.expires_at, now);
                        let reply = cf::encode_sub_refresh_reply(id, expires, ttl);
                        node.send(peer, Bytes::from(reply));
                    }
                    Err(denial) => answer(node, peer, id, denial.centrifugo()),
                }
            }
            Request::History {
                channel,
                limit,
                since,
                reverse,
            } => {
                let o = match node.auth.policy().resolve(&channel) {
                    Ok((_, options)) => HistoryOpts::of(&options),
                    Err(denial) => return answer(node, peer, id, denial.centrifugo()),
                };
                let Some(o) = o else {
                    return reply_error(node, peer, id, ErrorCode::NOT_AVAILABLE);
                };
                let member = node.is_member(peer, &channel);
                if let Err(denial) = node
                    .auth
                    .policy()
                    .decide_history(&self.user, &channel, member)
                {
                    return answer(node, peer, id, denial.centrifugo());
                }
                let since = since.map(|p| StreamPos {
                    offset: p.offset,
                    epoch: p.epoch.as_ref().into(),
                });
                let ask = super::history::HistoryAsk {
                    limit,
                    since,
                    reverse,
                };
                node.history_command(peer, id, &channel, ask, &o, now);
            }
            Request::Presence { channel } | Request::PresenceStats { channel } => {
                let on = match node.auth.policy().resolve(&channel) {
                    Ok((_, options)) => options.presence,
                    Err(denial) => return answer(node, peer, id, denial.centrifugo()),
                };
                if !on {
                    return reply_error(node, peer, id, ErrorCode::NOT_AVAILABLE);
                }
                let member = node.is_member(peer, &channel);
                if let Err(denial) = node
                    .auth
                    .policy()
                    .decide_presence(&self.user, &channel, member)
                {
                    return answer(node, peer, id, denial.centrifugo());
                }
                node.presence_command(peer, id, &channel, stats);
            }
            Request::Ping => reply_error(node, peer, id, ErrorCode::NOT_AVAILABLE),
            // roomcast has no RPC handlers.
            Request::Rpc { .. } => reply_error(node, peer, id, ErrorCode::METHOD_NOT_FOUND),
            // Accepted and dropped: there is no server-side handler.
            Request::Send { .. } | Request::Pong => {}
        }
    }
}

/// A publication's data as a message: a JSON string is the string itself,
/// as a seed client's `"message":"…"` is (and as it reads back from the
/// broker), so seed members receive it unescaped on every path.
fn message_of(data: &str) -> Message<'_> {
    if data.starts_with('"') {
        if let Ok(s) = serde_json::from_str::<&str>(data) {
            return Message::Text(s.into());
        }
        if let Ok(s) = serde_json::from_str::<String>(data) {
            return Message::Text(s.into());
        }
    }
    Message::Json(data.into())
}

impl CfSession {
    /// Takes the connection token's identity.
    /// This client's presence info in a room: who it is, with the
    /// subscription token's `info` as `chan_info`.
    fn presence_info(&self, chan_info: Option<&serde_json::Value>) -> String {
        match chan_info {
            None => self.info.clone(),
            Some(v) => {
                let mut info = self.info.clone();
                info.pop();
                info.push_str(r#","chan_info":"#);
                info.push_str(&v.to_string());
                info.push('}');
                info
            }
        }
    }

    fn accept_claims(&mut self, node: &Node, claims: &ConnClaims) {
        self.user = claims.user();
        self.info = client_info(&self.user, &self.client, claims.info.as_ref());
        self.expires_at = claims.expires_at;
        self.expire_grace = node.auth.expire_grace();
    }
}

/// `{"user":U,"client":C[,"conn_info":I]}`: who publishes.
fn client_info(user: &User, client: &str, conn_info: Option<&serde_json::Value>) -> String {
    let mut info = String::from(r#"{"user":"#);
    write_json_string(&user.id, &mut info);
    info.push_str(r#","client":"#);
    write_json_string(client, &mut info);
    if let Some(v) = conn_info {
        info.push_str(r#","conn_info":"#);
        info.push_str(&v.to_string());
    }
    info.push('}');
    info
}

/// An auth refusal in this protocol: an error reply, or a close.
fn answer(node: &Node, peer: &Arc<Peer>, id: u32, a: Answer) {
    match a {
        Answer::Error(code) => reply_error(node, peer, id, code),
        Answer::Close(d) => close(node, peer, d),
    }
}

fn error(id: u32, code: ErrorCode) -> Bytes {
    Bytes::from(code.encode_reply(id))
}

fn reply_error(node: &Node, peer: &Arc<Peer>, id: u32, code: ErrorCode) {
    node.send(peer, error(id, code));
}

fn close(node: &Node, peer: &Arc<Peer>, d: Disconnect) {
    node.close(peer, d.code, d.reason.into());
}

/// The push a Centrifugo-protocol member receives for a publication:
/// `{"push":{"channel":R,"pub":{"data":D,"info":I}}}`, where a seed
/// client's string message is the JSON string and a JSON message is itself.
pub(super) fn encode(p: &Publication<'_>) -> Bytes {
    let data = p.message.delivered();
    let mut out =
        String::with_capacity(p.room.len() + data.len() + 96 + p.info.map_or(0, str::len));
    out.push_str(r#"{"push":{"channel":"#);
    write_json_string(p.room, &mut out);
    out.push_str(r#","pub":"#);
    write_publication(&mut out, p);
    out.push_str("}}");
    Bytes::from(out)
}

/// Appends a publication as the protocol writes it in pushes and in
/// subscribe and history replies: `{"data":D[,"info":I][,"offset":N]}`.
pub(super) fn write_publication(out: &mut String, p: &Publication<'_>) {
    out.push_str(r#"{"data":"#);
    match &p.message {
        Message::Text(s) => write_json_string(s, out),
        Message::Json(s) => out.push_str(s),
    }
    if let Some(info) = p.info {
        out.push_str(r#","info":"#);
        out.push_str(info);
    }
    if let Some((offset, _)) = p.position {
        use std::fmt::Write;
        let _ = write!(out, r#","offset":{offset}"#);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_string_publishes_as_text() {
        assert_eq!(message_of(r#""plain""#), Message::Text("plain".into()));
        assert_eq!(
            message_of(r#""q \"x\" \u00e9""#),
            Message::Text("q \"x\" é".into())
        );
        for other in [r#"{"text":"yo"}"#, "12", "null", r#"["a"]"#] {
            assert_eq!(message_of(other), Message::Json(other.into()));
        }
        // A lone surrogate no Rust string can hold stays as it was sent.
        assert_eq!(
            message_of(r#""\ud800""#),
            Message::Json(r#""\ud800""#.into())
        );
    }
}
