//! What the catalog says about migrations: per version, how many tenants are at each status;
//! per tenant, each version's record. Read by `pgtenant migrate status` and `plan`.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use tokio_postgres::Client;

use super::MigrationSet;
use crate::control::{ControlError, error::query};
use crate::tenant::catalog::field;

/// Status counts for one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCounts {
    /// Version.
    pub version: String,
    /// Name, from the file (or the catalog when the file is gone).
    pub name: String,
    /// Tenants per status; `pending` includes tenants with no record yet.
    pub counts: BTreeMap<String, i64>,
}

/// One tenant's record of one version.
#[derive(Debug, Clone)]
pub struct TenantVersion {
    /// Version.
    pub version: String,
    /// Name.
    pub name: String,
    /// `pending` (no record), `running`, `applied`, `failed` or `rolled_back`.
    pub status: String,
    /// When the last attempt started.
    pub started_at: Option<SystemTime>,
    /// How long it took, in milliseconds.
    pub duration_ms: Option<f64>,
    /// The last error.
    pub error: Option<String>,
    /// Who ran it.
    pub applied_by: Option<String>,
    /// Schema fingerprint after it.
    pub fingerprint_after: Option<String>,
}

/// Per version of `set` (and versions only the catalog knows), tenants at each status.
pub async fn by_version(
    control: &Client,
    set: &MigrationSet,
) -> Result<Vec<VersionCounts>, ControlError> {
    let tenants = live_tenant_count(control).await?;
    let rows = control
        .query(
            "SELECT m.version, min(m.name), m.status, count(*) FROM pgtenant.migrations m \
             JOIN pgtenant.tenants t ON t.name = m.tenant WHERE t.state <> 'archived' \
             GROUP BY m.version, m.status",
            &[],
        )
        .await
        .map_err(query("count migrations", "*"))?;

    let mut versions: Vec<VersionCounts> = set
        .migrations()
        .iter()
        .map(|m| counts_for(&m.version, &m.name))
        .collect();
    for row in &rows {
        add_row(&mut versions, row)?;
    }
    for entry in &mut versions {
        let recorded: i64 = entry.counts.values().sum();
        *entry.counts.entry("pending".into()).or_default() += (tenants - recorded).max(0);
    }
    Ok(versions)
}

fn counts_for(version: &str, name: &str) -> VersionCounts {
    VersionCounts {
        version: version.to_owned(),
        name: name.to_owned(),
        counts: BTreeMap::new(),
    }
}

fn add_row(
    versions: &mut Vec<VersionCounts>,
    row: &tokio_postgres::Row,
) -> Result<(), ControlError> {
    let owner = "migration status row";
    let version: String = field(row, 0, owner)?;
    let name: String = field(row, 1, owner)?;
    let status: String = field(row, 2, owner)?;
    let count: i64 = field(row, 3, owner)?;

    if !versions.iter().any(|v| v.version == version) {
        versions.push(counts_for(&version, &name));
    }
    if let Some(entry) = versions.iter_mut().find(|v| v.version == version) {
        *entry.counts.entry(status).or_default() += count;
    }
    Ok(())
}

async fn live_tenant_count(control: &Client) -> Result<i64, ControlError> {
    let row = control
        .query_one(
            "SELECT count(*) FROM pgtenant.tenants WHERE state <> 'archived'",
            &[],
        )
        .await
        .map_err(query("count tenants", "*"))?;
    Ok(field(&row, 0, "tenant count")?)
}

/// Every version of `set` (and recorded ones without a file) for `tenant`.
pub async fn of_tenant(
    control: &Client,
    set: &MigrationSet,
    tenant: &str,
) -> Result<Vec<TenantVersion>, ControlError> {
    let rows = control
        .query(
            "SELECT version, name, status, started_at, duration_ms, error, applied_by, \
             fingerprint_after FROM pgtenant.migrations WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .map_err(query("read the tenant's migrations", tenant))?;

    let mut recorded = Vec::with_capacity(rows.len());
    for row in &rows {
        recorded.push(tenant_version(row, tenant)?);
    }
    let mut all: Vec<TenantVersion> = set
        .migrations()
        .iter()
        .map(|m| take_or_pending(&mut recorded, &m.version, &m.name))
        .collect();
    all.extend(recorded);
    Ok(all)
}

fn take_or_pending(recorded: &mut Vec<TenantVersion>, version: &str, name: &str) -> TenantVersion {
    match recorded.iter().position(|r| r.version == version) {
        Some(at) => recorded.remove(at),
        None => TenantVersion {
            version: version.to_owned(),
            name: name.to_owned(),
            status: "pending".into(),
            started_at: None,
            duration_ms: None,
            error: None,
            applied_by: None,
            fingerprint_after: None,
        },
    }
}

fn tenant_version(row: &tokio_postgres::Row, tenant: &str) -> Result<TenantVersion, ControlError> {
    let owner = format!("migration row of tenant {tenant:?}");
    Ok(TenantVersion {
        version: field(row, 0, &owner)?,
        name: field(row, 1, &owner)?,
        status: field(row, 2, &owner)?,
        started_at: field(row, 3, &owner)?,
        duration_ms: field(row, 4, &owner)?,
        error: field(row, 5, &owner)?,
        applied_by: field(row, 6, &owner)?,
        fingerprint_after: field(row, 7, &owner)?,
    })
}

/// Applied versions of every tenant: tenant → versions.
pub async fn applied_by_tenant(
    control: &Client,
) -> Result<HashMap<String, Vec<String>>, ControlError> {
    let rows = control
        .query(
            "SELECT tenant, version FROM pgtenant.migrations WHERE status = 'applied'",
            &[],
        )
        .await
        .map_err(query("read applied migrations", "*"))?;

    let mut applied: HashMap<String, Vec<String>> = HashMap::new();
    for row in &rows {
        let tenant: String = field(row, 0, "applied migration row")?;
        let version: String = field(row, 1, "applied migration row")?;
        applied.entry(tenant).or_default().push(version);
    }
    Ok(applied)
}
