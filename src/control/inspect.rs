//! Reading tenants for `tenant list` and `tenant show`. Nothing here returns a secret: logins
//! are listed by name, never with their verifier, and role passwords are not read at all.

use tokio_postgres::{Client, Row};

use super::error::{ControlError, query};
use crate::tenant::catalog::field;

/// Timestamps are shown in UTC, to the second.
const TIME: &str = "'YYYY-MM-DD HH24:MI:SS'";

/// How many audit rows `show` returns.
const RECENT_AUDIT: i64 = 10;

/// One line of `tenant list`.
#[derive(Debug, Clone)]
pub struct TenantRow {
    /// Name.
    pub name: String,
    /// Schema.
    pub schema: String,
    /// Pinned tier, or `auto`.
    pub tier: String,
    /// Pool mode.
    pub pool_mode: String,
    /// State.
    pub state: String,
    /// Creation time (UTC).
    pub created: String,
}

/// Everything `tenant show` prints.
#[derive(Debug, Clone)]
pub struct TenantDetails {
    /// The list columns.
    pub row: TenantRow,
    /// Backend role.
    pub role: String,
    /// Pool size, when set.
    pub pool_size: Option<i32>,
    /// Rate limit, when set.
    pub transactions_per_second: Option<f64>,
    /// Burst, when set.
    pub burst: Option<i32>,
    /// Client connection cap, when set.
    pub max_client_connections: Option<i32>,
    /// Last change (UTC).
    pub updated: String,
    /// Client logins: name and creation time.
    pub logins: Vec<(String, String)>,
    /// Migrations: version, name, status, finish time, duration in ms.
    pub migrations: Vec<MigrationRow>,
    /// The newest audit rows, newest first.
    pub audit: Vec<AuditRow>,
}

/// A migration as recorded.
#[derive(Debug, Clone)]
pub struct MigrationRow {
    /// Version.
    pub version: String,
    /// Name.
    pub name: String,
    /// Status.
    pub status: String,
    /// When it finished (UTC), if it did.
    pub finished: Option<String>,
    /// How long it took.
    pub duration_ms: Option<f64>,
}

/// An audit row.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// When (UTC).
    pub at: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Details.
    pub detail: Option<String>,
}

fn list_columns() -> String {
    format!(
        "name, schema_name, coalesce(tier, 'auto'), pool_mode, state, \
         to_char(created_at AT TIME ZONE 'UTC', {TIME})"
    )
}

fn tenant_row(row: &Row) -> Result<TenantRow, ControlError> {
    let owner = "tenants";
    Ok(TenantRow {
        name: field(row, 0, owner)?,
        schema: field(row, 1, owner)?,
        tier: field(row, 2, owner)?,
        pool_mode: field(row, 3, owner)?,
        state: field(row, 4, owner)?,
        created: field(row, 5, owner)?,
    })
}

/// Every tenant in the catalog, by name.
pub async fn list(client: &Client) -> Result<Vec<TenantRow>, ControlError> {
    let sql = format!(
        "SELECT {} FROM pgtenant.tenants ORDER BY name",
        list_columns()
    );
    let rows = client
        .query(sql.as_str(), &[])
        .await
        .map_err(query("list tenants", "*"))?;
    rows.iter().map(tenant_row).collect()
}

/// One tenant's details; an unknown name is an error.
pub async fn show(client: &Client, name: &str) -> Result<TenantDetails, ControlError> {
    let sql = format!(
        "SELECT {}, role_name, pool_size, transactions_per_second, burst, \
                max_client_connections, to_char(updated_at AT TIME ZONE 'UTC', {TIME}) \
         FROM pgtenant.tenants WHERE name = $1",
        list_columns()
    );
    let row = client
        .query_opt(sql.as_str(), &[&name])
        .await
        .map_err(query("read the tenant", name))?
        .ok_or_else(|| ControlError::UnknownTenant(name.to_owned()))?;

    let owner = format!("tenant {name:?}");
    Ok(TenantDetails {
        row: tenant_row(&row)?,
        role: field(&row, 6, &owner)?,
        pool_size: field(&row, 7, &owner)?,
        transactions_per_second: field(&row, 8, &owner)?,
        burst: field(&row, 9, &owner)?,
        max_client_connections: field(&row, 10, &owner)?,
        updated: field(&row, 11, &owner)?,
        logins: logins(client, name).await?,
        migrations: migrations(client, name).await?,
        audit: audit(client, name).await?,
    })
}

async fn logins(client: &Client, name: &str) -> Result<Vec<(String, String)>, ControlError> {
    let sql = format!(
        "SELECT user_name, to_char(created_at AT TIME ZONE 'UTC', {TIME}) \
         FROM pgtenant.credentials WHERE tenant = $1 ORDER BY user_name"
    );
    let rows = client
        .query(sql.as_str(), &[&name])
        .await
        .map_err(query("read logins", name))?;
    rows.iter()
        .map(|r| Ok((field(r, 0, "credentials")?, field(r, 1, "credentials")?)))
        .collect()
}

async fn migrations(client: &Client, name: &str) -> Result<Vec<MigrationRow>, ControlError> {
    let sql = format!(
        "SELECT version, name, status, to_char(finished_at AT TIME ZONE 'UTC', {TIME}), \
                duration_ms \
         FROM pgtenant.migrations WHERE tenant = $1 \
         ORDER BY length(version), version"
    );
    let rows = client
        .query(sql.as_str(), &[&name])
        .await
        .map_err(query("read migrations", name))?;
    rows.iter()
        .map(|r| {
            Ok(MigrationRow {
                version: field(r, 0, "migrations")?,
                name: field(r, 1, "migrations")?,
                status: field(r, 2, "migrations")?,
                finished: field(r, 3, "migrations")?,
                duration_ms: field(r, 4, "migrations")?,
            })
        })
        .collect()
}

async fn audit(client: &Client, name: &str) -> Result<Vec<AuditRow>, ControlError> {
    let sql = format!(
        "SELECT to_char(at AT TIME ZONE 'UTC', {TIME}), actor, action, detail \
         FROM pgtenant.audit_log WHERE tenant = $1 ORDER BY at DESC, id DESC LIMIT $2"
    );
    let rows = client
        .query(sql.as_str(), &[&name, &RECENT_AUDIT])
        .await
        .map_err(query("read the audit log", name))?;
    rows.iter()
        .map(|r| {
            Ok(AuditRow {
                at: field(r, 0, "audit_log")?,
                actor: field(r, 1, "audit_log")?,
                action: field(r, 2, "audit_log")?,
                detail: field(r, 3, "audit_log")?,
            })
        })
        .collect()
}
