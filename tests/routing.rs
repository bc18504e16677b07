//! Tenant routing and the pinned schema: which tenant a login lands in (database name, TLS
//! SNI, `options`, in the configured order), what it can see once there, and which startup
//! parameters the proxy honours (`application_name`, `DateStyle`) or overrides
//! (`search_path`).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use common::{Proxy, ProxyOptions, backend_pid, connect_tls, fleet, sqlstate};
use pgtenant::config::file::TenantSource;

/// Each demo tenant reached by database name gets its own schema and tenant setting.
#[tokio::test(flavor = "multi_thread")]
async fn database_name_names_the_tenant() {
    let proxy = Proxy::start().await;

    for tenant in ["acme", "globex", "solo"] {
        let client = proxy.connect(tenant).await;
        assert_eq!(pinned(&client).await, (tenant.into(), tenant.into()));
    }
}

/// A TLS server name `<tenant>.localhost` names the tenant when the database is not one.
#[tokio::test(flavor = "multi_thread")]
async fn sni_names_the_tenant() {
    let proxy = Proxy::start().await;

    for tenant in ["acme", "globex"] {
        let mut config = login_config(&proxy, tenant);
        config.dbname("postgres");
        let client = connect_tls(config, &format!("{tenant}.localhost"))
            .await
            .expect("SNI login");
        assert_eq!(pinned(&client).await, (tenant.into(), tenant.into()));
    }
}

/// Without SNI or options, a database name that is not a tenant fails like a bad password.
#[tokio::test(flavor = "multi_thread")]
async fn non_tenant_database_without_other_sources_fails() {
    let proxy = Proxy::start().await;
    let mut config = proxy.pg_config("acme");
    config.dbname("postgres");

    let err = common::connect_plain(config).await.expect_err("refused");
    assert_eq!(sqlstate(&err), "28P01");
}

/// `options=-c pgtenant.tenant=<name>` names the tenant when the database is not one.
#[tokio::test(flavor = "multi_thread")]
async fn options_name_the_tenant() {
    let proxy = Proxy::start().await;
    let mut config = proxy.pg_config("solo");
    config.dbname("postgres").options("-c pgtenant.tenant=solo");

    let client = common::connect_plain(config).await.expect("options login");
    assert_eq!(pinned(&client).await, ("solo".into(), "solo".into()));
}

/// With `tenant_from = ["options"]`, a tenant's database name no longer routes, and the
/// database name is ignored when options name a tenant.
#[tokio::test(flavor = "multi_thread")]
async fn options_only_routing_ignores_the_database_name() {
    let proxy = Proxy::with(ProxyOptions {
        tenant_from: vec![TenantSource::Options],
        ..ProxyOptions::default()
    })
    .await;

    let err = common::connect_plain(proxy.pg_config("acme"))
        .await
        .expect_err("database name must not route");
    assert_eq!(sqlstate(&err), "28P01");

    let mut config = proxy.pg_config("globex");
    config.dbname("acme").options("-c pgtenant.tenant=globex");
    let client = common::connect_plain(config).await.expect("options login");
    assert_eq!(pinned(&client).await, ("globex".into(), "globex".into()));
}

/// When two sources name different tenants, the first configured source wins.
#[tokio::test(flavor = "multi_thread")]
async fn sources_are_tried_in_the_configured_order() {
    // The database says acme, the options say globex; each tenant's `app` has its own password.
    let both = |proxy: &Proxy, password_of: &str| {
        let mut config = proxy.pg_config(password_of);
        config.dbname("acme").options("-c pgtenant.tenant=globex");
        config
    };

    let database_first = Proxy::start().await;
    let client = common::connect_plain(both(&database_first, "acme"))
        .await
        .expect("database wins");
    assert_eq!(pinned(&client).await.1, "acme");
    let err = common::connect_plain(both(&database_first, "globex"))
        .await
        .expect_err("globex is not the tenant");
    assert_eq!(sqlstate(&err), "28P01");

    let options_first = Proxy::with(ProxyOptions {
        tenant_from: vec![TenantSource::Options, TenantSource::Database],
        ..ProxyOptions::default()
    })
    .await;
    let client = common::connect_plain(both(&options_first, "globex"))
        .await
        .expect("options win");
    assert_eq!(pinned(&client).await.1, "globex");
    let err = common::connect_plain(both(&options_first, "acme"))
        .await
        .expect_err("acme is not the tenant");
    assert_eq!(sqlstate(&err), "28P01");
}

/// SNI is not consulted when it is not a configured source.
#[tokio::test(flavor = "multi_thread")]
async fn sni_is_ignored_when_not_configured() {
    let proxy = Proxy::with(ProxyOptions {
        tenant_from: vec![TenantSource::Database, TenantSource::Options],
        ..ProxyOptions::default()
    })
    .await;
    let mut config = login_config(&proxy, "acme");
    config.dbname("postgres");

    let err = connect_tls(config, "acme.localhost")
        .await
        .expect_err("SNI must not route");
    assert_eq!(sqlstate(&err), "28P01");
}

/// An unqualified `customers` is the tenant's own table.
#[tokio::test(flavor = "multi_thread")]
async fn unqualified_tables_are_the_tenants_own() {
    let proxy = Proxy::start().await;

    for (tenant, prefix) in [("acme", "Acme"), ("globex", "Globex")] {
        let client = proxy.connect(tenant).await;
        let names = customer_names(&client).await;
        assert!(!names.is_empty(), "{tenant} has no customers");
        assert!(names.iter().all(|n| n.starts_with(prefix)), "{names:?}");
    }
}

/// A tenant reading another tenant's schema by name is refused with 42501.
#[tokio::test(flavor = "multi_thread")]
async fn tenants_cannot_read_each_other() {
    let proxy = Proxy::start().await;
    let acme = proxy.connect("acme").await;
    let globex = proxy.connect("globex").await;

    for (client, other) in [(&acme, "globex"), (&globex, "acme")] {
        for table in ["customers", "invoices"] {
            let sql = format!("SELECT count(*) FROM {other}.{table}");
            let err = client.query_one(&sql, &[]).await.expect_err("refused");
            assert_eq!(sqlstate(&err), "42501", "{sql}: {err}");
        }
    }

    // The sessions survive the refusals and still see only their own rows.
    assert!(
        customer_names(&acme)
            .await
            .iter()
            .all(|n| n.starts_with("Acme"))
    );
    assert!(
        customer_names(&globex)
            .await
            .iter()
            .all(|n| n.starts_with("Globex"))
    );
}

/// Pointing `search_path` at another tenant's schema with SET still shows none of its rows.
#[tokio::test(flavor = "multi_thread")]
async fn set_search_path_does_not_reach_another_tenant() {
    let proxy = Proxy::start().await;
    let acme = proxy.connect("acme").await;

    acme.batch_execute("SET search_path TO globex")
        .await
        .unwrap();
    let leaked = match acme.query("SELECT name FROM customers", &[]).await {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(_) => Vec::<String>::new(),
    };
    assert!(
        leaked.iter().all(|n| !n.starts_with("Globex")),
        "{leaked:?}"
    );
}

/// A `search_path` in the startup options (tokio-postgres) does not replace the pin.
#[tokio::test(flavor = "multi_thread")]
async fn startup_search_path_does_not_override_the_pin() {
    let proxy = Proxy::start().await;

    for options in ["-c search_path=globex", "--search_path=globex"] {
        let mut config = proxy.pg_config("acme");
        config.options(options);
        let client = common::connect_plain(config).await.expect("login");

        assert_eq!(pinned(&client).await, ("acme".into(), "acme".into()));
        let names = customer_names(&client).await;
        assert!(names.iter().all(|n| n.starts_with("Acme")), "{names:?}");
    }
}

/// A `search_path` in libpq's `options`, from the conninfo or `PGOPTIONS`, does not replace
/// the pin either.
#[tokio::test(flavor = "multi_thread")]
async fn psql_startup_search_path_does_not_override_the_pin() {
    let proxy = Proxy::start().await;
    let sql = "SHOW search_path";

    let from_conninfo = psql(&proxy, "acme", "options='-c search_path=globex'", &[], sql).await;
    assert_eq!(from_conninfo, "acme");

    let env = [("PGOPTIONS", "-c search_path=globex")];
    assert_eq!(psql(&proxy, "acme", "", &env, sql).await, "acme");
}

/// `application_name` given at startup is reported by ParameterStatus and by SHOW.
#[tokio::test(flavor = "multi_thread")]
async fn startup_application_name_is_honoured() {
    let proxy = Proxy::start().await;
    let mut config = proxy.pg_config("acme");
    config.application_name("billing-report");

    let (client, reported) = connect_reporting(config).await;
    assert_eq!(reported["application_name"], "billing-report");
    assert_eq!(show(&client, "application_name").await, "billing-report");
}

/// `DateStyle` given at startup is reported back as PostgreSQL completes it.
#[tokio::test(flavor = "multi_thread")]
async fn startup_datestyle_is_reported_as_postgres_completes_it() {
    let proxy = Proxy::start().await;

    for (given, completed) in [("ISO", "ISO, MDY"), ("German", "German, DMY")] {
        let mut config = proxy.pg_config("acme");
        config.options(format!("-c DateStyle={given}"));
        let (client, reported) = connect_reporting(config).await;

        assert_eq!(
            reported["DateStyle"], completed,
            "ParameterStatus for {given}"
        );
        assert_eq!(show(&client, "DateStyle").await, completed);
    }
}

/// psql's `PGDATESTYLE` reaches the session: `SHOW DateStyle` and date output follow it.
#[tokio::test(flavor = "multi_thread")]
async fn psql_datestyle_from_environment_is_honoured() {
    let proxy = Proxy::start().await;
    let sql = "SHOW DateStyle";
    let date = "SELECT date '2024-03-05'";

    let iso = [("PGDATESTYLE", "ISO")];
    assert_eq!(psql(&proxy, "globex", "", &iso, sql).await, "ISO, MDY");
    assert_eq!(psql(&proxy, "globex", "", &iso, date).await, "2024-03-05");

    let german = [("PGDATESTYLE", "German")];
    assert_eq!(
        psql(&proxy, "globex", "", &german, sql).await,
        "German, DMY"
    );
    assert_eq!(
        psql(&proxy, "globex", "", &german, date).await,
        "05.03.2024"
    );
}

/// Two clients with different startup settings on one shared backend each keep seeing their
/// own `DateStyle` and `application_name`, turn after turn.
#[tokio::test(flavor = "multi_thread")]
async fn clients_sharing_one_backend_keep_their_own_settings() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let client = |options: &str, name: &str| {
        let mut config = proxy.pg_config("acme");
        config.options(options).application_name(name);
        common::connect_plain(config)
    };
    let german = client("-c DateStyle=German", "alpha").await.unwrap();
    let sql_dmy = client("-c DateStyle=SQL,DMY", "beta").await.unwrap();

    assert_eq!(backend_pid(&german).await, backend_pid(&sql_dmy).await);

    for _ in 0..3 {
        assert_eq!(
            settings(&german).await,
            ["German, DMY", "05.03.2024", "alpha"]
        );
        assert_eq!(settings(&sql_dmy).await, ["SQL, DMY", "05/03/2024", "beta"]);
    }
}

// ---- helpers ----

/// A tenant's `app` login with no host, for `connect_tls`, which adds the host (the TLS
/// server name) and a host address itself.
fn login_config(proxy: &Proxy, tenant: &str) -> tokio_postgres::Config {
    let t = fleet().tenant(tenant);
    let mut config = tokio_postgres::Config::new();
    config
        .port(proxy.addr.port())
        .user(&t.user)
        .password(&t.user_password)
        .dbname(tenant)
        .connect_timeout(Duration::from_secs(10));
    config
}

/// `search_path` and `pgtenant.tenant` as the session sees them.
async fn pinned(client: &Client) -> (String, String) {
    let sql = "SELECT current_setting('search_path'), current_setting('pgtenant.tenant')";
    let row = client.query_one(sql, &[]).await.unwrap();
    (row.get(0), row.get(1))
}

/// Names in the unqualified `customers` table.
async fn customer_names(client: &Client) -> Vec<String> {
    let rows = client
        .query("SELECT name FROM customers ORDER BY id", &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The value of `SHOW <name>`.
async fn show(client: &Client, name: &str) -> String {
    let row = client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap();
    row.get(0)
}

/// `DateStyle`, a date formatted by it, and `application_name`.
async fn settings(client: &Client) -> [String; 3] {
    let sql = "SELECT current_setting('DateStyle'), date '2024-03-05'::text, \
               current_setting('application_name')";
    let row = client.query_one(sql, &[]).await.unwrap();
    [row.get(0), row.get(1), row.get(2)]
}

/// Logs in and returns the client with the parameters reported by ParameterStatus at login.
async fn connect_reporting(config: tokio_postgres::Config) -> (Client, HashMap<String, String>) {
    let (client, connection) = config.connect(NoTls).await.expect("login");
    let reported = [
        "application_name",
        "DateStyle",
        "TimeZone",
        "client_encoding",
    ]
    .into_iter()
    .filter_map(|name| Some((name.to_owned(), connection.parameter(name)?.to_owned())))
    .collect();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, reported)
}

/// Runs one statement through psql as `tenant`'s `app` and returns its unaligned output.
async fn psql(
    proxy: &Proxy,
    tenant: &str,
    conninfo_extra: &str,
    env: &[(&str, &str)],
    sql: &str,
) -> String {
    let t = fleet().tenant(tenant);
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} dbname={tenant} sslmode=disable {conninfo_extra}",
        proxy.addr.port(),
        t.user,
    );

    let mut command = tokio::process::Command::new("psql");
    command
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(&conninfo)
        .env("PGPASSWORD", &t.user_password)
        .env("PGCONNECT_TIMEOUT", "10");
    for name in ["PGOPTIONS", "PGDATESTYLE", "PGTZ", "PGAPPNAME", "PGSERVICE"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());

    let output = command.output().await.expect("run psql");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "psql failed: {stderr}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A client that sets nothing at startup gets PostgreSQL's defaults, even when the only
/// backend was last used by a client with other settings.
#[tokio::test(flavor = "multi_thread")]
async fn default_settings_are_not_inherited_from_a_previous_client() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;

    let mut config = proxy.pg_config("acme");
    config
        .options("-c DateStyle=German")
        .application_name("beta");
    let german = common::connect_plain(config).await.unwrap();
    assert_eq!(settings(&german).await[0], "German, DMY");

    let (plain, reported) = connect_reporting(proxy.pg_config("acme")).await;
    assert_eq!(backend_pid(&plain).await, backend_pid(&german).await);
    assert_eq!(reported["DateStyle"], "ISO, MDY", "ParameterStatus");
    assert_eq!(settings(&plain).await, ["ISO, MDY", "2024-03-05", ""]);
}

/// The tenant option is a setting name, so like any PostgreSQL setting its case does not
/// matter: `-c PGTENANT.TENANT=solo` routes to solo.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_option_name_is_case_insensitive() {
    let proxy = Proxy::start().await;
    let mut config = proxy.pg_config("solo");
    config.dbname("postgres").options("-c PGTENANT.Tenant=solo");

    let client = common::connect_plain(config).await.expect("options login");
    assert_eq!(pinned(&client).await, ("solo".into(), "solo".into()));
}

/// A startup option naming another tenant, in any case, does not change the session's
/// `pgtenant.tenant` once the database name has chosen the tenant.
#[tokio::test(flavor = "multi_thread")]
async fn startup_options_do_not_rename_the_tenant() {
    let proxy = Proxy::start().await;

    for options in ["-c pgtenant.tenant=globex", "-c PGTENANT.TENANT=globex"] {
        let mut config = proxy.pg_config("acme");
        config.options(options);
        let client = common::connect_plain(config).await.expect("login");
        assert_eq!(
            pinned(&client).await,
            ("acme".into(), "acme".into()),
            "{options}"
        );
    }
}

/// Host names are case-insensitive, so `GLOBEX.localhost` names the same tenant as
/// `globex.localhost`.
#[tokio::test(flavor = "multi_thread")]
async fn sni_tenant_is_case_insensitive() {
    let proxy = Proxy::start().await;
    let mut config = login_config(&proxy, "globex");
    config.dbname("postgres");

    let client = connect_tls(config, "GLOBEX.localhost")
        .await
        .expect("SNI login");
    assert_eq!(pinned(&client).await.1, "globex");
}
