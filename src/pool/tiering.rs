//! Dynamic tiering: every `[tiers] interval`, tenants are ranked by recent load and the top
//! 20 % become hot, the bottom 20 % cold, the rest warm.
//!
//! Load is busy backend time per second of wall time (the time leases were open during the
//! interval, those still open included; `pool::busy`), smoothed as an exponentially weighted average with weight 0.5 per interval.
//! Busy time rather than transactions per second, because a pool's size answers how many
//! connections a tenant keeps busy at once: one tenant running ten-second reports needs more
//! connections than one running a thousand one-millisecond lookups a second.
//! A tenant moves only after qualifying for the same new tier `hysteresis` rankings in a
//! row, so a short spike does not make it flap. Tenants with a tier in the configuration
//! are not ranked and keep it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Tier;
use crate::metrics as m;
use crate::server::Shared;

/// Weight of the latest interval in the moving average.
const EWMA_WEIGHT: f64 = 0.5;

/// Share of ranked tenants that are hot, and that are cold.
const EDGE_SHARE: f64 = 0.2;

/// One tenant's input to a ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Tenant name.
    pub tenant: String,
    /// Busy backend seconds per second over the last interval.
    pub load: f64,
    /// Tier now.
    pub tier: Tier,
}

/// A tier change decided by a ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Tenant name.
    pub tenant: String,
    /// Old tier.
    pub from: Tier,
    /// New tier.
    pub to: Tier,
    /// Smoothed load.
    pub load: f64,
    /// 1-based rank by load.
    pub rank: usize,
    /// Tenants ranked.
    pub of: usize,
}

#[derive(Debug, Default, Clone)]
struct Track {
    load: f64,
    candidate: Option<Tier>,
    streak: u32,
}

/// Ranking state carried between rounds.
#[derive(Debug, Default)]
pub struct Tiering {
    tracks: HashMap<String, Track>,
}

impl Tiering {
    /// Ranks `samples` (unpinned tenants only) and returns the moves that are due.
    pub fn round(&mut self, samples: &[Sample], hysteresis: u32) -> Vec<Change> {
        self.tracks
            .retain(|name, _| samples.iter().any(|s| &s.tenant == name));
        for s in samples {
            let track = self.tracks.entry(s.tenant.clone()).or_default();
            track.load = EWMA_WEIGHT * s.load + (1.0 - EWMA_WEIGHT) * track.load;
        }

        let order = self.order(samples);
        let n = order.len();
        let edge = (n as f64 * EDGE_SHARE).round() as usize;

        let mut changes = Vec::new();
        for (i, s) in order.into_iter().enumerate() {
            let target = match i {
                i if i < edge => Tier::Hot,
                i if i >= n - edge => Tier::Cold,
                _ => Tier::Warm,
            };
            if let Some(change) = self.qualify(s, target, hysteresis, i + 1, n) {
                changes.push(change);
            }
        }
        changes
    }

    /// Samples sorted by smoothed load, busiest first; ties by name for a stable order.
    fn order<'s>(&self, samples: &'s [Sample]) -> Vec<&'s Sample> {
        let load = |s: &Sample| self.tracks.get(&s.tenant).map_or(0.0, |t| t.load);
        let mut order: Vec<&Sample> = samples.iter().collect();
        order.sort_by(|a, b| {
            load(b)
                .total_cmp(&load(a))
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        order
    }

    fn qualify(
        &mut self,
        s: &Sample,
        target: Tier,
        hysteresis: u32,
        rank: usize,
        of: usize,
    ) -> Option<Change> {
        let track = self.tracks.get_mut(&s.tenant)?;
        if target == s.tier {
            track.candidate = None;
            track.streak = 0;
            return None;
        }

        if track.candidate == Some(target) {
            track.streak += 1;
        } else {
            track.candidate = Some(target);
            track.streak = 1;
        }
        if track.streak < hysteresis {
            return None;
        }

        track.candidate = None;
        track.streak = 0;
        Some(Change {
            tenant: s.tenant.clone(),
            from: s.tier,
            to: target,
            load: track.load,
            rank,
            of,
        })
    }
}

/// The tiering loop: ranks tenants every interval and resizes their pools.
pub async fn run(shared: Arc<Shared>) {
    let interval = shared.config().tiers.interval;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;

    let mut tiering = Tiering::default();
    loop {
        tick.tick().await;
        rank_once(&shared, &mut tiering, interval.as_secs_f64());
    }
}

/// One ranking round against the current configuration.
pub fn rank_once(shared: &Shared, tiering: &mut Tiering, seconds: f64) {
    let config = shared.config();
    if !config.tiers.dynamic {
        return;
    }

    let pools = &shared.pools;
    let mut samples = Vec::new();
    for tenant in config.tenants.values() {
        let governor = pools.governors.for_tenant(tenant, &config);
        let load = governor.take_busy() / seconds.max(f64::EPSILON);
        if governor.pinned_tier().is_none() {
            samples.push(Sample {
                tenant: tenant.name.clone(),
                load,
                tier: governor.tier(),
            });
        }
    }

    let changes = tiering.round(&samples, config.tiers.hysteresis);
    for change in &changes {
        apply_change(shared, change);
    }
    if !changes.is_empty() {
        pools.resize_all(&config);
    }
}

fn apply_change(shared: &Shared, change: &Change) {
    let config = shared.config();
    let Some(tenant) = config.tenants.get(&change.tenant) else {
        return;
    };
    shared
        .pools
        .governors
        .for_tenant(tenant, &config)
        .set_tier(change.to);

    m::tier_change(change.from, change.to);
    tracing::info!(
        tenant = %change.tenant,
        from = ?change.from,
        to = ?change.to,
        load = format!("{:.3}", change.load),
        rank = change.rank,
        of = change.of,
        "tenant changed tier: busy backend seconds per second rank it here for enough rankings in a row"
    );
}

#[cfg(test)]
mod tests;
