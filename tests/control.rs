//! The control plane end to end: `pgtenant tenant ...` run as the real binary against the
//! harness's PostgreSQL, with a catalog-backed proxy started before each change so logins
//! prove that proxies follow the catalog. Every test uses its own tenant names.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{Proxy, catalog_proxy, connect_plain, connect_tls, fleet, pgtenant_bin, sqlstate};
use tokio_postgres::Client;

/// How long a proxy may take to hear of a catalog change (the notification path takes ~1 s at
/// most; the periodic reload is 30 s, so passing within this proves the notification).
const NOTIFY: Duration = Duration::from_secs(5);

/// Held by tests that pin tiers or pool sizes: the budget check counts every pinned tenant
/// in the catalog the tests share.
static PINNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIGRATION_1: &str = include_str!("../config/migrations/0001_customers.sql");
const MIGRATION_2: &str = include_str!("../config/migrations/0002_invoices.sql");
const DEMO_DATA: &str = include_str!("../config/demo_data.sql");

/// A configuration file with a catalog, migrations and demo data in a temporary folder.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// Printed URLs name `proxy`; the migrations are the repository's demo ones.
    fn new(proxy: &Proxy) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("migrations")).unwrap();
        let setup = Self {
            config: dir.path().join("pgtenant.toml"),
            dir,
        };
        setup.write_migration("0001_customers.sql", MIGRATION_1);
        setup.write_migration("0002_invoices.sql", MIGRATION_2);
        std::fs::write(setup.dir.path().join("demo_data.sql"), DEMO_DATA).unwrap();
        setup.write_config(&format!("127.0.0.1:{}", proxy.addr.port()), true);
        setup
    }

    fn write_config(&self, public_address: &str, with_catalog: bool) {
        let cluster = &fleet().cluster;
        let catalog = if with_catalog {
            format!(
                "[catalog]\nuser = \"{}\"\npassword = \"{}\"\n",
                cluster.superuser(),
                cluster.superuser_password()
            )
        } else {
            String::new()
        };
        let text = format!(
            "[proxy]\ntls = \"disabled\"\n\
             [backend]\nhost = \"{}\"\nport = {}\ndatabase = \"postgres\"\n\
             {catalog}\
             [migrations]\ndir = \"migrations\"\n\
             [provisioning]\ndemo_data = \"demo_data.sql\"\npublic_address = \"{public_address}\"\n",
            cluster.host(),
            cluster.port(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Adds `toml` (whole sections) to the end of the configuration file.
    fn append_config(&self, toml: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(toml);
        std::fs::write(&self.config, text).unwrap();
    }

    fn write_migration(&self, file: &str, sql: &str) {
        std::fs::write(self.dir.path().join("migrations").join(file), sql).unwrap();
    }

    /// Runs `pgtenant tenant <args> --config <file>`.
    async fn tenant(&self, args: &[&str]) -> Output {
        tenant_command(&self.config, args).await
    }

    /// Like [`Setup::tenant`], failing the test unless the command succeeds.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.tenant(args).await;
        assert!(
            out.status.success(),
            "pgtenant tenant {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Like [`Setup::tenant`], expecting a failure; returns its one-line message.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.tenant(args).await;
        assert!(!out.status.success(), "pgtenant tenant {args:?} must fail");
        one_line_error(&out)
    }

    /// Creates `name` with demo data; returns its printed `DATABASE_URL`.
    async fn create(&self, name: &str) -> String {
        database_url(&self.ok(&["create", name, "--demo-data"]).await)
    }
}

async fn tenant_command(config: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(pgtenant_bin())
        .arg("tenant")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("PGTENANT_LOG", "error")
        .output()
        .await
        .unwrap()
}

fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {out:?}");
    lines[0].to_owned()
}

fn database_url(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("DATABASE_URL="))
        .unwrap_or_else(|| panic!("no DATABASE_URL in: {stdout}"))
        .to_owned()
}

/// Logs in with a printed URL as written (`sslmode=require`, so over TLS).
async fn login(url: &str) -> Result<Client, tokio_postgres::Error> {
    let parsed: tokio_postgres::Config = url.parse().unwrap();
    let config = common::printed_url_config(url, parsed.get_ports()[0]);
    connect_tls(config, "localhost").await
}

/// Waits until `url` logs in and answers a query.
async fn wait_for_login(url: &str) -> Client {
    common::wait_until("login with the printed URL", NOTIFY, || async {
        match login(url).await {
            Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    login(url).await.unwrap()
}

/// Waits until logging in with `url` fails with `code`.
async fn wait_for_refusal(url: &str, code: &str) {
    common::wait_until("login refused", NOTIFY, || async {
        match login(url).await {
            Ok(_) => false,
            Err(error) => sqlstate(&error) == code,
        }
    })
    .await;
}

/// Whether a role, a schema and a catalog row named `name` exist.
async fn traces(name: &str) -> (bool, bool, bool) {
    let su = fleet().superuser().await;
    let row = su
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname::text = $1::text), \
                    EXISTS (SELECT 1 FROM pg_namespace WHERE nspname::text = $1::text), \
                    EXISTS (SELECT 1 FROM pgtenant.tenants WHERE name = $1::text)",
            &[&name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

async fn catalog_text(sql: &str, name: &str) -> Option<String> {
    let su = fleet().superuser().await;
    su.query_opt(sql, &[&name])
        .await
        .unwrap()
        .and_then(|r| r.get(0))
}

/// The tenant's login role gets no power beyond its own schema: no superuser, no role or
/// database creation, no replication, no row-level security bypass, no inherited roles, and
/// the configured connection limit (50 by default).
#[tokio::test(flavor = "multi_thread")]
async fn tenant_role_has_no_extra_powers() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    setup.ok(&["create", "ctl_role"]).await;

    let su = fleet().superuser().await;
    let row = su
        .query_one(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, \
                    rolinherit, rolcanlogin, rolconnlimit, \
                    (SELECT count(*) FROM pg_auth_members WHERE member = r.oid) \
             FROM pg_roles r WHERE rolname = 'ctl_role'",
            &[],
        )
        .await
        .unwrap();
    let powers: Vec<bool> = (0..6).map(|i| row.get(i)).collect();
    assert_eq!(
        powers, [false; 6],
        "super, createrole, createdb, replication, bypassrls, inherit"
    );
    assert!(row.get::<_, bool>(6), "it logs in");
    assert_eq!(row.get::<_, i32>(7), 50, "connection limit");
    assert_eq!(row.get::<_, i64>(8), 0, "member of no role");
}

/// `tenant create` prints a URL that logs in through an already running proxy within about a
/// second, pinned to the new schema, with migrations recorded and demo data loaded.
#[tokio::test(flavor = "multi_thread")]
async fn created_tenant_logs_in_through_a_running_proxy() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);

    let out = setup.ok(&["create", "ctl_new", "--demo-data"]).await;
    let url = database_url(&out);
    assert!(url.ends_with("/ctl_new?sslmode=require"), "{url}");
    assert!(out.contains(&format!("psql \"{url}\"")), "{out}");
    assert!(
        out.contains(&format!("prisma: {url}&schema=ctl_new")),
        "{out}"
    );
    let timings = out
        .lines()
        .find(|l| l.starts_with("timings (ms):"))
        .unwrap();
    for step in [
        "validate=",
        "role+schema=",
        "migrations=",
        "commit=",
        "total=",
    ] {
        assert!(timings.contains(step), "{timings}");
    }

    let client = wait_for_login(&url).await;
    let path: String = client
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "ctl_new");
    let names: Vec<String> = client
        .query("SELECT name FROM customers ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        ["Ctl_New Rocket Co", "Ctl_New Widgets Ltd", "Ctl_New Labs"]
    );
    let invoices: i64 = client
        .query_one("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(invoices, 6);

    let su = fleet().superuser().await;
    let rows = su
        .query(
            "SELECT version, checksum, status FROM pgtenant.migrations \
             WHERE tenant = 'ctl_new' ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let expected = [("0001", MIGRATION_1), ("0002", MIGRATION_2)]
        .map(|(v, sql)| {
            let sum = pgtenant::control::migrate::checksum(sql.as_bytes());
            (v.to_owned(), sum, "applied".to_owned())
        })
        .to_vec();
    assert_eq!(recorded, expected);

    let owner = catalog_text(
        "SELECT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename = 'invoices'",
        "ctl_new",
    )
    .await;
    assert_eq!(
        owner.as_deref(),
        Some("ctl_new"),
        "tables belong to the tenant"
    );
    let action = catalog_text(
        "SELECT action FROM pgtenant.audit_log WHERE tenant = $1 ORDER BY id DESC LIMIT 1",
        "ctl_new",
    )
    .await;
    assert_eq!(action.as_deref(), Some("tenant.create"));
}

/// Names that break a rule or are taken get a one-line error naming the rule, and nothing is
/// created.
#[tokio::test(flavor = "multi_thread")]
async fn bad_names_are_refused_and_create_nothing() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    let long = "a".repeat(64);

    let cases = [
        ("Ctl_upper", "not a lowercase identifier"),
        ("pg_ctl", "reserved"),
        ("public", "reserved"),
        (long.as_str(), "longer than 63 bytes"),
        ("acme", "role named \"acme\" already exists"),
    ];
    for (name, rule) in cases {
        let before = traces(name).await;
        let message = setup.fails(&["create", name]).await;
        assert!(message.contains(rule), "{name}: {message}");
        assert_eq!(traces(name).await, before, "{name}: nothing may change");
    }
    assert!(!traces("acme").await.2, "no catalog row for acme");

    setup.create("ctl_taken").await;
    let message = setup.fails(&["create", "ctl_taken"]).await;
    assert!(
        message.contains("already exists in the catalog"),
        "{message}"
    );
}

/// A failing migration rolls everything back; after fixing the file the same command
/// succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn failed_migration_leaves_nothing_and_rerun_completes() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    setup.write_migration("0003_broken.sql", "CREATE TABLE ok (id int); SELEC 1;");

    let message = setup.fails(&["create", "ctl_broken", "--demo-data"]).await;
    assert!(message.contains("0003_broken.sql"), "{message}");
    assert!(message.contains("42601"), "names the SQLSTATE: {message}");
    assert_eq!(traces("ctl_broken").await, (false, false, false));
    let migrations = catalog_text(
        "SELECT count(*)::text FROM pgtenant.migrations WHERE tenant = $1",
        "ctl_broken",
    )
    .await;
    assert_eq!(migrations.as_deref(), Some("0"));

    setup.write_migration("0003_broken.sql", "CREATE TABLE ok (id int);");
    let url = setup.create("ctl_broken").await;
    assert_eq!(traces("ctl_broken").await, (true, true, true));
    let client = wait_for_login(&url).await;
    client.query("SELECT * FROM ok", &[]).await.unwrap();
}

/// A migration or demo data file that would commit pgtenant's transaction itself is
/// refused before anything is created.
#[tokio::test(flavor = "multi_thread")]
async fn files_that_commit_themselves_are_refused() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    setup.write_migration(
        "0003_early.sql",
        "CREATE TABLE a (id int);\nCOMMIT;\nSELEC 1;",
    );

    let message = setup.fails(&["create", "ctl_commit"]).await;
    assert!(message.contains("0003_early.sql"), "{message}");
    assert!(message.contains("`COMMIT`"), "{message}");
    assert_eq!(traces("ctl_commit").await, (false, false, false));

    setup.write_migration("0003_early.sql", "CREATE TABLE a (id int);");
    std::fs::write(
        setup.dir.path().join("demo_data.sql"),
        "INSERT INTO customers (name, plan) VALUES ('x', 'free'); END;",
    )
    .unwrap();
    let message = setup.fails(&["create", "ctl_commit", "--demo-data"]).await;
    assert!(message.contains("demo_data.sql"), "{message}");
    assert_eq!(traces("ctl_commit").await, (false, false, false));
}

/// Failing demo data SQL rolls the whole creation back too.
#[tokio::test(flavor = "multi_thread")]
async fn failed_demo_data_leaves_nothing() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    std::fs::write(
        setup.dir.path().join("demo_data.sql"),
        "INSERT INTO missing VALUES (1)",
    )
    .unwrap();

    let message = setup
        .fails(&["create", "ctl_demo_fail", "--demo-data"])
        .await;
    assert!(message.contains("demo data"), "{message}");
    assert_eq!(traces("ctl_demo_fail").await, (false, false, false));
}

/// Editing an applied migration is refused, and nothing newer is applied until it is
/// restored.
#[tokio::test(flavor = "multi_thread")]
async fn changed_checksum_is_refused() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    setup.create("ctl_sum").await;

    setup.write_migration("0001_customers.sql", "CREATE TABLE customers (id int);");
    setup.write_migration("0003_notes.sql", "CREATE TABLE notes (id int);");
    let message = setup.fails(&["migrate", "ctl_sum"]).await;
    assert!(
        message.contains("0001_customers") && message.contains("checksum"),
        "{message}"
    );
    assert!(!setup.ok(&["show", "ctl_sum"]).await.contains("0003_notes"));

    setup.write_migration("0001_customers.sql", MIGRATION_1);
    let out = setup.ok(&["migrate", "ctl_sum"]).await;
    assert!(out.contains("applied 0003_notes"), "{out}");
    assert!(
        setup
            .ok(&["migrate", "ctl_sum"])
            .await
            .contains("up to date")
    );
}

/// A suspended tenant's new logins get SQLSTATE 55000; resumed, it logs in again.
#[tokio::test(flavor = "multi_thread")]
async fn suspend_refuses_logins_and_resume_restores_them() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    let url = setup.create("ctl_susp").await;
    wait_for_login(&url).await;

    setup.ok(&["suspend", "ctl_susp"]).await;
    wait_for_refusal(&url, "55000").await;
    let state = catalog_text(
        "SELECT state FROM pgtenant.tenants WHERE name = $1",
        "ctl_susp",
    );
    assert_eq!(state.await.as_deref(), Some("suspended"));

    setup.ok(&["resume", "ctl_susp"]).await;
    wait_for_login(&url).await;
}

/// New credentials replace the old password at once; `--role` also changes the backend
/// role's password in PostgreSQL and the catalog together.
#[tokio::test(flavor = "multi_thread")]
async fn rotate_credentials_replaces_the_password() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    let old_url = setup.create("ctl_rot").await;
    wait_for_login(&old_url).await;
    let secret = "SELECT role_password FROM pgtenant.role_secrets WHERE tenant = $1";
    let old_secret = catalog_text(secret, "ctl_rot").await.unwrap();

    let out = setup.ok(&["rotate-credentials", "ctl_rot", "--role"]).await;
    let new_url = database_url(&out);
    assert_ne!(new_url, old_url);
    wait_for_refusal(&old_url, "28P01").await;
    wait_for_login(&new_url).await;

    let new_secret = catalog_text(secret, "ctl_rot").await.unwrap();
    assert_ne!(new_secret, old_secret);
    let cluster = &fleet().cluster;
    let direct = cluster.url("ctl_rot", &new_secret, "postgres");
    connect_plain(direct.parse().unwrap()).await.unwrap();
    let stale = cluster.url("ctl_rot", &old_secret, "postgres");
    assert!(connect_plain(stale.parse().unwrap()).await.is_err());
}

/// `set-tier` pins a tier in the catalog and `auto` clears it; both are audited.
#[tokio::test(flavor = "multi_thread")]
async fn set_tier_is_recorded() {
    let _pinning = PINNING.lock().await;
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    setup.create("ctl_tier").await;
    let tier = "SELECT tier FROM pgtenant.tenants WHERE name = $1";

    setup.ok(&["set-tier", "ctl_tier", "hot"]).await;
    assert_eq!(catalog_text(tier, "ctl_tier").await.as_deref(), Some("hot"));
    setup.ok(&["set-tier", "ctl_tier", "auto"]).await;
    assert_eq!(catalog_text(tier, "ctl_tier").await, None);

    assert_eq!(set_tier_audits("ctl_tier").await, 2);
    let list = setup.ok(&["list"]).await;
    assert!(
        list.lines()
            .any(|l| l.starts_with("ctl_tier ") && l.contains(" auto "))
    );
}

/// How many `tenant.set_tier` entries the audit log holds for `tenant`.
async fn set_tier_audits(tenant: &str) -> u32 {
    let sql = "SELECT count(*)::text FROM pgtenant.audit_log \
               WHERE tenant = $1 AND action = 'tenant.set_tier'";
    let count = catalog_text(sql, tenant).await.unwrap_or_default();
    count.parse().unwrap()
}

/// Changes that would leave the pinned pools over the budget (which proxies refuse as a
/// whole) are refused by the CLI with the numbers, and change nothing; fitting ones pass.
#[tokio::test(flavor = "multi_thread")]
async fn changes_over_the_budget_are_refused() {
    let _pinning = PINNING.lock().await;
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    setup.append_config("[budget]\nmax_connections = 60\nreserve = 10\n[tiers]\nhot = 20\n");
    let need = "pinned pools would need";
    let leaves = "budget.max_connections 60 minus reserve 10 leaves 50";
    let tier = "SELECT tier FROM pgtenant.tenants WHERE name = $1";
    let state = "SELECT state FROM pgtenant.tenants WHERE name = $1";

    setup
        .ok(&["create", "ctl_fit_a", "--pool-size", "31"])
        .await;
    setup.ok(&["create", "ctl_fit_b"]).await;

    let refused = setup
        .fails(&["create", "ctl_fit_big", "--pool-size", "20"])
        .await;
    assert_eq!(
        refused,
        format!(
            "pgtenant: tenant create ctl_fit_big --pool-size 20: {need} 51 connections, {leaves}"
        )
    );
    assert_eq!(traces("ctl_fit_big").await, (false, false, false));

    let refused = setup.fails(&["set-tier", "ctl_fit_b", "hot"]).await;
    assert_eq!(
        refused,
        format!("pgtenant: tenant set-tier ctl_fit_b hot: {need} 51 connections, {leaves}")
    );
    assert_eq!(catalog_text(tier, "ctl_fit_b").await, None);
    assert_eq!(set_tier_audits("ctl_fit_b").await, 0);

    setup.ok(&["set-tier", "ctl_fit_b", "cold"]).await;
    assert_eq!(
        catalog_text(tier, "ctl_fit_b").await.as_deref(),
        Some("cold")
    );
    setup.ok(&["suspend", "ctl_fit_a"]).await;
    setup.ok(&["set-tier", "ctl_fit_b", "hot"]).await;
    setup.ok(&["create", "ctl_fit_c", "--tier", "hot"]).await;

    let refused = setup.fails(&["resume", "ctl_fit_a"]).await;
    assert_eq!(
        refused,
        format!("pgtenant: tenant resume ctl_fit_a: {need} 71 connections, {leaves}")
    );
    assert_eq!(
        catalog_text(state, "ctl_fit_a").await.as_deref(),
        Some("suspended")
    );
    setup.ok(&["set-tier", "ctl_fit_c", "auto"]).await;
    setup.ok(&["set-tier", "ctl_fit_b", "auto"]).await;
    setup.ok(&["resume", "ctl_fit_a"]).await;
    assert_eq!(
        catalog_text(state, "ctl_fit_a").await.as_deref(),
        Some("active")
    );
}

/// `drop` does nothing without `--yes`; with it the role, schema and rows are gone.
#[tokio::test(flavor = "multi_thread")]
async fn drop_needs_yes_and_removes_everything() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    let url = setup.create("ctl_drop").await;
    wait_for_login(&url).await;

    let message = setup.fails(&["drop", "ctl_drop"]).await;
    assert!(message.contains("--yes"), "{message}");
    assert_eq!(traces("ctl_drop").await, (true, true, true));

    setup.ok(&["drop", "ctl_drop", "--yes"]).await;
    assert_eq!(traces("ctl_drop").await, (false, false, false));
    wait_for_refusal(&url, "28P01").await;
    let message = setup.fails(&["show", "ctl_drop"]).await;
    assert!(
        message.contains("no tenant named \"ctl_drop\""),
        "{message}"
    );
}

/// `drop --archive` keeps the rows in a renamed schema, and the role can no longer log in.
#[tokio::test(flavor = "multi_thread")]
async fn archive_keeps_the_data_and_locks_the_role() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    let url = setup.create("ctl_arch").await;
    wait_for_login(&url).await;
    let secret = catalog_text(
        "SELECT role_password FROM pgtenant.role_secrets WHERE tenant = $1",
        "ctl_arch",
    )
    .await
    .unwrap();

    let out = setup.ok(&["drop", "ctl_arch", "--archive", "--yes"]).await;
    assert!(out.contains("ctl_arch_archived_"), "{out}");
    let schema = catalog_text(
        "SELECT schema_name FROM pgtenant.tenants WHERE name = $1",
        "ctl_arch",
    )
    .await
    .unwrap();
    assert!(
        schema.starts_with("ctl_arch_archived_") && schema.len() == 32,
        "{schema}"
    );

    let su = fleet().superuser().await;
    let sql = format!("SELECT count(*) FROM \"{schema}\".customers");
    let kept: i64 = su.query_one(sql.as_str(), &[]).await.unwrap().get(0);
    assert_eq!(kept, 3);
    assert_eq!(traces("ctl_arch").await, (true, false, true));
    let state = catalog_text(
        "SELECT state FROM pgtenant.tenants WHERE name = $1",
        "ctl_arch",
    );
    assert_eq!(state.await.as_deref(), Some("archived"));

    let direct = fleet().cluster.url("ctl_arch", &secret, "postgres");
    let error = connect_plain(direct.parse().unwrap()).await.unwrap_err();
    assert_eq!(sqlstate(&error), "28000", "NOLOGIN role");
    wait_for_refusal(&url, "28P01").await;
}

/// A new tenant's role reads only its own schema: not another tenant's, and it cannot
/// create anything in `public`.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_role_cannot_read_other_tenants() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);
    let url = setup.create("ctl_iso_a").await;
    setup.create("ctl_iso_b").await;

    let client = wait_for_login(&url).await;
    let error = client
        .query("SELECT * FROM ctl_iso_b.customers", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    let error = client
        .query("SELECT * FROM acme.customers", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    let error = client
        .batch_execute("CREATE TABLE public.ctl_iso_a_probe (id int)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    let error = client
        .query("SELECT * FROM pgtenant.role_secrets", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
}

/// Tenant commands need a `[catalog]`, and name unknown tenants, in one line.
#[tokio::test(flavor = "multi_thread")]
async fn commands_need_a_catalog_and_a_known_tenant() {
    let proxy = catalog_proxy().await;
    let setup = Setup::new(&proxy);

    let message = setup.fails(&["suspend", "ctl_nobody"]).await;
    assert!(
        message.contains("no tenant named \"ctl_nobody\""),
        "{message}"
    );

    setup.write_config("127.0.0.1:6432", false);
    let message = setup.fails(&["list"]).await;
    assert!(message.contains("[catalog]"), "{message}");
}

/// `pgtenant dev` creates its tenants through the catalog with the requested pool size and
/// mode, prints the banner the benchmarks parse, and a tenant created afterwards with its
/// configuration file logs in through its proxy at once.
#[tokio::test(flavor = "multi_thread")]
async fn dev_serves_tenants_created_after_it_started() {
    use tokio::io::AsyncBufReadExt;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dev = tokio::process::Command::new(pgtenant_bin())
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--tenants",
            "devone",
            "--pool-size",
            "3",
            "--pool-mode",
            "session",
        ])
        .env("PGTENANT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(dev.stdout.take().unwrap()).lines();

    let mut banner = Vec::new();
    while let Some(line) = common::bounded("dev banner", lines.next_line())
        .await
        .unwrap()
    {
        let last = line.starts_with("More tenants:");
        banner.push(line);
        if last {
            break;
        }
    }
    let text = banner.join("\n");
    let config = text
        .lines()
        .find_map(|l| l.strip_prefix("config file: "))
        .unwrap_or_else(|| panic!("no config file line: {text}"));
    assert!(text.contains("\npostgres:    postgres://"), "{text}");
    assert!(
        text.contains("\ntenant devone:\n  DATABASE_URL=postgres://app:"),
        "{text}"
    );
    assert!(text.contains("pgtenant tenant create demo3"), "{text}");

    let config = PathBuf::from(config);
    let show = tenant_command(&config, &["show", "devone"]).await;
    let show = String::from_utf8(show.stdout).unwrap();
    assert!(
        show.contains("pool size:     3") && show.contains("pool mode:     session"),
        "{show}"
    );

    let out = tenant_command(&config, &["create", "demo3", "--demo-data"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = database_url(&String::from_utf8(out.stdout).unwrap()).replace("require", "disable");
    common::wait_until("demo3 logs in through dev's proxy", NOTIFY, || async {
        match connect_plain(url.parse().unwrap()).await {
            Ok(client) => client.query("SELECT * FROM customers", &[]).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;

    let pid = dev.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = common::bounded("dev stops", dev.wait()).await.unwrap();
    assert!(status.success(), "{status}");
}
