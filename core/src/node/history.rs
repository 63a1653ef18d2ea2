//! History and recovery on the node: publishes that take an offset, the
//! subscribe that recovers, the `history` command, and the heal of a
//! room's gaps. The decisions are [`crate::hub::stream`]'s; this wires
//! them to the broker (reads with tickets), the embedded streams, the
//! outboxes and the Centrifugo protocol's replies.
//!
//! Lock order, where several are held: an embedded stream, then the hub,
//! then the waiters, then one outbox.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::{Node, Peer, Publication, add, lock};
use crate::auth::NamespaceOptions;
use crate::codec::centrifugo::{self as cf, ErrorCode, UnsubscribeCode};
use crate::codec::envelope;
use crate::codec::redis::{self as r, Call, HistoryKeys, Reply};
use crate::config::DEFAULT_HISTORY_META_TTL;
use crate::hub::stream::{
    self, MemoryStream, Read, RecoverFrom, RoomStream, StreamPos, Track, Verdict,
};
use crate::hub::{BrokerMode, Outbound, Refusal, Ticket};

/// The most entries one heal reads.
pub const HEAL_READ: u64 = 1000;

/// A room's history settings, from its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOpts {
    pub size: usize,
    pub ttl: Duration,
    pub meta_ttl: Duration,
    pub force_recovery: bool,
}

impl HistoryOpts {
    /// History is on when both the size and the ttl are.
    pub fn of(o: &NamespaceOptions) -> Option<HistoryOpts> {
        (o.history_size > 0 && !o.history_ttl.is_zero()).then(|| HistoryOpts {
            size: o.history_size,
            ttl: o.history_ttl,
            meta_ttl: if o.history_meta_ttl.is_zero() {
                DEFAULT_HISTORY_META_TTL
            } else {
                o.history_meta_ttl
            },
            force_recovery: o.force_recovery,
        })
    }
}

/// What a `history` request asks for.
#[derive(Debug, Clone, Default)]
pub struct HistoryAsk {
    /// `None` or 0: no publications, only the position; negative: as many
    /// as allowed (`--history-max-publications`).
    pub limit: Option<i32>,
    /// Publications after this position (its epoch must be the stream's).
    pub since: Option<StreamPos>,
    /// Newest first.
    pub reverse: bool,
}

/// Who waits for a broker reply.
#[derive(Debug)]
pub(super) enum Waiter {
    Subscribe(Box<SubscribeWait>),
    History {
        peer: Arc<Peer>,
        id: u32,
        since: Option<StreamPos>,
    },
    Heal {
        room: Box<str>,
    },
    Presence(super::presence::PresenceWait),
    /// A server API request.
    Api(Box<super::api::ApiWait>),
}

/// A subscribe waiting for its history read.
#[derive(Debug)]
pub(super) struct SubscribeWait {
    pub peer: Arc<Peer>,
    pub id: u32,
    pub room: Box<str>,
    pub from: Option<RecoverFrom>,
    pub was_recovering: bool,
    pub expires: bool,
    pub ttl: u32,
}

/// The embedded broker's streams, one lock per room.
#[derive(Debug, Default)]
pub(super) struct Memory {
    rooms: Mutex<HashMap<Box<str>, Arc<Mutex<MemoryStream>>>>,
}

impl Memory {
    pub(super) fn stream(
        &self,
        room: &str,
        epoch: impl FnOnce() -> String,
    ) -> Arc<Mutex<MemoryStream>> {
        let mut rooms = lock(&self.rooms);
        if let Some(s) = rooms.get(room) {
            return s.clone();
        }
        if rooms.len() >= 1024 && rooms.len().is_power_of_two() {
            // Streams whose entries all aged out go, once nobody holds them
            // (their epoch with them: a later subscriber is told it could
            // not recover, which is true).
            rooms.retain(|_, s| Arc::strong_count(s) > 1 || !lock(s).is_empty());
        }
        let s = Arc::new(Mutex::new(MemoryStream::new(epoch().into())));
        rooms.insert(room.into(), s.clone());
        s
    }
}

/// A history read as the stream script returns it: `{top, epoch, entries}`.
pub(super) fn parse_read(reply: &Reply) -> Option<Read<Bytes>> {
    let parts = reply.as_array()?;
    let top = u64::try_from(parts.first()?.as_int()?).ok()?;
    let epoch = parts.get(1)?.as_str()?.to_string();
    let entries = parts
        .get(2)?
        .as_array()?
        .iter()
        .filter_map(|e| r::stream_entry(e).map(|(o, d)| (o, Bytes::copy_from_slice(d))))
        .collect();
    Some(Read {
        top,
        epoch,
        entries,
    })
}

/// Encodes broker payloads (with positions) as the JSON array of a reply's
/// publications; payloads that do not parse are left out.
pub(super) fn publications_json(payloads: &[Bytes]) -> String {
    let mut out = String::from("[");
    for p in payloads {
        let Ok(env) = envelope::parse_envelope(p) else {
            continue;
        };
        if out.len() > 1 {
            out.push(',');
        }
        let publication = Publication {
            room: &env.room,
            message: env.message.clone(),
            info: env.info.as_deref(),
            position: env.position.as_ref().map(|(o, e)| (*o, &**e)),
        };
        super::centrifugo::write_publication(&mut out, &publication);
    }
    out.push(']');
    out
}

impl Node {
    /// The history settings of `room`, if it keeps history.
    pub(super) fn history_of(&self, room: &str) -> Option<HistoryOpts> {
        let (_, options) = self.auth.policy().resolve(room).ok()?;
        HistoryOpts::of(&options)
    }

    /// A new epoch: unique to this process (the node id is) and to each
    /// stream it makes.
    pub(super) fn new_epoch(&self) -> String {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.cfg.node_id.bytes().chain(n.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:012x}", h >> 16)
    }

    pub(super) fn ticket(&self) -> Ticket {
        Ticket(self.tickets.fetch_add(1, Ordering::Relaxed))
    }

    pub(super) fn history_call(
        &self,
        room: &str,
        since: u64,
        limit: u64,
        reverse: bool,
        o: &HistoryOpts,
    ) -> Call {
        let keys = HistoryKeys::new(&self.cfg.hub.channel_prefix, room);
        Call::script(
            &r::HISTORY_SCRIPT,
            &[&keys.stream, &keys.meta],
            vec![
                Bytes::from(since.to_string()),
                Bytes::from(limit.to_string()),
                Bytes::from_static(if reverse { b"1" } else { b"0" }),
                Bytes::from(self.new_epoch()),
                Bytes::from(o.meta_ttl.as_secs().to_string()),
            ],
        )
    }

    /// Publishes into a room with history: in memory, the offset is taken
    /// and the publication delivered under the room's stream lock (so
    /// delivery order is offset order); on Redis, the publish script does
    /// both, and the publication comes back through the subscription.
    pub(super) fn publish_with_history(&self, p: &Publication<'_>, o: &HistoryOpts, now: Duration) {
        match self.cfg.mode {
            BrokerMode::Local => {
                self.append_local(p, o, now);
            }
            BrokerMode::Remote => {
                let prefix = &self.cfg.hub.channel_prefix;
                let keys = HistoryKeys::new(prefix, p.room);
                let result = HistoryKeys::result(prefix, p.room, "");
                let mut payload = envelope::encode(p);
                payload.pop();
                let call = Call::script(
                    &r::PUBLISH_SCRIPT,
                    &[&keys.stream, &keys.meta, &result],
                    vec![
                        Bytes::from(payload),
                        Bytes::from(o.size.to_string()),
                        Bytes::from(o.ttl.as_secs().max(1).to_string()),
                        Bytes::from(envelope::channel_for(prefix, p.room)),
                        Bytes::from(o.meta_ttl.as_secs().to_string()),
                        Bytes::from(self.new_epoch()),
                        Bytes::from_static(b"0"),
                    ],
                );
                self.with(|s| s.hub.broker_mut().publish(Outbound { call, ticket: None }));
            }
        }
    }

    /// The embedded broker's publish into a room with history: the offset
    /// taken and the publication delivered under the room's stream lock (so
    /// delivery order is offset order). Returns its position.
    pub(super) fn append_local(
        &self,
        p: &Publication<'_>,
        o: &HistoryOpts,
        now: Duration,
    ) -> (u64, Box<str>) {
        let stream = self.memory.stream(p.room, || self.new_epoch());
        let mut s = lock(&stream);
        let epoch: Box<str> = s.epoch.clone();
        let (offset, _) = s.append(o.size, o.ttl, now, |offset| {
            Bytes::from(envelope::encode_positioned(p, offset, &epoch))
        });
        let members = self.inspect(|h| h.members(p.room));
        if let Some(members) = members {
            let positioned = Publication {
                position: Some((offset, &epoch)),
                ..p.clone()
            };
            let mut wakes = Vec::new();
            self.deliver(&positioned, &members, &mut wakes);
            drop(s);
            wakes.into_iter().for_each(std::task::Waker::wake);
        }
        (offset, epoch)
    }

    /// A Centrifugo-protocol subscribe to a room with history: joined, and
    /// answered once the room's stream says what the client missed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn subscribe_with_history(
        &self,
        peer: &Arc<Peer>,
        wait: SubscribeWait,
        o: &HistoryOpts,
        refused: impl FnOnce(Refusal) -> Bytes,
        now: Duration,
    ) {
        let max = self.cfg.recovery_max_publications;
        match self.cfg.mode {
            BrokerMode::Local => {
                let stream = self.memory.stream(&wait.room, || self.new_epoch());
                let mut s = lock(&stream);
                self.join_then(peer, &wait.room, |joined| {
                    Some(match joined {
                        Err(e) => refused(e),
                        Ok(_) => {
                            let since = wait.from.as_ref().map_or(s.top, |f| f.offset);
                            let entries = s.read(since, max as usize + 1, false, now);
                            let read = Read {
                                top: s.top,
                                epoch: s.epoch.to_string(),
                                entries,
                            };
                            let rec = stream::recover(wait.from.as_ref(), read, Vec::new(), max);
                            lock(&peer.outbox).set_track(
                                &wait.room,
                                Track::Live {
                                    epoch: rec.pos.epoch.clone(),
                                    next: rec.pos.offset + 1,
                                },
                            );
                            self.count_recovery(&wait, rec.recovered);
                            subscribe_reply(&wait, &rec.pos, rec.recovered, &rec.publications)
                        }
                    })
                });
            }
            BrokerMode::Remote => {
                let id = peer.id;
                let reply_id = wait.id;
                let room = wait.room.clone();
                let since = wait.from.as_ref().map_or(0, |f| f.offset);
                // Nothing to read but the top when not recovering.
                let limit = if wait.from.is_some() { max + 1 } else { 0 };
                let call = self.history_call(&room, since, limit, false, o);
                let ticket = self.ticket();
                let outcome = self.with(|s| match s.hub.join(id, &room) {
                    Err(e) => Err(Some(e)),
                    Ok(_) => {
                        // Buffer live publications from now on: the read
                        // below goes after the room's subscription.
                        lock(&peer.outbox).set_track(&room, Track::Buffering(ticket.0, Vec::new()));
                        if s.hub.broker_mut().query(ticket, call) {
                            lock(&self.waiters).insert(ticket, Waiter::Subscribe(Box::new(wait)));
                            Ok(())
                        } else {
                            s.hub.leave(id, &room);
                            lock(&peer.outbox).remove_track(&room);
                            Err(None)
                        }
                    }
                });
                match outcome {
                    Ok(()) => {}
                    Err(Some(e)) => self.send(peer, refused(e)),
                    // The broker is not up: a temporary error, the SDK
                    // retries.
                    Err(None) => self.send(
                        peer,
                        Bytes::from(ErrorCode::INTERNAL.encode_reply(reply_id)),
                    ),
                }
            }
        }
    }

    fn count_recovery(&self, wait: &SubscribeWait, recovered: bool) {
        if wait.from.is_some() {
            if recovered {
                add(&self.stats.recovered, 1);
            } else {
                add(&self.stats.not_recovered, 1);
            }
        }
    }

    /// The history read of a subscribe came back (`None`: it failed).
    fn subscribe_read(&self, ticket: Ticket, wait: SubscribeWait, read: Option<Read<Bytes>>) {
        let peer = wait.peer.clone();
        let current = matches!(
            lock(&peer.outbox).track_mut(&wait.room),
            Some(Track::Buffering(t, _)) if *t == ticket.0
        );
        if !current {
            // Unsubscribed (or closed, or subscribed again) meanwhile: its
            // reply is moot.
            return;
        }
        let Some(read) = read else {
            self.leave(&peer, &wait.room);
            self.send(
                &peer,
                Bytes::from(ErrorCode::INTERNAL.encode_reply(wait.id)),
            );
            return;
        };
        // The node's own position in the room starts at the read's top if
        // it had none: a gap after it is healed.
        let member = self.with(|s| {
            let member = s.hub.is_member(peer.id, &wait.room);
            if let Some((_, stream)) = s.hub.members_and_stream(&wait.room)
                && stream.is_none()
            {
                *stream = Some(Box::new(RoomStream::new(StreamPos {
                    offset: read.top,
                    epoch: read.epoch.as_str().into(),
                })));
            }
            member
        });
        let max = self.cfg.recovery_max_publications;
        let max_out = self.cfg.hub.limits.max_outbound_bytes;
        let mut ob = lock(&peer.outbox);
        let held = match ob.track_mut(&wait.room) {
            Some(Track::Buffering(t, held)) if member && *t == ticket.0 => std::mem::take(held),
            // Unsubscribed (or closed) meanwhile: its reply is moot.
            _ => return,
        };
        let rec = stream::recover(wait.from.as_ref(), read, held, max);
        self.count_recovery(&wait, rec.recovered);
        let reply = subscribe_reply(&wait, &rec.pos, rec.recovered, &rec.publications);
        ob.set_track(
            &wait.room,
            Track::Live {
                epoch: rec.pos.epoch.clone(),
                next: rec.pos.offset + 1,
            },
        );
        let mut full = false;
        let mut wakes = Vec::new();
        for frame in std::iter::once(reply).chain(rec.then) {
            match ob.push(frame, max_out) {
                super::Pushed::Queued(w) => wakes.extend(w),
                super::Pushed::Full => full = true,
                super::Pushed::Closing => {}
            }
        }
        drop(ob);
        wakes.into_iter().for_each(std::task::Waker::wake);
        if full {
            self.drop_slow(std::slice::from_ref(&peer));
        } else if rec.lost {
            self.insufficient_state(&peer, &wait.room);
        }
    }

    /// A subscriber's position in `room` cannot continue: it leaves the
    /// room and is told (unsubscribe 2500), after which its SDK
    /// resubscribes and recovers.
    pub(super) fn insufficient_state(&self, peer: &Arc<Peer>, room: &str) {
        add(&self.stats.insufficient_state, 1);
        self.leave(peer, room);
        let push = UnsubscribeCode::INSUFFICIENT_STATE.encode_push(room);
        self.send(peer, Bytes::from(push));
    }

    /// The `history` command of a connection allowed to read it.
    pub(super) fn history_command(
        &self,
        peer: &Arc<Peer>,
        id: u32,
        room: &str,
        ask: HistoryAsk,
        o: &HistoryOpts,
        now: Duration,
    ) {
        let HistoryAsk {
            limit,
            since,
            reverse,
        } = ask;
        let cap = self.cfg.history_max_publications as u64;
        let limit = match limit {
            None | Some(0) => 0,
            Some(n) if n < 0 => cap,
            Some(n) => (n as u64).min(cap),
        };
        let from = since.as_ref().map_or(0, |s| s.offset);
        match self.cfg.mode {
            BrokerMode::Local => {
                let stream = self.memory.stream(room, || self.new_epoch());
                let mut s = lock(&stream);
                let entries = s.read(from, limit as usize, reverse, now);
                let read = Read {
                    top: s.top,
                    epoch: s.epoch.to_string(),
                    entries,
                };
                drop(s);
                self.send(peer, history_reply(id, since.as_ref(), read));
            }
            BrokerMode::Remote => {
                let ticket = self.ticket();
                let call = self.history_call(room, from, limit, reverse, o);
                let queued = self.with(|s| {
                    let q = s.hub.broker_mut().query(ticket, call);
                    if q {
                        lock(&self.waiters).insert(
                            ticket,
                            Waiter::History {
                                peer: peer.clone(),
                                id,
                                since,
                            },
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

    // ----- broker replies -----

    /// Answers to the broker's reads and ticketed publishes (`Err`: the
    /// request failed, or its link did).
    pub fn broker_replies(&self, replies: Vec<(Ticket, Result<Reply, String>)>) {
        for (ticket, reply) in replies {
            let waiter = lock(&self.waiters).remove(&ticket);
            if let Some(w) = waiter {
                self.answer_waiter(ticket, w, reply.ok());
            }
        }
    }

    /// Tickets that will get no answer (dropped with a failing link).
    pub(super) fn fail_tickets(&self, tickets: Vec<Ticket>) {
        for t in tickets {
            let waiter = lock(&self.waiters).remove(&t);
            if let Some(w) = waiter {
                self.answer_waiter(t, w, None);
            }
        }
    }

    fn answer_waiter(&self, ticket: Ticket, w: Waiter, reply: Option<Reply>) {
        let w = match w {
            Waiter::Presence(p) => {
                let reply = reply.filter(|r| !matches!(r, Reply::Error(_)));
                return self.presence_answer(p, reply);
            }
            Waiter::Api(api) => return self.api_broker_reply(*api, reply),
            w => w,
        };
        let read = reply
            .as_ref()
            .filter(|r| !matches!(r, Reply::Error(_)))
            .and_then(parse_read);
        match w {
            Waiter::Subscribe(wait) => self.subscribe_read(ticket, *wait, read),
            Waiter::History { peer, id, since } => {
                let frame = match read {
                    Some(read) => history_reply(id, since.as_ref(), read),
                    None => Bytes::from(ErrorCode::INTERNAL.encode_reply(id)),
                };
                self.send(&peer, frame);
            }
            Waiter::Heal { room } => self.healed(&room, read),
            Waiter::Presence(_) => unreachable!("answered above"),
            Waiter::Api(_) => unreachable!("answered above"),
        }
    }

    // ----- healing -----

    /// Starts healing `room` from `since` (its stream's state is already
    /// healing). Called under the hub's lock.
    pub(super) fn queue_heal(
        &self,
        s: &mut super::Shared,
        room: &str,
        since: u64,
        limit: u64,
    ) -> bool {
        let Some(o) = self.history_of(room) else {
            return false;
        };
        let ticket = self.ticket();
        let call = self.history_call(room, since, limit, false, &o);
        if s.hub.broker_mut().query(ticket, call) {
            add(&self.stats.heals, 1);
            lock(&self.waiters).insert(ticket, Waiter::Heal { room: room.into() });
            true
        } else {
            false
        }
    }

    /// The session came up again: every room heals from the node's
    /// position. Called under the hub's lock.
    pub(super) fn heal_all(&self, s: &mut super::Shared) -> Vec<(Box<str>, Vec<Bytes>)> {
        if self.cfg.mode == BrokerMode::Local {
            return Vec::new();
        }
        let rooms: Vec<(Box<str>, u64)> = s
            .hub
            .streams_mut()
            .filter_map(|(room, st)| st.start_heal().map(|since| (room.into(), since)))
            .collect();
        let mut undo = Vec::new();
        for (room, since) in rooms {
            if !self.queue_heal(s, &room, since, HEAL_READ)
                && let Some((_, Some(st))) = s.hub.members_and_stream(&room)
            {
                undo.push((room, st.abandon().deliver));
            }
        }
        undo
    }

    /// A heal's read came back: deliver, in order, what was missed and what
    /// was held meanwhile.
    fn healed(&self, room: &str, read: Option<Read<Bytes>>) {
        let (members, healed) = match self.with(|s| {
            let up = s.hub.broker().is_up();
            let (members, stream) = s.hub.members_and_stream(room)?;
            let st = stream.as_mut()?;
            if read.is_none() && !up {
                // The link failed under the read: read again when it is
                // back, still holding what arrives.
                st.wait_for_link();
                return None;
            }
            let mut healed = st.healed(read.as_ref().map(|r| {
                (
                    r.epoch.as_str(),
                    r.entries.iter().map(|(o, p)| (*o, p.clone())).collect(),
                )
            }));
            self.heal_again(s, room, &mut healed);
            Some((members, healed))
        }) {
            Some(x) => x,
            None => return,
        };
        add(&self.stats.history_gaps, healed.missing);
        self.release(room, &members, healed.deliver);
    }

    /// Delivers what a heal released, then what arrived meanwhile, until
    /// the room is live again.
    pub(super) fn release(
        &self,
        room: &str,
        members: &super::Members<Arc<Peer>>,
        mut payloads: Vec<Bytes>,
    ) {
        let mut members = members.clone();
        while !payloads.is_empty() {
            self.deliver_payloads(room, &members, payloads);
            let next = self.with(|s| {
                let (m, stream) = s.hub.members_and_stream(room)?;
                let mut h = stream.as_mut()?.drained();
                self.heal_again(s, room, &mut h);
                Some((m, h))
            });
            let Some((m, h)) = next else { return };
            add(&self.stats.history_gaps, h.missing);
            members = m;
            payloads = h.deliver;
        }
    }

    /// What a heal delivered showed another gap past its read: read again
    /// (or, if the read cannot go out, wait for the link, or give up and
    /// deliver what is held). Called under the hub's lock.
    fn heal_again(&self, s: &mut super::Shared, room: &str, h: &mut stream::Healed) {
        let Some(since) = h.again.take() else { return };
        if self.queue_heal(s, room, since, HEAL_READ) {
            return;
        }
        let up = s.hub.broker().is_up();
        if let Some((_, Some(st))) = s.hub.members_and_stream(room) {
            if up {
                let rest = st.abandon();
                h.deliver.extend(rest.deliver);
                h.missing += rest.missing;
            } else {
                st.wait_for_link();
            }
        }
    }

    /// Delivers broker payloads of one room, in order.
    pub(super) fn deliver_payloads(
        &self,
        room: &str,
        members: &super::Members<Arc<Peer>>,
        payloads: Vec<Bytes>,
    ) {
        let mut wakes = Vec::new();
        for p in &payloads {
            let Ok(env) = envelope::parse_envelope(p) else {
                continue;
            };
            if *env.room != *room {
                continue;
            }
            let publication = Publication {
                room,
                message: env.message.clone(),
                info: env.info.as_deref(),
                position: env.position.as_ref().map(|(o, e)| (*o, &**e)),
            };
            self.deliver(&publication, members, &mut wakes);
        }
        wakes.into_iter().for_each(std::task::Waker::wake);
    }

    /// What the node does with a positioned broker publication for a room
    /// it has members in. Called under the hub's lock; returns whether to
    /// deliver it now, and payloads an abandoned heal releases first.
    pub(super) fn observe(
        &self,
        s: &mut super::Shared,
        room: &str,
        offset: u64,
        epoch: &str,
        payload: &Bytes,
    ) -> (bool, Vec<Bytes>) {
        let Some((_, stream)) = s.hub.members_and_stream(room) else {
            return (false, Vec::new());
        };
        let st = stream.get_or_insert_with(|| {
            Box::new(RoomStream::new(StreamPos {
                offset: offset - 1,
                epoch: epoch.into(),
            }))
        });
        match st.observe(offset, epoch, payload, HEAL_READ) {
            Verdict::Deliver | Verdict::NewEpoch => (true, Vec::new()),
            Verdict::Duplicate | Verdict::Buffered => (false, Vec::new()),
            Verdict::Overflow => (false, st.abandon().deliver),
            Verdict::Heal { since, limit } => {
                if !self.queue_heal(s, room, since, limit) {
                    let up = s.hub.broker().is_up();
                    if let Some((_, Some(st))) = s.hub.members_and_stream(room) {
                        if up {
                            // Up but the read was refused (too many
                            // queued): deliver what is here.
                            return (false, st.abandon().deliver);
                        }
                        // The link is being checked: read once it is up.
                        st.wait_for_link();
                    }
                }
                (false, Vec::new())
            }
        }
    }
}

/// The subscribe reply for a stream position.
fn subscribe_reply(
    wait: &SubscribeWait,
    pos: &StreamPos,
    recovered: bool,
    publications: &[Bytes],
) -> Bytes {
    let raw = publications_json(publications);
    Bytes::from(cf::encode_subscribe_reply(
        wait.id,
        &cf::SubscribeResult {
            expires: wait.expires,
            ttl: wait.ttl,
            recoverable: true,
            positioned: true,
            epoch: &pos.epoch,
            offset: pos.offset,
            recovered,
            was_recovering: wait.was_recovering,
            raw_publications: Some(&raw),
            ..cf::SubscribeResult::default()
        },
    ))
}

/// The history reply, or 112 when `since` names another epoch.
fn history_reply(id: u32, since: Option<&StreamPos>, read: Read<Bytes>) -> Bytes {
    if let Some(since) = since
        && !since.epoch.is_empty()
        && *since.epoch != *read.epoch
    {
        return Bytes::from(ErrorCode::UNRECOVERABLE_POSITION.encode_reply(id));
    }
    let payloads: Vec<Bytes> = read.entries.into_iter().map(|(_, p)| p).collect();
    let raw = publications_json(&payloads);
    Bytes::from(cf::encode_history_reply(
        id,
        &cf::HistoryResult {
            publications: &[],
            epoch: &read.epoch,
            offset: read.top,
            raw_publications: Some(&raw),
        },
    ))
}
