//! Every metric pgtenant records: names, units and help text in one place, recorded through
//! the `metrics` facade and exposed by the Prometheus exporter when `metrics_listen` is set.
//!
//! Labels are bounded: `tenant` comes from the configuration or catalog, `kind` from
//! [`ErrorKind`]. No metric is labelled by client address or query text.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
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

/// A client logged in.
pub fn client_connected(tenant: &str) {
    gauge!(CLIENTS, "tenant" => tenant.to_owned()).increment(1.0);
}

/// A client left.
pub fn client_disconnected(tenant: &str) {
    gauge!(CLIENTS, "tenant" => tenant.to_owned()).decrement(1.0);
}

/// A client became pinned (`+1`) or a pinned client left (`-1`).
pub fn pinned(delta: f64) {
    gauge!(PINNED).increment(delta);
}

/// A backend connection opened.
pub fn backend_opened(tenant: &str) {
    gauge!(BACKENDS, "tenant" => tenant.to_owned()).increment(1.0);
}

/// A backend connection closed.
pub fn backend_closed(tenant: &str) {
    gauge!(BACKENDS, "tenant" => tenant.to_owned()).decrement(1.0);
}

/// A transaction finished on a backend.
pub fn transaction(tenant: &str) {
    counter!(TRANSACTIONS, "tenant" => tenant.to_owned()).increment(1);
}

/// The proxy raised an error of this kind.
pub fn error(kind: ErrorKind) {
    counter!(ERRORS, "kind" => kind.as_str()).increment(1);
}

/// A client waited this long for a backend.
pub fn pool_wait(tenant: &str, waited: Duration) {
    histogram!(POOL_WAIT, "tenant" => tenant.to_owned()).record(waited.as_secs_f64());
}

/// A login finished with `result` (`ok`, `failed`).
pub fn login(result: &'static str) {
    counter!(LOGINS, "result" => result).increment(1);
}
