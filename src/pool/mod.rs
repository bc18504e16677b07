//! Backend connections per tenant, under one global budget.
//!
//! `tenant_pool` is one tenant's pool (FIFO queue, LIFO reuse, idle reaper); `budget` caps
//! the connections of all pools together and takes idle connections from cold tenants for
//! busy ones; `governor` holds what outlives a pool (tier, rate limiter, client count,
//! load); `pause` is each tenant's pause gate for migrations, which outlives pools too;
//! `tiering` ranks tenants by load into hot, warm and cold; `capacity` and `limiter` are the
//! resizable semaphore and token bucket underneath.
//!
//! Loops: the idle reaper (every 5 s, from the server) and the tiering round (every
//! `[tiers] interval`).

pub mod budget;
pub mod busy;
pub mod capacity;
pub mod governor;
pub mod limiter;
pub mod pause;
pub mod tenant_pool;
pub mod tiering;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

pub use budget::Budget;
pub use governor::{ClientPlace, Governor, Governors};
pub use pause::{PauseGate, PauseGates};
pub use tenant_pool::{Lease, TenantPool};

use crate::backend::ConnectError;
use crate::config::{Config, Tenant};
use crate::protocol::{ClientError, ErrorKind, sqlstate};

/// Why no connection was handed out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every connection of the tenant stayed busy for the whole wait, or too many clients
    /// were already waiting.
    #[error(
        "no connection for tenant \"{tenant}\" within {} ({busy} of {size} busy, {waiting} waiting)",
        human(*waited)
    )]
    Timeout {
        /// Tenant name.
        tenant: String,
        /// Wait limit.
        waited: Duration,
        /// Connections in use.
        busy: usize,
        /// Pool size.
        size: usize,
        /// Clients waiting.
        waiting: usize,
    },
    /// The global budget stayed spent for the whole wait.
    #[error(
        "no connection for tenant \"{tenant}\" within {} (backend connection budget spent: {used} of {limit})",
        human(*waited)
    )]
    Budget {
        /// Tenant name.
        tenant: String,
        /// Wait limit.
        waited: Duration,
        /// Budget in use.
        used: usize,
        /// Budget limit.
        limit: usize,
    },
    /// A new connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The pool was retired by a reload or shutdown.
    #[error("the pool of tenant \"{0}\" is closed")]
    Closed(String),
}

impl PoolError {
    /// The client-facing form: ERROR for waits, so the session stays usable.
    pub fn to_client(&self) -> ClientError {
        match self {
            Self::Timeout { .. } | Self::Budget { .. } => ClientError::error(
                ErrorKind::Pool,
                sqlstate::TOO_MANY_CONNECTIONS,
                self.to_string(),
            ),
            Self::Connect(e) => ClientError::error(
                ErrorKind::Backend,
                sqlstate::CANNOT_CONNECT,
                "cannot open a connection to PostgreSQL for this tenant",
            )
            .with_detail(connect_detail(e)),
            Self::Closed(_) => {
                ClientError::fatal(ErrorKind::Pool, sqlstate::ADMIN_SHUTDOWN, self.to_string())
            }
        }
    }
}

/// A wait as people write it: `5s`, `300ms`, `0s`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// What a client may learn about a failed backend login: the server's own words, not ours.
fn connect_detail(e: &ConnectError) -> String {
    match e {
        ConnectError::Refused { code, message, .. } => format!("{code}: {message}"),
        ConnectError::Timeout(d) => format!("login timed out after {d:?}"),
        _ => "PostgreSQL is unreachable".into(),
    }
}

/// Every tenant's pool and governor, and the budget they share.
#[derive(Debug)]
pub struct Pools {
    pools: DashMap<String, Arc<TenantPool>>,
    /// Per-tenant governance.
    pub governors: Governors,
    /// Per-tenant pause gates.
    pub pauses: PauseGates,
    /// The global connection budget.
    pub budget: Arc<Budget>,
}

impl Pools {
    /// Empty pools under the configuration's budget.
    pub fn new(config: &Config) -> Self {
        Self {
            pools: DashMap::new(),
            governors: Governors::default(),
            pauses: PauseGates::default(),
            budget: Budget::new(config.budget.for_tenants()),
        }
    }

    /// The pool for `tenant`, created if missing or if its backend identity changed. The
    /// check and the insert are one step, so logins arriving together share one pool.
    pub fn for_tenant(&self, tenant: &Arc<Tenant>, config: &Config) -> Arc<TenantPool> {
        if let Some(pool) = self.pools.get(&tenant.name)
            && pool.tenant.same_backend(tenant)
        {
            return pool.clone();
        }

        match self.pools.entry(tenant.name.clone()) {
            Entry::Occupied(entry) if entry.get().tenant.same_backend(tenant) => {
                entry.get().clone()
            }
            Entry::Occupied(mut entry) => {
                let pool = self.new_pool(tenant, config);
                entry.insert(pool.clone()).close();
                pool
            }
            Entry::Vacant(entry) => entry.insert(self.new_pool(tenant, config)).clone(),
        }
    }

    fn new_pool(&self, tenant: &Arc<Tenant>, config: &Config) -> Arc<TenantPool> {
        let governor = self.governors.for_tenant(tenant, config);
        let size = pool_size(tenant, &governor, config);
        TenantPool::new(
            tenant.clone(),
            governor,
            self.pauses.for_tenant(&tenant.name),
            config.backend.clone(),
            self.budget.clone(),
            size,
        )
    }

    /// After a reload: new budget and limits, pools resized; pools whose tenant is gone, logs
    /// in differently or has a new schema generation are retired.
    pub fn apply(&self, config: &Config) {
        self.budget.resize(config.budget.for_tenants());
        self.governors.apply(config);
        self.pauses.prune(|name| config.tenants.contains_key(name));

        self.pools.retain(|name, pool| {
            let keep = config
                .tenants
                .get(name)
                .is_some_and(|t| t.same_backend(&pool.tenant));
            if !keep {
                pool.close();
            }
            keep
        });
        self.resize_all(config);
    }

    /// Sets every pool to the size its tenant's tier or override asks for.
    pub fn resize_all(&self, config: &Config) {
        for pool in self.pools.iter() {
            let tenant = config.tenants.get(pool.key()).unwrap_or(&pool.tenant);
            pool.resize(pool_size(tenant, &pool.governor, config));
        }
    }

    /// The pool of a tenant, if it has one.
    pub fn get(&self, name: &str) -> Option<Arc<TenantPool>> {
        self.pools.get(name).map(|p| p.clone())
    }

    /// Runs the idle reaper on every pool.
    pub fn reap_idle(&self) {
        for pool in self.pools.iter() {
            pool.reap_idle();
        }
    }

    /// Closes every pool (shutdown).
    pub fn close_all(&self) {
        for pool in self.pools.iter() {
            pool.close();
        }
    }
}

/// The size a tenant's pool should have now.
pub fn pool_size(tenant: &Tenant, governor: &Governor, config: &Config) -> usize {
    tenant
        .pool_size
        .unwrap_or_else(|| config.tiers.sizes.of(governor.tier()))
}
