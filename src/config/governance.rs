//! Validated pool-governance settings: the global budget, tier sizes and ranking, and
//! per-tenant limits, with the check that the tenants can fit in the budget at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::file::{BudgetSection, LimitsSection, Tier, TiersSection};
use super::{ConfigError, Tenant, invalid};

/// Validated `[budget]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSettings {
    /// Backend connections in all.
    pub max_connections: usize,
    /// Part of it tenant pools never take.
    pub reserve: usize,
}

impl BudgetSettings {
    /// Connections tenant pools may hold together.
    pub fn for_tenants(&self) -> usize {
        self.max_connections - self.reserve
    }
}

/// Validated `[tiers]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSettings {
    /// Pool size of each tier.
    pub sizes: TierSizes,
    /// Tier before the first ranking.
    pub initial: Tier,
    /// Whether tenants are re-ranked.
    pub dynamic: bool,
    /// Ranking interval.
    pub interval: Duration,
    /// Rankings needed before a move.
    pub hysteresis: u32,
}

/// Pool size per tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierSizes {
    /// Hot.
    pub hot: usize,
    /// Warm.
    pub warm: usize,
    /// Cold.
    pub cold: usize,
}

impl TierSizes {
    /// The pool size of `tier`.
    pub fn of(&self, tier: Tier) -> usize {
        match tier {
            Tier::Hot => self.hot,
            Tier::Warm => self.warm,
            Tier::Cold => self.cold,
        }
    }
}

/// Validated `[limits]` defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Waiting clients per tenant.
    pub max_waiting: usize,
    /// Default transaction rate.
    pub rate: Option<Rate>,
    /// Longest delay for a transaction over the rate.
    pub rate_limit_wait: Duration,
    /// Default client connection cap.
    pub max_client_connections: Option<usize>,
}

/// A token-bucket rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Bucket capacity.
    pub burst: u32,
}

/// Validates `[budget]`.
pub fn budget(b: &BudgetSection) -> Result<BudgetSettings, ConfigError> {
    if b.reserve >= b.max_connections {
        let msg = format!(
            "reserve {} leaves no connections for tenants out of max_connections {}",
            b.reserve, b.max_connections
        );
        return Err(invalid("budget.reserve", msg));
    }
    Ok(BudgetSettings {
        max_connections: b.max_connections,
        reserve: b.reserve,
    })
}

/// Validates `[tiers]`.
pub fn tiers(t: &TiersSection) -> Result<TierSettings, ConfigError> {
    for (key, size) in [("hot", t.hot), ("warm", t.warm), ("cold", t.cold)] {
        if size == 0 {
            return Err(invalid(format!("tiers.{key}"), "must be at least 1, got 0"));
        }
    }
    if !(t.cold <= t.warm && t.warm <= t.hot) {
        let msg = format!(
            "sizes must not shrink towards hot: cold {} ≤ warm {} ≤ hot {}",
            t.cold, t.warm, t.hot
        );
        return Err(invalid("tiers.hot", msg));
    }
    if t.interval.is_zero() {
        return Err(invalid("tiers.interval", "must be longer than 0s"));
    }

    Ok(TierSettings {
        sizes: TierSizes {
            hot: t.hot,
            warm: t.warm,
            cold: t.cold,
        },
        initial: t.initial,
        dynamic: t.dynamic,
        interval: t.interval,
        hysteresis: t.hysteresis.max(1),
    })
}

/// Validates `[limits]`.
pub fn limits(l: &LimitsSection) -> Result<LimitSettings, ConfigError> {
    let rate = rate("limits", l.transactions_per_second, l.burst)?;
    if l.max_client_connections == Some(0) {
        return Err(invalid(
            "limits.max_client_connections",
            "must be at least 1, got 0",
        ));
    }

    Ok(LimitSettings {
        max_waiting: l.max_waiting,
        rate,
        rate_limit_wait: l.rate_limit_wait,
        max_client_connections: l.max_client_connections,
    })
}

/// A rate from its two keys under `prefix`.
pub fn rate(
    prefix: &str,
    per_second: Option<f64>,
    burst: Option<u32>,
) -> Result<Option<Rate>, ConfigError> {
    let Some(per_second) = per_second else {
        return Ok(None);
    };
    if !(per_second.is_finite() && per_second > 0.0) {
        let msg = format!("{per_second} is not a positive number");
        return Err(invalid(format!("{prefix}.transactions_per_second"), msg));
    }

    let burst = burst.unwrap_or(per_second.ceil() as u32).max(1);
    Ok(Some(Rate { per_second, burst }))
}

/// The connections a tenant is promised: its own `pool_size` or its pinned tier's size. A
/// ranked tenant is promised none: its pool opens connections on demand, and when the budget
/// is full an idle connection of another tenant is closed for it, so a fleet of more
/// tenants than the budget has connections (the usual schema-per-tenant shape) still loads.
fn smallest_pool(t: &Tenant, tiers: &TierSettings) -> usize {
    t.pool_size
        .or_else(|| t.tier.map(|tier| tiers.sizes.of(tier)))
        .unwrap_or(0)
}

/// Served tenants whose promised pools exceed what the budget leaves for tenants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overfull {
    /// Served (not suspended) tenants.
    pub tenants: usize,
    /// Connections their pool_size or pinned tier promises them in all.
    pub need: usize,
    /// The budget they had to fit in.
    pub budget: BudgetSettings,
}

/// The connections the served tenants are promised in all, or [`Overfull`] when that is
/// more than the budget leaves for tenants.
pub fn fit(
    tenants: &HashMap<String, Arc<Tenant>>,
    budget: &BudgetSettings,
    tiers: &TierSettings,
) -> Result<usize, Overfull> {
    let served: Vec<&Arc<Tenant>> = tenants.values().filter(|t| !t.suspended).collect();
    let need: usize = served.iter().map(|t| smallest_pool(t, tiers)).sum();

    if need > budget.for_tenants() {
        return Err(Overfull {
            tenants: served.len(),
            need,
            budget: *budget,
        });
    }
    Ok(need)
}

/// The tenants' smallest pools must fit in the budget.
pub fn check_fit(
    tenants: &HashMap<String, Arc<Tenant>>,
    budget: &BudgetSettings,
    tiers: &TierSettings,
) -> Result<(), ConfigError> {
    let Err(over) = fit(tenants, budget, tiers) else {
        return Ok(());
    };
    let msg = format!(
        "{} minus reserve {} leaves {} connections, but the {} tenants need at least {} \
         (their pool_size or pinned tier)",
        over.budget.max_connections,
        over.budget.reserve,
        over.budget.for_tenants(),
        over.tenants,
        over.need,
    );
    Err(invalid("budget.max_connections", msg))
}
