//! Per-tenant pools of backend connections.
//!
//! A pool holds at most `pool_size` connections, counted by a FIFO semaphore: a client that
//! finds every connection busy waits in arrival order up to the queue timeout and then gets
//! `53300` (an ERROR, so its session survives). Idle connections are reused last-in first-out
//! so the warmest one serves next, and a reaper closes those idle past `idle_timeout`.
//! Invariant: a connection is either in `idle` or owned by exactly one `Lease`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendConn, ConnectError, connect};
use crate::config::{BackendSettings, Config, Tenant};
use crate::metrics as m;
use crate::protocol::{ClientError, ErrorKind, sqlstate};

/// Why no connection was handed out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every connection stayed busy for the whole wait.
    #[error(
        "no connection for tenant \"{tenant}\" within {waited:?} ({busy} of {size} busy, {waiting} waiting)"
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
    /// A new connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The pool was retired by a reload or shutdown.
    #[error("the pool of tenant \"{0}\" is closed")]
    Closed(String),
}

impl PoolError {
    /// The client-facing form: ERROR for timeouts, so the session stays usable.
    pub fn to_client(&self) -> ClientError {
        match self {
            Self::Timeout { .. } => ClientError::error(
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

/// What a client may learn about a failed backend login: the server's own words, not ours.
fn connect_detail(e: &ConnectError) -> String {
    match e {
        ConnectError::Refused { code, message, .. } => format!("{code}: {message}"),
        ConnectError::Timeout(d) => format!("login timed out after {d:?}"),
        _ => "PostgreSQL is unreachable".into(),
    }
}

/// Client settings (sorted) → the parameters PostgreSQL reported after applying them.
type LoginParamCache = HashMap<Vec<(String, String)>, HashMap<String, String>>;

/// A connection on loan to one client.
#[derive(Debug)]
pub struct Lease {
    /// The connection.
    pub conn: BackendConn,
    _permit: OwnedSemaphorePermit,
}

/// One tenant's pool.
#[derive(Debug)]
pub struct TenantPool {
    /// The tenant this pool serves.
    pub tenant: Arc<Tenant>,
    settings: BackendSettings,
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<BackendConn>>,
    waiting: AtomicUsize,
    closed: AtomicBool,
    defaults: OnceLock<HashMap<String, String>>,
    /// Metric handles labelled with this tenant.
    pub metrics: m::TenantMetrics,
    login_params: Mutex<LoginParamCache>,
}

impl TenantPool {
    /// An empty pool; connections open on demand.
    pub fn new(tenant: Arc<Tenant>, settings: BackendSettings) -> Self {
        let name = tenant.name.clone();
        Self {
            permits: Arc::new(Semaphore::new(tenant.pool_size)),
            tenant,
            settings,
            idle: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            defaults: OnceLock::new(),
            metrics: m::TenantMetrics::new(&name),
            login_params: Mutex::new(HashMap::new()),
        }
    }

    /// Waits up to `wait` for a connection, reusing an idle one or opening a new one.
    pub async fn acquire(&self, wait: Duration) -> Result<Lease, PoolError> {
        let started = Instant::now();
        let permit = self.wait_for_permit(wait).await?;
        self.metrics.wait.record(started.elapsed().as_secs_f64());

        if let Some(conn) = self.take_idle() {
            return Ok(Lease {
                conn,
                _permit: permit,
            });
        }

        let conn = connect(&self.settings, &self.tenant).await?;
        self.defaults.get_or_init(|| conn.reported.clone());
        self.metrics.backends.increment(1.0);
        tracing::debug!(tenant = %self.tenant.name, backend = conn.id, pid = conn.key.pid, "backend connection opened");
        Ok(Lease {
            conn,
            _permit: permit,
        })
    }

    async fn wait_for_permit(&self, wait: Duration) -> Result<OwnedSemaphorePermit, PoolError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed(self.tenant.name.clone()));
        }

        // The common case, a free connection, needs no timer.
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }

        self.waiting.fetch_add(1, Ordering::Relaxed);
        let got = tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await;
        let waiting = self.waiting.fetch_sub(1, Ordering::Relaxed) - 1;

        match got {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(PoolError::Closed(self.tenant.name.clone())),
            Err(_) => Err(PoolError::Timeout {
                tenant: self.tenant.name.clone(),
                waited: wait,
                busy: self.tenant.pool_size - self.permits.available_permits(),
                size: self.tenant.pool_size,
                waiting,
            }),
        }
    }

    /// Pops the most recently used idle connection that still looks alive.
    fn take_idle(&self) -> Option<BackendConn> {
        loop {
            let conn = self.idle.lock().ok()?.pop()?;
            if conn.looks_healthy() {
                return Some(conn);
            }
            self.metrics.backends.decrement(1.0);
            tracing::debug!(
                backend = conn.id,
                "idle backend connection went away; discarded"
            );
        }
    }

    /// Returns a clean connection to the pool.
    pub fn release(&self, lease: Lease) {
        let Lease { mut conn, _permit } = lease;
        if self.closed.load(Ordering::Acquire) {
            self.metrics.backends.decrement(1.0);
            return;
        }

        conn.idle_since = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// Drops a connection that cannot be reused.
    pub fn discard(&self, lease: Lease) {
        tracing::debug!(tenant = %self.tenant.name, backend = lease.conn.id, "backend connection discarded");
        self.metrics.backends.decrement(1.0);
        drop(lease);
    }

    /// Closes connections idle for longer than the idle timeout.
    pub fn reap_idle(&self) {
        let limit = self.settings.idle_timeout;
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let before = idle.len();
        idle.retain(|c| c.idle_since.elapsed() < limit);
        for _ in idle.len()..before {
            self.metrics.backends.decrement(1.0);
        }
    }

    /// Stops handing out connections and closes the idle ones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        if let Ok(mut idle) = self.idle.lock() {
            for _ in idle.drain(..) {
                self.metrics.backends.decrement(1.0);
            }
        }
    }

    /// The parameters a fresh backend reports: what a client that sets nothing should see.
    /// Known once the pool has opened its first connection.
    pub fn defaults(&self) -> Option<&HashMap<String, String>> {
        self.defaults.get()
    }

    /// The parameters PostgreSQL reported for a login with these settings, if seen before.
    pub fn cached_login_params(&self, key: &[(String, String)]) -> Option<HashMap<String, String>> {
        self.login_params.lock().ok()?.get(key).cloned()
    }

    /// Remembers the parameters a login with these settings produced.
    pub fn cache_login_params(&self, key: Vec<(String, String)>, params: HashMap<String, String>) {
        if let Ok(mut cache) = self.login_params.lock()
            && cache.len() < 1024
        {
            cache.insert(key, params);
        }
    }
}

/// Every tenant's pool, created on first use and replaced when its tenant changes.
#[derive(Debug, Default)]
pub struct Pools {
    pools: DashMap<String, Arc<TenantPool>>,
}

impl Pools {
    /// The pool for `tenant`, created if missing or if the tenant's definition changed.
    pub fn for_tenant(&self, tenant: &Arc<Tenant>, settings: &BackendSettings) -> Arc<TenantPool> {
        if let Some(pool) = self.pools.get(&tenant.name)
            && *pool.tenant == **tenant
        {
            return pool.clone();
        }

        let pool = Arc::new(TenantPool::new(tenant.clone(), settings.clone()));
        if let Some(old) = self.pools.insert(tenant.name.clone(), pool.clone()) {
            old.close();
        }
        pool
    }

    /// After a reload: retire pools whose tenant is gone or changed.
    pub fn apply(&self, config: &Config) {
        self.pools.retain(|name, pool| {
            let keep = config
                .tenants
                .get(name)
                .is_some_and(|t| **t == *pool.tenant);
            if !keep {
                pool.close();
            }
            keep
        });
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
