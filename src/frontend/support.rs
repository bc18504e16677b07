//! Support sessions: an admin from `[[admins]]` or the catalog's `pgtenant.admins` logging in
//! to a tenant that is not theirs, to help its owner.
//!
//! Every such session is logged at INFO when it starts and ends, and, with a catalog, written
//! to `pgtenant.audit_log` (who, which tenant, from where, start and end). The start row is
//! written before the client gets `ReadyForQuery`: when it cannot be written, the login is
//! refused, so there is never an unaudited support session on a catalog-backed proxy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::{ClientError, ErrorKind, sqlstate};
use crate::server::Shared;
use crate::tenant::catalog::audit::{self, AuditEntry};
use crate::tenant::catalog::{self, CatalogError};

/// How long the audit row may take to write before the login is refused.
const AUDIT_TIMEOUT: Duration = Duration::from_secs(2);

/// An open support session; dropping it records the end.
#[derive(Debug)]
pub struct SupportSession {
    shared: Arc<Shared>,
    audit_id: Option<i64>,
    admin: String,
    tenant: String,
    started: Instant,
}

/// Records the start of `admin`'s session on `tenant`.
pub async fn start(
    shared: &Arc<Shared>,
    admin: &str,
    tenant: &str,
    client_addr: Option<String>,
) -> Result<SupportSession, ClientError> {
    let audit_id = if shared.config().catalog.is_some() {
        let entry = AuditEntry {
            actor: admin.to_owned(),
            action: "session.support".into(),
            tenant: Some(tenant.to_owned()),
            client_addr: client_addr.clone(),
            detail: None,
        };
        Some(write_start(shared, &entry).await?)
    } else {
        None
    };

    tracing::info!(
        admin,
        tenant,
        client_addr,
        audit_id,
        "support session started"
    );
    Ok(SupportSession {
        shared: shared.clone(),
        audit_id,
        admin: admin.to_owned(),
        tenant: tenant.to_owned(),
        started: Instant::now(),
    })
}

async fn write_start(shared: &Shared, entry: &AuditEntry) -> Result<i64, ClientError> {
    let unavailable = |why: String| {
        crate::metrics::support_session("refused");
        tracing::warn!(
            admin = entry.actor,
            why,
            "support session refused: no audit log"
        );
        ClientError::fatal(
            ErrorKind::Config,
            sqlstate::CANNOT_CONNECT_NOW,
            "support sessions are refused while the audit log cannot be written",
        )
    };
    match tokio::time::timeout(AUDIT_TIMEOUT, record(shared, entry)).await {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(error)) => Err(unavailable(error.to_string())),
        Err(_) => Err(unavailable(format!("no answer within {AUDIT_TIMEOUT:?}"))),
    }
}

/// Writes through the catalog watcher's connection, or a connection of its own while the
/// watcher is (re)connecting.
async fn record(shared: &Shared, entry: &AuditEntry) -> Result<i64, CatalogError> {
    match shared.catalog_client() {
        Some(client) => audit::record(client.as_ref(), entry).await,
        None => {
            let client = catalog::connect(&shared.config()).await?;
            audit::record(&client, entry).await
        }
    }
}

impl Drop for SupportSession {
    fn drop(&mut self) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        tracing::info!(
            admin = self.admin,
            tenant = self.tenant,
            duration_ms,
            "support session ended"
        );

        let (Some(id), Some(client)) = (self.audit_id, self.shared.catalog_client()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = audit::close(client.as_ref(), id).await {
                    tracing::warn!(%error, audit_id = id, "cannot record the end of a support session");
                }
            });
        }
    }
}
