//! The tenant catalog: proxies take their tenants from PostgreSQL, hear of changes within a
//! second, keep serving through a catalog outage, refuse suspended tenants and audit support
//! sessions of admins.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Proxy, bounded, catalog_file, catalog_proxy, catalog_tenant, connect_plain, fleet, sqlstate,
    wait_until,
};
use pgtenant::config::Config;
use pgtenant::config::file::UserSection;
use pgtenant::control::demo::random_secret;
use tokio_postgres::Client;

/// What a change may take to reach a running proxy.
const PROPAGATION: Duration = Duration::from_secs(1);

/// Logs in through `proxy` as `user` of tenant `database`.
async fn login(
    proxy: &Proxy,
    database: &str,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user(user)
        .password(password)
        .dbname(database)
        .connect_timeout(Duration::from_secs(10));
    connect_plain(config).await
}

/// Keeps trying to log in until it works, returning how long that took.
async fn time_until_login(proxy: &Proxy, tenant: &str, password: &str) -> Duration {
    let started = Instant::now();
    loop {
        if login(proxy, tenant, "app", password).await.is_ok() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "tenant {tenant} never became reachable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn superuser() -> Client {
    fleet().superuser().await
}

/// Installing the catalog twice leaves one schema at the newest version.
#[tokio::test]
async fn install_is_idempotent() {
    let mut admin = superuser().await;
    let first = pgtenant::tenant::catalog::install(&mut admin)
        .await
        .unwrap();
    let second = pgtenant::tenant::catalog::install(&mut admin)
        .await
        .unwrap();
    assert_eq!(first, second);

    let rows = admin
        .query("SELECT version FROM pgtenant.catalog_version", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), first);
}

/// A tenant added to the catalog can log in through an already running proxy within a
/// second, and lands in its own schema.
#[tokio::test]
async fn new_tenant_reaches_running_proxy() {
    let mut admin = superuser().await;
    pgtenant::tenant::catalog::install(&mut admin)
        .await
        .unwrap();
    let proxy = catalog_proxy().await;

    let tenant = catalog_tenant(&mut admin, "cat_new").await;
    let took = bounded(
        "login",
        time_until_login(&proxy, &tenant.name, &tenant.password),
    )
    .await;
    assert!(took < PROPAGATION, "took {took:?}");

    let client = login(&proxy, "cat_new", "app", &tenant.password)
        .await
        .unwrap();
    let row = client.query_one("SHOW search_path", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "cat_new");
}

/// Two proxies sharing one catalog both see a rotated password within a second; the old
/// one stops working on both.
#[tokio::test]
async fn credential_change_reaches_every_proxy() {
    let mut admin = superuser().await;
    let tenant = catalog_tenant(&mut admin, "cat_rotate").await;
    let (one, two) = (catalog_proxy().await, catalog_proxy().await);
    login(&one, "cat_rotate", "app", &tenant.password)
        .await
        .unwrap();

    let new_password = random_secret(16);
    let verifier = postgres_protocol::password::scram_sha_256(new_password.as_bytes());
    admin
        .execute(
            "UPDATE pgtenant.credentials SET verifier = $1 WHERE tenant = 'cat_rotate'",
            &[&verifier],
        )
        .await
        .unwrap();

    for proxy in [&one, &two] {
        let took = bounded(
            "login",
            time_until_login(proxy, "cat_rotate", &new_password),
        )
        .await;
        assert!(took < PROPAGATION, "took {took:?}");
        let old = login(proxy, "cat_rotate", "app", &tenant.password).await;
        assert_eq!(sqlstate(&old.err().unwrap()), "28P01");
    }
}

/// Two proxies sharing one catalog both refuse new logins of a suspended tenant within a
/// second, with its own FATAL, and both let it in again once it is resumed.
#[tokio::test]
async fn suspension_reaches_every_proxy() {
    let mut admin = superuser().await;
    let name = "cat_suspend_all";
    let tenant = catalog_tenant(&mut admin, name).await;
    let (one, two) = (catalog_proxy().await, catalog_proxy().await);

    set_state(&admin, name, "suspended").await;
    for proxy in [&one, &two] {
        let took = bounded("refusal", time_until_refused(proxy, name, &tenant.password)).await;
        assert!(took < PROPAGATION, "took {took:?}");
    }

    set_state(&admin, name, "active").await;
    for proxy in [&one, &two] {
        let took = bounded("login", time_until_login(proxy, name, &tenant.password)).await;
        assert!(took < PROPAGATION, "took {took:?}");
    }
}

/// How long until `tenant`'s logins fail as suspended (`55000`, naming the tenant).
async fn time_until_refused(proxy: &Proxy, tenant: &str, password: &str) -> Duration {
    let started = Instant::now();
    loop {
        if let Err(error) = login(proxy, tenant, "app", password).await
            && sqlstate(&error) == "55000"
        {
            let message = error.as_db_error().map(|e| e.message().to_owned());
            assert!(
                message.unwrap_or_default().contains("is suspended"),
                "{error:?}"
            );
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A change made without a notification (triggers off) still arrives with the periodic
/// reload.
#[tokio::test]
async fn periodic_reload_catches_silent_changes() {
    let mut admin = superuser().await;
    pgtenant::tenant::catalog::install(&mut admin)
        .await
        .unwrap();
    let mut file = catalog_file();
    if let Some(catalog) = file.catalog.as_mut() {
        catalog.reload_interval = Duration::from_millis(300);
    }
    let proxy = Proxy::from_config(Config::from_parsed(file, Path::new("/")).unwrap()).await;

    admin
        .batch_execute("SET session_replication_role = replica")
        .await
        .unwrap();
    let tenant = catalog_tenant(&mut admin, "cat_silent").await;
    let took = bounded(
        "login",
        time_until_login(&proxy, &tenant.name, &tenant.password),
    )
    .await;
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// When the catalog connection is killed, the proxy keeps serving what it knows and picks
/// up changes made after it reconnects.
#[tokio::test]
async fn proxy_survives_catalog_outage() {
    let mut admin = superuser().await;
    let first = catalog_tenant(&mut admin, "cat_outage_a").await;
    let proxy = catalog_proxy().await;

    let watcher = format!("pgtenant catalog watcher {}", proxy.addr);
    let find = "SELECT pid FROM pg_stat_activity WHERE application_name = $1";
    wait_until("the watcher connects", Duration::from_secs(5), || async {
        !admin.query(find, &[&watcher]).await.unwrap().is_empty()
    })
    .await;
    let killed = admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1",
            &[&watcher],
        )
        .await
        .unwrap();
    assert_eq!(killed, 1);

    login(&proxy, "cat_outage_a", "app", &first.password)
        .await
        .unwrap();
    let second = catalog_tenant(&mut admin, "cat_outage_b").await;
    bounded(
        "login",
        time_until_login(&proxy, &second.name, &second.password),
    )
    .await;
}

/// Suspending a tenant lets a running transaction finish, then ends the session and
/// refuses new logins with 55000; resuming lets it back in.
#[tokio::test]
async fn suspend_and_resume() {
    let mut admin = superuser().await;
    let tenant = catalog_tenant(&mut admin, "cat_suspend").await;
    let proxy = catalog_proxy().await;
    let session = login(&proxy, "cat_suspend", "app", &tenant.password)
        .await
        .unwrap();

    session.batch_execute("BEGIN").await.unwrap();
    set_state(&admin, "cat_suspend", "suspended").await;
    tokio::time::sleep(PROPAGATION).await;
    let row = session.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42, "the open transaction goes on");
    session.batch_execute("COMMIT").await.unwrap();

    let after = session.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&after), "55000", "{after}");
    let refused = login(&proxy, "cat_suspend", "app", &tenant.password).await;
    let error = refused.err().unwrap();
    assert_eq!(sqlstate(&error), "55000");
    let message = error.as_db_error().map(|e| e.message().to_owned());
    assert_eq!(
        message.as_deref(),
        Some("tenant \"cat_suspend\" is suspended")
    );

    set_state(&admin, "cat_suspend", "active").await;
    bounded(
        "login",
        time_until_login(&proxy, "cat_suspend", &tenant.password),
    )
    .await;
}

async fn set_state(admin: &Client, tenant: &str, state: &str) {
    admin
        .execute(
            "UPDATE pgtenant.tenants SET state = $2, updated_at = now() WHERE name = $1",
            &[&tenant, &state],
        )
        .await
        .unwrap();
}

/// An admin can open a session on a tenant; its start, end, tenant and address are in the
/// audit log. A wrong admin password fails like any other.
#[tokio::test]
async fn support_sessions_are_audited() {
    let mut admin = superuser().await;
    catalog_tenant(&mut admin, "cat_support").await;
    let password = random_secret(16);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    admin
        .execute(
            "INSERT INTO pgtenant.admins (user_name, verifier) VALUES ('helpdesk', $1)",
            &[&verifier],
        )
        .await
        .unwrap();
    let proxy = catalog_proxy().await;

    let wrong = login(&proxy, "cat_support", "helpdesk", "nope").await;
    assert_eq!(sqlstate(&wrong.err().unwrap()), "28P01");

    let support = login(&proxy, "cat_support", "helpdesk", &password)
        .await
        .unwrap();
    let row = support.query_one("SHOW search_path", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "cat_support");
    drop(support);

    let query = "SELECT client_addr, ended_at IS NOT NULL FROM pgtenant.audit_log \
                 WHERE actor = 'helpdesk' AND tenant = 'cat_support' \
                 AND action = 'session.support'";
    wait_until("the end is recorded", Duration::from_secs(5), || async {
        let rows = admin.query(query, &[]).await.unwrap();
        rows.len() == 1 && rows[0].get::<_, bool>(1)
    })
    .await;
    let row = admin.query_one(query, &[]).await.unwrap();
    let addr: Option<String> = row.get(0);
    assert!(addr.is_some_and(|a| a.starts_with("127.0.0.1:")));

    admin
        .execute(
            "DELETE FROM pgtenant.admins WHERE user_name = 'helpdesk'",
            &[],
        )
        .await
        .unwrap();
    wait_until("the removed admin is refused", PROPAGATION * 2, || async {
        let attempt = login(&proxy, "cat_support", "helpdesk", &password).await;
        attempt.is_err_and(|e| sqlstate(&e) == "28P01")
    })
    .await;
}

/// Static admins work without a catalog too (logged only); the tenant's own users keep
/// their own passwords even when an admin has the same name.
#[tokio::test]
async fn static_admins_without_catalog() {
    let password = random_secret(16);
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let mut file = common::ProxyOptions::default().file();
    file.admins = vec![
        UserSection {
            name: "support".into(),
            verifier: verifier.clone(),
        },
        UserSection {
            name: "app".into(),
            verifier,
        },
    ];
    let proxy = Proxy::from_config(Config::from_parsed(file, Path::new("/")).unwrap()).await;

    let support = login(&proxy, "globex", "support", &password).await.unwrap();
    let row = support.query_one("SHOW search_path", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "globex");

    let as_app = login(&proxy, "globex", "app", &password).await;
    assert_eq!(sqlstate(&as_app.err().unwrap()), "28P01");
    let unknown_tenant = login(&proxy, "nosuch", "support", &password).await;
    assert_eq!(sqlstate(&unknown_tenant.err().unwrap()), "28P01");
}

/// With a catalog configured, tenants in the file are refused with a message naming them.
#[test]
fn file_tenants_refused_with_catalog() {
    let mut file = catalog_file();
    file.tenants = common::ProxyOptions::default().file().tenants;
    let error = Config::from_parsed(file, Path::new("/")).unwrap_err();
    assert!(error.to_string().starts_with("tenants[0]"), "{error}");
    assert!(error.to_string().contains("catalog"), "{error}");
}

/// Tenant roles cannot read the catalog: not through the proxy, not connecting directly.
#[tokio::test]
async fn tenants_cannot_read_the_catalog() {
    let mut admin = superuser().await;
    let tenant = catalog_tenant(&mut admin, "cat_nosy").await;
    let proxy = catalog_proxy().await;
    let through_proxy = login(&proxy, "cat_nosy", "app", &tenant.password)
        .await
        .unwrap();
    let secret = admin
        .query_one(
            "SELECT role_password FROM pgtenant.role_secrets WHERE tenant = 'cat_nosy'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, String>(0);
    let direct = connect_plain(
        fleet()
            .cluster
            .url("cat_nosy", &secret, "postgres")
            .parse()
            .unwrap(),
    )
    .await
    .unwrap();

    for client in [&through_proxy, &direct] {
        for table in [
            "role_secrets",
            "credentials",
            "tenants",
            "admins",
            "audit_log",
            "pauses",
        ] {
            let sql = format!("SELECT * FROM pgtenant.{table}");
            let error = client.query(sql.as_str(), &[]).await.unwrap_err();
            assert_eq!(sqlstate(&error), "42501", "{table}: {error:?}");
        }
    }
}

/// A tenant row the proxy cannot use is left out and logged, without holding back the
/// rest of the catalog; once mended it is served.
#[tokio::test]
async fn one_bad_row_does_not_block_the_catalog() {
    let mut admin = superuser().await;
    let bad = catalog_tenant(&mut admin, "cat_badrow").await;
    admin
        .execute(
            "UPDATE pgtenant.credentials SET verifier = 'SCRAM-SHA-256$not-a-verifier' \
             WHERE tenant = 'cat_badrow'",
            &[],
        )
        .await
        .unwrap();
    let proxy = catalog_proxy().await;

    let good = catalog_tenant(&mut admin, "cat_goodrow").await;
    bounded(
        "login",
        time_until_login(&proxy, &good.name, &good.password),
    )
    .await;
    let refused = login(&proxy, "cat_badrow", "app", &bad.password).await;
    assert_eq!(sqlstate(&refused.err().unwrap()), "28P01");

    let verifier = postgres_protocol::password::scram_sha_256(bad.password.as_bytes());
    admin
        .execute(
            "UPDATE pgtenant.credentials SET verifier = $1 WHERE tenant = 'cat_badrow'",
            &[&verifier],
        )
        .await
        .unwrap();
    let took = bounded("login", time_until_login(&proxy, &bad.name, &bad.password)).await;
    assert!(took < PROPAGATION, "took {took:?}");
}

/// Without a catalog, `suspended = true` in the file and a reload suspend a tenant the same
/// way: the session ends at its next transaction, new logins get 55000.
#[tokio::test]
async fn static_suspension_by_reload() {
    let options = common::ProxyOptions::default();
    let proxy = Proxy::with(options.clone()).await;
    let session = proxy.connect("solo").await;
    session.batch_execute("SELECT 1").await.unwrap();

    let mut file = options.file();
    for tenant in file.tenants.iter_mut().filter(|t| t.name == "solo") {
        tenant.suspended = true;
    }
    proxy
        .handle
        .reload(Config::from_parsed(file, Path::new("/")).unwrap())
        .unwrap();

    let ended = session.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&ended), "55000", "{ended:?}");
    let solo = fleet().tenant("solo");
    let refused = login(&proxy, "solo", &solo.user, &solo.user_password).await;
    assert_eq!(sqlstate(&refused.err().unwrap()), "55000");
    proxy
        .connect("acme")
        .await
        .batch_execute("SELECT 1")
        .await
        .unwrap();
}
