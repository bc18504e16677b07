//! Whether a finished wave lets the next one start.
//!
//! The test wave is the canary: its tenant must end applied or up to date, whatever
//! `on_failure` says, or the rollout stops. A later wave under `on_failure = "continue"`
//! lets the next one start only if its failed share is at most `max_wave_failures` percent
//! of its tenants. Under `abort` the first failure has already stopped the rollout, so
//! nothing more is asked of those waves.

use super::{Outcome, TenantResult, Wave};
use crate::config::{FailurePolicy, RolloutSettings};

/// The label [`plan::waves`](super::plan::waves) gives the test tenant's wave.
pub const TEST_WAVE: &str = "test";

/// Why the rollout must stop after `wave`, whose tenants ended with `results`; `None` when
/// the next wave may start.
pub fn verdict(
    wave: &Wave,
    results: &[TenantResult],
    settings: &RolloutSettings,
) -> Option<String> {
    if wave.label == TEST_WAVE {
        return canary(results);
    }
    if settings.on_failure != FailurePolicy::Continue {
        return None;
    }

    let failed = results.iter().filter(|r| r.outcome.failed()).count();
    let total = wave.tenants.len();
    let limit = settings.max_wave_failures;
    if within(failed, total, limit) {
        return None;
    }
    Some(format!(
        "wave {} unhealthy: {failed} of {total} tenants failed (limit {limit}%)",
        wave.label
    ))
}

/// The test wave is healthy when its tenant was applied or already up to date.
fn canary(results: &[TenantResult]) -> Option<String> {
    let bad = results
        .iter()
        .find(|r| !matches!(r.outcome, Outcome::Applied { .. } | Outcome::UpToDate))?;
    let why = match &bad.outcome {
        Outcome::Failed(error) => format!("failed: {error}"),
        Outcome::Skipped(reason) => format!("skipped: {reason}"),
        Outcome::Applied { .. } | Outcome::UpToDate => String::new(),
    };
    Some(format!(
        "wave test unhealthy: test tenant {:?} {why}",
        bad.tenant
    ))
}

/// Whether `failed` of `total` is at most `percent` percent, in whole numbers.
fn within(failed: usize, total: usize, percent: u32) -> bool {
    let percent = usize::try_from(percent).unwrap_or(usize::MAX);
    failed.saturating_mul(100) <= total.saturating_mul(percent)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::file::MigrationsSection;

    fn settings(policy: FailurePolicy, limit: u32) -> RolloutSettings {
        let section = MigrationsSection {
            on_failure: policy,
            max_wave_failures: limit,
            ..MigrationsSection::default()
        };
        let budget = crate::config::BudgetSettings {
            max_connections: 100,
            reserve: 20,
        };
        crate::config::rollout::validate(&section, &budget, std::path::Path::new(".")).unwrap()
    }

    fn wave(label: &str, size: usize) -> Wave {
        Wave {
            label: label.into(),
            tenants: (0..size).map(|i| format!("t{i}")).collect(),
        }
    }

    fn results(failed: usize, ok: usize) -> Vec<TenantResult> {
        let outcome = |bad| match bad {
            true => Outcome::Failed("boom".into()),
            false => Outcome::UpToDate,
        };
        (0..failed + ok)
            .map(|i| TenantResult {
                tenant: format!("t{i}"),
                outcome: outcome(i < failed),
                took: Duration::ZERO,
            })
            .collect()
    }

    /// Under `continue`, a wave may lose up to the limit's share and no more.
    #[test]
    fn continue_stops_past_the_failed_share() {
        let continuing = settings(FailurePolicy::Continue, 10);
        assert_eq!(
            verdict(&wave("50%", 12), &results(1, 11), &continuing),
            None
        );
        assert_eq!(verdict(&wave("50%", 10), &results(1, 9), &continuing), None);

        let reason = verdict(&wave("50%", 12), &results(3, 9), &continuing);
        let expected = "wave 50% unhealthy: 3 of 12 tenants failed (limit 10%)";
        assert_eq!(reason.as_deref(), Some(expected));

        let strict = settings(FailurePolicy::Continue, 0);
        assert!(verdict(&wave("10%", 30), &results(1, 29), &strict).is_some());
        let lenient = settings(FailurePolicy::Continue, 100);
        assert_eq!(verdict(&wave("10%", 3), &results(3, 0), &lenient), None);
    }

    /// Under `abort` the share is not asked for; the failure itself stopped the rollout.
    #[test]
    fn abort_leaves_later_waves_alone() {
        let aborting = settings(FailurePolicy::Abort, 0);
        assert_eq!(verdict(&wave("50%", 4), &results(2, 2), &aborting), None);
    }

    /// The test tenant must be applied or up to date, whatever the policy.
    #[test]
    fn test_wave_must_succeed() {
        for policy in [FailurePolicy::Continue, FailurePolicy::Abort] {
            let any = settings(policy, 100);
            assert_eq!(verdict(&wave(TEST_WAVE, 1), &results(0, 1), &any), None);
            let reason = verdict(&wave(TEST_WAVE, 1), &results(1, 0), &any).unwrap();
            assert!(reason.starts_with("wave test unhealthy: test tenant \"t0\" failed"));
        }

        let skipped = [TenantResult {
            tenant: "t0".into(),
            outcome: Outcome::Skipped("did not drain".into()),
            took: Duration::ZERO,
        }];
        let any = settings(FailurePolicy::Continue, 100);
        let reason = verdict(&wave(TEST_WAVE, 1), &skipped, &any).unwrap();
        assert!(reason.ends_with("skipped: did not drain"), "{reason}");
    }
}
