//! Every metric pgtenant records: names, units and help text in one place, recorded through
//! the `metrics` facade and exposed by the Prometheus exporter when `metrics_listen` is set.
//!
//! Labels are bounded: `tenant` comes from the configuration or catalog, `kind` from
//! [`ErrorKind`]. No metric is labelled by client address or query text.

use std::net::SocketAddr;

use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

use crate::config::Tier;
use crate::protocol::ErrorKind;

const CLIENTS: &str = "pgtenant_client_connections";
const PINNED: &str = "pgtenant_pinned_clients";
const BACKENDS: &str = "pgtenant_backend_connections";
const TRANSACTIONS: &str = "pgtenant_transactions_total";
const ERRORS: &str = "pgtenant_errors_total";
const POOL_WAIT: &str = "pgtenant_pool_wait_seconds";
const LOGINS: &str = "pgtenant_logins_total";
const POOL_SIZE: &str = "pgtenant_pool_size";
const POOL_IN_USE: &str = "pgtenant_pool_in_use";
const POOL_IDLE: &str = "pgtenant_pool_idle";
const POOL_WAITING: &str = "pgtenant_pool_waiting";
const BUDGET_USED: &str = "pgtenant_budget_used";
const BUDGET_LIMIT: &str = "pgtenant_budget_limit";
const BUDGET_EVICTIONS: &str = "pgtenant_budget_evictions_total";
const TIER_CHANGES: &str = "pgtenant_tier_changes_total";
const CATALOG_RELOADS: &str = "pgtenant_catalog_reloads_total";
const SUPPORT_SESSIONS: &str = "pgtenant_support_sessions_total";
const PAUSED_TENANTS: &str = "pgtenant_paused_tenants";
const PAUSES: &str = "pgtenant_pauses_total";
const PAUSE_WAIT: &str = "pgtenant_pause_wait_seconds";

/// Registers help text and units; call once at start.
pub fn describe() {
    describe_gauge!(
        CLIENTS,
        Unit::Count,
        "Client connections logged in, per tenant."
    );
    describe_gauge!(
        PINNED,
        Unit::Count,
        "Clients pinned to one backend for the rest of their session."
    );
    describe_gauge!(
        BACKENDS,
        Unit::Count,
        "Open backend connections, per tenant."
    );
    describe_counter!(
        TRANSACTIONS,
        Unit::Count,
        "Transactions relayed, per tenant."
    );
    describe_counter!(ERRORS, Unit::Count, "Errors the proxy raised, by kind.");
    describe_histogram!(
        POOL_WAIT,
        Unit::Seconds,
        "Time a client waited for a backend connection (pool queue and global budget), per \
         tenant; waits that ended in a 53300 timeout included."
    );
    describe_counter!(LOGINS, Unit::Count, "Login attempts, by result.");
    describe_gauge!(
        POOL_SIZE,
        Unit::Count,
        "Pool size (tier size or override), per tenant."
    );
    describe_gauge!(
        POOL_IN_USE,
        Unit::Count,
        "Backend connections in a transaction, per tenant."
    );
    describe_gauge!(
        POOL_IDLE,
        Unit::Count,
        "Idle backend connections, per tenant."
    );
    describe_gauge!(
        POOL_WAITING,
        Unit::Count,
        "Clients waiting for a backend, per tenant."
    );
    describe_gauge!(
        BUDGET_USED,
        Unit::Count,
        "Backend connections open under the global budget."
    );
    describe_gauge!(
        BUDGET_LIMIT,
        Unit::Count,
        "Global budget available to tenant pools."
    );
    describe_counter!(
        BUDGET_EVICTIONS,
        Unit::Count,
        "Idle connections closed to give their budget to another tenant."
    );
    describe_counter!(
        TIER_CHANGES,
        Unit::Count,
        "Tenant tier changes, by old and new tier."
    );
    describe_counter!(
        CATALOG_RELOADS,
        Unit::Count,
        "Catalog loads, by result: applied, unchanged, rejected, failed."
    );
    describe_counter!(
        SUPPORT_SESSIONS,
        Unit::Count,
        "Admin support sessions, by result: started, refused."
    );
    describe_gauge!(
        PAUSED_TENANTS,
        Unit::Count,
        "Tenants whose new transactions are held at the pause gate now."
    );
    describe_counter!(
        PAUSES,
        Unit::Count,
        "Pauses ended, by outcome: resumed, expired, replaced (a new pause took its place)."
    );
    describe_histogram!(
        PAUSE_WAIT,
        Unit::Seconds,
        "Time a transaction or login waited at a closed pause gate, per tenant."
    );
}

/// Starts the Prometheus endpoint.
pub fn install_exporter(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot start the metrics endpoint on {addr}: {e}"))?;
    describe();
    Ok(())
}

/// Handles of the per-tenant metrics, resolved once per pool so the data path records
/// without building labels.
#[derive(Debug, Clone)]
pub struct TenantMetrics {
    /// Logged-in clients.
    pub clients: Gauge,
    /// Open backend connections.
    pub backends: Gauge,
    /// Transactions relayed.
    pub transactions: Counter,
    /// Time waited for a backend.
    pub wait: Histogram,
    /// Pool size.
    pub size: Gauge,
    /// Connections in a transaction.
    pub in_use: Gauge,
    /// Idle connections.
    pub idle: Gauge,
    /// Waiting clients.
    pub waiting: Gauge,
}

impl TenantMetrics {
    /// Handles for `tenant`.
    pub fn new(tenant: &str) -> Self {
        let label = || ("tenant", tenant.to_owned());
        Self {
            clients: gauge!(CLIENTS, &[label()]),
            backends: gauge!(BACKENDS, &[label()]),
            transactions: counter!(TRANSACTIONS, &[label()]),
            wait: histogram!(POOL_WAIT, &[label()]),
            size: gauge!(POOL_SIZE, &[label()]),
            in_use: gauge!(POOL_IN_USE, &[label()]),
            idle: gauge!(POOL_IDLE, &[label()]),
            waiting: gauge!(POOL_WAITING, &[label()]),
        }
    }
}

/// A client became pinned (`+1`) or a pinned client left (`-1`).
pub fn pinned(delta: f64) {
    gauge!(PINNED).increment(delta);
}

/// The proxy raised an error of this kind.
pub fn error(kind: ErrorKind) {
    counter!(ERRORS, "kind" => kind.as_str()).increment(1);
}

/// Connections open under the budget.
pub fn budget_used(used: usize) {
    gauge!(BUDGET_USED).set(used as f64);
}

/// The budget's limit for tenant pools.
pub fn budget_limit(limit: usize) {
    gauge!(BUDGET_LIMIT).set(limit as f64);
}

/// An idle connection was closed for another tenant.
pub fn budget_eviction() {
    counter!(BUDGET_EVICTIONS).increment(1);
}

/// A tenant changed tier.
pub fn tier_change(from: Tier, to: Tier) {
    counter!(TIER_CHANGES, "from" => tier_label(from), "to" => tier_label(to)).increment(1);
}

fn tier_label(tier: Tier) -> &'static str {
    match tier {
        Tier::Hot => "hot",
        Tier::Warm => "warm",
        Tier::Cold => "cold",
    }
}

/// A login finished with `result` (`ok`, `failed`).
pub fn login(result: &'static str) {
    counter!(LOGINS, "result" => result).increment(1);
}

/// A catalog load ended with `result` (`applied`, `unchanged`, `rejected`, `failed`).
pub fn catalog_reload(result: &'static str) {
    counter!(CATALOG_RELOADS, "result" => result).increment(1);
}

/// A support session `started` or was `refused`.
pub fn support_session(result: &'static str) {
    counter!(SUPPORT_SESSIONS, "result" => result).increment(1);
}

/// A tenant was paused (`+1`) or its pause ended (`-1`).
pub fn paused_tenants(delta: f64) {
    gauge!(PAUSED_TENANTS).increment(delta);
}

/// A pause ended with `outcome` (`resumed`, `expired`, `replaced`).
pub fn pause_ended(outcome: &'static str) {
    counter!(PAUSES, "outcome" => outcome).increment(1);
}

/// The histogram of waits at `tenant`'s pause gate.
pub fn pause_wait(tenant: &str) -> Histogram {
    histogram!(PAUSE_WAIT, "tenant" => tenant.to_owned())
}
