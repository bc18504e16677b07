//! Busy backend time of one tenant, the load measure tiering ranks by.
//!
//! A lease counts from the moment it is handed out until it ends, and each ranking takes the
//! time accumulated since the previous one, including the part of leases that are still
//! open. So a session-mode client that holds its backend for an hour adds to its tenant's
//! load at every ranking, not in one lump when it disconnects.
//!
//! The clock needs no per-lease bookkeeping: it keeps how many leases are open and the sum of
//! their start times, where a start before the last ranking counts as that ranking (the
//! time before it was already taken).

use std::time::{Duration, Instant};

/// Open leases and the busy time not yet taken.
#[derive(Debug)]
pub struct BusyClock {
    /// Origin of the offsets below.
    base: Instant,
    /// Time of the last [`BusyClock::take`].
    last_take: Instant,
    /// Busy time of leases that ended since then.
    ended: Duration,
    /// Leases open now.
    open: u32,
    /// Sum over open leases of their start (or `last_take`, if later), as offsets from `base`.
    starts: Duration,
}

impl BusyClock {
    /// A clock with nothing open, starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            base: now,
            last_take: now,
            ended: Duration::ZERO,
            open: 0,
            starts: Duration::ZERO,
        }
    }

    /// A lease started at `at`.
    pub fn started(&mut self, at: Instant) {
        self.open += 1;
        self.starts += at.saturating_duration_since(self.base);
    }

    /// The lease that started at `started` ended at `now`.
    pub fn ended(&mut self, started: Instant, now: Instant) {
        let from = started.max(self.last_take);
        self.ended += now.saturating_duration_since(from);
        self.open = self.open.saturating_sub(1);
        let offset = from.saturating_duration_since(self.base);
        self.starts = self.starts.saturating_sub(offset);
    }

    /// Busy time since the last call, open leases included up to `now`.
    pub fn take(&mut self, now: Instant) -> Duration {
        let offset = now.saturating_duration_since(self.base);
        let open = (offset * self.open).saturating_sub(self.starts);
        let busy = self.ended + open;

        self.ended = Duration::ZERO;
        self.starts = offset * self.open;
        self.last_take = now;
        busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A lease spanning two rankings is split between them; leases that end are counted
    /// whole in the ranking after they end.
    #[test]
    fn open_leases_count_at_every_ranking() {
        let t0 = Instant::now();
        let mut clock = BusyClock::new(t0);

        clock.started(t0 + secs(10));
        clock.started(t0 + secs(50));
        clock.ended(t0 + secs(50), t0 + secs(55));
        assert_eq!(clock.take(t0 + secs(60)), secs(50 + 5));

        assert_eq!(clock.take(t0 + secs(120)), secs(60));

        clock.ended(t0 + secs(10), t0 + secs(150));
        assert_eq!(clock.take(t0 + secs(180)), secs(30));
        assert_eq!(clock.take(t0 + secs(240)), Duration::ZERO);
    }

    /// Several open leases add up, each from its own start.
    #[test]
    fn concurrent_leases_add_up() {
        let t0 = Instant::now();
        let mut clock = BusyClock::new(t0);

        clock.started(t0 + secs(1));
        clock.started(t0 + secs(2));
        clock.started(t0 + secs(3));
        assert_eq!(clock.take(t0 + secs(4)), secs(3 + 2 + 1));

        clock.ended(t0 + secs(2), t0 + secs(6));
        assert_eq!(clock.take(t0 + secs(8)), secs(2 + 4 + 4));
    }
}
