//! Which tenants go in which wave.
//!
//! The test tenant, when there is one, goes alone in a wave of its own; the others follow in
//! name order, cut so that after wave `i` the share `waves[i]` percent of them is done
//! (rounded up, so a small fleet still gets its first wave). Empty waves are dropped.

/// One wave: its label and tenant names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// `test`, or the cumulative share such as `10%`.
    pub label: String,
    /// Tenants in this wave, in order.
    pub tenants: Vec<String>,
}

/// Splits `tenants` (already sorted) into waves.
pub fn waves(tenants: &[String], test_tenant: Option<&str>, percents: &[u8]) -> Vec<Wave> {
    let mut plan = Vec::new();
    let test = test_tenant.filter(|t| tenants.iter().any(|n| n == t));
    if let Some(test) = test {
        plan.push(Wave {
            label: super::gate::TEST_WAVE.into(),
            tenants: vec![test.to_owned()],
        });
    }

    let rest: Vec<&String> = tenants
        .iter()
        .filter(|t| Some(t.as_str()) != test)
        .collect();
    let mut done = 0;
    for &percent in percents {
        let upto = (rest.len() * usize::from(percent))
            .div_ceil(100)
            .min(rest.len());
        if upto > done {
            plan.push(Wave {
                label: format!("{percent}%"),
                tenants: rest[done..upto].iter().map(|t| (*t).clone()).collect(),
            });
            done = upto;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i:03}")).collect()
    }

    /// The test tenant goes first and alone; the rest follow 10 %, 50 %, 100 %.
    #[test]
    fn test_tenant_then_cumulative_shares() {
        let all = names(21);
        let plan = waves(&all, Some("t005"), &[10, 50, 100]);
        let sizes: Vec<usize> = plan.iter().map(|w| w.tenants.len()).collect();

        assert_eq!(plan[0].tenants, ["t005"]);
        assert_eq!(sizes, [1, 2, 8, 10]);
        assert_eq!(sizes.iter().sum::<usize>(), 21);
        assert!(!plan[1].tenants.contains(&"t005".to_owned()));
    }

    /// A small fleet keeps every tenant and drops empty waves.
    #[test]
    fn small_fleets_lose_no_tenant() {
        let plan = waves(&names(2), None, &[10, 50, 100]);
        let labels: Vec<&str> = plan.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(labels, ["10%", "100%"]);
        assert_eq!(plan.iter().map(|w| w.tenants.len()).sum::<usize>(), 2);

        assert!(waves(&[], Some("x"), &[100]).is_empty());
    }

    /// An unknown test tenant is ignored rather than invented.
    #[test]
    fn unknown_test_tenant_is_not_added() {
        let plan = waves(&names(3), Some("nobody"), &[100]);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].tenants.len(), 3);
    }
}
