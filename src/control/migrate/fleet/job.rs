//! One tenant's part of a rollout: lock, pause, migrate, check, checkpoint, resume.
//!
//! The steps, on the worker's own connection:
//! 1. `pg_try_advisory_lock` on the tenant (session level, so a crashed run's lock goes with
//!    its connection); a tenant locked by another run is skipped.
//! 2. Pending versions (the checksum guard refuses edited files); none → up to date.
//! 3. Rows marked `running` with the schema's fingerprint, outside the transaction, so
//!    `migrate status` shows the tenant while it runs.
//! 4. The tenant is paused at every proxy and its transactions drained (`control::pause`).
//! 5. One transaction with `lock_timeout` and `statement_timeout` set to what is left of the
//!    pause budget: the migrations (in place, or on a copy swapped in for blue/green), the
//!    health checks and the checkpoint rows with fingerprints. Past `max_pause` it rolls back.
//! 6. Resume, always; then the rows say `failed` with the error, or `pending` when skipped.
//!    When the pause ends, every proxy stops reusing the tenant's backend connections opened
//!    before it (their plans and prepared statements may be stale; `pool::pause`), without a
//!    catalog reload: bumping `tenants.generation` instead would make every proxy reload
//!    the whole catalog once per tenant, which with a thousand tenants is most of the
//!    rollout's cost at the proxies.

use std::time::{Duration, Instant, SystemTime};

use tokio_postgres::{Client, Transaction};

use super::super::bluegreen;
use super::super::fingerprint::{self, Fingerprint};
use super::super::health::{self, HealthFailure};
use super::super::{MigrateError, Migration, MigrationSet, Target, apply_to, pending};
use crate::config::{Config, DrainPolicy, RolloutSettings, Strategy};
use crate::control::TenantRecord;
use crate::control::pause::{Pause, PauseError, PauseRequest};
use crate::tenant::catalog::describe;

/// First key of the advisory locks rollouts take per tenant ("pgtm").
const ROLLOUT_LOCK: i32 = 0x7067_746d;

/// What a rollout asks of one tenant.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The configuration: the catalog the pause is requested in.
    pub config: &'a Config,
    /// The tenant.
    pub tenant: &'a TenantRecord,
    /// The migration files.
    pub set: &'a MigrationSet,
    /// Pause, timeouts and strategy.
    pub settings: &'a RolloutSettings,
    /// Who runs it, as recorded in `applied_by`.
    pub actor: &'a str,
}

/// How a tenant's part ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its pending migrations are applied.
    Applied {
        /// Versions applied, oldest first.
        versions: Vec<String>,
        /// How long its traffic was paused.
        paused: Duration,
    },
    /// Nothing was pending.
    UpToDate,
    /// Left for a later run, with the reason.
    Skipped(String),
    /// Rolled back, with the error.
    Failed(String),
}

impl Outcome {
    /// Whether this counts as a failure for the circuit breaker.
    pub fn failed(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

/// Why a tenant's migration was rolled back.
#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error("health check: {0}")]
    Health(#[from] HealthFailure),
    #[error(transparent)]
    BlueGreen(#[from] bluegreen::BlueGreenError),
    #[error("the pause would exceed max_pause ({limit:?}) after {elapsed:?}; rolled back")]
    MaxPause { elapsed: Duration, limit: Duration },
    #[error("cannot {step}: {}", describe(.source))]
    Query {
        step: &'static str,
        source: tokio_postgres::Error,
    },
}

fn query(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> JobError {
    move |source| JobError::Query { step, source }
}

/// Runs `job` on `worker`, this job's connection; the pause opens one more of its own while
/// it lasts. Never panics; every error is an outcome.
pub async fn run(worker: &mut Client, job: Job<'_>) -> Outcome {
    let name = job.tenant.name.as_str();
    match try_lock(worker, name).await {
        Ok(true) => {}
        Ok(false) => return Outcome::Skipped("another rollout holds this tenant".into()),
        Err(e) => {
            return Outcome::Failed(format!("cannot take the rollout lock: {}", describe(&e)));
        }
    }

    let outcome = run_locked(worker, job).await;

    if let Err(error) = unlock(worker, name).await {
        let error = describe(&error);
        tracing::warn!(tenant = name, %error, "cannot release the rollout lock");
    }
    outcome
}

/// Takes the tenant's rollout lock on `worker`'s session; `false` when another holds it.
pub(crate) async fn try_lock(worker: &Client, tenant: &str) -> Result<bool, tokio_postgres::Error> {
    let row = worker
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&ROLLOUT_LOCK, &tenant],
        )
        .await?;
    row.try_get(0)
}

/// Releases the tenant's rollout lock.
pub(crate) async fn unlock(worker: &Client, tenant: &str) -> Result<(), tokio_postgres::Error> {
    worker
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&ROLLOUT_LOCK, &tenant],
        )
        .await?;
    Ok(())
}

async fn run_locked(worker: &mut Client, job: Job<'_>) -> Outcome {
    let todo: Vec<Migration> = match pending(&*worker, job.set, &job.tenant.name).await {
        Ok(todo) if todo.is_empty() => return Outcome::UpToDate,
        Ok(todo) => todo.into_iter().cloned().collect(),
        Err(error) => return Outcome::Failed(error.to_string()),
    };
    let versions: Vec<String> = todo.iter().map(|m| m.version.clone()).collect();
    if let Err(error) = mark(worker, &job, &todo, Mark::Running).await {
        return Outcome::Failed(error.to_string());
    }

    let pause = match pause(&job).await {
        Ok(pause) => pause,
        Err(reason) => {
            let _ = mark(worker, &job, &todo, Mark::Pending(&reason)).await;
            return Outcome::Skipped(reason);
        }
    };

    let result = migrate_paused(worker, &job, &todo, pause.paused_at()).await;
    let paused = resume(pause, &job.tenant.name).await;

    match result {
        Ok(()) => Outcome::Applied { versions, paused },
        Err(error) => {
            let message = error.to_string();
            let _ = mark(worker, &job, &todo, Mark::Failed(&message)).await;
            Outcome::Failed(message)
        }
    }
}

/// Pauses the tenant; `Err` with the reason to skip it when it does not drain in time. A
/// pause left by a run that died (the caller holds the tenant's rollout lock, so nobody else
/// is migrating it) is waited out once, up to its expiry. `migrate rollback` pauses this way
/// too.
pub(crate) async fn pause(job: &Job<'_>) -> Result<Pause, String> {
    match begin(job).await {
        Err(PauseError::AlreadyPaused { expires_in, .. })
            if expires_in <= job.settings.max_pause + STALE_PAUSE_SLACK =>
        {
            tokio::time::sleep(expires_in + Duration::from_millis(50)).await;
            begin(job).await.map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

/// How far past `max_pause` a leftover pause may still expire for [`pause`] to wait for it.
const STALE_PAUSE_SLACK: Duration = Duration::from_secs(2);

/// One attempt at pausing. With the `cancel` policy, statements of the tenant still running
/// at three quarters of the drain timeout are cancelled, and with `terminate` the backends
/// still inside a transaction are ended, so the drain can finish within it.
async fn begin(job: &Job<'_>) -> Result<Pause, PauseError> {
    let tenant = job.tenant.name.as_str();
    let drain_timeout = job.settings.drain_timeout;
    let request = PauseRequest {
        tenant,
        requested_by: job.actor,
        max_pause: job.settings.max_pause,
        drain_timeout,
    };
    let begin = Pause::begin(job.config, &request);
    tokio::pin!(begin);

    if job.settings.on_drain_timeout == DrainPolicy::Skip {
        return begin.await;
    }

    let signal = async {
        tokio::time::sleep(drain_timeout * 3 / 4).await;
        match job.settings.on_drain_timeout {
            DrainPolicy::Terminate => Pause::terminate_in_flight(job.config, tenant).await,
            DrainPolicy::Cancel | DrainPolicy::Skip => {
                Pause::cancel_in_flight(job.config, tenant).await
            }
        }
    };
    tokio::select! {
        result = &mut begin => return result,
        signalled = signal => {
            if let Err(error) = signalled {
                tracing::warn!(tenant, %error, "cannot signal the tenant's backends");
            }
        }
    }
    begin.await
}

async fn resume(pause: Pause, tenant: &str) -> Duration {
    let paused_at = pause.paused_at();
    if let Err(error) = pause.resume().await {
        // The pause row expires on its own at every proxy; the tenant is not stuck.
        tracing::warn!(tenant, %error, "cannot resume the tenant cleanly");
    }
    paused_at.elapsed()
}

/// The migration transaction, bounded by what is left of the pause budget.
async fn migrate_paused(
    worker: &mut Client,
    job: &Job<'_>,
    todo: &[Migration],
    paused_at: Instant,
) -> Result<(), JobError> {
    let limit = job.settings.max_pause;
    let left = budget_left(paused_at, limit)?;
    let tx = worker
        .transaction()
        .await
        .map_err(query("begin the migration"))?;
    let ms = left.as_millis().max(1);
    let timeouts = format!("SET LOCAL lock_timeout = {ms}; SET LOCAL statement_timeout = {ms}");
    tx.batch_execute(&timeouts)
        .await
        .map_err(query("set the pause budget"))?;

    let (before, after) = match job.settings.strategy {
        Strategy::InPlace => in_place(&tx, job, todo).await,
        Strategy::BlueGreen => blue_green(&tx, job, todo).await,
    }
    .map_err(|e| timed_out(e, paused_at, limit))?;

    checkpoint(&tx, job, todo, &before, &after).await?;
    budget_left(paused_at, limit)?;
    tx.commit().await.map_err(query("commit the migration"))
}

fn budget_left(paused_at: Instant, limit: Duration) -> Result<Duration, JobError> {
    let elapsed = paused_at.elapsed();
    limit
        .checked_sub(elapsed)
        .filter(|left| !left.is_zero())
        .ok_or(JobError::MaxPause { elapsed, limit })
}

/// A statement or lock timeout inside the migration is the pause valve firing.
fn timed_out(error: JobError, paused_at: Instant, limit: Duration) -> JobError {
    let code = match &error {
        JobError::Migrate(MigrateError::Failed { source, .. }) => source.code(),
        JobError::Query { source, .. } => source.code(),
        _ => None,
    };
    let valve = [
        tokio_postgres::error::SqlState::QUERY_CANCELED,
        tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE,
    ];
    if code.is_some_and(|c| valve.contains(c)) {
        return JobError::MaxPause {
            elapsed: paused_at.elapsed(),
            limit,
        };
    }
    error
}

/// The migrations on the live schema; returns its fingerprints before and after.
async fn in_place(
    tx: &Transaction<'_>,
    job: &Job<'_>,
    todo: &[Migration],
) -> Result<(Fingerprint, Fingerprint), JobError> {
    let target = target(job.tenant, &job.tenant.schema);
    let before = fingerprint::of_schema(tx, target.schema)
        .await
        .map_err(query("read the schema fingerprint"))?;

    apply_to(tx, job.set, &target, job.actor).await?;
    let after = check(tx, job, &target, todo, &before).await?;
    Ok((before, after))
}

/// The migrations on a copy that then replaces the live schema; the live one is retained.
async fn blue_green(
    tx: &Transaction<'_>,
    job: &Job<'_>,
    todo: &[Migration],
) -> Result<(Fingerprint, Fingerprint), JobError> {
    let live = job.tenant.schema.as_str();
    let before = fingerprint::of_schema(tx, live)
        .await
        .map_err(query("read the schema fingerprint"))?;
    let next = bluegreen::next_name(live);
    bluegreen::build_next(tx, &target(job.tenant, live), &next).await?;

    let copy = target(job.tenant, &next);
    apply_to(tx, job.set, &copy, job.actor).await?;
    let after = check(tx, job, &copy, todo, &before).await?;

    let from = version_before(job.set, todo);
    let to = todo.last().map_or("", |m| m.version.as_str());
    let tenant = &job.tenant.name;
    let retention = job.settings.retention;
    bluegreen::swap(tx, tenant, live, &next, retention, (from.as_str(), to)).await?;
    Ok((before, after))
}

/// The version a tenant was at before `todo`: the file before the first pending one (empty
/// for none).
fn version_before(set: &MigrationSet, todo: &[Migration]) -> String {
    let Some(first) = todo.first() else {
        return String::new();
    };
    set.migrations()
        .iter()
        .take_while(|m| m.version != first.version)
        .last()
        .map(|m| m.version.clone())
        .unwrap_or_default()
}

fn target<'a>(tenant: &'a TenantRecord, schema: &'a str) -> Target<'a> {
    Target {
        tenant: &tenant.name,
        schema,
        role: &tenant.role,
    }
}

/// Built-in and user health checks on `target`'s schema; returns its new fingerprint.
async fn check(
    tx: &Transaction<'_>,
    job: &Job<'_>,
    target: &Target<'_>,
    todo: &[Migration],
    before: &Fingerprint,
) -> Result<Fingerprint, JobError> {
    let after = fingerprint::of_schema(tx, target.schema)
        .await
        .map_err(query("read the schema fingerprint"))?;

    let sqls = todo.iter().map(|m| m.sql.as_str());
    let expected = health::expected(sqls, &job.tenant.schema);
    health::built_in(tx, target.schema, &expected, before, &after).await?;
    health::user_checks(tx, target, job.set.checks()).await?;
    Ok(after)
}

/// Fingerprints on the applied rows.
async fn checkpoint(
    tx: &Transaction<'_>,
    job: &Job<'_>,
    todo: &[Migration],
    before: &Fingerprint,
    after: &Fingerprint,
) -> Result<(), JobError> {
    let versions: Vec<&str> = todo.iter().map(|m| m.version.as_str()).collect();
    tx.execute(
        "UPDATE pgtenant.migrations SET fingerprint_before = $3, fingerprint_after = $4 \
         WHERE tenant = $1 AND version = ANY($2)",
        &[&job.tenant.name, &versions, &before.hash, &after.hash],
    )
    .await
    .map_err(query("record the fingerprints"))?;
    Ok(())
}

/// A status written outside the migration transaction.
#[derive(Debug, Clone, Copy)]
enum Mark<'a> {
    Running,
    Pending(&'a str),
    Failed(&'a str),
}

async fn mark(
    worker: &Client,
    job: &Job<'_>,
    todo: &[Migration],
    mark: Mark<'_>,
) -> Result<(), JobError> {
    let (status, error) = match mark {
        Mark::Running => ("running", None),
        Mark::Pending(reason) => ("pending", Some(format!("skipped: {reason}"))),
        Mark::Failed(message) => ("failed", Some(message.to_owned())),
    };
    let now = SystemTime::now();
    for migration in todo {
        worker
            .execute(
                "INSERT INTO pgtenant.migrations (tenant, version, name, checksum, status, \
                     started_at, error, applied_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (tenant, version) DO UPDATE SET name = EXCLUDED.name, \
                     checksum = EXCLUDED.checksum, status = EXCLUDED.status, \
                     started_at = CASE WHEN EXCLUDED.status = 'running' \
                         THEN EXCLUDED.started_at ELSE pgtenant.migrations.started_at END, \
                     finished_at = CASE WHEN EXCLUDED.status = 'running' THEN NULL \
                         ELSE now() END, \
                     error = EXCLUDED.error, applied_by = EXCLUDED.applied_by \
                 WHERE pgtenant.migrations.status <> 'applied'",
                &[
                    &job.tenant.name,
                    &migration.version,
                    &migration.name,
                    &migration.checksum,
                    &status,
                    &now,
                    &error,
                    &job.actor,
                ],
            )
            .await
            .map_err(query("record the migration's status"))?;
    }
    Ok(())
}
