//! `[migrations]` validated: where the files are and how a fleet rollout runs.
//!
//! The rollout keys are checked when a file loads, like every other key, so `pgtenant check`
//! catches a bad wave list before a rollout starts. Connections are checked against the
//! budget's reserve, which is where a rollout draws them from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{BusyPolicy, DrainPolicy, FailurePolicy, MigrationsSection, Strategy};
use super::{BudgetSettings, ConfigError, invalid};

/// Validated `[migrations]`.
#[derive(Debug, Clone)]
pub struct RolloutSettings {
    /// Migrations directory, resolved against the file's folder.
    pub dir: Option<PathBuf>,
    /// Tenant migrated alone first and copied by dry runs.
    pub test_tenant: Option<String>,
    /// Cumulative percentages of the fleet, ending at 100.
    pub waves: Vec<u8>,
    /// Tenants at once.
    pub concurrency: usize,
    /// PostgreSQL connections the rollout may hold, control connection included.
    pub max_connections: usize,
    /// Pause safety valve.
    pub max_pause: Duration,
    /// Time given to transactions in flight.
    pub drain_timeout: Duration,
    /// What to do when they outlast it.
    pub on_drain_timeout: DrainPolicy,
    /// What to do after a failure.
    pub on_failure: FailurePolicy,
    /// Consecutive failures that stop the rollout.
    pub circuit_breaker: u32,
    /// Under `continue`, the largest failed share of a wave, in percent, that lets the next
    /// wave start.
    pub max_wave_failures: u32,
    /// In place or blue/green.
    pub strategy: Strategy,
    /// Whether tenants with live traffic migrate alone.
    pub busy_tenants: BusyPolicy,
    /// Blue/green retention of the previous schema.
    pub retention: Duration,
}

/// Checks `[migrations]`; `budget` bounds the connections a rollout may take.
pub fn validate(
    section: &MigrationsSection,
    budget: &BudgetSettings,
    base: &Path,
) -> Result<RolloutSettings, ConfigError> {
    check_waves(&section.waves)?;
    check_counts(section)?;
    check_max_wave_failures(section.max_wave_failures)?;
    check_pause(section)?;
    let max_connections = connections(section, budget)?;

    Ok(RolloutSettings {
        dir: section.dir.as_ref().map(|dir| base.join(dir)),
        test_tenant: section.test_tenant.clone(),
        waves: section.waves.clone(),
        concurrency: section.concurrency,
        max_connections,
        max_pause: section.max_pause,
        drain_timeout: section.drain_timeout,
        on_drain_timeout: section.on_drain_timeout,
        on_failure: section.on_failure,
        circuit_breaker: section.circuit_breaker,
        max_wave_failures: section.max_wave_failures,
        strategy: section.strategy,
        busy_tenants: section.busy_tenants,
        retention: section.retention,
    })
}

/// Waves rise strictly, each within 1–100, and the last reaches 100.
pub fn check_waves(waves: &[u8]) -> Result<(), ConfigError> {
    let rising = waves.windows(2).all(|w| w[0] < w[1]);
    let in_range = waves.iter().all(|w| (1..=100).contains(w));
    if rising && in_range && waves.last() == Some(&100) {
        return Ok(());
    }
    Err(invalid(
        "migrations.waves",
        format!("{waves:?} must rise strictly from 1 to 100 and end at 100, such as [10, 50, 100]"),
    ))
}

fn check_counts(section: &MigrationsSection) -> Result<(), ConfigError> {
    if section.concurrency == 0 {
        return Err(invalid(
            "migrations.concurrency",
            "0 runs nothing; use at least 1",
        ));
    }
    if section.circuit_breaker == 0 {
        let msg = "0 would stop before the first failure; use at least 1";
        return Err(invalid("migrations.circuit_breaker", msg));
    }
    Ok(())
}

/// A percentage, 0 (any failure stops the rollout) to 100 (never stop on failures).
pub fn check_max_wave_failures(percent: u32) -> Result<(), ConfigError> {
    if percent <= 100 {
        return Ok(());
    }
    Err(invalid(
        "migrations.max_wave_failures",
        format!("{percent} is not a percentage; use 0 to 100"),
    ))
}

fn check_pause(section: &MigrationsSection) -> Result<(), ConfigError> {
    if section.drain_timeout < section.max_pause {
        return Ok(());
    }
    Err(invalid(
        "migrations.drain_timeout",
        format!(
            "{:?} must be shorter than migrations.max_pause ({:?}): draining is part of the pause",
            section.drain_timeout, section.max_pause
        ),
    ))
}

/// Within the reserve; a value set explicitly must also allow one tenant in flight (a
/// control connection, a worker and its pause connection). The default, the reserve itself,
/// is checked when a rollout starts, so a proxy with a tiny reserve still loads.
fn connections(section: &MigrationsSection, budget: &BudgetSettings) -> Result<usize, ConfigError> {
    let Some(wanted) = section.max_connections else {
        return Ok(budget.reserve);
    };
    if wanted < MIN_CONNECTIONS {
        let msg = format!(
            "{wanted} is too few: a rollout needs {MIN_CONNECTIONS} (a control connection, \
             a worker and its pause)"
        );
        return Err(invalid("migrations.max_connections", msg));
    }
    if wanted > budget.reserve {
        let msg = format!(
            "{wanted} is more than budget.reserve ({}), which rollouts draw from",
            budget.reserve
        );
        return Err(invalid("migrations.max_connections", msg));
    }
    Ok(wanted)
}

/// The fewest connections a rollout can run with.
pub const MIN_CONNECTIONS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;

    /// Waves must rise to 100.
    #[test]
    fn waves_rise_to_one_hundred() {
        assert!(check_waves(&[10, 50, 100]).is_ok());
        assert!(check_waves(&[100]).is_ok());
        assert!(check_waves(&[50, 10, 100]).is_err());
        assert!(check_waves(&[10, 50]).is_err());
        assert!(check_waves(&[0, 100]).is_err());
        assert!(check_waves(&[]).is_err());
    }

    /// The failed share of a wave is a percentage, and the error names the key and value.
    #[test]
    fn max_wave_failures_is_a_percentage() {
        assert!(check_max_wave_failures(0).is_ok());
        assert!(check_max_wave_failures(100).is_ok());
        let error = check_max_wave_failures(101).unwrap_err().to_string();
        assert!(error.contains("migrations.max_wave_failures"), "{error}");
        assert!(error.contains("101"), "{error}");
    }
}
