//! `pgtenant migrate ...`: fleet rollouts of the migrations directory. `plan` shows what would
//! run where, `apply` rolls out in waves (or `--dry-run` tries a copy of the test tenant),
//! `status` reads the catalog's records, `rollback` takes one tenant back, `purge` drops the
//! blue/green schemas whose retention has passed (which `apply` also does when it ends).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::{BusyPolicy, Config, DrainPolicy, FailurePolicy, RolloutSettings, Strategy};
use crate::control::ControlError;
use crate::control::migrate::fleet::{self, Options};
use crate::control::migrate::{MigrationSet, dry_run, retention, rollback, status};

mod progress;

use progress::{ms, print_report, terminal_progress};

/// Options of `pgtenant migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Configuration file; it must have a [catalog] section.
    #[arg(long, short, env = "PGTENANT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Migrations directory, instead of [migrations] dir.
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: MigrateCommand,
}

/// Rollout settings the command line may override.
#[derive(Debug, Clone, Args)]
pub struct RolloutArgs {
    /// Only these tenants (repeat the flag; `name*` matches a prefix); all when absent.
    #[arg(long = "tenant")]
    pub tenants: Vec<String>,
    /// Tenant migrated alone first.
    #[arg(long)]
    pub test_tenant: Option<String>,
    /// Cumulative wave shares in percent, such as 10,50,100.
    #[arg(long, value_delimiter = ',')]
    pub waves: Option<Vec<u8>>,
    /// Tenants at once.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// `in-place` or `blue-green`.
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// After a failure: `abort` or `continue`.
    #[arg(long, value_enum)]
    pub on_failure: Option<FailurePolicy>,
    /// Tenants with live traffic: `solo` (each migrates alone) or `shared`.
    #[arg(long, value_enum)]
    pub busy_tenants: Option<BusyPolicy>,
    /// When transactions outlast the drain timeout: `skip`, `cancel` or `terminate`.
    #[arg(long, value_enum)]
    pub on_drain_timeout: Option<DrainPolicy>,
    /// Consecutive failures that stop the rollout.
    #[arg(long)]
    pub circuit_breaker: Option<u32>,
    /// With `continue`: largest failed share of a wave, in percent, for the next to start.
    #[arg(long)]
    pub max_wave_failures: Option<u32>,
    /// Longest pause of a tenant's traffic, such as 2s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_pause: Option<Duration>,
    /// Time for transactions in flight to finish, such as 1s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
}

/// Migrate subcommands.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Show the waves and what each tenant would run.
    Plan {
        /// Rollout settings.
        #[command(flatten)]
        rollout: RolloutArgs,
    },
    /// Roll the pending migrations out to the fleet.
    Apply {
        /// Rollout settings.
        #[command(flatten)]
        rollout: RolloutArgs,
        /// Run tenants whose last attempt failed again.
        #[arg(long)]
        retry_failed: bool,
        /// Apply to a scratch copy of the test tenant and roll back instead.
        #[arg(long)]
        dry_run: bool,
    },
    /// Tenants at each status per version, or one tenant's versions.
    Status {
        /// One tenant's versions.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Take one tenant back: by blue/green retention, or by down steps.
    Rollback {
        /// Tenant name.
        tenant: String,
        /// Undo every applied version newer than this one (default: the newest only).
        #[arg(long)]
        to: Option<String>,
    },
    /// Drop the blue/green schemas kept for rollback whose retention has passed.
    Purge {
        /// Only these tenants (repeat the flag; `name*` matches a prefix); all when absent.
        #[arg(long = "tenant")]
        tenants: Vec<String>,
    },
}

/// Runs a migrate subcommand.
pub fn run(args: MigrateArgs) -> Result<(), String> {
    let mut config = super::tenant::load_config(args.config.as_deref())?;
    if let Some(dir) = args.dir {
        config.migrations.dir = Some(dir);
    }
    let set =
        MigrationSet::configured(config.migrations.dir.as_deref()).map_err(|e| e.to_string())?;
    super::runtime(1)?.block_on(dispatch(config, set, args.command))
}

async fn dispatch(
    config: Config,
    set: MigrationSet,
    command: MigrateCommand,
) -> Result<(), String> {
    let result = match command {
        MigrateCommand::Plan { rollout } => plan(&config, &set, &rollout).await,
        MigrateCommand::Apply {
            rollout,
            dry_run: true,
            ..
        } => try_dry_run(&config, &set, &rollout).await,
        MigrateCommand::Apply {
            rollout,
            retry_failed,
            ..
        } => return apply(&config, set, &rollout, retry_failed).await,
        MigrateCommand::Status { tenant } => show_status(&config, &set, tenant.as_deref()).await,
        MigrateCommand::Rollback { tenant, to } => {
            roll_back(&config, &set, &tenant, to.as_deref()).await
        }
        MigrateCommand::Purge { tenants } => purge(&config, &tenants).await,
    };
    result.map_err(|e| e.to_string())
}

fn options(config: &Config, args: &RolloutArgs, retry_failed: bool) -> Result<Options, String> {
    let mut settings: RolloutSettings = config.migrations.clone();
    override_settings(&mut settings, args)?;
    Ok(Options {
        settings,
        retry_failed,
        only: args.tenants.clone(),
        actor: crate::tenant::catalog::audit::cli_actor(),
        interrupt: Arc::new(AtomicBool::new(false)),
    })
}

fn override_settings(s: &mut RolloutSettings, args: &RolloutArgs) -> Result<(), String> {
    if let Some(waves) = &args.waves {
        crate::config::rollout::check_waves(waves).map_err(|e| format!("--waves: {e}"))?;
        s.waves = waves.clone();
    }
    s.test_tenant = args.test_tenant.clone().or(s.test_tenant.take());
    s.concurrency = args.concurrency.unwrap_or(s.concurrency).max(1);
    s.strategy = args.strategy.unwrap_or(s.strategy);
    s.on_failure = args.on_failure.unwrap_or(s.on_failure);
    s.on_drain_timeout = args.on_drain_timeout.unwrap_or(s.on_drain_timeout);
    s.busy_tenants = args.busy_tenants.unwrap_or(s.busy_tenants);
    s.circuit_breaker = args.circuit_breaker.unwrap_or(s.circuit_breaker).max(1);
    if let Some(percent) = args.max_wave_failures {
        crate::config::rollout::check_max_wave_failures(percent)
            .map_err(|e| format!("--max-wave-failures: {e}"))?;
        s.max_wave_failures = percent;
    }
    s.max_pause = args.max_pause.unwrap_or(s.max_pause);
    s.drain_timeout = args.drain_timeout.unwrap_or(s.drain_timeout);
    if s.drain_timeout >= s.max_pause {
        return Err(format!(
            "--drain-timeout {:?} must be shorter than --max-pause {:?}",
            s.drain_timeout, s.max_pause
        ));
    }
    Ok(())
}

async fn plan(config: &Config, set: &MigrationSet, args: &RolloutArgs) -> Result<(), ControlError> {
    let options = options(config, args, false).map_err(bad_flag)?;
    let control = crate::control::open(config).await?;
    let plan = fleet::plan(&control, &options).await?;
    let applied = status::applied_by_tenant(&control).await?;

    let newest = set
        .newest()
        .map_or("(no migrations)".into(), |m| m.version.clone());
    println!("{} tenants, newest version {newest}", plan.tenants.len());
    for wave in &plan.waves {
        println!("wave {} ({} tenants):", wave.label, wave.tenants.len());
        for tenant in &wave.tenants {
            let done = applied.get(tenant).map_or(&[][..], Vec::as_slice);
            let todo: Vec<&str> = set
                .migrations()
                .iter()
                .filter(|m| !done.contains(&m.version))
                .map(|m| m.version.as_str())
                .collect();
            let failed = plan.failed_before.contains(tenant);
            println!("  {tenant}: {}{}", pending_text(&todo), failed_note(failed));
        }
    }
    Ok(())
}

fn bad_flag(message: String) -> ControlError {
    ControlError::Flag(message)
}

fn pending_text(todo: &[&str]) -> String {
    match todo {
        [] => "up to date".into(),
        _ => format!("pending {}", todo.join(", ")),
    }
}

fn failed_note(failed: bool) -> &'static str {
    if failed {
        " (failed before: skipped unless --retry-failed)"
    } else {
        ""
    }
}

async fn apply(
    config: &Config,
    set: MigrationSet,
    args: &RolloutArgs,
    retry_failed: bool,
) -> Result<(), String> {
    let options = options(config, args, retry_failed)?;
    watch_interrupts(options.interrupt.clone());
    let mut progress = terminal_progress();

    let report = fleet::apply(config, Arc::new(set), &options, progress.as_mut())
        .await
        .map_err(|e| e.to_string())?;
    print_report(&report);
    purge_after_rollout(config, &options.only).await;

    match (report.failed(), &report.stopped) {
        (0, None) => Ok(()),
        (failed, stopped) => Err(format!(
            "rollout finished with {failed} failed tenants{}",
            stopped
                .as_ref()
                .map(|s| format!("; stopped: {s}"))
                .unwrap_or_default()
        )),
    }
}

/// Enforces blue/green retention once a rollout ends. A failure is a warning: the rollout
/// itself is done, and the next run or `migrate purge` tries again.
async fn purge_after_rollout(config: &Config, only: &[String]) {
    match retention::purge(config, only).await {
        Ok(purged) => print_purged(&purged),
        Err(error) => {
            tracing::warn!(%error, "cannot purge expired retained schemas");
            println!("warning: cannot purge expired retired schemas: {error}");
        }
    }
}

async fn purge(config: &Config, only: &[String]) -> Result<(), ControlError> {
    let purged = retention::purge(config, only).await?;
    print_purged(&purged);
    Ok(())
}

/// One line per schema dropped and per tenant left for later, then the count.
fn print_purged(purged: &retention::Purged) {
    for schema in &purged.dropped {
        println!("dropped retired schema {schema}");
    }
    for tenant in &purged.busy {
        println!("kept the expired schemas of {tenant}: a rollout or rollback holds it");
    }
    println!(
        "retention: dropped {} expired retired schemas",
        purged.dropped.len()
    );
}

/// First Ctrl-C: start no new tenants and let those in flight finish. Second: exit at once;
/// open transactions roll back and pauses expire on their own.
fn watch_interrupts(flag: Arc<AtomicBool>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("pgtenant: stopping after the tenants in flight (Ctrl-C again to quit now)");
        flag.store(true, Ordering::Relaxed);
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    });
}

async fn try_dry_run(
    config: &Config,
    set: &MigrationSet,
    args: &RolloutArgs,
) -> Result<(), ControlError> {
    let tenant = args
        .test_tenant
        .as_deref()
        .or(args.tenants.first().map(String::as_str));
    let found = dry_run::dry_run(config, set, tenant).await?;
    println!(
        "dry run on tenant {} ({}): {}",
        found.tenant,
        found.on,
        pending_text(
            &found
                .versions
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        )
    );
    for reason in &found.refusals {
        println!("  not copyable: {reason}");
    }
    println!(
        "copy {}, apply and checks {}",
        ms(found.copy),
        ms(found.apply)
    );
    match &found.result {
        Ok(()) => println!("result: ok (rolled back; nothing changed)"),
        Err(error) => println!("result: FAILED: {error} (rolled back; nothing changed)"),
    }
    found.result.clone().map_err(ControlError::Flag)
}

async fn show_status(
    config: &Config,
    set: &MigrationSet,
    tenant: Option<&str>,
) -> Result<(), ControlError> {
    let control = crate::control::open(config).await?;
    let Some(tenant) = tenant else {
        println!("| version | name | applied | pending | running | failed | rolled back |");
        println!("|---|---|--:|--:|--:|--:|--:|");
        for v in status::by_version(&control, set).await? {
            let n = |s: &str| v.counts.get(s).copied().unwrap_or(0);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                v.version,
                v.name,
                n("applied"),
                n("pending"),
                n("running"),
                n("failed"),
                n("rolled_back")
            );
        }
        return Ok(());
    };

    println!("| version | name | status | duration | by | error |");
    println!("|---|---|---|--:|---|---|");
    for v in status::of_tenant(&control, set, tenant).await? {
        let duration = v
            .duration_ms
            .map(|d| format!("{d:.1} ms"))
            .unwrap_or_default();
        println!(
            "| {} | {} | {} | {duration} | {} | {} |",
            v.version,
            v.name,
            v.status,
            v.applied_by.unwrap_or_default(),
            v.error.unwrap_or_default()
        );
    }
    Ok(())
}

async fn roll_back(
    config: &Config,
    set: &MigrationSet,
    tenant: &str,
    to: Option<&str>,
) -> Result<(), ControlError> {
    let actor = crate::tenant::catalog::audit::cli_actor();
    let report = rollback::rollback(config, set, tenant, to, &actor).await?;
    match &report.done {
        rollback::RolledBack::SwappedBack {
            versions,
            set_aside,
        } => println!(
            "tenant {tenant}: swapped back to its retained schema, undoing {} (the replaced \
             schema is kept as {set_aside})",
            versions.join(", ")
        ),
        rollback::RolledBack::Down { versions } => println!(
            "tenant {tenant}: down steps ran for {}",
            versions.join(", ")
        ),
    }
    println!("paused {}", ms(report.paused));
    Ok(())
}
