//! The global budget: one cap on backend connections across every tenant pool, so the
//! number of open connections never exceeds `max_connections - reserve`, under any burst.
//!
//! Every open backend connection holds a [`Slot`]. A tenant that needs a new connection when
//! the budget is spent first closes another tenant's idle connection (coldest tier, least
//! recently used first); if none is idle it waits, re-checking for idle connections to take
//! every 100 ms. Pools also hand connections back instead of idling them while a tenant
//! waits for the budget. Crossing 80 % of the budget (the tenants' share, `max_connections -
//! reserve`, not `max_connections`) logs one WARN; falling back under 70 % re-arms it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::capacity::{Capacity, Permit, TakeError};
use super::tenant_pool::{TenantPool, Waiting};
use crate::metrics as m;

/// How often a tenant waiting for the budget looks again for idle connections to take.
const EVICTION_RECHECK: Duration = Duration::from_millis(100);

/// The shared connection budget of all tenant pools.
#[derive(Debug)]
pub struct Budget {
    capacity: Arc<Capacity>,
    members: DashMap<u64, Weak<TenantPool>>,
    next_member: AtomicU64,
    waiting: AtomicUsize,
    warned: AtomicBool,
}

/// One open backend connection's share of the budget.
#[derive(Debug)]
pub struct Slot {
    _permit: Permit,
    budget: Arc<Budget>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let budget = self.budget.clone();
        // The permit is returned after this body runs; account for it now.
        budget.observe(budget.capacity.in_use().saturating_sub(1));
    }
}

impl Budget {
    /// A budget of `limit` connections for tenant pools.
    pub fn new(limit: usize) -> Arc<Self> {
        m::budget_limit(limit);
        Arc::new(Self {
            capacity: Capacity::new(limit),
            members: DashMap::new(),
            next_member: AtomicU64::new(1),
            waiting: AtomicUsize::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// Connections open now.
    pub fn used(&self) -> usize {
        self.capacity.in_use()
    }

    /// Connections tenant pools may hold.
    pub fn limit(&self) -> usize {
        self.capacity.size()
    }

    /// Whether some tenant is waiting for the budget.
    pub fn under_pressure(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
    }

    /// Changes the limit (reload). Idle connections above a lower limit close at once;
    /// busy ones close as they come back.
    pub fn resize(&self, limit: usize) {
        self.capacity.resize(limit);
        m::budget_limit(limit);
        while self.over_limit() && self.evict_one("") {}
    }

    /// Whether more connections are open than the limit allows (after a lowering reload).
    pub fn over_limit(&self) -> bool {
        self.used() > self.limit()
    }

    /// Registers a pool whose idle connections may be taken; returns its member id.
    pub fn register(&self, pool: &Arc<TenantPool>) -> u64 {
        let id = self.next_member.fetch_add(1, Ordering::Relaxed);
        self.members.insert(id, Arc::downgrade(pool));
        id
    }

    /// Forgets a retired pool.
    pub fn unregister(&self, id: u64) {
        self.members.remove(&id);
    }

    /// A slot for `tenant`, taking another tenant's idle connection or waiting until
    /// `deadline` when the budget is spent.
    pub async fn slot(
        self: &Arc<Self>,
        tenant: &str,
        deadline: Instant,
    ) -> Result<Slot, TakeError> {
        loop {
            if let Some(permit) = self.capacity.try_take() {
                return Ok(self.issue(permit));
            }
            if self.evict_one(tenant) {
                continue;
            }

            let round = deadline.min(Instant::now() + EVICTION_RECHECK);
            let guard = Waiting::counted(&self.waiting, None);
            let taken = self.capacity.take(round).await;
            drop(guard);

            match taken {
                Ok(permit) => return Ok(self.issue(permit)),
                Err(TakeError::Timeout) if Instant::now() < deadline => {}
                Err(error) => return Err(error),
            }
        }
    }

    fn issue(self: &Arc<Self>, permit: Permit) -> Slot {
        self.observe(self.capacity.in_use());
        Slot {
            _permit: permit,
            budget: self.clone(),
        }
    }

    /// Closes the idle connection of another tenant that matters least: coldest tier, then
    /// idle the longest.
    fn evict_one(&self, except: &str) -> bool {
        let victim = self
            .members
            .iter()
            .filter_map(|entry| entry.value().upgrade())
            .filter(|pool| pool.tenant.name != except)
            .filter_map(|pool| {
                let since = pool.oldest_idle_since()?;
                Some(((pool.governor.tier(), since), pool))
            })
            .min_by_key(|(key, _)| *key);

        let Some(((tier, _), pool)) = victim else {
            return false;
        };
        let evicted = pool.evict_oldest_idle();
        if evicted {
            tracing::debug!(victim = %pool.tenant.name, ?tier, for_tenant = except, "idle connection taken for another tenant");
            m::budget_eviction();
        }
        evicted
    }

    /// Updates the gauge and logs crossings of the warning thresholds.
    fn observe(&self, used: usize) {
        m::budget_used(used);
        let limit = self.limit().max(1);
        let percent = used * 100 / limit;

        if percent >= 80 && !self.warned.swap(true, Ordering::AcqRel) {
            tracing::warn!(used, limit, "backend connection budget above 80 %");
        } else if percent < 70 && self.warned.swap(false, Ordering::AcqRel) {
            tracing::info!(used, limit, "backend connection budget back under 70 %");
        }
    }
}
