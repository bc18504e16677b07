//! Specification of ranking and hysteresis.

use super::*;

fn samples(loads: &[(&str, f64, Tier)]) -> Vec<Sample> {
    loads
        .iter()
        .map(|(t, l, tier)| Sample {
            tenant: (*t).to_owned(),
            load: *l,
            tier: *tier,
        })
        .collect()
}

fn ten_tenants(busy: &str) -> Vec<Sample> {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    let loads: Vec<(&str, f64, Tier)> = names
        .iter()
        .map(|n| (*n, if *n == busy { 5.0 } else { 0.1 }, Tier::Warm))
        .collect();
    samples(&loads)
}

#[test]
fn busiest_fifth_is_promoted_after_hysteresis() {
    let mut tiering = Tiering::default();
    let input = ten_tenants("c");

    assert!(tiering.round(&input, 3).iter().all(|c| c.tenant != "c"));
    assert!(tiering.round(&input, 3).iter().all(|c| c.tenant != "c"));
    let third = tiering.round(&input, 3);
    let c = third
        .iter()
        .find(|c| c.tenant == "c")
        .expect("c moves on the third round");
    assert_eq!((c.from, c.to, c.rank), (Tier::Warm, Tier::Hot, 1));
}

#[test]
fn quietest_fifth_is_demoted() {
    let mut tiering = Tiering::default();
    let mut input = ten_tenants("c");
    input.iter_mut().for_each(|s| {
        if s.tenant == "j" {
            s.load = 0.0;
        }
    });

    let changes = tiering.round(&input, 1);
    let cold: Vec<&str> = changes
        .iter()
        .filter(|c| c.to == Tier::Cold)
        .map(|c| c.tenant.as_str())
        .collect();
    assert_eq!(cold.len(), 2, "bottom 20 % of ten tenants: {changes:?}");
    assert!(cold.contains(&"j"));
}

#[test]
fn a_broken_streak_starts_over() {
    let mut tiering = Tiering::default();
    let c_busy = ten_tenants("c");
    let mut others_busy = ten_tenants("x");
    for s in others_busy.iter_mut() {
        if s.tenant == "a" || s.tenant == "b" {
            s.load = 5.0;
        }
    }

    assert!(
        tiering.round(&c_busy, 2).is_empty(),
        "first qualifying round"
    );
    for _ in 0..3 {
        let changes = tiering.round(&others_busy, 2);
        assert!(
            changes.iter().all(|c| c.tenant != "c"),
            "c no longer qualifies"
        );
    }
    assert!(
        tiering.round(&c_busy, 2).iter().all(|c| c.tenant != "c"),
        "the streak restarted: one round is not enough"
    );
}

#[test]
fn few_tenants_all_stay_warm() {
    let mut tiering = Tiering::default();
    let input = samples(&[("a", 9.0, Tier::Warm), ("b", 0.0, Tier::Warm)]);
    assert!(tiering.round(&input, 1).is_empty());
}
