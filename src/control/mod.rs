//! The control plane beside the data path: tenants created, changed and removed through the
//! catalog, and the demo fleet used by `pgtenant dev`, the tests and the benchmarks.
//!
//! `create` provisions a tenant in one transaction; `migrate` is the engine that brings a
//! tenant's schema up to the migration files; `manage` and `remove` change or remove existing
//! tenants; `inspect` reads them for `tenant list` and `tenant show`; `fit` refuses a change
//! after which the tenants' pinned pools would not fit in the budget; `pause` holds one
//! tenant's traffic at every proxy for the instant of a schema change. Every change writes its
//! audit row in the transaction that makes it, and every commit notifies the proxies through
//! the catalog trigger. `provision` holds the role and schema SQL, `demo` the static demo
//! tenants the test harness uses.

pub mod create;
pub mod demo;
pub mod error;
pub mod fit;
pub mod inspect;
pub mod manage;
pub mod migrate;
pub mod names;
pub mod pause;
pub mod provision;
pub mod remove;

use tokio_postgres::{Client, GenericClient, Transaction};

pub use error::ControlError;

use crate::config::{Config, PoolMode, Tier};
use crate::tenant::catalog::{self, audit};
use error::query;

/// Connects as pgtenant's role and installs or upgrades the catalog. The server's notices
/// (`IF NOT EXISTS` skips, cascades) are not shown: commands report what they did themselves.
pub async fn open(config: &Config) -> Result<Client, ControlError> {
    let mut client = catalog::connect(config).await?;
    client
        .batch_execute("SET client_min_messages TO warning")
        .await
        .map_err(query("set client_min_messages", "*"))?;
    catalog::install(&mut client).await?;
    Ok(client)
}

/// A tier as the catalog spells it.
pub fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Hot => "hot",
        Tier::Warm => "warm",
        Tier::Cold => "cold",
    }
}

/// A pool mode as the catalog spells it.
pub fn pool_mode_name(mode: PoolMode) -> &'static str {
    match mode {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

/// A catalog tenant as the changing commands need it.
#[derive(Debug, Clone)]
pub struct TenantRecord {
    /// Name.
    pub name: String,
    /// Schema.
    pub schema: String,
    /// Role.
    pub role: String,
    /// `active`, `suspended` or `archived`.
    pub state: String,
}

/// The columns [`TenantRecord::from_row`] reads, in its order.
pub const TENANT_RECORD_COLUMNS: &str = "name, schema_name, role_name, state";

impl TenantRecord {
    /// A record from a row that starts with [`TENANT_RECORD_COLUMNS`].
    pub fn from_row(row: &tokio_postgres::Row, owner: &str) -> Result<Self, ControlError> {
        Ok(Self {
            name: catalog::field(row, 0, owner)?,
            schema: catalog::field(row, 1, owner)?,
            role: catalog::field(row, 2, owner)?,
            state: catalog::field(row, 3, owner)?,
        })
    }
}

/// Reads and row-locks the tenant `name` in `tx`; an unknown name is an error.
pub async fn lock_tenant(tx: &Transaction<'_>, name: &str) -> Result<TenantRecord, ControlError> {
    read_tenant(tx, name, "FOR UPDATE").await
}

/// Reads the tenant `name` without locking it; an unknown name is an error.
pub async fn find_tenant(
    client: &impl GenericClient,
    name: &str,
) -> Result<TenantRecord, ControlError> {
    read_tenant(client, name, "").await
}

async fn read_tenant(
    client: &impl GenericClient,
    name: &str,
    lock: &str,
) -> Result<TenantRecord, ControlError> {
    let sql =
        format!("SELECT {TENANT_RECORD_COLUMNS} FROM pgtenant.tenants WHERE name = $1 {lock}");
    let row = client
        .query_opt(&sql, &[&name])
        .await
        .map_err(query("read the tenant", name))?
        .ok_or_else(|| ControlError::UnknownTenant(name.to_owned()))?;
    TenantRecord::from_row(&row, &format!("tenant {name:?}"))
}

/// Writes a CLI audit row for `action` on `tenant`.
pub async fn audit_cli(
    tx: &Transaction<'_>,
    action: &str,
    tenant: &str,
    detail: Option<String>,
) -> Result<(), ControlError> {
    let entry = audit::AuditEntry {
        actor: audit::cli_actor(),
        action: action.to_owned(),
        tenant: Some(tenant.to_owned()),
        client_addr: None,
        detail,
    };
    audit::record(tx, &entry).await?;
    Ok(())
}

/// Refuses to change an archived tenant.
pub(crate) fn refuse_archived(record: &TenantRecord) -> Result<(), ControlError> {
    if record.state != "archived" {
        return Ok(());
    }
    Err(ControlError::WrongState {
        tenant: record.name.clone(),
        state: record.state.clone(),
        message: "only `tenant drop` applies to archived tenants",
    })
}
