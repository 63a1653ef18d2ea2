//! Socket admission: how many sockets the node holds, the operator reserve
//! that keeps `/healthz` and `/metrics` answering on a full node, the
//! counters of what happened at the door, and the rate-limited log of
//! failing accepts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::codec::http::HeadReader;

/// An admitted socket: read its request head into `head`, then hand this to
/// [`Node::answer`](super::Node::answer).
#[derive(Debug)]
pub struct Admitted {
    pub head: HeadReader,
    /// Only the operator reserve had room: plain requests are served,
    /// upgrades refused.
    pub(super) full: bool,
    /// Accepted on the API's own listener (`--api-listen`).
    pub(super) api_port: bool,
}

/// Socket-level counters, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    pub handshake_failures: u64,
    pub rejected_connections: u64,
    pub http_requests: u64,
    pub accept_errors: u64,
}

/// How often a failing `accept` is logged: once, then at most once per
/// interval with the count of those not logged.
#[derive(Debug, Default)]
pub struct AcceptLog {
    last: Option<Duration>,
    suppressed: u64,
}

/// Failing accepts are logged at most once per this.
pub const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(1);

impl AcceptLog {
    /// An accept failed with `error` at `now`: the line to log, if any.
    pub fn failed(&mut self, error: &str, now: Duration) -> Option<String> {
        match self.last {
            Some(t) if now < t + ACCEPT_LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                let more = std::mem::take(&mut self.suppressed);
                Some(if more > 0 {
                    format!("accept failed: {error} ({more} more since the last report)")
                } else {
                    format!("accept failed: {error}")
                })
            }
        }
    }
}

#[derive(Debug)]
pub(super) struct Admission {
    max: usize,
    reserve: usize,
    sockets: AtomicUsize,
    handshake_failures: AtomicU64,
    rejected: AtomicU64,
    http_requests: AtomicU64,
    accept_errors: AtomicU64,
    accept_log: Mutex<AcceptLog>,
    drain_waker: Mutex<Option<Waker>>,
}

impl Admission {
    pub(super) fn new(max: usize, reserve: usize) -> Admission {
        Admission {
            max,
            reserve,
            sockets: AtomicUsize::new(0),
            handshake_failures: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            accept_log: Mutex::new(AcceptLog::default()),
            drain_waker: Mutex::new(None),
        }
    }

    /// `None`: refused (counted). `Some(full)`: admitted; `full` when only
    /// the operator reserve had room (plain requests are served, upgrades
    /// refused).
    pub(super) fn admit(&self) -> Option<bool> {
        let limit = self.max.saturating_add(self.reserve);
        let n = self
            .sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        match n {
            Ok(before) => Some(before >= self.max),
            Err(_) => {
                self.count_rejected();
                None
            }
        }
    }

    pub(super) fn socket_closed(&self) {
        let before = self
            .sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        debug_assert!(before.is_ok(), "socket_closed without admit");
        if before == Ok(1) {
            let w = super::lock(&self.drain_waker).take();
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    pub(super) fn poll_drained(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut w = super::lock(&self.drain_waker);
        if self.sockets.load(Ordering::Acquire) == 0 {
            return Poll::Ready(());
        }
        *w = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(super) fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Acquire)
    }

    pub(super) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_http(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_handshake_failure(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn accept_failed(&self, error: &str, now: Duration) -> Option<String> {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
        super::lock(&self.accept_log).failed(error, now)
    }

    pub(super) fn stats(&self) -> IoStats {
        IoStats {
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
            rejected_connections: self.rejected.load(Ordering::Relaxed),
            http_requests: self.http_requests.load(Ordering::Relaxed),
            accept_errors: self.accept_errors.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_admits_operators_on_a_full_node() {
        let a = Admission::new(2, 1);
        assert_eq!(a.admit(), Some(false));
        assert_eq!(a.admit(), Some(false));
        assert_eq!(a.admit(), Some(true), "the reserve");
        assert_eq!(a.admit(), None);
        assert_eq!(a.stats().rejected_connections, 1);
        a.socket_closed();
        assert_eq!(a.admit(), Some(true));
    }

    #[test]
    fn accept_errors_are_logged_once_a_second() {
        let mut log = AcceptLog::default();
        let ms = Duration::from_millis;
        assert!(log.failed("EMFILE", ms(0)).is_some());
        for t in 1..20 {
            assert!(log.failed("EMFILE", ms(t * 50)).is_none());
        }
        let line = log.failed("EMFILE", ms(1000)).unwrap();
        assert!(line.contains("19 more"), "{line}");
    }
}
