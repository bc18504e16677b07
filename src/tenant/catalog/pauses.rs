//! The proxy's side of the pause protocol: reads `pgtenant.pauses`, closes and opens the
//! tenants' pause gates to match, and acknowledges each pause once this proxy has drained
//! the tenant.
//!
//! Runs inside the catalog watcher: on a `pgtenant_pause` notification, on every
//! (re)connection and on every periodic reload. A pause's deadline is computed from the
//! time the database says is left (`expires_at - now()`), so clocks of other hosts do not
//! matter; a pause longer than [`MAX_PAUSE`] is held for [`MAX_PAUSE`]. Each
//! acknowledgement is a task that waits for the gate to drain and then sends
//! `NOTIFY pgtenant_pause_ack, '<token> <proxy name>'` on the watcher's connection (the
//! `NOTIFY` statement needs no privilege; `pg_notify()` is revoked from `PUBLIC`); it ends
//! without a word if the pause ends first. On a new connection every pause in force is
//! acknowledged again, because the runner tells proxies apart by the connection's pid.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::{CatalogError, PAUSE_ACK_CHANNEL, describe, field, query_error};
use crate::backend::sync::quote_literal;
use crate::pool::pause::{Closing, PauseGate, PauseGates};

/// The longest pause a proxy holds, whatever `expires_at` says.
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

/// One row of `pgtenant.pauses`.
#[derive(Debug, Clone, PartialEq)]
pub struct PauseRow {
    /// The paused tenant.
    pub tenant: String,
    /// The pause's token.
    pub token: String,
    /// Who asked for it.
    pub requested_by: String,
    /// Time left until `expires_at`, by the database's clock; zero once it passed.
    pub remaining: Duration,
}

/// Where acknowledgements go: the watcher's connection and the name the database knows it by.
#[derive(Debug, Clone)]
pub struct Acks {
    /// The watcher's connection.
    pub client: Arc<Client>,
    /// Its `application_name`, as `pg_stat_activity` shows it.
    pub proxy: String,
}

/// Reads every pause.
pub async fn load(client: &Client) -> Result<Vec<PauseRow>, CatalogError> {
    let rows = client
        .query(
            "SELECT tenant, token, requested_by, \
                    GREATEST(0, EXTRACT(EPOCH FROM \
                        LEAST(expires_at, now() + make_interval(secs => $1)) - now()))::float8 \
             FROM pgtenant.pauses ORDER BY tenant",
            &[&MAX_PAUSE.as_secs_f64()],
        )
        .await
        .map_err(query_error("read pauses"))?;

    rows.iter()
        .map(|row| {
            let seconds: f64 = field(row, 3, "pauses")?;
            Ok(PauseRow {
                tenant: field(row, 0, "pauses")?,
                token: field(row, 1, "pauses")?,
                requested_by: field(row, 2, "pauses")?,
                remaining: Duration::try_from_secs_f64(seconds).unwrap_or_default(),
            })
        })
        .collect()
}

/// Closes the gates of paused tenants and opens the others. With `acks`, each pause newly
/// taken (or, when `fresh`, every pause in force) is acknowledged once drained.
pub fn reconcile(gates: &PauseGates, rows: &[PauseRow], acks: Option<&Acks>, fresh: bool) {
    for row in rows {
        let gate = gates.for_tenant(&row.tenant);
        if row.remaining.is_zero() {
            gate.lapse(&row.token);
            continue;
        }

        let closing = gate.close(&row.token, &row.requested_by, row.remaining);
        let new = matches!(closing, Closing::Paused | Closing::Replaced);
        let held = new || closing == Closing::Unchanged;
        if let Some(acks) = acks.filter(|_| new || (fresh && held)) {
            spawn_ack(gate, row, acks.clone());
        }
    }

    let present: HashSet<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
    for (tenant, gate) in gates.closed() {
        if !present.contains(tenant.as_str()) {
            gate.resume();
        }
    }
}

/// Acknowledges the pause once the tenant has nothing in flight here.
fn spawn_ack(gate: Arc<PauseGate>, row: &PauseRow, acks: Acks) {
    let (tenant, token) = (row.tenant.clone(), row.token.clone());
    tokio::spawn(async move {
        if !gate.drained(&token).await {
            tracing::debug!(%tenant, %token, "pause ended before the tenant drained");
            return;
        }
        send_ack(&acks, &tenant, &token).await;
    });
}

async fn send_ack(acks: &Acks, tenant: &str, token: &str) {
    let payload = format!("{token} {}", acks.proxy);
    let sql = format!("NOTIFY {PAUSE_ACK_CHANNEL}, {}", quote_literal(&payload));
    match acks.client.batch_execute(&sql).await {
        Ok(()) => tracing::info!(%tenant, %token, "tenant drained; pause acknowledged"),
        Err(error) => tracing::warn!(
            %tenant,
            %token,
            error = %describe(&error),
            "could not acknowledge a pause"
        ),
    }
}
