// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A small rate limiter for log lines a guest can trigger at will.

use std::time::{Duration, Instant};

/// Allows at most `burst` events per `interval`, and counts what it suppressed.
///
/// A guest can issue bad requests in a tight loop; logging each one would let it flood
/// the host's logs. Time is passed in, so the logic is tested without sleeping.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    interval: Duration,
    burst: u32,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// A limiter allowing `burst` events per `interval`.
    pub const fn new(burst: u32, interval: Duration) -> Self {
        RateLimiter {
            interval,
            burst,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether an event at `now` may be logged. When it may, also returns how many
    /// events were suppressed since the last one allowed (to be mentioned in the line).
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        let expired = match self.window_start {
            None => true,
            Some(start) => now.saturating_duration_since(start) >= self.interval,
        };
        if expired {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            None
        }
    }
}

impl Default for RateLimiter {
    /// Ten lines per five seconds.
    fn default() -> Self {
        RateLimiter::new(10, Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses_then_reports() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(2, Duration::from_secs(1));
        assert_eq!(l.check(t0), Some(0));
        assert_eq!(l.check(t0), Some(0));
        assert_eq!(l.check(t0), None);
        assert_eq!(l.check(t0 + Duration::from_millis(999)), None);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.check(t1), Some(2));
        assert_eq!(l.check(t1), Some(0));
        assert_eq!(l.check(t1), None);
    }

    #[test]
    fn zero_burst_never_logs() {
        let mut l = RateLimiter::new(0, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.check(t0), None);
        assert_eq!(l.check(t0 + Duration::from_secs(5)), None);
    }
}
