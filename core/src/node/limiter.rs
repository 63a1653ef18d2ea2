//! A per-connection command rate limit: a token bucket refilled at
//! `rate` commands per second, holding at most one second's worth.

use std::time::Duration;

/// The verdict on one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over the rate: refuse this command (Centrifugo: error 111).
    Refused,
    /// Over the rate and still going (more than a second's worth refused
    /// since the last allowed command): close the connection.
    Exceeded,
}

/// See the module docs. `rate` 0 means no limit.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    rate: u64,
    /// Tokens in millionths.
    tokens: u64,
    last: Duration,
    refused: u64,
}

impl RateLimiter {
    pub fn new(rate: u32, now: Duration) -> RateLimiter {
        RateLimiter {
            rate: u64::from(rate),
            tokens: u64::from(rate) * 1_000_000,
            last: now,
            refused: 0,
        }
    }

    pub fn check(&mut self, now: Duration) -> Verdict {
        if self.rate == 0 {
            return Verdict::Allowed;
        }
        let cap = self.rate * 1_000_000;
        let elapsed = now
            .saturating_sub(self.last)
            .as_micros()
            .min(u128::from(u64::MAX)) as u64;
        self.last = self.last.max(now);
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(cap);
        if self.tokens >= 1_000_000 {
            self.tokens -= 1_000_000;
            self.refused = 0;
            Verdict::Allowed
        } else {
            self.refused += 1;
            if self.refused > self.rate {
                Verdict::Exceeded
            } else {
                Verdict::Refused
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_then_exceeded() {
        let ms = Duration::from_millis;
        let mut l = RateLimiter::new(10, ms(0));
        for _ in 0..10 {
            assert_eq!(l.check(ms(0)), Verdict::Allowed);
        }
        assert_eq!(l.check(ms(0)), Verdict::Refused);
        assert_eq!(l.check(ms(100)), Verdict::Allowed, "one token per 100 ms");
        for _ in 0..10 {
            assert_eq!(l.check(ms(100)), Verdict::Refused);
        }
        assert_eq!(l.check(ms(100)), Verdict::Exceeded);
        let mut off = RateLimiter::new(0, ms(0));
        for _ in 0..1000 {
            assert_eq!(off.check(ms(0)), Verdict::Allowed);
        }
    }
}
