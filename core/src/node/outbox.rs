//! A connection's outbox: the frames queued for its writer, bounded in
//! bytes, and how the connection ends. Plain data with its policy; the node
//! keeps one per connection behind a lock of its own, so that delivering to
//! one connection never waits for another.

use std::collections::VecDeque;
use std::task::{Poll, Waker};

use bytes::Bytes;

use crate::hub::stream::Track;

/// The most a connection's writer takes from its outbox at once (or one
/// frame, if larger): while the socket is full, what the writer holds beyond
/// the outbound limit stays this small.
pub const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// How a connection ends: what the runtime does with the socket once the
/// connection's reading and writing stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Send a close frame with this code and reason, then end the stream
    /// (FIN) and read until the client closes, all within the shutdown grace.
    /// `abort` (a slow consumer): one attempt at the close frame of at most
    /// [`ABORT_CLOSE_WAIT`](crate::ABORT_CLOSE_WAIT), then let the socket go
    /// with its unsent data discarded (`SO_LINGER` 0).
    Close {
        code: u16,
        reason: String,
        abort: bool,
    },
    /// The client started the close handshake: echo its close frame (RFC
    /// 6455 §5.5.1; a code it may not send is answered with 1002), flush
    /// it, then end the stream.
    Answer,
    /// The transport is gone, or the close was already sent: let the socket go.
    Release,
}

/// What a connection's writer must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// Write these text frames, in order, then flush once. At most
    /// [`WRITE_BATCH_BYTES`] (or one larger frame); poll again for the rest.
    Frames(Vec<Bytes>),
    /// Send a WebSocket ping (keepalive), then poll again.
    Ping,
    /// Stop writing and end the connection this way.
    Finish(Finish),
}

/// What became of a frame offered to an outbox.
#[derive(Debug)]
pub enum Pushed {
    /// Queued; wake this writer (after releasing the outbox).
    Queued(Option<Waker>),
    /// It does not fit: the connection is a slow consumer.
    Full,
    /// The connection is closing; the frame is dropped.
    Closing,
}

/// A connection's queue. See the module docs.
#[derive(Debug, Default)]
pub struct Outbox {
    frames: VecDeque<Bytes>,
    bytes: usize,
    ping: bool,
    close: Option<(u16, String)>,
    abort: bool,
    close_taken: bool,
    waker: Option<Waker>,
    abort_waker: Option<Waker>,
    /// The connection's positions in the rooms with history it is in
    /// (kept here, under the outbox's lock, because delivery decides on
    /// them as it queues). Boxed: most connections have none.
    tracks: Option<Box<Tracks>>,
}

/// A connection's positions, by room.
type Tracks = Vec<(Box<str>, Track)>;

impl Outbox {
    /// Offers a frame. It fits while the queue holds less than `max` bytes
    /// unread, whatever its own size: a slow consumer is one that does not
    /// read, never one that was sent a big frame. So a queue holds at most
    /// `max` bytes plus one frame (frames are bounded by the node's limits,
    /// which start-up checks against `max`).
    pub fn push(&mut self, frame: Bytes, max: usize) -> Pushed {
        if self.close.is_some() {
            return Pushed::Closing;
        }
        if self.bytes >= max {
            return Pushed::Full;
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Pushed::Queued(if self.frames.len() == 1 {
            self.waker.take()
        } else {
            None
        })
    }

    /// Asks the writer for a WebSocket ping.
    pub fn ping(&mut self) -> Option<Waker> {
        if self.close.is_some() {
            return None;
        }
        self.ping = true;
        self.waker.take()
    }

    /// Ends the connection with this close. `abort` (a slow consumer): what
    /// is queued is discarded and the abort watch fires. Returns the wakers
    /// to wake once the outbox is released; a second close is ignored.
    pub fn close(&mut self, code: u16, reason: String, abort: bool) -> [Option<Waker>; 2] {
        if self.close.is_some() {
            return [None, None];
        }
        if abort {
            self.frames = VecDeque::new();
            self.bytes = 0;
            self.abort = true;
        }
        self.close = Some((code, reason));
        [
            self.waker.take(),
            abort.then(|| self.abort_waker.take()).flatten(),
        ]
    }

    pub fn is_closing(&self) -> bool {
        self.close.is_some()
    }

    /// The connection's position in `room`, if it tracks one.
    pub fn track_mut(&mut self, room: &str) -> Option<&mut Track> {
        self.tracks
            .as_mut()?
            .iter_mut()
            .find(|(r, _)| **r == *room)
            .map(|(_, t)| t)
    }

    /// Sets (or replaces) the connection's position in `room`.
    pub fn set_track(&mut self, room: &str, track: Track) {
        if let Some(t) = self.track_mut(room) {
            *t = track;
            return;
        }
        self.tracks
            .get_or_insert_with(Default::default)
            .push((room.into(), track));
    }

    /// Forgets the connection's position in `room`, returning it.
    pub fn remove_track(&mut self, room: &str) -> Option<Track> {
        let tracks = self.tracks.as_mut()?;
        let i = tracks.iter().position(|(r, _)| **r == *room)?;
        let (_, t) = tracks.swap_remove(i);
        if tracks.is_empty() {
            self.tracks = None;
        }
        Some(t)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn frames(&self) -> impl Iterator<Item = &Bytes> {
        self.frames.iter()
    }

    pub fn queued_close(&self) -> Option<(u16, &str)> {
        self.close.as_ref().map(|(c, r)| (*c, r.as_str()))
    }

    /// A slow consumer's end: its close, carried out at once.
    pub fn abort_close(&self) -> Option<Finish> {
        match &self.close {
            Some((code, reason)) if self.abort => Some(Finish::Close {
                code: *code,
                reason: reason.clone(),
                abort: true,
            }),
            _ => None,
        }
    }

    /// The writer's next work, or `Pending` after registering `waker`.
    pub fn take(&mut self, waker: &Waker) -> Poll<Outgoing> {
        if self.ping {
            self.ping = false;
            return Poll::Ready(Outgoing::Ping);
        }
        if !self.frames.is_empty() {
            // Take at most a batch, so that what the writer holds while the
            // socket is full stays small: the rest is still counted against
            // the outbound limit.
            if self.bytes <= WRITE_BATCH_BYTES {
                self.bytes = 0;
                let frames = Vec::from(std::mem::take(&mut self.frames));
                return Poll::Ready(Outgoing::Frames(frames));
            }
            let mut taken = 0;
            let n = self
                .frames
                .iter()
                .take_while(|f| {
                    let first = taken == 0;
                    taken += f.len();
                    first || taken <= WRITE_BATCH_BYTES
                })
                .count();
            let batch: Vec<Bytes> = self.frames.drain(..n).collect();
            self.bytes -= batch.iter().map(Bytes::len).sum::<usize>();
            if self.frames.is_empty() {
                // A burst of large frames has passed: give its memory back.
                self.frames = VecDeque::new();
            }
            return Poll::Ready(Outgoing::Frames(batch));
        }
        if let Some((code, reason)) = &self.close {
            if self.close_taken {
                return Poll::Ready(Outgoing::Finish(Finish::Release));
            }
            self.close_taken = true;
            return Poll::Ready(Outgoing::Finish(Finish::Close {
                code: *code,
                reason: reason.clone(),
                abort: self.abort,
            }));
        }
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
        Poll::Pending
    }

    /// Ready when the connection must be dropped at once (a slow consumer).
    pub fn watch_abort(&mut self, waker: &Waker) -> Poll<Finish> {
        if let Some(abort) = self.abort_close() {
            return Poll::Ready(abort);
        }
        if !self
            .abort_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(waker))
        {
            self.abort_waker = Some(waker.clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_big_frame_fits_until_the_queue_is_full() {
        let mut o = Outbox::default();
        assert!(matches!(
            o.push(Bytes::from_static(b"12345"), 10),
            Pushed::Queued(_)
        ));
        assert!(matches!(
            o.push(Bytes::from(vec![b'x'; 100]), 10),
            Pushed::Queued(_)
        ));
        assert!(matches!(o.push(Bytes::from_static(b"y"), 10), Pushed::Full));
        let w = Waker::noop();
        assert!(matches!(o.take(w), Poll::Ready(Outgoing::Frames(f)) if f.len() == 2));
        assert!(matches!(
            o.push(Bytes::from_static(b"y"), 10),
            Pushed::Queued(_)
        ));
    }

    #[test]
    fn abort_discards_and_fires_the_watch() {
        let mut o = Outbox::default();
        let w = Waker::noop();
        let _ = o.push(Bytes::from_static(b"abc"), 10);
        assert!(o.watch_abort(w).is_pending());
        let _ = o.close(1008, "slow consumer".into(), true);
        assert_eq!(o.bytes(), 0);
        assert!(matches!(
            o.watch_abort(w),
            Poll::Ready(Finish::Close { abort: true, .. })
        ));
        assert!(matches!(
            o.push(Bytes::from_static(b"z"), 10),
            Pushed::Closing
        ));
        assert!(matches!(
            o.take(w),
            Poll::Ready(Outgoing::Finish(Finish::Close { code: 1008, .. }))
        ));
        assert_eq!(o.take(w), Poll::Ready(Outgoing::Finish(Finish::Release)));
    }
}
