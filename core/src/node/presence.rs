//! Presence on the node: who is in each room, across the fleet, and the
//! join/leave pushes.
//!
//! The node keeps its own clients' entries per room ([`Book`]): in
//! embedded mode that is the whole answer; on Redis it is what the node
//! writes (a hash of client → info and a sorted set of client → expiry per
//! room, scripts in [`crate::codec::redis`]) and re-adds every
//! `presence_refresh`, so a crashed node's clients expire after
//! `presence_ttl` while live ones never do. Joins are written when a client
//! subscribes; leaves, by whatever path a member goes (unsubscribe, close,
//! slow consumer, 2500), come from the hub ([`crate::hub::Hub::take_departures`]).
//!
//! Join/leave pushes go, at most once, to the room's Centrifugo subscribers
//! that asked for them (`join_leave` in their subscribe), in namespaces with
//! `join_leave`; on Redis they travel on the room's channel as
//! `{"type":"join"|"leave","room":R,"info":{…}}`, which the tutorial's
//! server ignores (it delivers by `roomId`). A room with more clients than
//! its cap sends none (its count is the fleet's, as the last add saw it).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::{Node, Peer, add, lock};
use crate::auth::NamespaceOptions;
use crate::codec::centrifugo::{self as cf, ErrorCode};
use crate::codec::envelope;
use crate::codec::redis::{self as r, Call, PresenceKeys, Reply};
use crate::codec::seed::write_json_string;
use crate::hub::{BrokerMode, ConnId};

/// A room's presence settings, from its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceOpts {
    pub join_leave: bool,
    /// 0: no cap.
    pub max_members: usize,
}

impl PresenceOpts {
    pub fn of(o: &NamespaceOptions, default_max: usize) -> Option<PresenceOpts> {
        o.presence.then_some(PresenceOpts {
            join_leave: o.join_leave,
            max_members: if o.presence_max_members > 0 {
                o.presence_max_members
            } else {
                default_max
            },
        })
    }
}

/// One room's presence as this node holds it.
#[derive(Debug, Default)]
struct RoomPresence {
    /// This node's clients in the room: connection → info (a JSON object).
    entries: HashMap<ConnId, Box<str>>,
    /// Connections that asked for join/leave pushes.
    listeners: HashSet<ConnId>,
    /// This node's clients whose join was announced: only theirs leave
    /// aloud, so a listener never hears a leave without its join.
    announced: HashSet<ConnId>,
    /// Clients in the room, fleet-wide as last seen (embedded: exact).
    count: usize,
}

/// Every presence room this node has clients in.
#[derive(Debug, Default)]
pub(super) struct Book {
    rooms: HashMap<Box<str>, RoomPresence>,
    /// Rooms over their cap (join/leave off), for metrics and replies.
    capped: HashSet<Box<str>>,
    /// What the runtime should log ([`Node::take_notices`]).
    notices: Vec<String>,
}

impl Book {
    pub(super) fn rooms(&self) -> usize {
        self.rooms.len()
    }

    pub(super) fn capped_rooms(&self) -> usize {
        self.capped.len()
    }
}

impl Node {
    /// Things worth a line in the log since the last call (a presence room
    /// going over its cap). Cheap when there are none.
    pub fn take_notices(&self) -> Vec<String> {
        // A plain load first: this runs on every client frame, and a swap
        // would write the shared cache line each time.
        if !self.presence_notices.load(Ordering::Relaxed)
            || !self.presence_notices.swap(false, Ordering::Relaxed)
        {
            return Vec::new();
        }
        let mut book = lock(&self.presence);
        std::mem::take(&mut book.notices)
    }
}

/// A presence answer being waited for.
#[derive(Debug)]
pub(super) enum PresenceWait {
    /// A client's `presence` (`stats: false`) or `presence_stats`.
    Command {
        peer: Arc<Peer>,
        id: u32,
        stats: bool,
        room: Box<str>,
    },
    /// The fleet's count after an add or remove.
    Count { room: Box<str> },
}

/// The client id of a connection: `<node>-<conn>`, as the Centrifugo
/// session names itself.
pub(super) fn client_id(node_id: &str, conn: ConnId) -> String {
    format!("{node_id}-{}", conn.0)
}

/// A seed-protocol client's presence info: anonymous.
pub(super) fn seed_info(client: &str) -> String {
    let mut out = String::from(r#"{"user":"","client":"#);
    write_json_string(client, &mut out);
    out.push('}');
    out
}

/// The join/leave payload on the room's channel.
fn event_payload(join: bool, room: &str, info: &str) -> Bytes {
    let mut out = String::with_capacity(info.len() + room.len() + 32);
    out.push_str(if join {
        r#"{"type":"join","room":"#
    } else {
        r#"{"type":"leave","room":"#
    });
    write_json_string(room, &mut out);
    out.push_str(r#","info":"#);
    out.push_str(info);
    out.push('}');
    Bytes::from(out)
}

/// The PUBLISH of a join/leave on the room's channel.
fn event_call(channel: &str, join: bool, room: &str, info: &str) -> Call {
    Call::publish(channel, event_payload(join, room, info))
}

/// A join/leave payload from the broker: (join, room, info as compact JSON).
pub(super) fn parse_event(payload: &[u8]) -> Option<(bool, String, String)> {
    #[derive(serde::Deserialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        room: String,
        info: serde_json::Map<String, serde_json::Value>,
    }
    let e: Event<'_> = serde_json::from_slice(payload).ok()?;
    let join = match e.kind {
        "join" => true,
        "leave" => false,
        _ => return None,
    };
    // A client info has a string client and user.
    if !e.info.get("client")?.is_string() || !e.info.get("user")?.is_string() {
        return None;
    }
    Some((join, e.room, serde_json::Value::Object(e.info).to_string()))
}

/// A presence read (`HGETALL`'s flat list) as client → info, keeping only
/// entries that are client infos.
pub(super) fn parse_entries(reply: &Reply) -> Option<Vec<(String, String)>> {
    let flat = reply.as_array()?;
    let mut out = Vec::with_capacity(flat.len() / 2);
    for kv in flat.chunks_exact(2) {
        let (Some(client), Some(info)) = (kv[0].as_str(), kv[1].as_data()) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(info) else {
            continue;
        };
        if v.get("client").and_then(|c| c.as_str()) == Some(client)
            && v.get("user").is_some_and(serde_json::Value::is_string)
        {
            out.push((client.to_string(), v.to_string()));
        }
    }
    Some(out)
}

/// Distinct users among client infos.
pub(super) fn count_users<'a>(infos: impl Iterator<Item = &'a str>) -> usize {
    let mut users = HashSet::new();
    for info in infos {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(info)
            && let Some(u) = v.get("user").and_then(|u| u.as_str())
        {
            users.insert(u.to_string());
        }
    }
    users.len()
}

impl Node {
    /// The presence settings of `room`, if it tracks presence.
    pub(super) fn presence_of(&self, room: &str) -> Option<PresenceOpts> {
        let (_, options) = self.auth.policy().resolve(room).ok()?;
        PresenceOpts::of(&options, self.cfg.presence_max_members)
    }

    fn presence_keys(&self, room: &str) -> PresenceKeys {
        PresenceKeys::new(&self.cfg.hub.channel_prefix, room)
    }

    fn presence_add_call(&self, room: &str, entries: &[(String, &str)]) -> Call {
        let keys = self.presence_keys(room);
        let mut args = Vec::with_capacity(1 + 2 * entries.len());
        args.push(Bytes::from(
            self.cfg.presence_ttl.as_secs().max(1).to_string(),
        ));
        for (client, info) in entries {
            args.push(Bytes::from(client.clone()));
            args.push(Bytes::copy_from_slice(info.as_bytes()));
        }
        Call::script(&r::PRESENCE_ADD_SCRIPT, &[&keys.data, &keys.expiry], args)
    }

    /// A member of `room` is present (its subscribe succeeded), with this
    /// client info; `listens`: it asked for join/leave pushes. Idempotent.
    pub(super) fn presence_join(&self, peer: &Arc<Peer>, room: &str, info: &str, listens: bool) {
        let Some(o) = self.presence_of(room) else {
            return;
        };
        let id = peer.id;
        let (count, is_new) = {
            let mut book = lock(&self.presence);
            let rp = book.rooms.entry(room.into()).or_default();
            if listens {
                rp.listeners.insert(id);
            }
            let is_new = rp.entries.insert(id, info.into()).is_none();
            if is_new && self.cfg.mode == BrokerMode::Local {
                rp.count = rp.entries.len();
            }
            (rp.count, is_new)
        };
        if !is_new {
            return;
        }
        let member = self.with(|s| {
            let member = s.hub.is_member(id, room);
            if member {
                s.hub.mark_presence(room);
            }
            member
        });
        if !member {
            // Gone before this: no departure will come for it.
            self.presence_forget(room, id);
            return;
        }
        match self.cfg.mode {
            BrokerMode::Local => {
                if self.join_leave_on(room, &o, count) {
                    self.mark_announced(room, id);
                    let frame = cf::encode_join_leave_push_raw(room, true, info);
                    self.push_to_listeners(room, Bytes::from(frame));
                }
            }
            BrokerMode::Remote => {
                let client = client_id(&self.cfg.node_id, id);
                let call = self.presence_add_call(room, &[(client, info)]);
                let ticket = self.ticket();
                let channel = envelope::channel_for(&self.cfg.hub.channel_prefix, room);
                let announce = self.join_leave_on(room, &o, count + 1);
                if announce {
                    self.mark_announced(room, id);
                }
                let refresh = self.cfg.presence_refresh;
                let event =
                    announce.then(|| (self.ticket(), event_call(&channel, true, room, info)));
                // Presence writes go only over a live link, beside the
                // publishes but not in their buffer: while the link is
                // down they would only crowd out messages, and the refresh
                // when it is back writes every live entry anyway.
                self.with(|s| {
                    if s.presence_due.is_none() {
                        s.presence_due = Some(s.now + refresh);
                    }
                    // The waiter goes in under the hub's lock, with the
                    // call: the reply cannot come before it.
                    if s.hub.broker_mut().query(ticket, call) {
                        lock(&self.waiters).insert(
                            ticket,
                            super::history::Waiter::Presence(PresenceWait::Count {
                                room: room.into(),
                            }),
                        );
                    }
                    if let Some((t, c)) = event {
                        s.hub.broker_mut().query(t, c);
                    }
                });
            }
        }
    }

    /// Whether join/leave pushes go out in `room` at this count; a room
    /// over its cap is noted (metrics) and sends none.
    fn join_leave_on(&self, room: &str, o: &PresenceOpts, count: usize) -> bool {
        if !o.join_leave {
            return false;
        }
        let over = o.max_members > 0 && count > o.max_members;
        let mut book = lock(&self.presence);
        if over {
            if book.capped.insert(room.into()) {
                add(&self.stats.presence_capped, 1);
                book.notices.push(format!(
                    "presence room {room:?} has {count} clients, over its cap of {}: \
                     no join/leave pushes for it until it is back under",
                    o.max_members
                ));
                self.presence_notices.store(true, Ordering::Relaxed);
            }
        } else {
            book.capped.remove(room);
        }
        !over
    }

    fn mark_announced(&self, room: &str, id: ConnId) {
        if let Some(rp) = lock(&self.presence).rooms.get_mut(room) {
            rp.announced.insert(id);
        }
    }

    /// Drops a client's entry: its info, and whether its join was announced.
    fn presence_forget(&self, room: &str, id: ConnId) -> Option<(Box<str>, bool)> {
        let mut book = lock(&self.presence);
        let rp = book.rooms.get_mut(room)?;
        rp.listeners.remove(&id);
        let announced = rp.announced.remove(&id);
        let info = rp.entries.remove(&id)?;
        if self.cfg.mode == BrokerMode::Local {
            rp.count = rp.entries.len();
        }
        if rp.entries.is_empty() {
            book.rooms.remove(room);
            book.capped.remove(room);
        }
        Some((info, announced))
    }

    /// Members that left presence rooms (from the hub): their entries go,
    /// and the rooms hear that they left.
    pub(super) fn presence_departed(&self, departures: Vec<(Box<str>, ConnId)>) {
        for (room, id) in departures {
            let count = lock(&self.presence).rooms.get(&room).map_or(0, |r| r.count);
            let Some((info, announced)) = self.presence_forget(&room, id) else {
                continue;
            };
            // The cap's state follows the count; the leave is said if the
            // join was.
            if let Some(o) = self.presence_of(&room) {
                let _ = self.join_leave_on(&room, &o, count.saturating_sub(1));
            }
            let announce = announced;
            match self.cfg.mode {
                BrokerMode::Local => {
                    if announce {
                        let frame = cf::encode_join_leave_push_raw(&room, false, &info);
                        self.push_to_listeners(&room, Bytes::from(frame));
                    }
                }
                BrokerMode::Remote => {
                    let keys = self.presence_keys(&room);
                    let client = client_id(&self.cfg.node_id, id);
                    let call = Call::script(
                        &r::PRESENCE_REMOVE_SCRIPT,
                        &[&keys.data, &keys.expiry],
                        vec![Bytes::from(client)],
                    );
                    let channel = envelope::channel_for(&self.cfg.hub.channel_prefix, &room);
                    let remove = self.ticket();
                    let event = announce
                        .then(|| (self.ticket(), event_call(&channel, false, &room, &info)));
                    // Not sent while the link is down: the entry then
                    // expires (no refresh keeps it).
                    self.with(|s| {
                        let b = s.hub.broker_mut();
                        b.query(remove, call);
                        if let Some((t, c)) = event {
                            b.query(t, c);
                        }
                    });
                }
            }
        }
    }

    /// Queues `frame` for the room's members that asked for join/leave.
    fn push_to_listeners(&self, room: &str, frame: Bytes) {
        let listeners: Vec<ConnId> = match lock(&self.presence).rooms.get(room) {
            Some(rp) => rp.listeners.iter().copied().collect(),
            None => return,
        };
        if listeners.is_empty() {
            return;
        }
        let Some(members) = self.inspect(|h| h.members(room)) else {
            return;
        };
        for (id, peer) in members.iter() {
            if listeners.contains(id) {
                self.send(peer, frame.clone());
            }
        }
    }

    /// A join/leave from the broker for `room`: pushed to this node's
    /// listeners there. Returns how many were in the room.
    pub(super) fn presence_event(&self, room: &str, join: bool, info: &str) -> usize {
        let frame = cf::encode_join_leave_push_raw(room, join, info);
        self.push_to_listeners(room, Bytes::from(frame));
        lock(&self.presence)
            .rooms
            .get(room)
            .map_or(0, |r| r.listeners.len())
    }

    /// This node's entries of `room`, client → info (embedded: the whole
    /// presence).
    pub(super) fn local_presence(&self, room: &str) -> Vec<(String, String)> {
        lock(&self.presence)
            .rooms
            .get(room)
            .map(|rp| {
                rp.entries
                    .iter()
                    .map(|(c, i)| (client_id(&self.cfg.node_id, *c), i.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A client's `presence` or `presence_stats`, permission checked.
    pub(super) fn presence_command(&self, peer: &Arc<Peer>, id: u32, room: &str, stats: bool) {
        match self.cfg.mode {
            BrokerMode::Local => {
                let entries: Vec<(String, String)> = lock(&self.presence)
                    .rooms
                    .get(room)
                    .map(|rp| {
                        rp.entries
                            .iter()
                            .map(|(c, i)| (client_id(&self.cfg.node_id, *c), i.to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let capped = lock(&self.presence).capped.contains(room);
                self.send(peer, presence_reply(id, stats, &entries, capped));
            }
            BrokerMode::Remote => {
                let keys = self.presence_keys(room);
                let call = Call::script(
                    &r::PRESENCE_GET_SCRIPT,
                    &[&keys.data, &keys.expiry],
                    Vec::new(),
                );
                let ticket = self.ticket();
                // The waiter goes in under the hub's lock, with the read:
                // the reply cannot come before it.
                let queued = self.with(|s| {
                    let q = s.hub.broker_mut().query(ticket, call);
                    if q {
                        lock(&self.waiters).insert(
                            ticket,
                            super::history::Waiter::Presence(PresenceWait::Command {
                                peer: peer.clone(),
                                id,
                                stats,
                                room: room.into(),
                            }),
                        );
                    }
                    q
                });
                if !queued {
                    self.send(peer, Bytes::from(ErrorCode::INTERNAL.encode_reply(id)));
                }
            }
        }
    }

    /// A presence read or count came back (`None`: it failed).
    pub(super) fn presence_answer(&self, w: PresenceWait, reply: Option<Reply>) {
        match w {
            PresenceWait::Command {
                peer,
                id,
                stats,
                room,
            } => {
                let frame = match reply.as_ref().and_then(parse_entries) {
                    Some(entries) => {
                        let capped = self.presence_of(&room).is_some_and(|o| {
                            o.join_leave && o.max_members > 0 && entries.len() > o.max_members
                        });
                        presence_reply(id, stats, &entries, capped)
                    }
                    None => Bytes::from(ErrorCode::INTERNAL.encode_reply(id)),
                };
                self.send(&peer, frame);
            }
            PresenceWait::Count { room } => {
                let Some(n) = reply.as_ref().and_then(Reply::as_int) else {
                    return;
                };
                let n = usize::try_from(n).unwrap_or(0);
                if let Some(rp) = lock(&self.presence).rooms.get_mut(&room) {
                    rp.count = n;
                }
                if let Some(o) = self.presence_of(&room) {
                    let _ = self.join_leave_on(&room, &o, n);
                }
            }
        }
    }

    /// Re-adds every entry of this node (Redis): one call per room, one
    /// pipeline for all. Called under the hub's lock.
    pub(super) fn presence_refresh(&self, s: &mut super::Shared, now: Duration) {
        s.presence_due = None;
        if self.cfg.mode != BrokerMode::Remote {
            return;
        }
        let calls: Vec<(Box<str>, Call)> = {
            let book = lock(&self.presence);
            book.rooms
                .iter()
                .filter(|(_, rp)| !rp.entries.is_empty())
                .map(|(room, rp)| {
                    let entries: Vec<(String, &str)> = rp
                        .entries
                        .iter()
                        .map(|(c, i)| (client_id(&self.cfg.node_id, *c), &**i))
                        .collect();
                    (room.clone(), self.presence_add_call(room, &entries))
                })
                .collect()
        };
        if calls.is_empty() {
            // Nothing to keep alive: the next join schedules the refresh.
            return;
        }
        s.presence_due = Some(now + self.cfg.presence_refresh);
        for (room, call) in calls {
            let ticket = self.ticket();
            if s.hub.broker_mut().query(ticket, call) {
                lock(&self.waiters).insert(
                    ticket,
                    super::history::Waiter::Presence(PresenceWait::Count { room }),
                );
            }
        }
        add(&self.stats.presence_refreshes, 1);
    }
}

/// The reply to `presence` or `presence_stats` from client → info pairs.
/// A room over its cap says so (`"join_leave_capped":true`, a field the
/// SDKs ignore): it sends no join/leave pushes.
fn presence_reply(id: u32, stats: bool, entries: &[(String, String)], capped: bool) -> Bytes {
    let mut reply = if stats {
        let users = count_users(entries.iter().map(|(_, i)| i.as_str()));
        cf::encode_presence_stats_reply(
            id,
            u32::try_from(entries.len()).unwrap_or(u32::MAX),
            u32::try_from(users).unwrap_or(u32::MAX),
        )
    } else {
        cf::encode_presence_reply_raw(id, entries.iter().map(|(c, i)| (c.as_str(), i.as_str())))
    };
    if capped {
        // `{"id":N,"presence":{…}}`: the field goes into the result.
        reply.truncate(reply.len() - 2);
        reply.push_str(r#","join_leave_capped":true}}"#);
    }
    Bytes::from(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_anything_else_is_no_event() {
        let p = event_payload(true, "r", r#"{"user":"42","client":"n-1"}"#);
        assert_eq!(
            parse_event(&p),
            Some((true, "r".into(), r#"{"client":"n-1","user":"42"}"#.into()))
        );
        let p = event_payload(false, "a\"b", &seed_info("n-2"));
        assert_eq!(
            parse_event(&p).map(|e| (e.0, e.1)),
            Some((false, "a\"b".into()))
        );
        for bad in [
            &br#"{"type":"sendMessage","roomId":"r","message":"x"}"#[..],
            br#"{"type":"join","room":"r","info":{"user":1,"client":"c"}}"#,
            br#"{"type":"join","room":"r","info":"x"}"#,
            br#"{"type":"wave","room":"r","info":{"user":"","client":"c"}}"#,
            b"not json",
        ] {
            assert_eq!(parse_event(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_presence_read_keeps_only_client_infos() {
        let d = |s: &str| Reply::Data(Bytes::copy_from_slice(s.as_bytes()));
        let reply = Reply::Array(vec![
            d("n-1"),
            d(r#"{"user":"42","client":"n-1"}"#),
            d("n-2"),
            d("garbage"),
            d("n-3"),
            d(r#"{"user":"42","client":"other"}"#),
            d("n-4"),
            d(r#"{"user":"","client":"n-4","conn_info":{"a":1}}"#),
        ]);
        let got = parse_entries(&reply).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "n-1");
        assert_eq!(count_users(got.iter().map(|(_, i)| i.as_str())), 2);
    }
}
