//! The catalog's audit log: who did what to which tenant, from where, and when it ended.
//!
//! The CLI records its changes (`tenant create`, `suspend`, …) in the transaction that makes
//! them; the proxy records support sessions of admins when they start and closes the row when
//! they end. Both write one row per event; rows are never updated except for `ended_at`.

use tokio_postgres::GenericClient;

use super::{CatalogError, query_error};

/// One event.
#[derive(Debug, Clone, Default)]
pub struct AuditEntry {
    /// Who: a CLI user (`cli:<os user>`) or an admin login name.
    pub actor: String,
    /// What, as `noun.verb`: `tenant.create`, `session.admin`, ….
    pub action: String,
    /// The tenant it concerns.
    pub tenant: Option<String>,
    /// Where from: a client address or a host name.
    pub client_addr: Option<String>,
    /// Anything else worth keeping, as text.
    pub detail: Option<String>,
}

/// Appends `entry`; returns its id.
pub async fn record(client: &impl GenericClient, entry: &AuditEntry) -> Result<i64, CatalogError> {
    let row = client
        .query_one(
            "INSERT INTO pgtenant.audit_log (actor, action, tenant, client_addr, detail) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
            &[
                &entry.actor,
                &entry.action,
                &entry.tenant,
                &entry.client_addr,
                &entry.detail,
            ],
        )
        .await
        .map_err(query_error("write the audit log"))?;
    row.try_get(0)
        .map_err(query_error("read the new audit log id"))
}

/// Marks the event `id` as ended now.
pub async fn close(client: &impl GenericClient, id: i64) -> Result<(), CatalogError> {
    client
        .execute(
            "UPDATE pgtenant.audit_log SET ended_at = now() WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(query_error("close an audit log entry"))?;
    Ok(())
}

/// The actor name for CLI commands: the operating-system user running them.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}
