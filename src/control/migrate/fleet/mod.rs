//! Fleet rollouts: pending migrations applied to every tenant in waves.
//!
//! One run: read the files, list the catalog's tenants (archived ones left out), split them
//! into waves (`plan`), then run each wave: its busy tenants one at a time (`busy`), then the
//! rest with up to `concurrency` at once, each on a worker connection of its own (`job`).
//! Connections come from the budget's reserve: one control connection, plus two per tenant
//! in flight (its worker and its pause's listening connection), together at most
//! `max_connections`. A wave starts only when the previous one is healthy (`gate`): the
//! test tenant must succeed whatever the policy; with `abort` any failure stops the rollout
//! once the tenants in flight finish; with `continue` it goes on until the circuit breaker
//! trips or a wave's failed share passes `max_wave_failures`. Everything a run learns is in the catalog, so running
//! it again continues where it stopped: applied tenants are up to date, failed ones are left
//! alone unless `retry_failed`.

pub mod breaker;
pub mod busy;
pub mod gate;
pub mod job;
pub mod plan;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls};

pub use job::Outcome;
pub use plan::Wave;

use super::MigrationSet;
use crate::config::rollout::MIN_CONNECTIONS;
use crate::config::{BusyPolicy, Config, FailurePolicy, RolloutSettings};
use crate::control::{ControlError, TENANT_RECORD_COLUMNS, TenantRecord, error::query};
use crate::tenant::catalog::{self, connect_error, describe, field};
use breaker::Breaker;

/// What to roll out, and to whom.
#[derive(Debug, Clone)]
pub struct Options {
    /// The rollout settings, command-line overrides applied.
    pub settings: RolloutSettings,
    /// Run tenants whose last attempt failed again.
    pub retry_failed: bool,
    /// Only these tenants (all when empty); an entry ending in `*` matches a name prefix.
    pub only: Vec<String>,
    /// Recorded as `applied_by`.
    pub actor: String,
    /// Set (by Ctrl-C) to start no new tenants; those in flight finish.
    pub interrupt: Arc<AtomicBool>,
}

/// Told about a rollout as it goes; the CLI draws progress with it.
pub trait Progress: Send {
    /// The rollout starts with `total` tenants in `waves`.
    fn start(&mut self, total: usize, waves: &[Wave]);
    /// A wave starts.
    fn wave(&mut self, wave: &Wave);
    /// A tenant finished.
    fn tenant(&mut self, tenant: &str, outcome: &Outcome, took: Duration);
    /// The rollout stops early, with the reason.
    fn stopped(&mut self, reason: &str);
}

/// One tenant's line in the report.
#[derive(Debug, Clone)]
pub struct TenantResult {
    /// The tenant.
    pub tenant: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Wall time of its job.
    pub took: Duration,
}

/// One wave's part of the report.
#[derive(Debug, Clone)]
pub struct WaveReport {
    /// The wave's label.
    pub label: String,
    /// Its tenants, in the order they finished; tenants never started are not here.
    pub results: Vec<TenantResult>,
    /// Wall time.
    pub took: Duration,
}

/// What a rollout did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Waves that started.
    pub waves: Vec<WaveReport>,
    /// Tenants never started because the rollout stopped.
    pub not_started: Vec<String>,
    /// Why the rollout stopped early, if it did.
    pub stopped: Option<String>,
    /// Wall time.
    pub took: Duration,
}

impl Report {
    /// Every tenant's result.
    pub fn results(&self) -> impl Iterator<Item = &TenantResult> {
        self.waves.iter().flat_map(|w| w.results.iter())
    }

    /// How many tenants failed.
    pub fn failed(&self) -> usize {
        self.results().filter(|r| r.outcome.failed()).count()
    }
}

/// The tenants a rollout covers and the waves they go in.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Tenants by name.
    pub tenants: Vec<TenantRecord>,
    /// Tenants whose last attempt failed.
    pub failed_before: Vec<String>,
    /// Waves of tenant names.
    pub waves: Vec<Wave>,
}

/// Lists the tenants and splits them into waves.
pub async fn plan(control: &Client, options: &Options) -> Result<Plan, ControlError> {
    let mut tenants = list_tenants(control).await?;
    tenants.retain(|t| selected(&t.name, &options.only));
    refuse_unknown(&tenants, &options.only)?;
    let names: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
    let settings = &options.settings;
    let waves = plan::waves(&names, settings.test_tenant.as_deref(), &settings.waves);

    Ok(Plan {
        tenants,
        failed_before: failed_tenants(control).await?,
        waves,
    })
}

/// Whether `name` is among `only`'s names and prefixes (everyone when `only` is empty).
pub(crate) fn selected(name: &str, only: &[String]) -> bool {
    only.is_empty()
        || only.iter().any(|entry| match entry.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == entry,
        })
}

/// A tenant named exactly (not by a prefix) must exist.
fn refuse_unknown(found: &[TenantRecord], asked: &[String]) -> Result<(), ControlError> {
    let mut exact = asked.iter().filter(|a| !a.ends_with('*'));
    match exact.find(|a| !found.iter().any(|t| &t.name == *a)) {
        Some(missing) => Err(ControlError::UnknownTenant(missing.clone())),
        None => Ok(()),
    }
}

/// Active and suspended tenants, by name.
pub async fn list_tenants(control: &Client) -> Result<Vec<TenantRecord>, ControlError> {
    let sql = format!(
        "SELECT {TENANT_RECORD_COLUMNS} FROM pgtenant.tenants \
         WHERE state <> 'archived' ORDER BY name"
    );
    let rows = control
        .query(&sql, &[])
        .await
        .map_err(query("list tenants", "*"))?;

    rows.iter()
        .map(|row| TenantRecord::from_row(row, "tenant row"))
        .collect()
}

async fn failed_tenants(control: &Client) -> Result<Vec<String>, ControlError> {
    let rows = control
        .query(
            "SELECT DISTINCT tenant FROM pgtenant.migrations WHERE status = 'failed' ORDER BY 1",
            &[],
        )
        .await
        .map_err(query("list failed tenants", "*"))?;
    rows.iter()
        .map(|row| Ok(field(row, 0, "failed migration row")?))
        .collect()
}

/// Runs a rollout of `set` over the plan's tenants.
pub async fn apply(
    config: &Config,
    set: Arc<MigrationSet>,
    options: &Options,
    progress: &mut dyn Progress,
) -> Result<Report, ControlError> {
    let started = Instant::now();
    let control = crate::control::open(config).await?;
    let plan = plan(&control, options).await?;
    let workers = open_workers(config, &options.settings).await?;

    progress.start(plan.tenants.len(), &plan.waves);
    let mut rollout = Rollout {
        control,
        config: Arc::new(config.clone()),
        set,
        options: Arc::new(options.clone()),
        plan,
        workers,
        breaker: Breaker::new(options.settings.circuit_breaker),
        report: Report::default(),
    };
    rollout.run(progress).await;

    rollout.report.took = started.elapsed();
    Ok(rollout.report)
}

/// Worker connections: `concurrency`, within `max_connections`. The control connection is
/// one; each tenant in flight holds its worker and its pause's connection, so two each.
async fn open_workers(
    config: &Config,
    settings: &RolloutSettings,
) -> Result<Vec<Client>, ControlError> {
    if settings.max_connections < MIN_CONNECTIONS {
        return Err(ControlError::Flag(format!(
            "a rollout needs {MIN_CONNECTIONS} connections but migrations.max_connections \
             (default: budget.reserve) allows {}",
            settings.max_connections
        )));
    }
    let count = settings
        .concurrency
        .min(settings.max_connections.saturating_sub(1) / 2)
        .max(1);
    let pg = catalog::pg_config(config, "pgtenant migrate worker")?;

    let mut workers = Vec::with_capacity(count);
    for _ in 0..count {
        let (client, connection) = pg
            .connect(NoTls)
            .await
            .map_err(|e| ControlError::Catalog(connect_error(config, e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %describe(&error), "worker connection ended");
            }
        });
        guard_session(&client, settings.max_pause).await?;
        workers.push(client);
    }
    Ok(workers)
}

/// How long past `max_pause` a worker's transaction may sit idle before PostgreSQL ends it.
pub const IDLE_IN_TRANSACTION_MARGIN: Duration = Duration::from_secs(2);

/// Session settings of a connection that runs a tenant's migration or rollback.
///
/// The migration transaction holds the tenant's locks and lasts at most `max_pause` (its
/// lock and statement timeouts are what is left of it), but those timeouts bound statements
/// only: a runner that stops sending anything mid-transaction (hung, killed with its host,
/// cut off by the network) would keep the locks until the server's TCP keepalives notice,
/// two hours by default. `idle_in_transaction_session_timeout` makes the server end such a
/// session, and release its locks, once it has been idle for longer than the whole pause
/// could have lasted plus a margin, which is shortly after the proxies' own pause expiry
/// (`max_pause` + 1 s) has reopened the tenant's gate. A healthy runner is never idle
/// inside the transaction for more than a few milliseconds.
pub async fn guard_session(client: &Client, max_pause: Duration) -> Result<(), ControlError> {
    let idle = (max_pause + IDLE_IN_TRANSACTION_MARGIN).as_millis();
    let sql = format!(
        "SET client_min_messages TO warning; SET idle_in_transaction_session_timeout = {idle}"
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(query("set up a worker connection", "*"))
}

/// A rollout in progress.
struct Rollout {
    control: Client,
    config: Arc<Config>,
    set: Arc<MigrationSet>,
    options: Arc<Options>,
    plan: Plan,
    workers: Vec<Client>,
    breaker: Breaker,
    report: Report,
}

type Finished = (TenantResult, Client);

impl Rollout {
    async fn run(&mut self, progress: &mut dyn Progress) {
        let waves = self.plan.waves.clone();
        for (i, wave) in waves.iter().enumerate() {
            if self.report.stopped.is_some() {
                self.report.not_started.extend(wave.tenants.iter().cloned());
                continue;
            }
            progress.wave(wave);
            let report = self.run_wave(wave, progress).await;

            if i + 1 < waves.len() {
                self.gate(wave, &report.results, progress);
            }
            self.report.waves.push(report);
        }
    }

    /// Stops the rollout when `wave` did not finish healthy enough for the next to start.
    fn gate(&mut self, wave: &Wave, results: &[TenantResult], progress: &mut dyn Progress) {
        if let Some(reason) = gate::verdict(wave, results, &self.options.settings) {
            self.stop(progress, reason);
        }
    }

    /// Runs a wave: with `busy_tenants = "solo"` its busy tenants first, one at a time,
    /// then the others up to the concurrency.
    async fn run_wave(&mut self, wave: &Wave, progress: &mut dyn Progress) -> WaveReport {
        let started = Instant::now();
        let (solo, shared) = self.split_busy(wave).await;
        let mut results = Vec::new();

        self.run_batch(&solo, 1, &mut results, progress).await;
        self.run_batch(&shared, usize::MAX, &mut results, progress)
            .await;

        WaveReport {
            label: wave.label.clone(),
            results,
            took: started.elapsed(),
        }
    }

    /// The wave's tenants to run alone and those to run together. When activity cannot be
    /// read, the rollout says so and runs them all together.
    async fn split_busy(&self, wave: &Wave) -> (Vec<String>, Vec<String>) {
        if self.options.settings.busy_tenants == BusyPolicy::Shared {
            return (Vec::new(), wave.tenants.clone());
        }
        let records: Vec<&TenantRecord> = (self.plan.tenants.iter())
            .filter(|t| wave.tenants.contains(&t.name))
            .collect();
        let busy = match busy::busy(&self.control, &records).await {
            Ok(busy) => busy,
            Err(error) => {
                tracing::warn!(%error, "cannot tell busy tenants; the wave runs them together");
                return (Vec::new(), wave.tenants.clone());
            }
        };
        if !busy.is_empty() {
            tracing::info!(wave = %wave.label, busy = busy.len(), "busy tenants migrate alone");
        }
        wave.tenants.iter().cloned().partition(|t| busy.contains(t))
    }

    /// Runs `names` with at most `limit` at once (and never more than there are workers),
    /// until all ran or the rollout stops; tenants never started go to `not_started`.
    async fn run_batch(
        &mut self,
        names: &[String],
        limit: usize,
        results: &mut Vec<TenantResult>,
        progress: &mut dyn Progress,
    ) {
        let mut queue = names.iter();
        let mut running: JoinSet<Finished> = JoinSet::new();

        loop {
            if self.options.interrupt.load(Ordering::Relaxed) {
                self.stop(
                    progress,
                    "interrupted; run `migrate apply` again to go on".into(),
                );
            }
            while self.report.stopped.is_none() && running.len() < limit && !self.workers.is_empty()
            {
                let Some(name) = queue.next() else { break };
                if let Some(result) = self.spawn(name, &mut running) {
                    progress.tenant(&result.tenant, &result.outcome, result.took);
                    results.push(result);
                }
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let Ok((result, worker)) = joined else {
                self.stop(progress, "a tenant job panicked".into());
                continue;
            };
            self.workers.push(worker);
            progress.tenant(&result.tenant, &result.outcome, result.took);
            self.judge(&result, progress);
            results.push(result);
        }

        self.report.not_started.extend(queue.cloned());
    }

    /// Starts `name`'s job on a free worker; a tenant that must not run gets its result at
    /// once instead.
    fn spawn(&mut self, name: &str, running: &mut JoinSet<Finished>) -> Option<TenantResult> {
        let tenant = self.plan.tenants.iter().find(|t| t.name == name)?.clone();
        if !self.options.retry_failed && self.plan.failed_before.contains(&tenant.name) {
            return Some(TenantResult {
                tenant: tenant.name,
                outcome: Outcome::Skipped("failed before; run with --retry-failed".into()),
                took: Duration::ZERO,
            });
        }

        let mut worker = self.workers.pop()?;
        let config = self.config.clone();
        let set = self.set.clone();
        let options = self.options.clone();
        running.spawn(async move {
            let started = Instant::now();
            let job = job::Job {
                config: &config,
                tenant: &tenant,
                set: &set,
                settings: &options.settings,
                actor: &options.actor,
            };
            let outcome = job::run(&mut worker, job).await;
            let result = TenantResult {
                tenant: tenant.name.clone(),
                outcome,
                took: started.elapsed(),
            };
            (result, worker)
        });
        None
    }

    /// Applies the failure policy and the circuit breaker to a finished tenant.
    fn judge(&mut self, result: &TenantResult, progress: &mut dyn Progress) {
        let failed = result.outcome.failed();
        if self.breaker.record(failed) {
            let threshold = self.options.settings.circuit_breaker;
            let reason = format!("circuit breaker: {threshold} consecutive failures");
            self.stop(progress, reason);
        }
        if failed && self.options.settings.on_failure == FailurePolicy::Abort {
            let reason = format!("tenant {:?} failed (on_failure = abort)", result.tenant);
            self.stop(progress, reason);
        }
    }

    fn stop(&mut self, progress: &mut dyn Progress, reason: String) {
        if self.report.stopped.is_some() {
            return;
        }
        tracing::warn!(%reason, "rollout stopping");
        progress.stopped(&reason);
        self.report.stopped = Some(reason);
    }
}
