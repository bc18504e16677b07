//! Fleet rollouts end to end: `pgtenant migrate ...` run as the real binary against the
//! harness's PostgreSQL, with a catalog-backed proxy serving the tenants so pauses are
//! acknowledged by a live proxy. Each test uses its own tenant prefix and migrations folder,
//! and picks its tenants with `--tenant '<prefix>*'`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Proxy, backend_pid, bounded, catalog_proxy, connect_tls, fleet, pgtenant_bin};
use pgtenant::config::{Config, PoolMode};
use pgtenant::control::create::{self, CreateRequest};
use tokio_postgres::Client;

const MIGRATION_1: &str = include_str!("../config/migrations/0001_customers.sql");
const MIGRATION_2: &str = include_str!("../config/migrations/0002_invoices.sql");

/// The migration most tests roll out: one column added to `customers`.
const ADD_NOTE: &str = "ALTER TABLE customers ADD COLUMN note text;";

/// A check that fails on tenants holding a customer with an empty name.
const NOT_BLANK: &str = "ALTER TABLE customers ADD CONSTRAINT name_not_blank CHECK (name <> '');";

/// A configuration with a catalog and a migrations folder of its own.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    prefix: &'static str,
}

impl Setup {
    fn new(prefix: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("migrations")).unwrap();
        let setup = Self {
            config: dir.path().join("pgtenant.toml"),
            dir,
            prefix,
        };
        setup.write("0001_customers.sql", MIGRATION_1);
        setup.write("0002_invoices.sql", MIGRATION_2);
        setup.write_config();
        setup
    }

    fn write_config(&self) {
        let cluster = &fleet().cluster;
        let text = format!(
            "[proxy]\ntls = \"disabled\"\n\
             [backend]\nhost = \"{}\"\nport = {}\ndatabase = \"postgres\"\n\
             [catalog]\nuser = \"{}\"\npassword = \"{}\"\n\
             [migrations]\ndir = \"migrations\"\n",
            cluster.host(),
            cluster.port(),
            cluster.superuser(),
            cluster.superuser_password()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Adds a key to the `[migrations]` section, the file's last.
    fn migrations_key(&self, line: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(line);
        text.push('\n');
        std::fs::write(&self.config, text).unwrap();
    }

    /// `0003_note.sql`: adds the column `note` to `customers`.
    fn write_note_migration(&self) {
        self.write("0003_note.sql", ADD_NOTE);
    }

    fn write(&self, file: &str, sql: &str) {
        std::fs::write(self.dir.path().join("migrations").join(file), sql).unwrap();
    }

    fn config(&self) -> Config {
        Config::from_file(&self.config).unwrap()
    }

    /// Creates `<prefix>_00` … with the migrations present now; returns names and URLs.
    async fn tenants(&self, count: usize) -> Vec<(String, String)> {
        let config = self.config();
        let mut made = Vec::new();
        for i in 0..count {
            let request = CreateRequest {
                name: format!("{}_{i:02}", self.prefix),
                tier: None,
                pool_mode: PoolMode::Transaction,
                pool_size: None,
                demo_data: false,
            };
            let created = create::create(&config, &request).await.unwrap();
            made.push((created.name.clone(), created.database_url()));
        }
        made
    }

    /// Runs `pgtenant migrate <args> --config <file> --tenant '<prefix>*'`.
    async fn migrate(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(pgtenant_bin());
        command
            .arg("migrate")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("PGTENANT_LOG", "error");
        if matches!(args.first(), Some(&"apply" | &"plan" | &"purge")) {
            command.arg("--tenant").arg(format!("{}_*", self.prefix));
        }
        bounded("pgtenant migrate", command.output()).await.unwrap()
    }

    /// Like [`Setup::migrate`], failing the test unless it succeeds; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.migrate(args).await;
        assert!(
            out.status.success(),
            "migrate {args:?} failed: {}",
            text(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `status` of `tenant`'s `version` in the catalog, `none` without a row.
async fn status(tenant: &str, version: &str) -> String {
    let su = fleet().superuser().await;
    su.query_opt(
        "SELECT status FROM pgtenant.migrations WHERE tenant = $1 AND version = $2",
        &[&tenant, &version],
    )
    .await
    .unwrap()
    .map_or("none".into(), |r| r.get(0))
}

/// Whether `schema.table` has a constraint named `name`.
async fn has_constraint(schema: &str, name: &str) -> bool {
    let su = fleet().superuser().await;
    su.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_namespace n \
         ON n.oid = c.connamespace WHERE n.nspname = $1 AND c.conname = $2)",
        &[&schema, &name],
    )
    .await
    .unwrap()
    .get(0)
}

/// Whether `schema.customers` has column `column`.
async fn has_column(schema: &str, column: &str) -> bool {
    let su = fleet().superuser().await;
    su.query_one(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = $1 \
         AND table_name = 'customers' AND column_name = $2)",
        &[&schema, &column],
    )
    .await
    .unwrap()
    .get(0)
}

/// Puts a customer with an empty name into `schema`, which `NOT_BLANK` then fails on.
async fn spoil(schema: &str) {
    let su = fleet().superuser().await;
    let sql = format!("INSERT INTO {schema}.customers (name, plan) VALUES ('', 'free')");
    su.batch_execute(&sql).await.unwrap();
}

/// Logs in through the proxy with a tenant's URL (TLS, as printed).
async fn login(proxy: &Proxy, url: &str) -> Client {
    let config = common::printed_url_config(url, proxy.addr.port());
    let mut last = None;
    for _ in 0..50 {
        match connect_tls(config.clone(), "localhost").await {
            Ok(client) => return client,
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no login through the proxy: {last:?}");
}

/// With `continue`, a rollout over 30 tenants applies 28 and leaves the 2 whose data breaks
/// the migration exactly as they were, recording why. The default waves hold 3, 12 and 15
/// tenants; `roc_07` is 1 of 12 (8 %) and `roc_21` 1 of 15 (7 %), both within the default
/// `max_wave_failures` of 10 %, so every wave runs.
#[tokio::test(flavor = "multi_thread")]
async fn thirty_tenants_two_bad_ones_left_untouched() {
    let _proxy = catalog_proxy().await;
    let setup = Setup::new("roc");
    let tenants = setup.tenants(30).await;
    spoil("roc_07").await;
    spoil("roc_21").await;
    setup.write("0003_not_blank.sql", NOT_BLANK);

    let out = setup.migrate(&["apply", "--on-failure", "continue"]).await;
    assert!(!out.status.success(), "failures make a non-zero exit");
    let printed = text(&out);
    assert!(printed.contains("name_not_blank"), "{printed}");

    for (name, _) in &tenants {
        let bad = name == "roc_07" || name == "roc_21";
        let expected = if bad { "failed" } else { "applied" };
        assert_eq!(status(name, "0003").await, expected, "{name}");
        assert_eq!(has_constraint(name, "name_not_blank").await, !bad, "{name}");
    }
}

/// With `continue`, a wave whose failed share passes `max_wave_failures` (default 10 %)
/// stops the rollout before the next wave, whose tenants are not started; a higher limit
/// given on the command line lets the next wave run.
#[tokio::test(flavor = "multi_thread")]
async fn unhealthy_wave_stops_before_the_next() {
    let setup = Setup::new("row");
    setup.tenants(10).await;
    spoil("row_01").await;
    setup.write("0003_not_blank.sql", NOT_BLANK);

    let continuing = ["apply", "--on-failure", "continue", "--waves", "50,100"];
    let out = setup.migrate(&continuing).await;
    assert!(!out.status.success());
    let printed = text(&out);
    let reason = "wave 50% unhealthy: 1 of 5 tenants failed (limit 10%)";
    assert!(printed.contains(reason), "{printed}");
    assert!(printed.contains("not started: 5 tenants"), "{printed}");

    for i in 0..5 {
        let name = format!("row_{i:02}");
        let expected = if i == 1 { "failed" } else { "applied" };
        assert_eq!(status(&name, "0003").await, expected, "{name}");
    }
    for i in 5..10 {
        let name = format!("row_{i:02}");
        assert_eq!(status(&name, "0003").await, "none", "{name} never started");
    }

    let lenient = [
        &continuing[..],
        &["--retry-failed", "--max-wave-failures", "20"],
    ]
    .concat();
    let out = setup.migrate(&lenient).await;
    assert!(!text(&out).contains("unhealthy"), "{}", text(&out));
    for i in 5..10 {
        let name = format!("row_{i:02}");
        assert_eq!(status(&name, "0003").await, "applied", "{name}");
    }
}

/// The test tenant is the canary: when it fails, the rollout stops even with `continue`,
/// and no other tenant is started.
#[tokio::test(flavor = "multi_thread")]
async fn failing_test_tenant_stops_a_continue_rollout() {
    let setup = Setup::new("roq");
    setup.tenants(4).await;
    spoil("roq_02").await;
    setup.write("0003_not_blank.sql", NOT_BLANK);

    let out = setup
        .migrate(&[
            "apply",
            "--on-failure",
            "continue",
            "--test-tenant",
            "roq_02",
        ])
        .await;
    assert!(!out.status.success());
    let printed = text(&out);
    assert!(
        printed.contains("wave test unhealthy: test tenant \"roq_02\" failed"),
        "{printed}"
    );
    assert!(printed.contains("not started: 3 tenants"), "{printed}");

    assert_eq!(status("roq_02", "0003").await, "failed");
    for other in ["roq_00", "roq_01", "roq_03"] {
        assert_eq!(status(other, "0003").await, "none", "{other} never started");
    }
}

/// With `abort` (the default) the first failure stops the rollout: later tenants are not
/// started and stay pending.
#[tokio::test(flavor = "multi_thread")]
async fn abort_stops_at_the_first_failure() {
    let setup = Setup::new("roa");
    setup.tenants(8).await;
    spoil("roa_02").await;
    setup.write("0003_not_blank.sql", NOT_BLANK);

    let out = setup
        .migrate(&["apply", "--concurrency", "1", "--waves", "100"])
        .await;
    assert!(!out.status.success());
    assert!(text(&out).contains("on_failure = abort"), "{}", text(&out));

    assert_eq!(status("roa_01", "0003").await, "applied");
    assert_eq!(status("roa_02", "0003").await, "failed");
    for late in ["roa_03", "roa_07"] {
        assert_eq!(status(late, "0003").await, "none", "{late} never started");
    }
}

/// With `continue`, three failures in a row trip the circuit breaker.
#[tokio::test(flavor = "multi_thread")]
async fn circuit_breaker_trips_after_three() {
    let setup = Setup::new("rob");
    let tenants = setup.tenants(6).await;
    for (name, _) in &tenants {
        spoil(name).await;
    }
    setup.write("0003_not_blank.sql", NOT_BLANK);

    let out = setup
        .migrate(&[
            "apply",
            "--on-failure",
            "continue",
            "--concurrency",
            "1",
            "--waves",
            "100",
        ])
        .await;
    assert!(text(&out).contains("circuit breaker"), "{}", text(&out));

    let mut failed = 0;
    for (name, _) in &tenants {
        failed += usize::from(status(name, "0003").await == "failed");
    }
    assert_eq!(failed, 3, "exactly three ran before the breaker tripped");
}

/// A run killed half way is picked up by the next run: tenants already applied are not run
/// again, the others are.
#[tokio::test(flavor = "multi_thread")]
async fn interrupted_rollout_resumes() {
    let setup = Setup::new("ror");
    let tenants = setup.tenants(8).await;
    setup.write(
        "0003_slow.sql",
        "SELECT pg_sleep(0.3); ALTER TABLE customers ADD COLUMN slow text;",
    );

    let mut child = tokio::process::Command::new(pgtenant_bin())
        .args(["migrate", "apply", "--concurrency", "1", "--waves", "100"])
        .args(["--tenant", "ror_*", "--config"])
        .arg(&setup.config)
        .env("PGTENANT_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until("two tenants applied", Duration::from_secs(30), || async {
        status("ror_01", "0003").await == "applied"
    })
    .await;
    child.kill().await.unwrap();

    let first_run = finished_at("ror_00").await;
    assert_ne!(
        status("ror_07", "0003").await,
        "applied",
        "the kill came early"
    );

    setup.ok(&["apply"]).await;
    for (name, _) in &tenants {
        assert_eq!(status(name, "0003").await, "applied", "{name}");
    }
    assert_eq!(finished_at("ror_00").await, first_run, "not applied twice");
}

async fn finished_at(tenant: &str) -> Option<std::time::SystemTime> {
    let su = fleet().superuser().await;
    su.query_one(
        "SELECT finished_at FROM pgtenant.migrations WHERE tenant = $1 AND version = '0003'",
        &[&tenant],
    )
    .await
    .unwrap()
    .get(0)
}

/// A migration file edited after it was applied is refused by its checksum.
#[tokio::test(flavor = "multi_thread")]
async fn edited_migration_is_refused() {
    let setup = Setup::new("rok");
    setup.tenants(1).await;
    setup.write_note_migration();
    setup.ok(&["apply"]).await;

    setup.write(
        "0003_note.sql",
        "ALTER TABLE customers ADD COLUMN note2 text;",
    );
    let out = setup.migrate(&["apply"]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("checksum"), "{}", text(&out));
    assert!(!has_column("rok_00", "note2").await);
}

/// Down steps take a tenant back, and the version can be applied again afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn down_steps_roll_back() {
    let setup = Setup::new("rod");
    setup.tenants(1).await;
    setup.write_note_migration();
    setup.write(
        "0003_note.down.sql",
        "ALTER TABLE customers DROP COLUMN note;",
    );
    setup.ok(&["apply"]).await;
    assert!(has_column("rod_00", "note").await);

    setup.ok(&["rollback", "rod_00"]).await;
    assert!(!has_column("rod_00", "note").await);
    assert_eq!(status("rod_00", "0003").await, "rolled_back");

    setup.ok(&["apply"]).await;
    assert!(has_column("rod_00", "note").await);
}

/// Blue/green: the migration lands on a copy swapped in under the live name, data kept; a
/// rollback swaps the retained schema back.
#[tokio::test(flavor = "multi_thread")]
async fn blue_green_swap_and_rollback() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new("rog");
    let tenants = setup.tenants(1).await;
    let client = login(&proxy, &tenants[0].1).await;
    client
        .batch_execute("INSERT INTO customers (name, plan) VALUES ('kept', 'pro')")
        .await
        .unwrap();
    setup.write_note_migration();

    setup.ok(&["apply", "--strategy", "blue-green"]).await;
    assert!(has_column("rog_00", "note").await);
    let after = login(&proxy, &tenants[0].1).await;
    let row = after
        .query_one("SELECT name, note FROM customers", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "kept");

    let started = Instant::now();
    let printed = setup.ok(&["rollback", "rog_00"]).await;
    tracing::info!(took = ?started.elapsed(), "blue/green rollback");
    assert!(printed.contains("swapped back"), "{printed}");
    assert!(!has_column("rog_00", "note").await);
    let back = login(&proxy, &tenants[0].1).await;
    let row = back
        .query_one("SELECT name FROM customers", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "kept");
}

/// Retention of the test's blue/green swaps: short enough to pass within the test, long
/// enough that the swapping run's own purge, right after the swap, finds nothing expired.
const SHORT_RETENTION: Duration = Duration::from_secs(3);

/// The schemas retained for `tenant`.
async fn retained(tenant: &str) -> Vec<String> {
    let su = fleet().superuser().await;
    let rows = su
        .query(
            "SELECT schema_name FROM pgtenant.retired_schemas WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn schema_exists(schema: &str) -> bool {
    let su = fleet().superuser().await;
    su.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
        &[&schema],
    )
    .await
    .unwrap()
    .get(0)
}

/// Applies `0003` blue/green to `<prefix>_00` with a short retention and waits until the
/// retired schema has expired; returns its name.
async fn expired_swap(setup: &Setup) -> String {
    let tenant = format!("{}_00", setup.prefix);
    let retention = humantime::format_duration(SHORT_RETENTION);
    setup.migrations_key(&format!("retention = \"{retention}\""));
    setup.tenants(1).await;
    setup.write_note_migration();

    let printed = setup.ok(&["apply", "--strategy", "blue-green"]).await;
    assert!(printed.contains("dropped 0 expired"), "{printed}");
    let kept = retained(&tenant).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(schema_exists(&kept[0]).await);

    tokio::time::sleep(SHORT_RETENTION + Duration::from_millis(500)).await;
    kept[0].clone()
}

/// Retention is enforced by the next rollout: once the retired schema has expired, a
/// `migrate apply` (with nothing pending) drops it and says so, and `migrate rollback`,
/// having no retained schema left, takes the down steps instead.
#[tokio::test(flavor = "multi_thread")]
async fn next_apply_drops_expired_retired_schemas() {
    let setup = Setup::new("roe");
    let retired = expired_swap(&setup).await;
    setup.write(
        "0003_note.down.sql",
        "ALTER TABLE customers DROP COLUMN note;",
    );

    let printed = setup.ok(&["apply"]).await;
    says_dropped(&printed, &retired);
    assert!(!schema_exists(&retired).await);
    assert!(retained("roe_00").await.is_empty());

    let printed = setup.ok(&["rollback", "roe_00"]).await;
    assert!(printed.contains("down steps ran for 0003"), "{printed}");
    assert!(!has_column("roe_00", "note").await);
}

/// The purge's report of dropping exactly `retired`.
fn says_dropped(printed: &str, retired: &str) {
    let line = format!("dropped retired schema {retired}");
    assert!(printed.contains(&line), "{printed}");
    let count = "dropped 1 expired retired schemas";
    assert!(printed.contains(count), "{printed}");
}

/// `migrate purge` drops expired retired schemas, one line each and a count; a rollback
/// afterwards has neither a retained schema nor a down step and refuses, changing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn purge_drops_expired_retired_schemas() {
    let setup = Setup::new("rou");
    let retired = expired_swap(&setup).await;

    let printed = setup.ok(&["purge"]).await;
    says_dropped(&printed, &retired);
    assert!(!schema_exists(&retired).await);

    let out = setup.migrate(&["rollback", "rou_00"]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("no down step"), "{}", text(&out));
    assert!(has_column("rou_00", "note").await);
    assert_eq!(status("rou_00", "0003").await, "applied");
}

/// A lock that keeps the migration waiting fires the max-pause valve: the tenant's change is
/// rolled back, its traffic resumes, and a later run applies it.
#[tokio::test(flavor = "multi_thread")]
async fn max_pause_valve_fires() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new("rov");
    let tenants = setup.tenants(1).await;
    setup.write_note_migration();

    let mut holder = fleet().superuser().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE rov_00.customers IN ACCESS SHARE MODE")
        .await
        .unwrap();

    let out = setup
        .migrate(&["apply", "--max-pause", "800ms", "--drain-timeout", "300ms"])
        .await;
    assert!(text(&out).contains("max_pause"), "{}", text(&out));
    assert_eq!(status("rov_00", "0003").await, "failed");

    let client = login(&proxy, &tenants[0].1).await;
    let started = Instant::now();
    client
        .simple_query("SELECT count(*) FROM customers")
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "traffic resumed"
    );

    tx.rollback().await.unwrap();
    setup.ok(&["apply", "--retry-failed"]).await;
    assert_eq!(status("rov_00", "0003").await, "applied");
}

/// A transaction held open through the proxy past the drain timeout makes the rollout skip
/// the tenant (the default policy); the transaction itself commits fine.
#[tokio::test(flavor = "multi_thread")]
async fn undrained_tenant_is_skipped() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new("ros");
    let tenants = setup.tenants(1).await;
    setup.write_note_migration();

    let mut client = login(&proxy, &tenants[0].1).await;
    let tx = client.transaction().await.unwrap();
    tx.simple_query("SELECT count(*) FROM customers")
        .await
        .unwrap();

    let printed = setup.ok(&["apply", "--drain-timeout", "300ms"]).await;
    assert!(printed.contains("skipped"), "{printed}");
    assert!(!has_column("ros_00", "note").await);
    tx.commit().await.unwrap();

    setup.ok(&["apply"]).await;
    assert!(has_column("ros_00", "note").await);
}

/// With `terminate`, a client idle inside a transaction past the drain timeout loses its
/// backend (its transaction rolls back, it gets an error), and the tenant is migrated.
#[tokio::test(flavor = "multi_thread")]
async fn terminate_ends_an_idle_transaction() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new("rox");
    let tenants = setup.tenants(1).await;
    setup.write_note_migration();

    let mut client = login(&proxy, &tenants[0].1).await;
    let tx = client.transaction().await.unwrap();
    tx.simple_query("INSERT INTO customers (name, plan) VALUES ('held', 'free')")
        .await
        .unwrap();

    let args = [
        "apply",
        "--drain-timeout",
        "400ms",
        "--on-drain-timeout",
        "terminate",
    ];
    let printed = setup.ok(&args).await;
    assert!(printed.contains("applied 0003"), "{printed}");
    assert!(has_column("rox_00", "note").await);

    assert!(tx.commit().await.is_err(), "the held transaction was ended");
    let su = fleet().superuser().await;
    let held: i64 = (su.query_one(
        "SELECT count(*) FROM rox_00.customers WHERE name = 'held'",
        &[],
    ))
    .await
    .unwrap()
    .get(0);
    assert_eq!(held, 0, "its insert rolled back");
}

/// Zero downtime: clients keep running transactions through the proxy while their tenant's
/// schema changes; none fails, and none sees one added column without the other.
#[tokio::test(flavor = "multi_thread")]
async fn clients_see_no_error_and_no_half_schema() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new("roz");
    let tenants = setup.tenants(1).await;
    setup.write(
        "0003_pair.sql",
        "ALTER TABLE customers ADD COLUMN c1 text; \
         SELECT pg_sleep(0.05); \
         ALTER TABLE customers ADD COLUMN c2 text; \
         CREATE INDEX customers_c1 ON customers (c1);",
    );

    let stop = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let client = login(&proxy, &tenants[0].1).await;
        let (stop, done) = (stop.clone(), done.clone());
        load.spawn(async move { client_loop(client, stop, done).await });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let printed = setup.ok(&["apply"]).await;
    assert!(printed.contains("applied 0003 (paused"), "{printed}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(1, Ordering::Relaxed);

    let mut seen = Vec::new();
    while let Some(result) = load.join_next().await {
        seen.extend(result.unwrap());
    }
    assert!(seen.contains(&2), "the clients saw the new schema");
    assert!(done.load(Ordering::Relaxed) > 20, "the load ran");
}

/// Runs write and read transactions until `stop`; returns how many of the two columns each
/// read saw, failing on any error or on a half-applied schema.
async fn client_loop(client: Client, stop: Arc<AtomicUsize>, done: Arc<AtomicUsize>) -> Vec<i64> {
    let mut seen = Vec::new();
    while stop.load(Ordering::Relaxed) == 0 {
        client
            .batch_execute("BEGIN; INSERT INTO customers (name, plan) VALUES ('c', 'free'); COMMIT")
            .await
            .expect("write during the rollout");
        let row = client
            .query_one(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = \
                 current_schema() AND table_name = 'customers' AND column_name IN ('c1', 'c2')",
                &[],
            )
            .await
            .expect("read during the rollout");
        let columns: i64 = row.get(0);
        assert!(columns == 0 || columns == 2, "half-applied schema seen");
        seen.push(columns);
        done.fetch_add(1, Ordering::Relaxed);
    }
    seen
}

/// `--dry-run` applies to a scratch copy and rolls back: the tenant stays pending and no
/// extra schema is left.
#[tokio::test(flavor = "multi_thread")]
async fn dry_run_changes_nothing() {
    let setup = Setup::new("rot");
    setup.tenants(2).await;
    setup.write_note_migration();

    let printed = setup
        .ok(&["apply", "--dry-run", "--test-tenant", "rot_00"])
        .await;
    assert!(printed.contains("result: ok"), "{printed}");
    assert!(printed.contains("a copy"), "{printed}");
    assert!(!has_column("rot_00", "note").await);
    assert_eq!(status("rot_00", "0003").await, "none");

    let su = fleet().superuser().await;
    let leftover: i64 = su
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rot%' AND nspname NOT IN \
             ('rot_00', 'rot_01')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftover, 0);
}

/// `plan` lists the waves with the test tenant first; `status` shows a tenant's versions.
#[tokio::test(flavor = "multi_thread")]
async fn plan_and_status_describe_the_fleet() {
    let setup = Setup::new("rop");
    setup.tenants(4).await;
    setup.write_note_migration();

    let plan = setup.ok(&["plan", "--test-tenant", "rop_02"]).await;
    assert!(plan.contains("wave test (1 tenants)"), "{plan}");
    assert!(plan.contains("rop_02: pending 0003"), "{plan}");

    setup.ok(&["apply", "--tenant", "rop_00"]).await;
    let status = setup.ok(&["status", "--tenant", "rop_00"]).await;
    assert!(status.contains("| 0003 | note | applied |"), "{status}");
}

/// After a tenant's migration, its proxy does not reuse a backend connection opened before
/// it (the connection's plans and prepared statements may be stale).
#[tokio::test(flavor = "multi_thread")]
async fn backends_from_before_a_migration_are_not_reused() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new("rof");
    let tenants = setup.tenants(1).await;
    let client = login(&proxy, &tenants[0].1).await;
    let before = backend_pid(&client).await;
    assert_eq!(
        backend_pid(&client).await,
        before,
        "an idle backend is reused"
    );

    setup.write_note_migration();
    setup.ok(&["apply"]).await;
    assert_ne!(
        backend_pid(&client).await,
        before,
        "a new backend after the migration"
    );
}

/// A tenant with live traffic migrates alone and before the rest of its wave (the default
/// `busy_tenants = "solo"`), so its pause is not stretched by other tenants' migrations;
/// the quiet tenants still run together.
#[tokio::test(flavor = "multi_thread")]
async fn busy_tenant_migrates_alone() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new("rol");
    let tenants = setup.tenants(6).await;
    setup.write(
        "0003_slow.sql",
        "ALTER TABLE customers ADD COLUMN note text; SELECT pg_sleep(1);",
    );

    let client = login(&proxy, &tenants[3].1).await;
    client.simple_query("SELECT 1").await.unwrap();
    setup
        .ok(&["apply", "--waves", "100", "--concurrency", "6"])
        .await;

    let spans = migration_spans("rol\\_%").await;
    assert_eq!(spans.len(), 6, "every tenant applied");
    let (_, busy_end) = spans["rol_03"];
    for (tenant, (start, end)) in &spans {
        if tenant != "rol_03" {
            assert!(
                *start >= busy_end,
                "{tenant} started during the busy tenant"
            );
        }
        assert!(*end > *start);
    }

    let quiet: Vec<_> = (spans.iter())
        .filter(|(tenant, _)| *tenant != "rol_03")
        .map(|(_, span)| *span)
        .collect();
    let overlap = quiet
        .iter()
        .enumerate()
        .any(|(i, (start, end))| quiet[i + 1..].iter().any(|(s, e)| s < end && start < e));
    assert!(overlap, "the quiet tenants ran one at a time");
}

/// When each tenant's `0003` started and finished (the SQL itself, as recorded).
async fn migration_spans(
    pattern: &str,
) -> std::collections::HashMap<String, (std::time::SystemTime, std::time::SystemTime)> {
    let su = fleet().superuser().await;
    let rows = su
        .query(
            "SELECT tenant, started_at, finished_at FROM pgtenant.migrations \
             WHERE tenant LIKE $1 AND version = '0003' AND status = 'applied'",
            &[&pattern],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}
