//! `pgtenant migrate rollback`: a tenant back to an earlier version, under its pause.
//!
//! Two ways back, chosen by what the last rollout left:
//! - a schema retained by a blue/green swap whose target version is the tenant's newest
//!   applied one: the two schemas swap back by renaming (`bluegreen::swap_back`);
//! - otherwise the `.down.sql` steps of the applied versions newer than `--to` (the newest
//!   one alone by default), newest first, in one transaction. A version without a down step
//!   refuses the whole rollback before anything runs.
//!
//! Either way the versions are recorded as `rolled_back` (so a later `apply` runs them again),
//! and when the pause ends proxies stop reusing the tenant's older backend connections.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, Transaction};

use super::fleet::job::{self, Job};
use super::source::version_number;
use super::{MigrationSet, Target, become_self, become_tenant, bluegreen};
use crate::config::Config;
use crate::control::{ControlError, TenantRecord, error::query};
use crate::tenant::catalog::{describe, field};

/// How a tenant was rolled back.
#[derive(Debug, Clone)]
pub enum RolledBack {
    /// The retained schema is live again; the replaced one is retained under this name.
    SwappedBack {
        /// Versions undone.
        versions: Vec<String>,
        /// Where the schema it replaced now is.
        set_aside: String,
    },
    /// Down steps ran.
    Down {
        /// Versions undone, newest first.
        versions: Vec<String>,
    },
}

/// The result of a rollback.
#[derive(Debug, Clone)]
pub struct RollbackReport {
    /// What was done.
    pub done: RolledBack,
    /// How long the tenant was paused.
    pub paused: Duration,
}

/// Rolls `tenant` back to `to` (exclusive of newer versions), or by its newest version.
pub async fn rollback(
    config: &Config,
    set: &MigrationSet,
    tenant: &str,
    to: Option<&str>,
    actor: &str,
) -> Result<RollbackReport, ControlError> {
    let mut control = crate::control::open(config).await?;
    super::fleet::guard_session(&control, config.migrations.max_pause).await?;
    let record = crate::control::find_tenant(&control, tenant).await?;
    crate::control::refuse_archived(&record)?;
    let locked = super::fleet::job::try_lock(&control, tenant)
        .await
        .map_err(query("take the rollout lock", tenant))?;
    if !locked {
        return Err(ControlError::WrongState {
            tenant: tenant.to_owned(),
            state: "being migrated".into(),
            message: "a rollout holds it; try again when it is done",
        });
    }
    let applied = applied_versions(&control, tenant).await?;
    let (undo, swap) = match retained_undo(&control, tenant, &applied, to).await? {
        Some(undo) => (undo, true),
        None => (versions_to_undo(&applied, to, tenant)?, false),
    };
    if !swap {
        refuse_missing_down(set, &undo, tenant)?;
    }

    let job = Job {
        config,
        tenant: &record,
        set,
        settings: &config.migrations,
        actor,
    };
    let pause = job::pause(&job)
        .await
        .map_err(|message| ControlError::Paused {
            tenant: record.name.clone(),
            message,
        })?;
    let result = undo_paused(&mut control, &record, set, &undo, swap, pause.paused_at()).await;
    let paused = pause.paused_at().elapsed();
    if let Err(error) = pause.resume().await {
        tracing::warn!(tenant, %error, "cannot resume the tenant cleanly");
    }
    Ok(RollbackReport {
        done: result?,
        paused,
    })
}

/// Applied versions, oldest first by number.
async fn applied_versions(control: &Client, tenant: &str) -> Result<Vec<String>, ControlError> {
    let rows = control
        .query(
            "SELECT version FROM pgtenant.migrations WHERE tenant = $1 AND status = 'applied'",
            &[&tenant],
        )
        .await
        .map_err(query("read applied migrations", tenant))?;
    let mut versions = rows
        .iter()
        .map(|row| field(row, 0, "applied migration row"))
        .collect::<Result<Vec<String>, _>>()?;
    versions.sort_by_key(|v| version_number(v));
    Ok(versions)
}

/// The versions the newest retained schema undoes, newest first, when it was set aside by a
/// blue/green swap to the tenant's newest applied version (and `to`, if given, is the
/// version it holds); `None` when down steps must do it.
async fn retained_undo(
    control: &Client,
    tenant: &str,
    applied: &[String],
    to: Option<&str>,
) -> Result<Option<Vec<String>>, ControlError> {
    let row = control
        .query_opt(
            "SELECT reason, coalesce(version_from, ''), coalesce(version_to, '') \
             FROM pgtenant.retired_schemas WHERE tenant = $1 \
             ORDER BY retired_at DESC LIMIT 1",
            &[&tenant],
        )
        .await
        .map_err(query("read retained schemas", tenant))?;
    let Some(row) = row else { return Ok(None) };
    let owner = "retained schema row";
    let reason: String = field(&row, 0, owner)?;
    let from: String = field(&row, 1, owner)?;
    let upto: String = field(&row, 2, owner)?;

    let newest = applied.last().map(String::as_str);
    let fits = reason == "blue-green" && newest == Some(upto.as_str());
    if !fits || to.is_some_and(|to| to != from) {
        return Ok(None);
    }
    let undo = if from.is_empty() {
        applied.iter().rev().cloned().collect()
    } else {
        versions_to_undo(applied, Some(&from), tenant)?
    };
    Ok(Some(undo))
}

/// The versions above `to` (or the newest alone), newest first.
fn versions_to_undo(
    applied: &[String],
    to: Option<&str>,
    tenant: &str,
) -> Result<Vec<String>, ControlError> {
    let undo: Vec<String> = match to {
        Some(to) => applied
            .iter()
            .rev()
            .filter(|v| version_number(v) > version_number(to))
            .cloned()
            .collect(),
        None => applied.last().cloned().into_iter().collect(),
    };
    if undo.is_empty() {
        return Err(ControlError::WrongState {
            tenant: tenant.to_owned(),
            state: "already at that version".into(),
            message: "nothing to roll back",
        });
    }
    Ok(undo)
}

fn refuse_missing_down(
    set: &MigrationSet,
    undo: &[String],
    tenant: &str,
) -> Result<(), ControlError> {
    for version in undo {
        let has_down = set.find(version).is_some_and(|m| m.down.is_some());
        if !has_down {
            return Err(ControlError::NoDownStep {
                tenant: tenant.to_owned(),
                version: version.clone(),
            });
        }
    }
    Ok(())
}

async fn undo_paused(
    worker: &mut Client,
    record: &TenantRecord,
    set: &MigrationSet,
    undo: &[String],
    swap: bool,
    paused_at: Instant,
) -> Result<RolledBack, ControlError> {
    let tx = worker
        .transaction()
        .await
        .map_err(query("begin the rollback", &record.name))?;

    let done = if swap {
        let back = bluegreen::swap_back(&tx, &record.name, &record.schema).await?;
        RolledBack::SwappedBack {
            versions: undo.to_vec(),
            set_aside: back.retired,
        }
    } else {
        run_down_steps(&tx, record, set, undo).await?;
        RolledBack::Down {
            versions: undo.to_vec(),
        }
    };

    mark_rolled_back(&tx, &record.name, undo).await?;
    tracing::info!(tenant = %record.name, versions = ?undo, paused_ms = paused_at.elapsed().as_millis() as u64, "rolled back");
    tx.commit()
        .await
        .map_err(query("commit the rollback", &record.name))?;
    Ok(done)
}

async fn run_down_steps(
    tx: &Transaction<'_>,
    record: &TenantRecord,
    set: &MigrationSet,
    undo: &[String],
) -> Result<(), ControlError> {
    let target = Target {
        tenant: &record.name,
        schema: &record.schema,
        role: &record.role,
    };
    for version in undo {
        let Some(down) = set.find(version).and_then(|m| m.down.as_ref()) else {
            continue;
        };
        become_tenant(tx, &target)
            .await
            .map_err(query("switch to the tenant role", &record.name))?;
        tx.batch_execute(&down.sql)
            .await
            .map_err(|e| ControlError::DownFailed {
                tenant: record.name.clone(),
                path: down.path.clone(),
                message: describe(&e),
            })?;
        become_self(tx)
            .await
            .map_err(query("switch back from the tenant role", &record.name))?;
    }
    Ok(())
}

async fn mark_rolled_back(
    tx: &Transaction<'_>,
    tenant: &str,
    versions: &[String],
) -> Result<(), ControlError> {
    tx.execute(
        "UPDATE pgtenant.migrations SET status = 'rolled_back', finished_at = now(), \
         error = NULL WHERE tenant = $1 AND version = ANY($2)",
        &[&tenant, &versions],
    )
    .await
    .map_err(query("record the rollback", tenant))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `--to` only the newest version is undone; with it, all above it, newest first.
    #[test]
    fn versions_above_the_target_newest_first() {
        let applied: Vec<String> = ["1", "2", "10"].map(String::from).to_vec();
        assert_eq!(versions_to_undo(&applied, None, "t").unwrap(), ["10"]);
        assert_eq!(
            versions_to_undo(&applied, Some("1"), "t").unwrap(),
            ["10", "2"]
        );
        assert!(versions_to_undo(&applied, Some("10"), "t").is_err());
    }
}
