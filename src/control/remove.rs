//! Removing a tenant: `drop` deletes its schema, role and catalog rows; `archive` keeps the
//! data in a renamed schema, makes the role unable to log in and marks the catalog row
//! `archived`, which proxies stop serving. Either is one transaction with its audit row.
//! Afterwards the role's remaining backend connections are ended, so a proxy's idle pool
//! does not keep them.

use tokio_postgres::{Client, Transaction};

use super::error::{ControlError, query};
use super::provision::quote_ident;
use super::{TenantRecord, audit_cli, lock_tenant};
use crate::config::Config;

/// The schema suffix is `_archived_` and a 14-digit UTC timestamp.
const ARCHIVE_SUFFIX_LEN: usize = 24;

/// How long `drop` waits for sessions still using the tenant's tables.
const LOCK_TIMEOUT: &str = "10s";

/// What became of a removed tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// Schema, role and rows are gone.
    Dropped,
    /// The data is kept in this schema.
    Archived {
        /// The renamed schema.
        schema: String,
    },
}

/// Drops the tenant, or with `archive` archives it.
pub async fn remove(config: &Config, name: &str, archive: bool) -> Result<Removed, ControlError> {
    let mut client = super::open(config).await?;
    let tx = client.transaction().await.map_err(query("begin", name))?;
    let record = lock_tenant(&tx, name).await?;
    let role_oid = role_oid(&tx, &record).await?;

    let removed = if archive {
        archive_steps(&tx, &record).await?
    } else {
        drop_steps(&tx, &record).await?
    };
    tx.commit().await.map_err(query("commit", name))?;

    end_sessions(&client, &record.role, role_oid).await;
    Ok(removed)
}

async fn drop_steps(tx: &Transaction<'_>, record: &TenantRecord) -> Result<Removed, ControlError> {
    let name = record.name.as_str();
    let role = quote_ident(&record.role);
    let sql = format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'; \
         DROP SCHEMA IF EXISTS {} CASCADE",
        quote_ident(&record.schema)
    );
    tx.batch_execute(&sql)
        .await
        .map_err(query("drop the schema", name))?;

    tx.execute("DELETE FROM pgtenant.tenants WHERE name = $1", &[&name])
        .await
        .map_err(query("delete the catalog rows", name))?;

    let sql = format!("DROP OWNED BY {role}; DROP ROLE {role}");
    tx.batch_execute(&sql)
        .await
        .map_err(query("drop the role", name))?;

    audit_cli(
        tx,
        "tenant.drop",
        name,
        Some(format!("schema={}", record.schema)),
    )
    .await?;
    Ok(Removed::Dropped)
}

async fn archive_steps(
    tx: &Transaction<'_>,
    record: &TenantRecord,
) -> Result<Removed, ControlError> {
    let name = record.name.as_str();
    super::refuse_archived(record)?;

    let schema = archived_schema_name(tx, record).await?;
    let sql = format!(
        "ALTER SCHEMA {} RENAME TO {}; ALTER ROLE {} NOLOGIN",
        quote_ident(&record.schema),
        quote_ident(&schema),
        quote_ident(&record.role)
    );
    tx.batch_execute(&sql)
        .await
        .map_err(query("rename the schema and lock the role", name))?;

    tx.execute(
        "UPDATE pgtenant.tenants SET state = 'archived', schema_name = $2, updated_at = now() \
         WHERE name = $1",
        &[&name, &schema],
    )
    .await
    .map_err(query("mark the tenant archived", name))?;

    audit_cli(tx, "tenant.archive", name, Some(format!("schema={schema}"))).await?;
    Ok(Removed::Archived { schema })
}

/// `<schema>_archived_<yyyymmddhhmmss>` (UTC), the schema part cut to fit 63 bytes.
async fn archived_schema_name(
    tx: &Transaction<'_>,
    record: &TenantRecord,
) -> Result<String, ControlError> {
    let row = tx
        .query_one(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS')",
            &[],
        )
        .await
        .map_err(query("read the clock", &record.name))?;
    let stamp: String = row.get(0);

    let keep = record.schema.len().min(63 - ARCHIVE_SUFFIX_LEN);
    let prefix = record.schema.get(..keep).unwrap_or(&record.schema);
    Ok(format!("{prefix}_archived_{stamp}"))
}

/// The role's oid, which still names its sessions once the role is dropped.
async fn role_oid(
    tx: &Transaction<'_>,
    record: &TenantRecord,
) -> Result<Option<u32>, ControlError> {
    let row = tx
        .query_opt(
            "SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&record.role],
        )
        .await
        .map_err(query("look up the role", &record.name))?;
    Ok(row.map(|r| r.get(0)))
}

/// Ends the role's backend connections; best effort, as the catalog change already stops
/// proxies from using it.
async fn end_sessions(client: &Client, role: &str, oid: Option<u32>) {
    let Some(oid) = oid else {
        return;
    };
    let result = client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity \
             WHERE usesysid = $1",
            &[&oid],
        )
        .await;
    if let Err(error) = result {
        let error = crate::tenant::catalog::describe(&error);
        tracing::warn!(role, %error, "cannot end the removed tenant's sessions");
    }
}
