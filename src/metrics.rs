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

use crate::protocol::ErrorKind;

const CLIENTS: &str = "pgtenant_client_connections";
const PINNED: &str = "pgtenant_pinned_clients";
const BACKENDS: &str = "pgtenant_backend_connections";
const TRANSACTIONS: &str = "pgtenant_transactions_total";
const ERRORS: &str = "pgtenant_errors_total";
const POOL_WAIT: &str = "pgtenant_pool_wait_seconds";
const LOGINS: &str = "pgtenant_logins_total";

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
        "Time a client waited for a backend connection, per tenant."
    );
    describe_counter!(LOGINS, Unit::Count, "Login attempts, by result.");
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

/// A login finished with `result` (`ok`, `failed`).
pub fn login(result: &'static str) {
    counter!(LOGINS, "result" => result).increment(1);
}
