//! The circuit breaker of a rollout: it trips after a run of consecutive failures, counted
//! in the order tenants finish, and stays tripped.

/// Counts consecutive failures against a threshold.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    consecutive: u32,
    tripped: bool,
}

impl Breaker {
    /// A closed breaker that trips after `threshold` failures in a row.
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            consecutive: 0,
            tripped: false,
        }
    }

    /// Records a tenant's result; `true` when this failure trips the breaker.
    pub fn record(&mut self, failed: bool) -> bool {
        if !failed {
            self.consecutive = 0;
            return false;
        }

        self.consecutive += 1;
        let trips = !self.tripped && self.consecutive >= self.threshold;
        self.tripped |= trips;
        trips
    }

    /// Whether the breaker has tripped.
    pub fn tripped(&self) -> bool {
        self.tripped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three failures in a row trip it; a success in between resets the count.
    #[test]
    fn trips_on_consecutive_failures_only() {
        let mut breaker = Breaker::new(3);
        assert!(!breaker.record(true));
        assert!(!breaker.record(true));
        assert!(!breaker.record(false));
        assert!(!breaker.record(true));
        assert!(!breaker.record(true));
        assert!(!breaker.tripped());

        assert!(breaker.record(true));
        assert!(breaker.tripped());
        assert!(!breaker.record(true), "trips once");
        assert!(breaker.tripped(), "stays tripped after a success");
    }
}
