//! Blue/green retention enforced: schemas a swap set aside are dropped once their
//! `retention` has passed. `pgtenant migrate purge` runs it, and so does every
//! `pgtenant migrate apply` when its rollout ends.
//!
//! A tenant that a rollout or a rollback is working on holds its rollout lock; its expired
//! schemas are left for the next purge rather than dropped under a `migrate rollback` that
//! may be about to swap one of them back. The drops run in one transaction with a short
//! `lock_timeout`, so a purge never waits long behind someone else's lock.

use tokio_postgres::Client;

use super::bluegreen;
use super::fleet::{job, selected};
use crate::config::Config;
use crate::control::{ControlError, error::query};
use crate::tenant::catalog::{describe, field};

/// How long the purge waits for a lock on a schema it drops.
const LOCK_TIMEOUT: &str = "5s";

/// What a purge did.
#[derive(Debug, Clone, Default)]
pub struct Purged {
    /// Retained schemas dropped, oldest expiry first.
    pub dropped: Vec<String>,
    /// Tenants with expired schemas left alone because a rollout or rollback holds them.
    pub busy: Vec<String>,
}

/// Drops the expired retained schemas of the tenants `only` selects (every tenant when
/// empty; `name*` matches a prefix).
pub async fn purge(config: &Config, only: &[String]) -> Result<Purged, ControlError> {
    let mut control = crate::control::open(config).await?;
    let mut candidates = expired_tenants(&control).await?;
    candidates.retain(|tenant| selected(tenant, only));

    let (locked, busy) = lock_all(&control, candidates).await?;
    let dropped = drop_expired(&mut control, &locked).await;
    unlock_all(&control, &locked).await;

    let dropped = dropped?;
    tracing::info!(
        dropped = dropped.len(),
        busy = busy.len(),
        "expired retained schemas purged"
    );
    Ok(Purged { dropped, busy })
}

/// Tenants with at least one retained schema past its expiry.
async fn expired_tenants(control: &Client) -> Result<Vec<String>, ControlError> {
    let rows = control
        .query(
            "SELECT DISTINCT tenant FROM pgtenant.retired_schemas \
             WHERE expires_at <= now() AND tenant IS NOT NULL ORDER BY 1",
            &[],
        )
        .await
        .map_err(query("read the expired retained schemas", "*"))?;
    rows.iter()
        .map(|row| Ok(field(row, 0, "retired_schemas")?))
        .collect()
}

/// Takes each tenant's rollout lock; returns the tenants locked and those held elsewhere.
async fn lock_all(
    control: &Client,
    tenants: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), ControlError> {
    let mut locked = Vec::with_capacity(tenants.len());
    let mut busy = Vec::new();
    for tenant in tenants {
        let got = job::try_lock(control, &tenant).await;
        match got.map_err(query("take the rollout lock", &tenant)) {
            Ok(true) => locked.push(tenant),
            Ok(false) => {
                tracing::info!(
                    tenant,
                    "tenant busy; its expired schemas wait for a later purge"
                );
                busy.push(tenant);
            }
            Err(error) => {
                unlock_all(control, &locked).await;
                return Err(error);
            }
        }
    }
    Ok((locked, busy))
}

async fn drop_expired(
    control: &mut Client,
    tenants: &[String],
) -> Result<Vec<String>, ControlError> {
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    let tx = control
        .transaction()
        .await
        .map_err(query("begin the purge", "*"))?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .await
        .map_err(query("set the purge's lock timeout", "*"))?;

    let dropped = bluegreen::purge_expired_of(&tx, tenants).await?;
    tx.commit().await.map_err(query("commit the purge", "*"))?;
    Ok(dropped)
}

async fn unlock_all(control: &Client, tenants: &[String]) {
    for tenant in tenants {
        if let Err(error) = job::unlock(control, tenant).await {
            let error = describe(&error);
            tracing::warn!(tenant, %error, "cannot release the rollout lock");
        }
    }
}
