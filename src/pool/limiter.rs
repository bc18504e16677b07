//! A token bucket for transactions per tenant. Written here rather than taken from a crate
//! because the proxy needs one specific shape: reserve a token, learn how long until it is
//! valid, and hand it back when that is longer than the client may wait.

use std::time::{Duration, Instant};

use crate::config::Rate;

/// Tokens refill continuously at `rate.per_second` up to `rate.burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            at: Instant::now(),
        }
    }

    /// Changes the rate, keeping the tokens earned so far.
    pub fn set_rate(&mut self, rate: Rate) {
        self.refill(Instant::now());
        self.rate = rate;
        self.tokens = self.tokens.min(f64::from(rate.burst));
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.at).as_secs_f64() * self.rate.per_second;
        self.tokens = (self.tokens + earned).min(f64::from(self.rate.burst));
        self.at = now;
    }

    /// Takes a token if it becomes valid within `max_wait`; returns how long to wait for it.
    /// `None` leaves the bucket untouched.
    pub fn reserve(&mut self, max_wait: Duration) -> Option<Duration> {
        self.refill(Instant::now());
        let wait = if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate.per_second)
        };

        if wait > max_wait {
            return None;
        }
        self.tokens -= 1.0;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_waits_then_refuses() {
        let rate = Rate {
            per_second: 10.0,
            burst: 2,
        };
        let mut bucket = TokenBucket::new(rate);
        assert_eq!(bucket.reserve(Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(bucket.reserve(Duration::ZERO), Some(Duration::ZERO));

        assert_eq!(
            bucket.reserve(Duration::ZERO),
            None,
            "empty, no wait allowed"
        );
        let wait = bucket
            .reserve(Duration::from_secs(1))
            .expect("within a second");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));

        let next = bucket
            .reserve(Duration::from_secs(1))
            .expect("queued behind");
        assert!(next > wait);
    }
}
