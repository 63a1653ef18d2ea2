//! Room streams: offsets and epochs, and every decision made on them.
//!
//! A room whose namespace keeps history has a **stream**: each publication
//! gets the next offset of the room, and the stream has an **epoch**, a
//! name that changes whenever the stream is lost and made anew (a Redis
//! restarted without persistence, an embedded node restarted), so that an
//! offset from an older stream is never trusted.
//!
//! Three positions are kept, each with its own policy here:
//!
//! - the **node's** position in each room ([`RoomStream`]): what it last
//!   delivered. A publication past it means one was lost between Redis and
//!   the node; the node then *heals*: it holds the room's deliveries, reads
//!   the missed range from the stream, and delivers it all in order, to
//!   every member, whatever protocol they speak. After the broker link
//!   comes back, every room heals from its position.
//! - each **subscriber's** position ([`Track`]): a gap the node could not
//!   heal reaches a subscriber as a position it cannot continue from, and
//!   it is told (the Centrifugo protocol's unsubscribe 2500, after which
//!   its SDK recovers); a late duplicate is dropped.
//! - a **recovering subscriber**'s: its live publications are buffered
//!   while history is read, then [`recover`] decides, from the client's
//!   position and what was read, whether continuity is certain
//!   (`recovered: true` with every missed publication) or not
//!   (`recovered: false` with none, never a partial recovery).
//!
//! [`MemoryStream`] is the embedded broker's stream, with the same
//! semantics as the Redis one.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

/// A stream position: the offset of the last publication had, in an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamPos {
    pub offset: u64,
    pub epoch: Box<str>,
}

/// What the node does with a positioned publication for a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The next one: deliver it.
    Deliver,
    /// Already delivered (a late duplicate): drop it.
    Duplicate,
    /// The room is healing: the publication was buffered.
    Buffered,
    /// Publications between the node's position and this one were lost:
    /// this one is buffered; read the stream after `since` (up to `limit`
    /// entries) and call [`RoomStream::healed`].
    Heal { since: u64, limit: u64 },
    /// A different epoch: the stream was made anew, and this is its first
    /// publication here. Deliver it; subscribers of the old epoch cannot
    /// continue.
    NewEpoch,
    /// The heal holds too much: it was buffered, and the heal is given up;
    /// deliver what [`RoomStream::abandon`] returns.
    Overflow,
}

/// The most publications a room holds while it heals; past it the heal
/// is abandoned and what is held is delivered as it is.
pub const HEAL_BUFFER: usize = 10_000;

/// The node's position in one room, and what it holds while healing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomStream {
    pub pos: StreamPos,
    /// While healing: the publications that arrived meanwhile (offset,
    /// epoch, broker payload), in arrival order.
    healing: Option<Vec<(u64, Box<str>, Bytes)>>,
    /// Healing, but the read could not go out (the link is not up): the
    /// next [`RoomStream::start_heal`] sends it.
    waiting: bool,
}

/// What a heal delivers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healed {
    /// The payloads to deliver now, oldest first.
    pub deliver: Vec<Bytes>,
    /// Offsets that could not be had (trimmed from history, or the read
    /// failed): subscribers that need them are told.
    pub missing: u64,
    /// What arrived shows another gap, after what the read covered: read
    /// again after this offset (the rest is still held).
    pub again: Option<u64>,
}

impl RoomStream {
    /// A room first seen at `pos`.
    pub fn new(pos: StreamPos) -> RoomStream {
        RoomStream {
            pos,
            healing: None,
            waiting: false,
        }
    }

    pub fn is_healing(&self) -> bool {
        self.healing.is_some()
    }

    /// A publication at `offset` in `epoch` arrived; `payload` is kept if
    /// it must wait. `max_read`: the most entries one heal reads.
    pub fn observe(&mut self, offset: u64, epoch: &str, payload: &Bytes, max_read: u64) -> Verdict {
        if let Some(held) = &mut self.healing {
            held.push((offset, epoch.into(), payload.clone()));
            return if held.len() > HEAL_BUFFER {
                Verdict::Overflow
            } else {
                Verdict::Buffered
            };
        }
        if *self.pos.epoch != *epoch {
            self.pos = StreamPos {
                offset,
                epoch: epoch.into(),
            };
            return Verdict::NewEpoch;
        }
        if offset <= self.pos.offset {
            return Verdict::Duplicate;
        }
        if offset == self.pos.offset + 1 {
            self.pos.offset = offset;
            return Verdict::Deliver;
        }
        let since = self.pos.offset;
        self.healing = Some(vec![(offset, epoch.into(), payload.clone())]);
        // Read as much as a heal may: what is lost after this one shows in
        // the same read.
        Verdict::Heal {
            since,
            limit: max_read.max(1),
        }
    }

    /// Starts a heal from the node's position (the broker link came back):
    /// read the stream after the returned offset.
    pub fn start_heal(&mut self) -> Option<u64> {
        if self.healing.is_some() {
            if std::mem::take(&mut self.waiting) {
                return Some(self.pos.offset);
            }
            return None;
        }
        self.healing = Some(Vec::new());
        Some(self.pos.offset)
    }

    /// The heal's read cannot go out now (the link is down or not yet
    /// checked): keep holding what arrives until [`RoomStream::start_heal`]
    /// when the link is up. What is held stays bounded (`Overflow`).
    pub fn wait_for_link(&mut self) {
        if self.healing.is_none() {
            self.healing = Some(Vec::new());
        }
        self.waiting = true;
    }

    /// The heal's read came back: `read` is the stream's epoch and entries
    /// (offset, payload) after the position, oldest first; `None` if the
    /// read failed. Returns what to deliver, in order.
    ///
    /// While that is delivered the room still holds what arrives: once
    /// delivered, call [`RoomStream::drained`] until it returns nothing,
    /// so nothing newer overtakes what the heal delivers.
    pub fn healed(&mut self, read: Option<(&str, Vec<(u64, Bytes)>)>) -> Healed {
        // Another gap past the read is read again only if this read was of
        // our stream and found something: a read of another epoch, or one
        // that found nothing, would find the same again.
        let rereads = read
            .as_ref()
            .is_some_and(|(epoch, entries)| **epoch == *self.pos.epoch && !entries.is_empty());
        self.settle(read, rereads)
    }

    fn settle(&mut self, read: Option<(&str, Vec<(u64, Bytes)>)>, rereads: bool) -> Healed {
        let h = self.merge(read, rereads);
        if h.again.is_none() {
            self.healing = (!h.deliver.is_empty()).then(Vec::new);
        }
        h
    }

    /// What arrived while the last batch was delivered; when nothing did,
    /// the room is live again. A gap in it is healed again (`again`).
    pub fn drained(&mut self) -> Healed {
        if self.healing.as_ref().is_none_or(Vec::is_empty) {
            self.healing = None;
            return Healed {
                deliver: Vec::new(),
                missing: 0,
                again: None,
            };
        }
        self.settle(None, true)
    }

    /// Merges a read (if any) with what is held. With `rereads`, a gap in
    /// what is held past the read stops the merge there: the rest stays
    /// held and `again` says where to read from.
    fn merge(&mut self, read: Option<(&str, Vec<(u64, Bytes)>)>, rereads: bool) -> Healed {
        self.waiting = false;
        let held = self.healing.take().unwrap_or_default();
        let mut deliver = Vec::new();
        let mut missing = 0;
        let mut next = self.pos.offset + 1;
        if let Some((epoch, entries)) = read
            && *self.pos.epoch == *epoch
        {
            for (offset, payload) in entries {
                if offset < next {
                    continue;
                }
                missing += offset - next;
                deliver.push(payload);
                next = offset + 1;
            }
        }
        let mut rest = Vec::new();
        for (offset, epoch, payload) in held {
            if !rest.is_empty() {
                rest.push((offset, epoch, payload));
                continue;
            }
            if *epoch != *self.pos.epoch {
                // The stream was made anew meanwhile: start from there.
                self.pos.epoch = epoch.clone();
                next = offset;
            }
            if offset < next {
                continue;
            }
            if offset > next && rereads {
                rest.push((offset, epoch, payload));
                continue;
            }
            missing += offset - next;
            deliver.push(payload);
            next = offset + 1;
        }
        self.pos.offset = next - 1;
        let again = (!rest.is_empty()).then_some(self.pos.offset);
        if again.is_some() {
            self.healing = Some(rest);
        }
        Healed {
            deliver,
            missing,
            again,
        }
    }

    /// Gives up a heal (it holds too much, or cannot read): what is held
    /// is delivered as it is (then [`RoomStream::drained`]), and the
    /// position moves past it.
    pub fn abandon(&mut self) -> Healed {
        self.settle(None, false)
    }
}

/// A subscriber's position in a room with history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Track {
    /// Subscribing: its history is being read (by the read numbered
    /// first: a read of an earlier subscribe of the same room answers
    /// nothing); live publications wait here (offset, epoch, encoded
    /// frame).
    Buffering(u64, Vec<(u64, Box<str>, Bytes)>),
    /// Live: the next offset it must receive, in `epoch`.
    Live { epoch: Box<str>, next: u64 },
}

/// What to do with a positioned publication for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send it.
    Send,
    /// Drop it (a duplicate, or buffered while subscribing).
    Skip,
    /// The subscriber's position cannot continue (a gap, or another
    /// epoch): it must resubscribe.
    Lost,
}

/// The most publications a subscriber holds while its history is read;
/// past it the subscribe fails as insufficient state.
pub const SUBSCRIBE_BUFFER: usize = 1_000;

impl Track {
    /// A publication at `offset` in `epoch`, encoded as `frame`, for this
    /// subscriber.
    pub fn step(&mut self, offset: u64, epoch: &str, frame: &Bytes) -> Step {
        match self {
            Track::Buffering(_, held) => {
                if held.len() >= SUBSCRIBE_BUFFER {
                    return Step::Lost;
                }
                held.push((offset, epoch.into(), frame.clone()));
                Step::Skip
            }
            Track::Live { epoch: e, next } => {
                if **e != *epoch || offset > *next {
                    Step::Lost
                } else if offset < *next {
                    Step::Skip
                } else {
                    *next += 1;
                    Step::Send
                }
            }
        }
    }
}

/// A client's request to recover, from its subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverFrom {
    pub offset: u64,
    pub epoch: String,
}

/// A history read as the recovery sees it: the stream's top and epoch at
/// the read, and the entries after the client's offset (oldest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read<T> {
    pub top: u64,
    pub epoch: String,
    pub entries: Vec<(u64, T)>,
}

/// The outcome of a subscribe with a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery<T> {
    /// Every missed publication is in `publications` (only when asked).
    pub recovered: bool,
    /// The missed publications, oldest first; empty unless `recovered`.
    pub publications: Vec<T>,
    /// The subscriber's position once they are delivered.
    pub pos: StreamPos,
    /// Buffered live frames to send after the reply, in order.
    pub then: Vec<Bytes>,
    /// A buffered live publication could not continue from the position:
    /// the subscription is lost at once (insufficient state).
    pub lost: bool,
}

/// Decides a subscribe: `from` is the client's position if it asked to
/// recover; `read` what the stream holds after it (read after the node's
/// subscription was confirmed, so nothing published since is missing from
/// `read` and `held` together); `held` the live publications buffered
/// meanwhile; `max`: the most publications a recovery may carry.
///
/// `recovered` is true only when continuity is certain: the same epoch,
/// no more than `max` missed, and the entries run without a hole from the
/// client's offset to the top.
pub fn recover<T>(
    from: Option<&RecoverFrom>,
    read: Read<T>,
    held: Vec<(u64, Box<str>, Bytes)>,
    max: u64,
) -> Recovery<T> {
    let Read {
        top,
        epoch,
        entries,
    } = read;
    let mut recovered = false;
    let mut publications = Vec::new();
    let mut last = top;
    if let Some(from) = from
        && from.epoch == epoch
        && from.offset <= top
        && top - from.offset <= max
    {
        let mut next = from.offset + 1;
        let mut ok = true;
        let mut pubs = Vec::new();
        for (offset, p) in entries {
            if offset < next {
                continue;
            }
            if offset != next {
                ok = false;
                break;
            }
            pubs.push(p);
            next += 1;
        }
        if ok && next == top + 1 {
            recovered = true;
            publications = pubs;
        }
    }
    // Live publications held meanwhile continue from the top.
    let mut then = Vec::new();
    let mut lost = false;
    for (offset, e, frame) in held {
        if *e != *epoch {
            lost = true;
            break;
        }
        if offset <= last {
            continue;
        }
        if offset != last + 1 {
            lost = true;
            break;
        }
        then.push(frame);
        last = offset;
    }
    Recovery {
        recovered,
        publications,
        pos: StreamPos {
            offset: last,
            epoch: epoch.into(),
        },
        then,
        lost,
    }
}

/// The embedded broker's stream of one room: the same semantics as the
/// Redis stream (bounded by size and age, an epoch per life), in memory.
#[derive(Debug)]
pub struct MemoryStream {
    pub epoch: Box<str>,
    pub top: u64,
    /// (offset, payload, kept until), oldest first.
    entries: VecDeque<(u64, Bytes, Duration)>,
}

impl MemoryStream {
    pub fn new(epoch: Box<str>) -> MemoryStream {
        MemoryStream {
            epoch,
            top: 0,
            entries: VecDeque::new(),
        }
    }

    /// Appends a publication made by `make(offset)`: capped at `size`
    /// entries, each kept for `ttl`.
    pub fn append(
        &mut self,
        size: usize,
        ttl: Duration,
        now: Duration,
        make: impl FnOnce(u64) -> Bytes,
    ) -> (u64, Bytes) {
        self.expire(now);
        self.top += 1;
        let payload = make(self.top);
        self.entries
            .push_back((self.top, payload.clone(), now + ttl));
        while self.entries.len() > size.max(1) {
            self.entries.pop_front();
        }
        (self.top, payload)
    }

    /// Entries after `since`, oldest first (at most `limit`; 0: none), or
    /// with `reverse` newest first, before `since` when it is not 0.
    pub fn read(
        &mut self,
        since: u64,
        limit: usize,
        reverse: bool,
        now: Duration,
    ) -> Vec<(u64, Bytes)> {
        self.expire(now);
        let pick = |e: &(u64, Bytes, Duration)| (e.0, e.1.clone());
        if reverse {
            self.entries
                .iter()
                .rev()
                .filter(|e| since == 0 || e.0 < since)
                .take(limit)
                .map(pick)
                .collect()
        } else {
            self.entries
                .iter()
                .filter(|e| e.0 > since)
                .take(limit)
                .map(pick)
                .collect()
        }
    }

    /// Removes every entry (offsets go on).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    fn expire(&mut self, now: Duration) {
        while self.entries.front().is_some_and(|e| e.2 <= now) {
            self.entries.pop_front();
        }
    }

    /// Nothing is kept and nothing will be asked of it until `now`.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn pos(offset: u64, epoch: &str) -> StreamPos {
        StreamPos {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn the_node_heals_a_gap_in_order() {
        let mut r = RoomStream::new(pos(3, "e"));
        assert_eq!(r.observe(4, "e", &b("4"), 300), Verdict::Deliver);
        assert_eq!(r.observe(4, "e", &b("4"), 300), Verdict::Duplicate);
        assert_eq!(
            r.observe(7, "e", &b("7"), 300),
            Verdict::Heal {
                since: 4,
                limit: 300
            }
        );
        assert_eq!(r.observe(8, "e", &b("8"), 300), Verdict::Buffered);
        let h = r.healed(Some(("e", vec![(5, b("5")), (6, b("6")), (7, b("7"))])));
        assert_eq!(h.deliver, vec![b("5"), b("6"), b("7"), b("8")]);
        assert_eq!(h.missing, 0);
        assert_eq!(r.pos, pos(8, "e"));
        // While that is delivered, what arrives waits its turn.
        assert_eq!(r.observe(9, "e", &b("9"), 300), Verdict::Buffered);
        assert_eq!(r.drained().deliver, vec![b("9")]);
        assert!(r.drained().deliver.is_empty());
        assert!(!r.is_healing());
        assert_eq!(r.observe(10, "e", &b("10"), 300), Verdict::Deliver);
    }

    #[test]
    fn a_gap_seen_before_the_link_is_up_waits_for_it_and_loses_nothing() {
        let mut r = RoomStream::new(pos(2, "e"));
        assert!(matches!(
            r.observe(5, "e", &b("5"), 300),
            Verdict::Heal { since: 2, .. }
        ));
        // The read could not go out: hold on.
        r.wait_for_link();
        assert_eq!(r.observe(6, "e", &b("6"), 300), Verdict::Buffered);
        // The link is up: the heal reads from the position, once.
        assert_eq!(r.start_heal(), Some(2));
        assert_eq!(r.start_heal(), None);
        let h = r.healed(Some(("e", vec![(3, b("3")), (4, b("4")), (5, b("5"))])));
        assert_eq!(h.deliver, vec![b("3"), b("4"), b("5"), b("6")]);
        assert_eq!(h.missing, 0);
        assert!(r.drained().deliver.is_empty());
        assert_eq!(r.observe(7, "e", &b("7"), 300), Verdict::Deliver);
    }

    #[test]
    fn a_heal_that_cannot_read_delivers_what_it_holds_and_counts_the_hole() {
        let mut r = RoomStream::new(pos(1, "e"));
        assert!(matches!(
            r.observe(5, "e", &b("5"), 300),
            Verdict::Heal { .. }
        ));
        let h = r.healed(None);
        assert_eq!(h.deliver, vec![b("5")]);
        assert_eq!(h.missing, 3);
        // Trimmed history: what is there is delivered, the rest counted.
        let mut r = RoomStream::new(pos(1, "e"));
        r.observe(5, "e", &b("5"), 300);
        let h = r.healed(Some(("e", vec![(4, b("4")), (5, b("5"))])));
        assert_eq!(h.deliver, vec![b("4"), b("5")]);
        assert_eq!(h.missing, 2);
        // Another epoch at the read: nothing of it is trusted.
        let mut r = RoomStream::new(pos(1, "e"));
        r.observe(3, "e", &b("3"), 300);
        let h = r.healed(Some(("x", vec![(2, b("x2"))])));
        assert_eq!(h.deliver, vec![b("3")]);
    }

    #[test]
    fn a_new_epoch_restarts_the_position() {
        let mut r = RoomStream::new(pos(10, "e"));
        assert_eq!(r.observe(1, "f", &b("1"), 300), Verdict::NewEpoch);
        assert_eq!(r.observe(2, "f", &b("2"), 300), Verdict::Deliver);
    }

    #[test]
    fn after_a_reconnect_the_room_heals_from_its_position() {
        let mut r = RoomStream::new(pos(2, "e"));
        assert_eq!(r.start_heal(), Some(2));
        assert_eq!(r.start_heal(), None);
        assert_eq!(r.observe(5, "e", &b("5"), 300), Verdict::Buffered);
        let h = r.healed(Some(("e", vec![(3, b("3")), (4, b("4")), (5, b("5"))])));
        assert_eq!(h.deliver, vec![b("3"), b("4"), b("5")]);
        assert_eq!(r.pos, pos(5, "e"));
        assert!(r.drained().deliver.is_empty());
        // A heal that read nothing new leaves the room live at once.
        assert_eq!(r.start_heal(), Some(5));
        assert!(r.healed(Some(("e", vec![]))).deliver.is_empty());
        assert!(!r.is_healing());
    }

    #[test]
    fn a_subscriber_drops_duplicates_and_is_told_of_gaps() {
        let mut t = Track::Live {
            epoch: "e".into(),
            next: 5,
        };
        assert_eq!(t.step(4, "e", &b("")), Step::Skip);
        assert_eq!(t.step(5, "e", &b("")), Step::Send);
        assert_eq!(t.step(7, "e", &b("")), Step::Lost);
        assert_eq!(t.step(6, "x", &b("")), Step::Lost);
    }

    fn read(top: u64, epoch: &str, offsets: &[u64]) -> Read<u64> {
        Read {
            top,
            epoch: epoch.into(),
            entries: offsets.iter().map(|&o| (o, o)).collect(),
        }
    }

    fn from(offset: u64, epoch: &str) -> RecoverFrom {
        RecoverFrom {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn recovery_is_said_only_over_certain_continuity() {
        let r = recover(Some(&from(3, "e")), read(5, "e", &[4, 5]), vec![], 300);
        assert!(r.recovered);
        assert_eq!(r.publications, vec![4, 5]);
        assert_eq!(r.pos, pos(5, "e"));
        // Nothing missed.
        assert!(recover(Some(&from(5, "e")), read(5, "e", &[]), vec![], 300).recovered);
        // Another epoch, a hole, too many, a position past the top.
        for r in [
            recover(Some(&from(3, "x")), read(5, "e", &[4, 5]), vec![], 300),
            recover(Some(&from(3, "e")), read(5, "e", &[5]), vec![], 300),
            recover(Some(&from(3, "e")), read(5, "e", &[4, 5]), vec![], 1),
            recover(Some(&from(9, "e")), read(5, "e", &[]), vec![], 300),
        ] {
            assert!(!r.recovered);
            assert!(r.publications.is_empty(), "never a partial recovery");
            assert_eq!(r.pos, pos(5, "e"));
        }
        // Not asked.
        let r = recover(None, read(5, "e", &[]), vec![], 300);
        assert!(!r.recovered);
    }

    #[test]
    fn publications_held_while_reading_merge_without_loss_or_repeat() {
        // Landed before the read (in it and held), during, and after.
        let held = vec![
            (5, "e".into(), b("5")),
            (6, "e".into(), b("6")),
            (7, "e".into(), b("7")),
        ];
        let r = recover(Some(&from(3, "e")), read(5, "e", &[4, 5]), held, 300);
        assert!(r.recovered);
        assert_eq!(r.publications, vec![4, 5]);
        assert_eq!(r.then, vec![b("6"), b("7")]);
        assert_eq!(r.pos, pos(7, "e"));
        assert!(!r.lost);
        // A held publication past a hole: lost at once.
        let held = vec![(8, "e".into(), b("8"))];
        let r = recover(Some(&from(3, "e")), read(5, "e", &[4, 5]), held, 300);
        assert!(r.lost);
    }

    #[test]
    fn the_memory_stream_is_capped_and_ages() {
        let s = Duration::from_secs(1);
        let mut m = MemoryStream::new("e".into());
        for i in 0..5 {
            m.append(3, 10 * s, i * s, |o| b(&o.to_string()));
        }
        assert_eq!(m.top, 5);
        let got: Vec<u64> = m.read(0, 10, false, 5 * s).iter().map(|e| e.0).collect();
        assert_eq!(got, vec![3, 4, 5]);
        let got: Vec<u64> = m.read(5, 2, true, 5 * s).iter().map(|e| e.0).collect();
        assert_eq!(got, vec![4, 3]);
        assert!(m.read(0, 10, false, 100 * s).is_empty());
        assert_eq!(m.top, 5, "offsets survive their entries");
    }
}
