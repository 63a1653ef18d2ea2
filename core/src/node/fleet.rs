//! Node announcements: on Redis every node writes itself (its counts and
//! its rooms with their local client counts) into the fleet's hash, with
//! an expiry in a sorted set, when its link comes up and then every
//! `--node-announce-interval`; an announcement not refreshed for three
//! intervals and a second (a crashed node's) is pruned by the next read or
//! write. The
//! API's `info` lists the live announcements and `channels` adds up their
//! rooms, with the asking node's own entry taken live: another node's
//! numbers are at most one interval old (plus the time its link was
//! down, up to the ttl).
//!
//! Bounded: an announcement carries at most [`MAX_ANNOUNCED_ROOMS`]
//! rooms (`rooms_truncated` says when there were more).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use super::{Node, Shared};
use crate::codec::api::{self as a, ApiError};
use crate::codec::redis::{self as r, Call, FleetKeys, Reply};
use crate::hub::{BrokerMode, Outbound};

/// The most rooms one announcement lists.
pub const MAX_ANNOUNCED_ROOMS: usize = 10_000;

/// A node as it announces itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Announcement {
    pub uid: String,
    pub name: String,
    pub version: String,
    pub num_clients: usize,
    pub num_channels: usize,
    pub uptime: u64,
    #[serde(default)]
    pub rooms: BTreeMap<String, usize>,
    #[serde(default)]
    pub rooms_truncated: bool,
}

/// A `NODES_GET` reply as announcements; entries that do not parse are
/// left out.
fn parse_announcements(reply: &Reply) -> Option<Vec<Announcement>> {
    let flat = reply.as_array()?;
    Some(
        flat.chunks_exact(2)
            .filter_map(|kv| {
                let id = kv[0].as_str()?;
                let a: Announcement = serde_json::from_slice(kv[1].as_data()?).ok()?;
                (a.uid == id).then_some(a)
            })
            .collect(),
    )
}

impl Node {
    /// Whether this node announces itself (Redis, a non-zero interval).
    pub(super) fn announces(&self) -> bool {
        self.cfg.mode == BrokerMode::Remote && !self.cfg.api.announce_interval.is_zero()
    }

    /// This node now, from its hub.
    fn announcement(&self, s: &Shared, now: Duration) -> Announcement {
        let hub = &s.hub;
        let mut rooms = BTreeMap::new();
        let mut truncated = false;
        for room in hub.room_names() {
            if rooms.len() >= MAX_ANNOUNCED_ROOMS {
                truncated = true;
                break;
            }
            rooms.insert(room.to_string(), hub.members(room).map_or(0, |m| m.len()));
        }
        Announcement {
            uid: self.cfg.node_id.clone(),
            name: self.cfg.node_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            num_clients: hub.connections(),
            num_channels: hub.rooms(),
            uptime: now.saturating_sub(self.started).as_secs(),
            rooms,
            rooms_truncated: truncated,
        }
    }

    /// Writes this node's announcement (while the link is up: the next
    /// one after it comes back is written then). Under the hub's lock.
    pub(super) fn announce(&self, s: &mut Shared, now: Duration) {
        if !self.announces() {
            return;
        }
        let every = self.cfg.api.announce_interval;
        s.announce_due = Some(now + every);
        if !s.hub.broker().is_up() {
            return;
        }
        let json = serde_json::to_vec(&self.announcement(s, now)).unwrap_or_default();
        // Redis's clock in whole seconds: one more covers its truncation,
        // so an announcement lives at least three intervals.
        let ttl = (every * 3).as_secs_f64().ceil() as u64 + 1;
        let keys = FleetKeys::new(&self.cfg.hub.channel_prefix);
        let call = Call::script(
            &r::PRESENCE_ADD_SCRIPT,
            &[&keys.data, &keys.expiry],
            vec![
                Bytes::from(ttl.to_string()),
                Bytes::from(self.cfg.node_id.clone()),
                Bytes::from(json),
            ],
        );
        // A read's path, not a publish's: not held while the link is down,
        // not counted as a publish, no room's publish buffer taken. Its
        // answer has no waiter and is dropped.
        let ticket = self.ticket();
        s.hub.broker_mut().query(ticket, call);
    }

    /// At shutdown: this node's announcement goes. Under the hub's lock.
    pub(super) fn withdraw(&self, s: &mut Shared) {
        if !self.announces() || !s.hub.broker().is_up() {
            return;
        }
        let keys = FleetKeys::new(&self.cfg.hub.channel_prefix);
        let id = self.cfg.node_id.as_bytes();
        for call in [
            Call::cmd(&[b"HDEL", keys.data.as_bytes(), id]),
            Call::cmd(&[b"ZREM", keys.expiry.as_bytes(), id]),
        ] {
            s.hub.broker_mut().publish(Outbound { call, ticket: None });
        }
    }

    /// The read of the fleet's announcements.
    pub(super) fn nodes_call(&self) -> Call {
        let keys = FleetKeys::new(&self.cfg.hub.channel_prefix);
        Call::script(
            &r::PRESENCE_GET_SCRIPT,
            &[&keys.data, &keys.expiry],
            Vec::new(),
        )
    }

    /// The fleet from a `NODES_GET` reply, this node's entry live, sorted
    /// by name.
    fn fleet(&self, reply: &Reply) -> Option<Vec<Announcement>> {
        let mut nodes = parse_announcements(reply)?;
        nodes.retain(|n| n.uid != self.cfg.node_id);
        let me = {
            let s = super::lock(&self.shared);
            self.announcement(&s, s.now)
        };
        nodes.push(me);
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        Some(nodes)
    }

    /// An `info` result from a `NODES_GET` reply.
    pub(super) fn fleet_info(&self, reply: &Reply) -> Result<String, ApiError> {
        let nodes = self.fleet(reply).ok_or(ApiError::INTERNAL)?;
        let infos: Vec<a::NodeInfo<'_>> = nodes
            .iter()
            .map(|n| a::NodeInfo {
                uid: &n.uid,
                name: &n.name,
                version: &n.version,
                num_clients: n.num_clients,
                num_channels: n.num_channels,
                uptime: n.uptime,
            })
            .collect();
        Ok(a::info_result(&infos))
    }

    /// A `channels` result from a `NODES_GET` reply: every node's rooms,
    /// their counts added up, those matching `pattern` if given.
    pub(super) fn fleet_channels(
        &self,
        reply: &Reply,
        pattern: Option<&str>,
    ) -> Result<String, ApiError> {
        let nodes = self.fleet(reply).ok_or(ApiError::INTERNAL)?;
        let pattern: Option<Vec<char>> = pattern.map(|p| p.chars().collect());
        let mut rooms: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &nodes {
            for (room, count) in &n.rooms {
                if pattern
                    .as_ref()
                    .is_none_or(|p| super::api::glob(p, &room.chars().collect::<Vec<_>>()))
                {
                    *rooms.entry(room).or_default() += count;
                }
            }
        }
        Ok(a::channels_result(rooms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse_and_odd_entries_are_left_out() {
        let good = Announcement {
            uid: "n1".into(),
            name: "n1".into(),
            version: "0.1.0".into(),
            num_clients: 2,
            num_channels: 1,
            uptime: 9,
            rooms: [("chat".to_string(), 2)].into_iter().collect(),
            rooms_truncated: false,
        };
        let d = |s: &[u8]| Reply::Data(Bytes::copy_from_slice(s));
        let reply = Reply::Array(vec![
            d(b"n1"),
            d(&serde_json::to_vec(&good).unwrap()),
            d(b"n2"),
            d(b"garbage"),
            d(b"n3"),
            d(&serde_json::to_vec(&good).unwrap()),
        ]);
        assert_eq!(parse_announcements(&reply), Some(vec![good]));
        assert_eq!(parse_announcements(&Reply::Int(1)), None);
    }
}
