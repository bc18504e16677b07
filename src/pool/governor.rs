//! Per-tenant governance that outlives pool rebuilds: the tenant's tier, its transaction
//! rate limiter, its client-connection count and the load measure that ranks it.
//!
//! Governors live for the whole process and are updated in place on reload, so a reload
//! never resets a rate limiter, a client count or a tenant's tier.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::busy::BusyClock;
use super::limiter::TokenBucket;
use crate::config::{Config, Tenant, Tier};
use crate::protocol::{ClientError, ErrorKind, sqlstate};

/// One tenant's governance state.
#[derive(Debug)]
pub struct Governor {
    /// Tenant name.
    pub name: String,
    tier: Mutex<Tier>,
    busy: Mutex<BusyClock>,
    clients: AtomicUsize,
    limits: Mutex<Limits>,
}

#[derive(Debug)]
struct Limits {
    pinned_tier: Option<Tier>,
    max_clients: Option<usize>,
    max_waiting: usize,
    rate_wait: Duration,
    bucket: Option<TokenBucket>,
    per_second: f64,
}

/// Counts one lease's backend time towards its tenant's load until dropped.
#[derive(Debug)]
pub struct BusyGuard {
    governor: Arc<Governor>,
    since: Instant,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Ok(mut clock) = self.governor.busy.lock() {
            clock.ended(self.since, Instant::now());
        }
    }
}

/// Holds a client's place under the tenant's connection cap; released on drop.
#[derive(Debug)]
pub struct ClientPlace {
    governor: Arc<Governor>,
}

impl Drop for ClientPlace {
    fn drop(&mut self) {
        self.governor.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Governor {
    fn new(tenant: &Tenant, config: &Config) -> Self {
        let governor = Self {
            name: tenant.name.clone(),
            tier: Mutex::new(tenant.tier.unwrap_or(config.tiers.initial)),
            busy: Mutex::new(BusyClock::new(Instant::now())),
            clients: AtomicUsize::new(0),
            limits: Mutex::new(Limits {
                pinned_tier: None,
                max_clients: None,
                max_waiting: 0,
                rate_wait: Duration::ZERO,
                bucket: None,
                per_second: 0.0,
            }),
        };
        governor.update(tenant, config);
        governor
    }

    /// Applies the tenant's current limits and pinned tier.
    fn update(&self, tenant: &Tenant, config: &Config) {
        let Ok(mut limits) = self.limits.lock() else {
            return;
        };
        limits.pinned_tier = tenant.tier;
        limits.max_clients = tenant.max_client_connections;
        limits.max_waiting = config.limits.max_waiting;
        limits.rate_wait = config.limits.rate_limit_wait;

        match (tenant.rate, limits.bucket.as_mut()) {
            (None, _) => limits.bucket = None,
            (Some(rate), Some(bucket)) => bucket.set_rate(rate),
            (Some(rate), None) => limits.bucket = Some(TokenBucket::new(rate)),
        }
        limits.per_second = tenant.rate.map_or(0.0, |r| r.per_second);
        drop(limits);

        if let (Some(pinned), Ok(mut tier)) = (tenant.tier, self.tier.lock()) {
            *tier = pinned;
        }
    }

    /// The tenant's current tier.
    pub fn tier(&self) -> Tier {
        self.tier.lock().map(|t| *t).unwrap_or(Tier::Warm)
    }

    /// The tier set in the configuration, if any.
    pub fn pinned_tier(&self) -> Option<Tier> {
        self.limits.lock().ok().and_then(|l| l.pinned_tier)
    }

    /// Moves the tenant to `tier`.
    pub fn set_tier(&self, tier: Tier) {
        if let Ok(mut t) = self.tier.lock() {
            *t = tier;
        }
    }

    /// Clients that may wait for a backend at once.
    pub fn max_waiting(&self) -> usize {
        self.limits
            .lock()
            .map(|l| l.max_waiting)
            .unwrap_or(usize::MAX)
    }

    /// Starts counting a lease's backend time; it stops when the guard drops.
    pub fn busy_from_now(self: &Arc<Self>) -> BusyGuard {
        let since = Instant::now();
        if let Ok(mut clock) = self.busy.lock() {
            clock.started(since);
        }
        BusyGuard {
            governor: self.clone(),
            since,
        }
    }

    /// Backend time since the last call, in seconds, leases still open included.
    pub fn take_busy(&self) -> f64 {
        let now = Instant::now();
        self.busy
            .lock()
            .map_or(0.0, |mut clock| clock.take(now).as_secs_f64())
    }

    /// Admits a client under the tenant's connection cap, or refuses with FATAL `53300`.
    pub fn admit_client(self: &Arc<Self>) -> Result<ClientPlace, ClientError> {
        let cap = self.limits.lock().ok().and_then(|l| l.max_clients);
        let admitted = self
            .clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                cap.is_none_or(|cap| n < cap).then_some(n + 1)
            });

        match admitted {
            Ok(_) => Ok(ClientPlace {
                governor: self.clone(),
            }),
            Err(n) => Err(ClientError::fatal(
                ErrorKind::RateLimit,
                sqlstate::TOO_MANY_CONNECTIONS,
                format!(
                    "too many client connections for tenant \"{}\" ({n} of {} in use)",
                    self.name,
                    cap.unwrap_or(n)
                ),
            )),
        }
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// Takes a transaction token, waiting up to the tenant's limit, or fails with `53400`.
    pub async fn admit_transaction(&self) -> Result<(), ClientError> {
        let reserved = {
            let Ok(mut limits) = self.limits.lock() else {
                return Ok(());
            };
            let max_wait = limits.rate_wait;
            let per_second = limits.per_second;
            match limits.bucket.as_mut() {
                None => return Ok(()),
                Some(bucket) => bucket.reserve(max_wait).ok_or(per_second),
            }
        };

        match reserved {
            Ok(wait) if wait.is_zero() => Ok(()),
            Ok(wait) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Err(per_second) => Err(ClientError::error(
                ErrorKind::RateLimit,
                sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                format!(
                    "tenant \"{}\" is over its limit of {per_second} transactions per second",
                    self.name
                ),
            )),
        }
    }
}

/// Every tenant's governor.
#[derive(Debug, Default)]
pub struct Governors {
    map: DashMap<String, Arc<Governor>>,
}

impl Governors {
    /// The governor of `tenant`, created on first use.
    pub fn for_tenant(&self, tenant: &Tenant, config: &Config) -> Arc<Governor> {
        if let Some(g) = self.map.get(&tenant.name) {
            return g.clone();
        }
        self.map
            .entry(tenant.name.clone())
            .or_insert_with(|| Arc::new(Governor::new(tenant, config)))
            .clone()
    }

    /// The governor of `name`, if the tenant has been served.
    pub fn get(&self, name: &str) -> Option<Arc<Governor>> {
        self.map.get(name).map(|g| g.clone())
    }

    /// After a reload: update every tenant's limits; forget tenants that are gone.
    pub fn apply(&self, config: &Config) {
        self.map.retain(|name, _| config.tenants.contains_key(name));
        for tenant in config.tenants.values() {
            match self.map.get(&tenant.name) {
                Some(g) => g.update(tenant, config),
                None => {
                    self.for_tenant(tenant, config);
                }
            }
        }
    }

    /// A snapshot of all governors.
    pub fn all(&self) -> Vec<Arc<Governor>> {
        self.map.iter().map(|g| g.clone()).collect()
    }
}
