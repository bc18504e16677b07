//! Swapping schemas by renaming them, and the retained schemas' life in
//! `pgtenant.retired_schemas`: recorded when set aside, restored by [`swap_back`], dropped by
//! [`purge_expired`] once expired. Every step locks the tenant's catalog row (or the retained
//! rows) first, so two runs for one tenant wait for each other.

use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::Transaction;

use super::depend::outside_dependents_sql;
use super::names::{NEXT_MARKER, retired_name};
use super::refuse::schema_oid;
use super::{BlueGreenError, SwapBack, query};
use crate::control::provision::quote_ident;
use crate::tenant::catalog::field;

/// How many millisecond steps [`free_retired_name`] tries before giving up.
const NAME_ATTEMPTS: u64 = 1000;

/// A schema set aside, as recorded in the catalog.
struct Retired<'a> {
    tenant: &'a str,
    schema: &'a str,
    retention: Duration,
    version_from: Option<&'a str>,
    version_to: Option<&'a str>,
    reason: &'static str,
}

/// The newest retained schema of a tenant.
struct Retained {
    schema: String,
    version_from: Option<String>,
    version_to: Option<String>,
    retention: Duration,
}

/// Makes `next` live: `live` is renamed to a retired name and `next` to `live`, and the
/// retired schema is recorded for `tenant` with `retention` and the versions it goes
/// `(from, to)`. Returns the retired name. Commits nothing.
pub async fn swap(
    tx: &Transaction<'_>,
    tenant: &str,
    live: &str,
    next: &str,
    retention: Duration,
    versions: (&str, &str),
) -> Result<String, BlueGreenError> {
    check_live(tx, tenant, live).await?;
    if let Some(why) = protected(tx, next).await? {
        return Err(BlueGreenError::Protected {
            schema: next.to_owned(),
            why,
        });
    }
    require_schema(tx, next).await?;

    let retired = free_retired_name(tx, live).await?;
    rename(tx, live, &retired).await?;
    rename(tx, next, live).await?;

    let (from, to) = versions;
    let record = Retired {
        tenant,
        schema: &retired,
        retention,
        version_from: Some(from),
        version_to: Some(to),
        reason: "blue-green",
    };
    insert_retired(tx, &record).await?;
    tracing::info!(
        tenant,
        live,
        retired,
        from,
        to,
        "blue/green schemas swapped"
    );
    Ok(retired)
}

/// Rolls back: the newest retained schema of `tenant` becomes `live` again, and the schema
/// that was live is renamed aside and retained as long as the restored one was. Renames and
/// catalog rows only. Commits nothing.
pub async fn swap_back(
    tx: &Transaction<'_>,
    tenant: &str,
    live: &str,
) -> Result<SwapBack, BlueGreenError> {
    let started = Instant::now();
    check_live(tx, tenant, live).await?;
    let restored = newest_retained(tx, tenant).await?;
    require_schema(tx, &restored.schema).await?;

    let aside = free_retired_name(tx, live).await?;
    rename(tx, live, &aside).await?;
    rename(tx, &restored.schema, live).await?;

    delete_retired(tx, &restored.schema).await?;
    let record = Retired {
        tenant,
        schema: &aside,
        retention: restored.retention,
        version_from: restored.version_to.as_deref(),
        version_to: restored.version_from.as_deref(),
        reason: "rollback",
    };
    insert_retired(tx, &record).await?;

    let duration = started.elapsed();
    tracing::info!(
        tenant,
        live,
        restored = restored.schema,
        retired = aside,
        "blue/green swapped back"
    );
    Ok(SwapBack {
        restored: restored.schema,
        retired: aside,
        version: restored.version_from,
        duration,
    })
}

/// Drops every retained schema whose retention has passed and forgets it; returns their
/// names. A schema that is some tenant's live one, or that objects elsewhere depend on, is
/// kept and logged instead, since dropping it would take those along.
pub async fn purge_expired(tx: &Transaction<'_>) -> Result<Vec<String>, BlueGreenError> {
    purge(tx, None).await
}

/// Like [`purge_expired`], for the retained schemas of `tenants` only.
pub async fn purge_expired_of(
    tx: &Transaction<'_>,
    tenants: &[String],
) -> Result<Vec<String>, BlueGreenError> {
    purge(tx, Some(tenants)).await
}

async fn purge(
    tx: &Transaction<'_>,
    tenants: Option<&[String]>,
) -> Result<Vec<String>, BlueGreenError> {
    let rows = tx
        .query(
            "SELECT r.schema_name, EXISTS (SELECT 1 FROM pgtenant.tenants t \
                                           WHERE t.schema_name = r.schema_name) \
             FROM pgtenant.retired_schemas r WHERE r.expires_at <= now() \
               AND ($1::text[] IS NULL OR r.tenant = ANY($1)) \
             ORDER BY r.expires_at FOR UPDATE OF r",
            &[&tenants],
        )
        .await
        .map_err(query(
            "read the expired schemas",
            "pgtenant.retired_schemas",
        ))?;

    let mut purged = Vec::new();
    for row in &rows {
        let schema: String = field(row, 0, "retired_schemas")?;
        let live: bool = field(row, 1, "retired_schemas")?;
        if let Some(why) = keep_reason(tx, &schema, live).await? {
            tracing::warn!(schema, why, "expired retained schema kept");
            continue;
        }
        drop_schema(tx, &schema).await?;
        delete_retired(tx, &schema).await?;
        purged.push(schema);
    }
    if !purged.is_empty() {
        tracing::info!(schemas = ?purged, "expired retained schemas dropped");
    }
    Ok(purged)
}

/// Drops `next`, an unfinished copy left by an interrupted run; nothing if it is gone
/// already. Refuses anything not named by [`next_name`](super::next_name), a live or retained
/// schema, and a schema that objects elsewhere depend on.
pub async fn discard_next(tx: &Transaction<'_>, next: &str) -> Result<(), BlueGreenError> {
    let refuse = |why| BlueGreenError::Protected {
        schema: next.to_owned(),
        why,
    };
    if !next.contains(NEXT_MARKER) {
        return Err(refuse("not named as a copy is (next_name)"));
    }
    if let Some(why) = protected(tx, next).await? {
        return Err(refuse(why));
    }
    if let Some(why) = keep_reason(tx, next, false).await? {
        return Err(refuse(why));
    }
    drop_schema(tx, next).await
}

/// Locks the tenant's catalog row and checks that `live` is its schema.
async fn check_live(tx: &Transaction<'_>, tenant: &str, live: &str) -> Result<(), BlueGreenError> {
    let row = tx
        .query_opt(
            "SELECT schema_name FROM pgtenant.tenants WHERE name = $1 FOR UPDATE",
            &[&tenant],
        )
        .await
        .map_err(query("lock the tenant", tenant))?
        .ok_or_else(|| BlueGreenError::UnknownTenant(tenant.to_owned()))?;

    let catalog: String = field(&row, 0, &format!("tenant {tenant:?}"))?;
    if catalog == live {
        return Ok(());
    }
    Err(BlueGreenError::NotLive {
        tenant: tenant.to_owned(),
        live: live.to_owned(),
        catalog,
    })
}

/// Why `schema` must not be renamed over a live one or dropped as a copy, if it must not.
async fn protected(
    tx: &Transaction<'_>,
    schema: &str,
) -> Result<Option<&'static str>, BlueGreenError> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pgtenant.tenants WHERE schema_name = $1), \
                    EXISTS (SELECT 1 FROM pgtenant.retired_schemas WHERE schema_name = $1)",
            &[&schema],
        )
        .await
        .map_err(query("check the schema's role", schema))?;

    let owner = "pgtenant.tenants";
    match (field(&row, 0, owner)?, field(&row, 1, owner)?) {
        (true, _) => Ok(Some("a tenant's live schema")),
        (_, true) => Ok(Some("a retained schema")),
        (false, false) => Ok(None),
    }
}

/// Why a schema about to be dropped must be kept: it is live, or something outside it
/// depends on it.
async fn keep_reason(
    tx: &Transaction<'_>,
    schema: &str,
    live: bool,
) -> Result<Option<&'static str>, BlueGreenError> {
    if live {
        return Ok(Some("a tenant's live schema"));
    }
    let Some(oid) = schema_oid(tx, schema).await? else {
        return Ok(None);
    };
    let rows = tx
        .query(outside_dependents_sql().as_str(), &[&oid])
        .await
        .map_err(query("check what depends on the schema", schema))?;
    Ok((!rows.is_empty()).then_some("used by objects outside it"))
}

async fn require_schema(tx: &Transaction<'_>, schema: &str) -> Result<(), BlueGreenError> {
    match schema_oid(tx, schema).await? {
        Some(_) => Ok(()),
        None => Err(BlueGreenError::NoSchema(schema.to_owned())),
    }
}

/// A retired name for `live` that no schema and no catalog row has yet.
async fn free_retired_name(tx: &Transaction<'_>, live: &str) -> Result<String, BlueGreenError> {
    let now = SystemTime::now();
    let mut name = retired_name(live, now);
    for step in 0..NAME_ATTEMPTS {
        name = retired_name(live, now + Duration::from_millis(step));
        let row = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1) \
                     OR EXISTS (SELECT 1 FROM pgtenant.retired_schemas WHERE schema_name = $1)",
                &[&name],
            )
            .await
            .map_err(query("look for a free retired name", live))?;
        if !field::<bool>(&row, 0, "pg_namespace")? {
            return Ok(name);
        }
    }
    Err(BlueGreenError::SchemaExists(name))
}

async fn rename(tx: &Transaction<'_>, from: &str, to: &str) -> Result<(), BlueGreenError> {
    let sql = format!(
        "ALTER SCHEMA {} RENAME TO {}",
        quote_ident(from),
        quote_ident(to)
    );
    tx.batch_execute(&sql)
        .await
        .map_err(query("rename the schema", from))
}

async fn drop_schema(tx: &Transaction<'_>, schema: &str) -> Result<(), BlueGreenError> {
    let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(schema));
    tx.batch_execute(&sql)
        .await
        .map_err(query("drop the schema", schema))
}

async fn insert_retired(tx: &Transaction<'_>, retired: &Retired<'_>) -> Result<(), BlueGreenError> {
    let seconds = retired.retention.as_secs_f64();
    tx.execute(
        "INSERT INTO pgtenant.retired_schemas (tenant, schema_name, retired_at, expires_at, \
             version_from, version_to, reason) \
         VALUES ($1, $2, clock_timestamp(), clock_timestamp() + make_interval(secs => $3), \
                 $4, $5, $6)",
        &[
            &retired.tenant,
            &retired.schema,
            &seconds,
            &retired.version_from,
            &retired.version_to,
            &retired.reason,
        ],
    )
    .await
    .map_err(query("record the retired schema", retired.schema))?;
    Ok(())
}

async fn delete_retired(tx: &Transaction<'_>, schema: &str) -> Result<(), BlueGreenError> {
    tx.execute(
        "DELETE FROM pgtenant.retired_schemas WHERE schema_name = $1",
        &[&schema],
    )
    .await
    .map_err(query("forget the retired schema", schema))?;
    Ok(())
}

/// The newest retained schema of `tenant`, row-locked.
async fn newest_retained(tx: &Transaction<'_>, tenant: &str) -> Result<Retained, BlueGreenError> {
    let row = tx
        .query_opt(
            "SELECT schema_name, version_from, version_to, \
                    greatest(extract(epoch FROM expires_at - retired_at), 0)::float8 \
             FROM pgtenant.retired_schemas WHERE tenant = $1 \
             ORDER BY retired_at DESC, schema_name DESC LIMIT 1 FOR UPDATE",
            &[&tenant],
        )
        .await
        .map_err(query("read the retained schemas", tenant))?
        .ok_or_else(|| BlueGreenError::NothingRetained(tenant.to_owned()))?;

    let owner = format!("retired schema of tenant {tenant:?}");
    let seconds: f64 = field(&row, 3, &owner)?;
    Ok(Retained {
        schema: field(&row, 0, &owner)?,
        version_from: field(&row, 1, &owner)?,
        version_to: field(&row, 2, &owner)?,
        retention: Duration::try_from_secs_f64(seconds).unwrap_or_default(),
    })
}
