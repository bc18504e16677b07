//! The wait histogram records waits that end without a connection: the pool's queue timing
//! out and the global budget staying spent. Neither path reaches PostgreSQL.

use std::path::Path;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::*;
use crate::config::Config;
use crate::config::file::ConfigFile;
use crate::pool::governor::Governors;

/// How long each acquisition may wait.
const WAIT: Duration = Duration::from_millis(50);

/// A pool of `size` for tenant `t` under a budget of `budget`, its metrics recorded by the
/// returned handle rather than the process's recorder.
fn pool(size: usize, budget: usize) -> (Arc<TenantPool>, PrometheusHandle) {
    let text = "[proxy]\ntls = \"disabled\"\n[[tenants]]\nname = \"t\"\n";
    let file: ConfigFile = toml::from_str(text).expect("parses");
    let config = Config::from_parsed(file, Path::new("/")).expect("valid");
    let tenant = config.tenants["t"].clone();
    let governor = Governors::default().for_tenant(&tenant, &config);

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let pool = metrics::with_local_recorder(&recorder, || {
        TenantPool::new(
            tenant,
            governor,
            PauseGate::new("t"),
            config.backend.clone(),
            Budget::new(budget),
            size,
        )
    });
    (pool, handle)
}

/// The wait histogram's count and sum for tenant `t`.
fn recorded_waits(handle: &PrometheusHandle) -> (u64, f64) {
    let text = handle.render();
    let value = |suffix: &str| -> String {
        let prefix = format!("pgtenant_pool_wait_seconds_{suffix}{{tenant=\"t\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
            .to_owned()
    };
    (
        value("count").parse().expect("count"),
        value("sum").parse().expect("sum"),
    )
}

#[tokio::test]
async fn a_queue_timeout_is_recorded() {
    let (pool, handle) = pool(0, 10);

    let error = pool
        .acquire(WAIT)
        .await
        .expect_err("no connection in a pool of 0");
    assert!(matches!(error, PoolError::Timeout { .. }), "{error:?}");

    let (count, sum) = recorded_waits(&handle);
    assert_eq!(count, 1);
    assert!(sum >= WAIT.as_secs_f64(), "recorded {sum} s");
}

#[tokio::test]
async fn a_spent_budget_is_recorded() {
    let (pool, handle) = pool(1, 0);

    let error = pool.acquire(WAIT).await.expect_err("no budget to open one");
    assert!(matches!(error, PoolError::Budget { .. }), "{error:?}");

    let (count, sum) = recorded_waits(&handle);
    assert_eq!(count, 1);
    assert!(sum >= WAIT.as_secs_f64(), "recorded {sum} s");
}
