//! One tenant's pool of backend connections.
//!
//! The pool's size (its tier's, or the tenant's own `pool_size`) caps connections in use,
//! counted by a FIFO [`Capacity`]: a client that finds them all busy waits in arrival order
//! up to the queue timeout and then gets `53300` as an ERROR, so its session survives.
//! Idle connections are reused most recently used first and closed past `idle_timeout`;
//! every open connection also holds a [`Slot`] of the global budget. Before the queue, a
//! caller passes the tenant's [`PauseGate`], which holds it while a migration pauses the
//! tenant and counts it in flight until its lease comes back. A pause means a schema change,
//! so idle connections opened before the tenant's last pause ended are closed rather than
//! reused: their plans and prepared statements may be stale. Every wait for the queue and
//! the budget is recorded in the tenant's wait histogram, the ones that time out included.
//! Invariant: a connection is either idle here or owned by exactly one [`Lease`], and the
//! pool's open connections never exceed its size once leases come back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::PoolError;
use super::budget::{Budget, Slot};
use super::capacity::{Capacity, Permit, TakeError};
use super::governor::{BusyGuard, Governor};
use super::pause::{InFlight, PauseGate};
use crate::backend::{BackendConn, connect};
use crate::config::{BackendSettings, Tenant};
use crate::metrics as m;

/// Client settings (sorted) → the parameters PostgreSQL reported after applying them.
type LoginParamCache = HashMap<Vec<(String, String)>, HashMap<String, String>>;

/// Counts a connection as open in its pool for as long as it lives, whichever way it ends
/// (released, discarded, evicted, or dropped on a path nobody planned for).
#[derive(Debug)]
struct Opened {
    open: Arc<AtomicUsize>,
    gauge: metrics::Gauge,
    /// The tenant's pause epoch when the connection opened (see [`PauseGate::epoch`]).
    epoch: u64,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.decrement(1.0);
    }
}

/// One client counted as waiting for as long as it waits, however the wait ends.
pub(super) struct Waiting<'a> {
    count: &'a AtomicUsize,
    gauge: Option<&'a metrics::Gauge>,
}

impl<'a> Waiting<'a> {
    /// Counts one more waiter.
    pub(super) fn enter(count: &'a AtomicUsize, gauge: &'a metrics::Gauge) -> Self {
        Self::counted(count, Some(gauge))
    }

    /// Counts one more waiter, without a gauge.
    pub(super) fn counted(count: &'a AtomicUsize, gauge: Option<&'a metrics::Gauge>) -> Self {
        let now = count.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(g) = gauge {
            g.set(now as f64);
        }
        Self { count, gauge }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let now = self.count.fetch_sub(1, Ordering::AcqRel) - 1;
        if let Some(g) = self.gauge {
            g.set(now as f64);
        }
    }
}

/// Times one client's wait for a backend, through the pool's queue and the global budget,
/// and records it however the wait ends: a connection, a `53300` timeout, or a client gone.
struct WaitTimer<'a> {
    histogram: &'a metrics::Histogram,
    started: Instant,
}

impl<'a> WaitTimer<'a> {
    fn start(histogram: &'a metrics::Histogram) -> Self {
        Self {
            histogram,
            started: Instant::now(),
        }
    }
}

impl Drop for WaitTimer<'_> {
    fn drop(&mut self) {
        self.histogram.record(self.started.elapsed().as_secs_f64());
    }
}

/// An idle connection and its share of the budget. Connections are boxed: they move
/// between the pool and sessions at every transaction, and a pointer moves cheaply.
#[derive(Debug)]
struct Idle {
    conn: Box<BackendConn>,
    slot: Slot,
    opened: Opened,
}

/// What a caller holds once it is through the gate and the queue.
struct Held {
    permit: Permit,
    in_flight: InFlight,
}

/// A connection on loan to one client.
#[derive(Debug)]
pub struct Lease {
    /// The connection.
    pub conn: Box<BackendConn>,
    slot: Slot,
    opened: Opened,
    _permit: Permit,
    _in_flight: InFlight,
    _busy: BusyGuard,
}

/// One tenant's pool.
#[derive(Debug)]
pub struct TenantPool {
    /// The tenant this pool serves.
    pub tenant: Arc<Tenant>,
    /// The tenant's tier, limits and load.
    pub governor: Arc<Governor>,
    /// The tenant's pause gate, shared with its other pools.
    pub gate: Arc<PauseGate>,
    /// Metric handles labelled with this tenant.
    pub metrics: m::TenantMetrics,
    settings: BackendSettings,
    budget: Arc<Budget>,
    capacity: Arc<Capacity>,
    idle: Mutex<VecDeque<Idle>>,
    open: Arc<AtomicUsize>,
    waiting: AtomicUsize,
    closed: AtomicBool,
    member: OnceLock<u64>,
    defaults: OnceLock<HashMap<String, String>>,
    login_params: Mutex<LoginParamCache>,
}

impl TenantPool {
    /// An empty pool of `size`; connections open on demand.
    pub fn new(
        tenant: Arc<Tenant>,
        governor: Arc<Governor>,
        gate: Arc<PauseGate>,
        settings: BackendSettings,
        budget: Arc<Budget>,
        size: usize,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            metrics: m::TenantMetrics::new(&tenant.name),
            tenant,
            governor,
            gate,
            settings,
            budget: budget.clone(),
            capacity: Capacity::new(size),
            idle: Mutex::new(VecDeque::new()),
            open: Arc::new(AtomicUsize::new(0)),
            waiting: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            member: OnceLock::new(),
            defaults: OnceLock::new(),
            login_params: Mutex::new(HashMap::new()),
        });
        let _ = pool.member.set(budget.register(&pool));
        pool.metrics.size.set(size as f64);
        pool
    }

    /// Waits at the pause gate while the tenant is paused, then up to `wait` for a
    /// connection, reusing an idle one or opening a new one. The wait for the pool and the
    /// budget (not the gate, nor the connect) is recorded once, however it ends.
    pub async fn acquire(&self, wait: Duration) -> Result<Lease, PoolError> {
        let in_flight = self.gate.pass().await;

        let timer = WaitTimer::start(&self.metrics.wait);
        let deadline = timer.started + wait;
        let permit = self.wait_for_permit(deadline, wait).await?;
        let held = Held { permit, in_flight };

        if let Some(Idle { conn, slot, opened }) = self.take_idle() {
            drop(timer);
            return Ok(self.lease(conn, slot, opened, held));
        }

        let slot = self.budget_slot(deadline, wait).await?;
        drop(timer);
        let conn = Box::new(connect(&self.settings, &self.tenant).await?);
        let opened = self.opened(&conn);
        Ok(self.lease(conn, slot, opened, held))
    }

    fn lease(&self, conn: Box<BackendConn>, slot: Slot, opened: Opened, held: Held) -> Lease {
        self.metrics.in_use.set(self.capacity.in_use() as f64);
        Lease {
            conn,
            slot,
            opened,
            _permit: held.permit,
            _in_flight: held.in_flight,
            _busy: self.governor.busy_from_now(),
        }
    }

    fn opened(&self, conn: &BackendConn) -> Opened {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.defaults.get_or_init(|| conn.reported.clone());
        self.metrics.backends.increment(1.0);
        tracing::debug!(tenant = %self.tenant.name, backend = conn.id, pid = conn.key.pid, "backend connection opened");
        Opened {
            open: self.open.clone(),
            gauge: self.metrics.backends.clone(),
            epoch: self.gate.epoch(),
        }
    }

    async fn wait_for_permit(
        &self,
        deadline: Instant,
        wait: Duration,
    ) -> Result<Permit, PoolError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PoolError::Closed(self.tenant.name.clone()));
        }
        // The common case, a free connection, needs no timer.
        if let Some(permit) = self.capacity.try_take() {
            return Ok(permit);
        }

        let waiting = self.waiting.load(Ordering::Acquire);
        if waiting >= self.governor.max_waiting() {
            return Err(self.timeout(Duration::ZERO, waiting));
        }

        // Counted by a guard, so a waiter cancelled mid-wait (a login timing out) leaves.
        let guard = Waiting::enter(&self.waiting, &self.metrics.waiting);
        let taken = self.capacity.take(deadline).await;
        drop(guard);
        let waiting = self.waiting.load(Ordering::Acquire);

        match taken {
            Ok(permit) => Ok(permit),
            Err(TakeError::Closed) => Err(PoolError::Closed(self.tenant.name.clone())),
            Err(TakeError::Timeout) => Err(self.timeout(wait, waiting)),
        }
    }

    async fn budget_slot(&self, deadline: Instant, wait: Duration) -> Result<Slot, PoolError> {
        match self.budget.slot(&self.tenant.name, deadline).await {
            Ok(slot) => Ok(slot),
            Err(_) => Err(PoolError::Budget {
                tenant: self.tenant.name.clone(),
                waited: wait,
                used: self.budget.used(),
                limit: self.budget.limit(),
            }),
        }
    }

    fn timeout(&self, waited: Duration, waiting: usize) -> PoolError {
        PoolError::Timeout {
            tenant: self.tenant.name.clone(),
            waited,
            busy: self.capacity.in_use(),
            size: self.capacity.size(),
            waiting,
        }
    }

    /// Pops the most recently used idle connection that still looks alive.
    fn take_idle(&self) -> Option<Idle> {
        loop {
            let idle = self.idle.lock().ok()?.pop_back()?;
            self.metrics.idle.decrement(1.0);
            if idle.opened.epoch != self.gate.epoch() {
                tracing::debug!(
                    backend = idle.conn.id,
                    "idle backend connection predates a schema change; closed"
                );
                continue;
            }
            if idle.conn.looks_healthy() {
                return Some(idle);
            }
            tracing::debug!(
                backend = idle.conn.id,
                "idle backend connection went away; discarded"
            );
        }
    }

    /// Returns a clean connection to the pool, or closes it when the pool is over its size,
    /// retired, or another tenant is waiting for the budget.
    pub fn release(&self, lease: Lease) {
        let Lease {
            mut conn,
            slot,
            opened,
            _permit,
            _in_flight,
            _busy,
        } = lease;
        drop(_busy);
        drop(_permit);
        drop(_in_flight);
        self.metrics.in_use.set(self.capacity.in_use() as f64);

        let over_size = self.open.load(Ordering::Acquire) > self.capacity.size();
        let yield_slot = self.budget.over_limit()
            || (self.budget.under_pressure() && self.waiting.load(Ordering::Acquire) == 0);
        if over_size || yield_slot {
            return;
        }

        conn.idle_since = Instant::now();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        // Checked under the lock that `close` takes, so nothing is idled in a retired pool.
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        idle.push_back(Idle { conn, slot, opened });
        self.metrics.idle.increment(1.0);
    }

    /// Drops a connection that cannot be reused.
    pub fn discard(&self, lease: Lease) {
        tracing::debug!(tenant = %self.tenant.name, backend = lease.conn.id, "backend connection discarded");
        drop(lease);
        self.metrics.in_use.set(self.capacity.in_use() as f64);
    }

    /// When its least recently used idle connection went idle, if it has one.
    pub fn oldest_idle_since(&self) -> Option<Instant> {
        self.idle.lock().ok()?.front().map(|i| i.conn.idle_since)
    }

    /// Closes the least recently used idle connection; false if there was none.
    pub fn evict_oldest_idle(&self) -> bool {
        let evicted = self.idle.lock().ok().and_then(|mut idle| idle.pop_front());
        match evicted {
            Some(idle) => {
                self.metrics.idle.decrement(1.0);
                drop(idle);
                true
            }
            None => false,
        }
    }

    /// Changes the pool size. Idle connections above the new size close at once; busy
    /// ones close as they come back. A transaction in flight is never touched.
    pub fn resize(&self, size: usize) {
        if size == self.capacity.size() {
            return;
        }
        self.capacity.resize(size);
        self.metrics.size.set(size as f64);

        while self.open.load(Ordering::Acquire) > size && self.evict_oldest_idle() {}
    }

    /// The current size.
    pub fn size(&self) -> usize {
        self.capacity.size()
    }

    /// Connections open now (idle and in use).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Closes connections idle for longer than the idle timeout.
    pub fn reap_idle(&self) {
        let limit = self.settings.idle_timeout;
        let expired: Vec<Idle> = match self.idle.lock() {
            Ok(mut idle) => {
                let keep = idle
                    .iter()
                    .filter(|i| i.conn.idle_since.elapsed() < limit)
                    .count();
                let cut = idle.len() - keep;
                idle.drain(..cut).collect()
            }
            Err(_) => return,
        };
        for idle in expired {
            self.metrics.idle.decrement(1.0);
            drop(idle);
        }
    }

    /// Stops handing out connections and closes the idle ones.
    pub fn close(&self) {
        let guard = self.idle.lock();
        self.closed.store(true, Ordering::Release);
        drop(guard);
        self.capacity.close();
        if let Some(id) = self.member.get() {
            self.budget.unregister(*id);
        }
        while self.evict_oldest_idle() {}
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

#[cfg(test)]
mod tests;
