//! Which tenants have live traffic when a wave starts.
//!
//! A tenant's pause lasts as long as its migration transaction, and on a small machine that
//! transaction slows down several times over when other tenants migrate alongside it. Only
//! tenants with clients feel the pause, so a rollout with `busy_tenants = "solo"` runs each
//! busy tenant while no other tenant migrates, and the quiet majority concurrently.
//!
//! Busy means: one of the tenant role's sessions in this database is inside a statement or
//! transaction now, or finished one within [`BUSY_WINDOW`]. Proxies keep idle pooled
//! connections open, so an open connection alone says nothing. Without the privilege to
//! read other roles' activity (`pg_read_all_stats`), every tenant looks quiet and the
//! rollout runs as with `shared`.

use std::collections::HashSet;

use tokio_postgres::Client;

use crate::control::TenantRecord;
use crate::control::{ControlError, error::query};
use crate::tenant::catalog::field;

/// How recently a session must have run something for its tenant to count as busy.
pub const BUSY_WINDOW_SECS: u32 = 10;

/// The names of `tenants` with live traffic.
pub async fn busy(
    control: &Client,
    tenants: &[&TenantRecord],
) -> Result<HashSet<String>, ControlError> {
    let roles: Vec<&str> = tenants.iter().map(|t| t.role.as_str()).collect();
    let sql = format!(
        "SELECT DISTINCT usename::text FROM pg_catalog.pg_stat_activity \
         WHERE datname = current_database() AND usename = ANY($1) \
           AND (state <> 'idle' OR state_change > now() - interval '{BUSY_WINDOW_SECS} seconds')"
    );
    let rows = control
        .query(&sql, &[&roles])
        .await
        .map_err(query("read tenant activity", "*"))?;

    let mut busy_roles = HashSet::with_capacity(rows.len());
    for row in &rows {
        let role: String = field(row, 0, "activity row")?;
        busy_roles.insert(role);
    }
    Ok(tenants
        .iter()
        .filter(|t| busy_roles.contains(&t.role))
        .map(|t| t.name.clone())
        .collect())
}
