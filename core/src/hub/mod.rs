//! The hub: connections, room memberships and the broker session, as one
//! deterministic, protocol-neutral state machine.
//!
//! It never sees a client frame: each protocol's codec decodes frames into
//! operations ([`Hub::join`], [`Hub::leave`], a publish through the
//! [`Broker`]) and turns the hub's answers (a [`Refusal`] or success) into
//! its own wire form. It holds, per room, the local members as a shared,
//! copy-on-write list ([`Members`]), so that a message reaches N members
//! from one snapshot taken in O(1), without the hub being held while they
//! are written to.
//!
//! `M` is the node's handle for a connection (its outbox); the hub stores
//! it and hands it back, nothing more.

pub mod broker;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub use broker::{
    Broker, BrokerCounters, BrokerMode, BrokerOp, BrokerState, Outbound, Queued, Session, Ticket,
};

use crate::codec::envelope;
use crate::config::HubConfig;

/// A connection's id. Ids are allocated by the hub, start at 1 and are never
/// reused, so a late event for a closed connection cannot reach a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Hashes connection ids (sequential, never attacker-chosen) with one
/// multiplication instead of SipHash.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnIdHasher(u64);

impl std::hash::Hasher for ConnIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads sequential ids over the high bits too,
        // which the hash table uses for its control bytes.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by connection id.
pub type ConnMap<V> = HashMap<ConnId, V, std::hash::BuildHasherDefault<ConnIdHasher>>;

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A room's local members at one moment: cheap to clone, never changed
/// once handed out (the hub copies the list on write while a snapshot is
/// held).
pub type Members<M> = Arc<Vec<(ConnId, M)>>;

/// Why the hub refused an operation. Each codec turns it into its own
/// answer (a close, or an error reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("more than {max} rooms on one connection")]
    TooManyRooms { max: usize },
    #[error("already subscribed")]
    AlreadyMember,
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Sizes of the hub's tables, for leak checks: a connection that has gone
/// leaves them as they would be had it never come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub connections: usize,
    pub rooms: usize,
    pub memberships: usize,
    pub room_slots_in_use: usize,
}

#[derive(Debug)]
struct Room<M> {
    name: Box<str>,
    members: Members<M>,
    /// The node's position in the room's stream (rooms with history, once
    /// a positioned publication or a subscribe's read showed it).
    stream: Option<Box<stream::RoomStream>>,
    /// Whether the node tracks who is in the room (presence): its members
    /// leaving are reported ([`Hub::take_departures`]).
    presence: bool,
}

#[derive(Debug)]
struct Conn<M> {
    handle: M,
    /// (room slot, index of this connection in that room's members).
    rooms: Vec<(u32, u32)>,
}

/// The state machine. See the module docs.
#[derive(Debug)]
pub struct Hub<M> {
    /// Members that left presence rooms, since the last take.
    departures: Vec<(Box<str>, ConnId)>,
    cfg: HubConfig,
    next_conn: u64,
    conns: ConnMap<Conn<M>>,
    rooms: Vec<Option<Room<M>>>,
    /// Free room slots, lowest first, so that live rooms gather at the
    /// start and the end can be given back. May hold slots past the end
    /// (dropped when popped).
    free_rooms: std::collections::BinaryHeap<std::cmp::Reverse<u32>>,
    room_index: HashMap<Box<str>, u32>,
    memberships: usize,
    broker: Broker,
    stopped: bool,
}

impl<M: Clone> Hub<M> {
    /// A hub whose broker session starts at once (remote mode: its first
    /// operation is a connect).
    pub fn new(cfg: HubConfig, mode: BrokerMode, probe_channel: String, now: Duration) -> Hub<M> {
        Hub {
            departures: Vec::new(),
            broker: Broker::new(&cfg, mode, probe_channel, now),
            cfg,
            next_conn: 1,
            conns: ConnMap::default(),
            rooms: Vec::new(),
            free_rooms: std::collections::BinaryHeap::new(),
            room_index: HashMap::new(),
            memberships: 0,
            stopped: false,
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn broker_mut(&mut self) -> &mut Broker {
        &mut self.broker
    }

    /// The broker channel of a room.
    pub fn channel(&self, room: &str) -> String {
        envelope::channel_for(&self.cfg.channel_prefix, room)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Rooms with at least one local member.
    pub fn rooms(&self) -> usize {
        self.room_index.len()
    }

    pub fn footprint(&self) -> Footprint {
        Footprint {
            connections: self.conns.len(),
            rooms: self.room_index.len(),
            memberships: self.memberships,
            room_slots_in_use: self.rooms.iter().filter(|r| r.is_some()).count(),
        }
    }

    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    pub fn is_member(&self, conn: ConnId, room: &str) -> bool {
        match (self.room_index.get(room), self.conns.get(&conn)) {
            (Some(&slot), Some(c)) => c.rooms.iter().any(|&(s, _)| s == slot),
            _ => false,
        }
    }

    /// The rooms a connection is in, in no particular order.
    pub fn rooms_of(&self, conn: ConnId) -> Vec<&str> {
        self.conns.get(&conn).map_or_else(Vec::new, |c| {
            c.rooms
                .iter()
                .map(|&(slot, _)| &*self.room(slot).name)
                .collect()
        })
    }

    /// The local members of a room: a snapshot, O(1).
    pub fn members(&self, room: &str) -> Option<Members<M>> {
        let &slot = self.room_index.get(room)?;
        Some(self.room(slot).members.clone())
    }

    /// The local members of a room and the node's position in its stream,
    /// for a positioned publication. `None`: no local members.
    pub fn members_and_stream(
        &mut self,
        room: &str,
    ) -> Option<(Members<M>, &mut Option<Box<stream::RoomStream>>)> {
        let &slot = self.room_index.get(room)?;
        let r = self.rooms[slot as usize].as_mut()?;
        Some((r.members.clone(), &mut r.stream))
    }

    /// Tracks who leaves `room` (a presence room): from now on each
    /// member that leaves, by any path, is reported by
    /// [`Hub::take_departures`]. No-op for a room without members.
    pub fn mark_presence(&mut self, room: &str) {
        if let Some(&slot) = self.room_index.get(room) {
            self.room_mut(slot).presence = true;
        }
    }

    /// The members that left presence rooms since the last call.
    pub fn take_departures(&mut self) -> Vec<(Box<str>, ConnId)> {
        std::mem::take(&mut self.departures)
    }

    /// Every room with members whose stream position the node knows.
    pub fn streams_mut(&mut self) -> impl Iterator<Item = (&str, &mut stream::RoomStream)> {
        self.rooms
            .iter_mut()
            .flatten()
            .filter_map(|r| r.stream.as_deref_mut().map(|s| (&*r.name, s)))
    }

    /// Every room with members.
    pub fn room_names(&self) -> impl Iterator<Item = &str> {
        self.room_index.keys().map(|k| &**k)
    }

    // ----- connections -----

    /// A connection opened. Refused after shutdown.
    pub fn open(&mut self, handle: M) -> Result<ConnId, Refusal> {
        let mut id = ConnId(0);
        self.open_with(|i| {
            id = i;
            handle
        })?;
        Ok(id)
    }

    /// A connection opened, its handle made from its new id; returns a
    /// clone of the handle. Refused after shutdown.
    pub fn open_with(&mut self, make: impl FnOnce(ConnId) -> M) -> Result<M, Refusal> {
        if self.stopped {
            return Err(Refusal::ShuttingDown);
        }
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        let handle = make(id);
        self.conns.insert(
            id,
            Conn {
                handle: handle.clone(),
                rooms: Vec::new(),
            },
        );
        Ok(handle)
    }

    /// The connection is gone: it leaves every room. Returns its handle if
    /// it was open (unknown ids are ignored).
    pub fn close(&mut self, conn: ConnId) -> Option<M> {
        let c = self.conns.remove(&conn)?;
        // Our entries' indices stay valid while we leave: removing us from a
        // room only moves another member of that same room.
        for &(slot, idx) in &c.rooms {
            self.remove_member(slot, idx);
        }
        if self.conns.capacity() > 1024 && self.conns.len() < self.conns.capacity() / 4 {
            self.conns.shrink_to_fit();
        }
        Some(c.handle)
    }

    /// Joins a room. `Ok(true)` when the room is new on this node.
    pub fn join(&mut self, conn: ConnId, room: &str) -> Result<bool, Refusal> {
        let slot = self.room_index.get(room).copied();
        let Some(c) = self.conns.get(&conn) else {
            return Err(Refusal::ShuttingDown);
        };
        if let Some(slot) = slot
            && c.rooms.iter().any(|&(s, _)| s == slot)
        {
            return Err(Refusal::AlreadyMember);
        }
        if c.rooms.len() >= self.cfg.limits.max_rooms_per_conn {
            return Err(Refusal::TooManyRooms {
                max: self.cfg.limits.max_rooms_per_conn,
            });
        }
        let handle = c.handle.clone();
        let (slot, created) = match slot {
            Some(slot) => (slot, false),
            None => (self.create_room(room), true),
        };
        let members = Arc::make_mut(&mut self.room_mut(slot).members);
        let idx = members.len() as u32;
        members.push((conn, handle));
        self.memberships += 1;
        self.conns
            .get_mut(&conn)
            .expect("checked above")
            .rooms
            .push((slot, idx));
        Ok(created)
    }

    /// Leaves a room. Returns whether the connection was a member.
    pub fn leave(&mut self, conn: ConnId, room: &str) -> bool {
        let Some(&slot) = self.room_index.get(room) else {
            return false;
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Some(pos) = c.rooms.iter().position(|&(s, _)| s == slot) else {
            return false;
        };
        let (_, idx) = c.rooms.swap_remove(pos);
        self.remove_member(slot, idx);
        true
    }

    /// Shutdown: every connection is forgotten and returned (to be closed),
    /// and the broker session ends once what is queued has gone out.
    pub fn shutdown(&mut self) -> Vec<(ConnId, M)> {
        let closed = self.close_all();
        self.broker.shutdown();
        closed
    }

    /// The first half of [`Hub::shutdown`]: every connection forgotten and
    /// returned, nothing new admitted, the broker still running (so what
    /// the departures cause still goes out); then `broker_mut().shutdown()`.
    pub fn close_all(&mut self) -> Vec<(ConnId, M)> {
        self.stopped = true;
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.close(id).map(|h| (id, h)))
            .collect()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    // ----- the broker session, with the rooms it must subscribe -----

    /// The links of `session` answered: subscribe every room with members.
    pub fn broker_connected(&mut self, session: Session, now: Duration) {
        let prefix = &self.cfg.channel_prefix;
        let channels: Vec<String> = self
            .room_index
            .keys()
            .map(|r| envelope::channel_for(prefix, r))
            .collect();
        self.broker
            .connected(session, channels.iter().map(String::as_str), now);
    }

    // ----- internals -----

    fn room(&self, slot: u32) -> &Room<M> {
        self.rooms[slot as usize]
            .as_ref()
            .expect("room slot referenced by a member is live")
    }

    fn room_mut(&mut self, slot: u32) -> &mut Room<M> {
        self.rooms[slot as usize]
            .as_mut()
            .expect("room slot referenced by a member is live")
    }

    fn create_room(&mut self, name: &str) -> u32 {
        let room = Room {
            name: name.into(),
            members: Arc::new(Vec::new()),
            stream: None,
            presence: false,
        };
        let channel = self.channel(name);
        self.broker.room_added(&channel);
        let free = std::iter::from_fn(|| self.free_rooms.pop())
            .map(|std::cmp::Reverse(s)| s)
            .find(|&s| (s as usize) < self.rooms.len());
        let slot = match free {
            Some(slot) => {
                self.rooms[slot as usize] = Some(room);
                slot
            }
            None => {
                self.rooms.push(Some(room));
                (self.rooms.len() - 1) as u32
            }
        };
        self.room_index.insert(name.into(), slot);
        slot
    }

    /// Removes the member at `idx` of room `slot`, fixing the index of the
    /// member moved into its place, and drops the room when it empties.
    fn remove_member(&mut self, slot: u32, idx: u32) {
        self.memberships -= 1;
        let room = self.rooms[slot as usize].as_mut().expect("live slot");
        if room.presence {
            let conn = room.members[idx as usize].0;
            self.departures.push((room.name.clone(), conn));
        }
        let members = Arc::make_mut(&mut self.room_mut(slot).members);
        members.swap_remove(idx as usize);
        if let Some(&(moved, _)) = members.get(idx as usize)
            && let Some(mc) = self.conns.get_mut(&moved)
            && let Some(entry) = mc.rooms.iter_mut().find(|(s, _)| *s == slot)
        {
            entry.1 = idx;
        }
        if self.room(slot).members.is_empty() {
            let room = self.rooms[slot as usize].take().expect("live slot");
            self.free_rooms.push(std::cmp::Reverse(slot));
            self.room_index.remove(&room.name);
            let channel = self.channel(&room.name);
            self.broker.room_removed(&channel);
            self.shrink();
        }
    }

    /// Gives memory back after a churn of rooms has passed.
    fn shrink(&mut self) {
        if self.room_index.capacity() > 1024
            && self.room_index.len() < self.room_index.capacity() / 4
        {
            self.room_index.shrink_to_fit();
        }
        // Trailing free slots go at once (each slot is popped once per
        // use, so this is O(1) amortized); their entries in the free heap
        // are dropped when they come up.
        while matches!(self.rooms.last(), Some(None)) {
            self.rooms.pop();
        }
        if self.rooms.capacity() > 1024 && self.rooms.len() < self.rooms.capacity() / 4 {
            self.rooms.shrink_to_fit();
        }
        if self.free_rooms.len() > 1024 && self.free_rooms.len() > 2 * self.rooms.len() {
            let len = self.rooms.len() as u32;
            self.free_rooms.retain(|&std::cmp::Reverse(s)| s < len);
            self.free_rooms.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub<u32> {
        Hub::new(
            HubConfig::default(),
            BrokerMode::Local,
            "probe".into(),
            Duration::ZERO,
        )
    }

    #[test]
    fn members_are_snapshots() {
        let mut h = hub();
        let a = h.open(1).unwrap();
        let b = h.open(2).unwrap();
        assert_eq!(h.join(a, "r"), Ok(true));
        let before = h.members("r").unwrap();
        assert_eq!(h.join(b, "r"), Ok(false));
        assert_eq!(before.len(), 1, "a snapshot does not change");
        assert_eq!(h.members("r").unwrap().len(), 2);
        assert_eq!(h.join(b, "r"), Err(Refusal::AlreadyMember));
        assert!(h.leave(a, "r"));
        assert!(!h.leave(a, "r"));
        assert_eq!(&*h.members("r").unwrap(), &[(b, 2)]);
        assert_eq!(h.close(b), Some(2));
        assert!(h.members("r").is_none());
        assert_eq!(
            h.footprint(),
            Footprint {
                connections: 1,
                rooms: 0,
                memberships: 0,
                room_slots_in_use: 0
            }
        );
    }

    #[test]
    fn room_limit_and_shutdown() {
        let mut h = hub();
        let a = h.open(1).unwrap();
        for i in 0..h.config().limits.max_rooms_per_conn {
            h.join(a, &format!("r{i}")).unwrap();
        }
        assert_eq!(
            h.join(a, "one-more"),
            Err(Refusal::TooManyRooms { max: 256 })
        );
        assert_eq!(h.shutdown(), vec![(a, 1)]);
        assert_eq!(h.open(2), Err(Refusal::ShuttingDown));
        assert_eq!(h.rooms(), 0);
    }

    #[test]
    fn churn_gives_memory_back() {
        let mut h = hub();
        let a = h.open(1).unwrap();
        let b = h.open(2).unwrap();
        for i in 0..50_000 {
            let room = format!("room-{i}");
            h.join(if i % 2 == 0 { a } else { b }, &room).ok();
            if i >= 200 {
                let old = format!("room-{}", i - 200);
                h.leave(a, &old);
                h.leave(b, &old);
            }
        }
        assert!(h.rooms() <= 256);
        assert!(
            h.room_index.capacity() < 8192,
            "{}",
            h.room_index.capacity()
        );
    }
}
