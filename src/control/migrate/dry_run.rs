//! `pgtenant migrate apply --dry-run`: the pending migrations applied to a scratch copy of
//! the test tenant's schema, checked, and rolled back.
//!
//! The copy (`bluegreen::build_next`) lives only inside the dry run's transaction, so nothing
//! is left behind; while it is made, the test tenant's writers wait (the copy holds `SHARE`
//! locks on the live tables until the rollback), which is why it runs on a test tenant. A schema the
//! copy refuses is reported with the reasons; then the dry run applies to the live schema
//! itself, inside the same never-committed transaction, with a 1 s `lock_timeout` so it
//! never holds up the tenant's traffic for long.

use std::time::{Duration, Instant};

use tokio_postgres::Transaction;

use super::bluegreen::{self, BlueGreenError};
use super::fingerprint;
use super::health;
use super::{MigrationSet, Target, apply_to, pending};
use crate::config::Config;
use crate::control::{ControlError, TenantRecord, error::query};

/// What a dry run found.
#[derive(Debug, Clone)]
pub struct DryRun {
    /// The tenant copied.
    pub tenant: String,
    /// Versions that would run, oldest first.
    pub versions: Vec<String>,
    /// Where they ran: `a copy` or, when the copy was refused, `the live schema`.
    pub on: String,
    /// Why the copy was refused, if it was.
    pub refusals: Vec<String>,
    /// Time to copy the schema.
    pub copy: Duration,
    /// Time to apply and check the migrations.
    pub apply: Duration,
    /// `Ok`, or the error that would fail the tenant.
    pub result: Result<(), String>,
}

/// Runs the dry run on `tenant` (the configured test tenant, else the first by name).
pub async fn dry_run(
    config: &Config,
    set: &MigrationSet,
    tenant: Option<&str>,
) -> Result<DryRun, ControlError> {
    let mut client = crate::control::open(config).await?;
    let tenants = super::fleet::list_tenants(&client).await?;
    let wanted = tenant.or(config.migrations.test_tenant.as_deref());
    let record = pick(&tenants, wanted)?;

    let tx = client
        .transaction()
        .await
        .map_err(query("begin the dry run", &record.name))?;
    let report = run_in(&tx, set, &record).await;
    tx.rollback()
        .await
        .map_err(query("roll back the dry run", &record.name))?;
    report
}

fn pick(tenants: &[TenantRecord], wanted: Option<&str>) -> Result<TenantRecord, ControlError> {
    match wanted {
        Some(name) => tenants.iter().find(|t| t.name == name).cloned(),
        None => tenants.first().cloned(),
    }
    .ok_or_else(|| ControlError::UnknownTenant(wanted.unwrap_or("(any)").to_owned()))
}

async fn run_in(
    tx: &Transaction<'_>,
    set: &MigrationSet,
    record: &TenantRecord,
) -> Result<DryRun, ControlError> {
    let todo = pending(tx, set, &record.name).await?;
    let versions: Vec<String> = todo.iter().map(|m| m.version.clone()).collect();
    let sql: Vec<String> = todo.iter().map(|m| m.sql.clone()).collect();

    let copy_started = Instant::now();
    let scratch = bluegreen::next_name(&record.schema);
    let live = target(record, &record.schema);
    let (schema, refusals) = match bluegreen::build_next(tx, &live, &scratch).await {
        Ok(_) => (scratch, Vec::new()),
        Err(BlueGreenError::NotCopyable { refusals, .. }) => {
            tx.batch_execute("SET LOCAL lock_timeout = '1s'")
                .await
                .map_err(query("set the lock timeout", &record.name))?;
            let reasons = refusals.iter().map(ToString::to_string).collect();
            (record.schema.clone(), reasons)
        }
        Err(other) => return Err(other.into()),
    };
    let copy = copy_started.elapsed();

    let applied_at = Instant::now();
    let on = target(record, &schema);
    let result = apply_and_check(tx, set, &on, &record.schema, &sql).await;
    Ok(DryRun {
        tenant: record.name.clone(),
        versions,
        on: if refusals.is_empty() {
            "a copy"
        } else {
            "the live schema"
        }
        .into(),
        refusals,
        copy,
        apply: applied_at.elapsed(),
        result,
    })
}

fn target<'a>(record: &'a TenantRecord, schema: &'a str) -> Target<'a> {
    Target {
        tenant: &record.name,
        schema,
        role: &record.role,
    }
}

/// Applies and checks on `on`; the error text is what a rollout would record.
async fn apply_and_check(
    tx: &Transaction<'_>,
    set: &MigrationSet,
    on: &Target<'_>,
    live_schema: &str,
    sql: &[String],
) -> Result<(), String> {
    let fingerprint = |e: tokio_postgres::Error| e.to_string();
    let before = fingerprint::of_schema(tx, on.schema)
        .await
        .map_err(fingerprint)?;
    apply_to(tx, set, on, "dry-run")
        .await
        .map_err(|e| e.to_string())?;
    let after = fingerprint::of_schema(tx, on.schema)
        .await
        .map_err(fingerprint)?;

    let expected = health::expected(sql.iter().map(String::as_str), live_schema);
    health::built_in(tx, on.schema, &expected, &before, &after)
        .await
        .map_err(|e| e.to_string())?;
    health::user_checks(tx, on, set.checks())
        .await
        .map_err(|e| e.to_string())
}
