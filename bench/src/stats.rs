//! Per-thread delivery statistics: a log-linear latency histogram and
//! counters, each written by its own runtime thread only (no contended
//! atomics on the receive path) and summed when read.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

/// Values below 2^SUB_BITS are exact; above, each power of two is split into
/// 2^(SUB_BITS-1) buckets (under 1.6 % relative error).
const SUB_BITS: u32 = 7;
const HALF: usize = 1 << (SUB_BITS - 1);
/// Enough buckets for any `u64`.
pub const BUCKETS: usize = (64 - SUB_BITS as usize + 2) * HALF;

/// The bucket of a value.
pub fn bucket(v: u64) -> usize {
    if v < (1 << SUB_BITS) {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let shift = e - (SUB_BITS - 1);
    let top = (v >> shift) as usize; // in [HALF, 2 * HALF)
    shift as usize * HALF + top
}

/// The middle of the values a bucket holds.
pub fn bucket_value(i: usize) -> u64 {
    if i < (1 << SUB_BITS) {
        return i as u64;
    }
    let shift = (i / HALF - 1) as u32;
    let top = (i % HALF + HALF) as u64;
    let low = top << shift;
    let width = 1u64 << shift;
    low + (width - 1) / 2
}

/// One thread's figures.
pub struct Recorder {
    latency: Box<[AtomicU64]>,
    max_ns: AtomicU64,
    last_ns: AtomicU64,
    pub delivered: AtomicU64,
    pub duplicates: AtomicU64,
    pub misrouted: AtomicU64,
    pub malformed: AtomicU64,
    pub probes: AtomicU64,
    out_of_order: Box<[AtomicU64]>,
}

/// Adds to a counter that only the calling thread writes: a plain load and
/// store, no locked instruction.
#[inline]
pub fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Recorder {
    fn new(publishers: usize) -> Recorder {
        Recorder {
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_ns: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            out_of_order: (0..publishers.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// A first delivery, `latency_ns` after it was sent, received at `now_ns`.
    #[inline]
    pub fn delivery(&self, latency_ns: u64, now_ns: u64) {
        bump(&self.delivered, 1);
        bump(&self.latency[bucket(latency_ns)], 1);
        if latency_ns > self.max_ns.load(Relaxed) {
            self.max_ns.store(latency_ns, Relaxed);
        }
        if now_ns > self.last_ns.load(Relaxed) {
            self.last_ns.store(now_ns, Relaxed);
        }
    }

    #[inline]
    pub fn out_of_order(&self, publisher: usize) {
        if let Some(c) = self.out_of_order.get(publisher) {
            bump(c, 1);
        }
    }
}

static PUBLISHERS: OnceLock<usize> = OnceLock::new();
static ALL: Mutex<Vec<Arc<Recorder>>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: OnceCell<Arc<Recorder>> = const { OnceCell::new() };
}

/// Sets the number of publishers (for the per-publisher counters); call
/// once before anything is recorded.
pub fn init(publishers: usize) {
    let _ = PUBLISHERS.set(publishers);
}

/// Runs `f` with this thread's recorder.
#[inline]
pub fn with<R>(f: impl FnOnce(&Recorder) -> R) -> R {
    LOCAL.with(|cell| {
        let rec = cell.get_or_init(|| {
            let rec = Arc::new(Recorder::new(PUBLISHERS.get().copied().unwrap_or(1)));
            ALL.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(rec.clone());
            rec
        });
        f(rec)
    })
}

/// Every thread's figures added up.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub latency: Vec<u64>,
    pub max_ns: u64,
    pub last_ns: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub misrouted: u64,
    pub malformed: u64,
    pub probes: u64,
    pub out_of_order: Vec<u64>,
}

impl Totals {
    /// The value at quantile `q` (0..=1) in ns, or 0 without samples.
    pub fn quantile(&self, q: f64) -> u64 {
        let n: u64 = self.latency.iter().sum();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.latency.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_value(i).min(self.max_ns);
            }
        }
        self.max_ns
    }
}

/// Delivered count only (cheap enough to poll).
pub fn delivered() -> u64 {
    ALL.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|r| r.delivered.load(Relaxed))
        .sum()
}

pub fn totals() -> Totals {
    let all = ALL.lock().unwrap_or_else(|e| e.into_inner());
    let publishers = PUBLISHERS.get().copied().unwrap_or(1).max(1);
    let mut t = Totals {
        latency: vec![0; BUCKETS],
        out_of_order: vec![0; publishers],
        ..Totals::default()
    };
    for r in all.iter() {
        for (sum, c) in t.latency.iter_mut().zip(r.latency.iter()) {
            *sum += c.load(Relaxed);
        }
        for (sum, c) in t.out_of_order.iter_mut().zip(r.out_of_order.iter()) {
            *sum += c.load(Relaxed);
        }
        t.max_ns = t.max_ns.max(r.max_ns.load(Relaxed));
        t.last_ns = t.last_ns.max(r.last_ns.load(Relaxed));
        t.delivered += r.delivered.load(Relaxed);
        t.duplicates += r.duplicates.load(Relaxed);
        t.misrouted += r.misrouted.load(Relaxed);
        t.malformed += r.malformed.load(Relaxed);
        t.probes += r.probes.load(Relaxed);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut prev = 0;
        for v in (0..200_000u64).chain((18..62).map(|s| 3u64 << s)) {
            let b = bucket(v);
            assert!(b < BUCKETS);
            assert!(b >= prev);
            prev = b;
            let back = bucket_value(b);
            let err = back.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err <= 0.016, "{v} -> {b} -> {back}");
        }
        assert!(bucket(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut t = Totals {
            latency: vec![0; BUCKETS],
            ..Totals::default()
        };
        for v in 1..=1000u64 {
            t.latency[bucket(v * 1000)] += 1;
            t.max_ns = t.max_ns.max(v * 1000);
        }
        let p50 = t.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        let p99 = t.quantile(0.99) as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.02, "{p99}");
        assert_eq!(t.quantile(1.0), 1_000_000);
    }
}
