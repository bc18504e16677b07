//! The pause gate for migrations: while a tenant is paused its new transactions wait at
//! every proxy and never fail, the runner learns when every proxy has drained it, a pause
//! that is never lifted expires on its own, and a new schema generation retires the
//! tenant's pools.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{
    Proxy, bounded, catalog_file, catalog_tenant, connect_plain, fleet, sqlstate, wait_until,
};
use pgtenant::config::Config;
use pgtenant::control::pause::{Pause, PauseError, PauseRequest};
use pgtenant::tenant::catalog::watch::proxy_name;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Long enough to be sure a held transaction is held; never an upper bound on anything.
const HOLD: Duration = Duration::from_millis(500);

fn catalog_config() -> Config {
    Config::from_parsed(catalog_file(), Path::new("/")).unwrap()
}

async fn catalog_proxy() -> Proxy {
    Proxy::from_config(catalog_config()).await
}

/// Logs in through `proxy` as `app` of `tenant`.
async fn login(proxy: &Proxy, tenant: &str, password: &str) -> Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user("app")
        .password(password)
        .dbname(tenant)
        .connect_timeout(Duration::from_secs(10));
    let client = connect_plain(config).await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    client
}

/// A pause of `tenant` that drains generously and lasts long enough for any test.
fn request(tenant: &str) -> PauseRequest<'_> {
    PauseRequest {
        tenant,
        requested_by: "test",
        max_pause: Duration::from_secs(120),
        drain_timeout: Duration::from_secs(30),
    }
}

/// Starts `Pause::begin` for `tenant` in its own task.
fn begin_in_background(tenant: &str) -> tokio::task::JoinHandle<Result<Pause, PauseError>> {
    let tenant = tenant.to_owned();
    tokio::spawn(async move { Pause::begin(&catalog_config(), &request(&tenant)).await })
}

/// Runs `SELECT 42` on `client` in its own task.
fn query_in_background(client: Client) -> tokio::task::JoinHandle<(Client, i32)> {
    tokio::spawn(async move {
        let row = client.query_one("SELECT 42", &[]).await.unwrap();
        (client, row.get(0))
    })
}

/// Backend pids of `role`.
async fn backend_pids(admin: &Client, role: &str) -> Vec<i32> {
    admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1 ORDER BY pid",
            &[&role],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A superuser connection whose notifications on `pgtenant_pause_ack` arrive as payloads.
async fn ack_listener() -> (Client, mpsc::UnboundedReceiver<String>) {
    let cluster = &fleet().cluster;
    let url = cluster.url(
        cluster.superuser(),
        cluster.superuser_password(),
        "postgres",
    );
    let config: tokio_postgres::Config = url.parse().unwrap();
    let (client, mut connection) = config.connect(NoTls).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client
        .batch_execute("LISTEN pgtenant_pause_ack")
        .await
        .unwrap();
    (client, rx)
}

/// A paused tenant's new transaction waits at the gate and succeeds once the pause is
/// lifted, while another tenant's transactions go on through the same proxy.
#[tokio::test]
async fn paused_transaction_waits_then_succeeds() {
    let mut admin = fleet().superuser().await;
    let paused = catalog_tenant(&mut admin, "pz_wait").await.password;
    let other = catalog_tenant(&mut admin, "pz_bystander").await.password;
    let proxy = catalog_proxy().await;
    let client = login(&proxy, "pz_wait", &paused).await;
    let bystander = login(&proxy, "pz_bystander", &other).await;

    let pause = bounded(
        "begin",
        Pause::begin(&catalog_config(), &request("pz_wait")),
    )
    .await
    .unwrap();
    let waiting = query_in_background(client);
    tokio::time::sleep(HOLD).await;
    assert!(
        !waiting.is_finished(),
        "the paused tenant's transaction waits"
    );

    let row = bounded("bystander", bystander.query_one("SELECT 7", &[]))
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 7, "another tenant is not held");

    bounded("resume", pause.resume()).await.unwrap();
    let (_client, answer) = bounded("waiting query", waiting).await.unwrap();
    assert_eq!(answer, 42, "the held transaction ran, without an error");
}

/// `Pause::begin` returns only once a transaction in flight on the tenant has committed.
#[tokio::test]
async fn begin_waits_for_the_transaction_in_flight() {
    let mut admin = fleet().superuser().await;
    let password = catalog_tenant(&mut admin, "pz_inflight").await.password;
    let proxy = catalog_proxy().await;
    let client = login(&proxy, "pz_inflight", &password).await;
    client
        .batch_execute("BEGIN; SELECT count(*) FROM pg_class")
        .await
        .unwrap();

    let begin = begin_in_background("pz_inflight");
    tokio::time::sleep(HOLD).await;
    assert!(
        !begin.is_finished(),
        "begin waits while a transaction is open"
    );

    client.batch_execute("COMMIT").await.unwrap();
    let pause = bounded("begin", begin).await.unwrap().unwrap();
    assert!(
        pause
            .acked_by()
            .contains(&proxy_name(&proxy.addr.to_string()))
    );
    bounded("resume", pause.resume()).await.unwrap();
}

/// A transaction held open past the drain timeout makes `begin` fail with `NotDrained`,
/// naming the proxy that could not drain; the pause is lifted and traffic flows again.
#[tokio::test]
async fn drain_timeout_lifts_the_pause() {
    let mut admin = fleet().superuser().await;
    let password = catalog_tenant(&mut admin, "pz_timeout").await.password;
    let proxy = catalog_proxy().await;
    let holder = login(&proxy, "pz_timeout", &password).await;
    let other = login(&proxy, "pz_timeout", &password).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();

    let short = PauseRequest {
        drain_timeout: Duration::from_secs(1),
        ..request("pz_timeout")
    };
    let error = bounded("begin", Pause::begin(&catalog_config(), &short))
        .await
        .unwrap_err();
    let PauseError::NotDrained {
        waiting_proxies,
        busy_backends,
        ..
    } = error
    else {
        panic!("expected NotDrained, got {error}");
    };
    assert!(waiting_proxies.contains(&proxy_name(&proxy.addr.to_string())));
    assert!(busy_backends >= 1, "the open transaction is seen");

    let rows = admin
        .query_one(
            "SELECT count(*) FROM pgtenant.pauses WHERE tenant = 'pz_timeout'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 0, "the pause row is gone");
    let (_other, answer) = bounded("traffic after the failed pause", query_in_background(other))
        .await
        .unwrap();
    assert_eq!(answer, 42);
    holder.batch_execute("COMMIT").await.unwrap();
}

/// A long statement in flight holds the drain until `cancel_in_flight` cancels it: the
/// client gets 57014 and the pause is then taken.
#[tokio::test]
async fn cancel_in_flight_lets_the_pause_drain() {
    let mut admin = fleet().superuser().await;
    let password = catalog_tenant(&mut admin, "pz_cancel").await.password;
    let proxy = catalog_proxy().await;
    let client = login(&proxy, "pz_cancel", &password).await;
    let sleeper = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(600)").await });
    let running = "SELECT count(*) FROM pg_stat_activity \
                   WHERE usename = 'pz_cancel' AND state = 'active'";
    wait_until("the statement runs", Duration::from_secs(10), || async {
        admin
            .query_one(running, &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;

    let begin = begin_in_background("pz_cancel");
    tokio::time::sleep(HOLD).await;
    assert!(!begin.is_finished(), "begin waits for the statement");
    let cancelled = bounded(
        "cancel",
        Pause::cancel_in_flight(&catalog_config(), "pz_cancel"),
    )
    .await
    .unwrap();
    assert_eq!(cancelled, 1);

    let error = bounded("the cancelled statement", sleeper)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&error), "57014", "{error}");
    let pause = bounded("begin", begin).await.unwrap().unwrap();
    bounded("resume", pause.resume()).await.unwrap();
}

/// A pause inserted by hand and never removed expires: the transaction waiting at the gate
/// runs once `expires_at` has passed, and later ones are not held by the stale row.
#[tokio::test]
async fn expired_pause_opens_the_gate() {
    let mut admin = fleet().superuser().await;
    let password = catalog_tenant(&mut admin, "pz_expiry").await.password;
    let mut file = catalog_file();
    if let Some(catalog) = file.catalog.as_mut() {
        catalog.reload_interval = Duration::from_millis(300);
    }
    let proxy = Proxy::from_config(Config::from_parsed(file, Path::new("/")).unwrap()).await;
    let client = login(&proxy, "pz_expiry", &password).await;
    let (_listener, mut acks) = ack_listener().await;

    admin
        .execute(
            "INSERT INTO pgtenant.pauses (tenant, token, requested_by, expires_at) \
             VALUES ('pz_expiry', 'by-hand', 'test', now() + interval '3 seconds')",
            &[],
        )
        .await
        .unwrap();
    let expected = format!("by-hand {}", proxy_name(&proxy.addr.to_string()));
    bounded("the proxy acknowledges", async {
        while acks.recv().await.unwrap() != expected {}
    })
    .await;

    let ran_at = "SELECT clock_timestamp()::text";
    let waited = bounded("the held transaction", client.query_one(ran_at, &[]))
        .await
        .unwrap();
    let after_expiry = admin
        .query_one(
            "SELECT $1::text::timestamptz >= expires_at FROM pgtenant.pauses \
             WHERE tenant = 'pz_expiry'",
            &[&waited.get::<_, String>(0)],
        )
        .await
        .unwrap();
    assert!(after_expiry.get::<_, bool>(0), "ran only after expires_at");

    tokio::time::sleep(Duration::from_secs(1)).await;
    bounded("a later transaction", client.batch_execute("SELECT 1"))
        .await
        .unwrap();
    admin
        .execute(
            "DELETE FROM pgtenant.pauses WHERE tenant = 'pz_expiry'",
            &[],
        )
        .await
        .unwrap();
}

/// A new schema generation retires the tenant's pool: its backend connections are
/// replaced, and a client's named prepared statement still runs on the new ones.
#[tokio::test]
async fn new_generation_retires_the_pool() {
    let mut admin = fleet().superuser().await;
    let password = catalog_tenant(&mut admin, "pz_generation").await.password;
    let proxy = catalog_proxy().await;
    let client = login(&proxy, "pz_generation", &password).await;
    let statement = client.prepare("SELECT $1::int + 1").await.unwrap();
    let row = client.query_one(&statement, &[&1]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
    let old = backend_pids(&admin, "pz_generation").await;
    assert!(!old.is_empty());

    admin
        .execute(
            "UPDATE pgtenant.tenants SET generation = generation + 1 \
             WHERE name = 'pz_generation'",
            &[],
        )
        .await
        .unwrap();
    wait_until(
        "the old backends close",
        Duration::from_secs(10),
        || async {
            let now = backend_pids(&admin, "pz_generation").await;
            old.iter().all(|pid| !now.contains(pid))
        },
    )
    .await;

    let row = bounded(
        "the prepared statement",
        client.query_one(&statement, &[&41]),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let new = backend_pids(&admin, "pz_generation").await;
    assert!(!new.is_empty() && new.iter().all(|pid| !old.contains(pid)));
}

/// The migration sequence: a transaction held at the gate while the generation is bumped
/// runs, once resumed, on a new backend, with the client's prepared statement re-made there.
#[tokio::test]
async fn held_transaction_runs_on_the_new_generation() {
    let mut admin = fleet().superuser().await;
    let password = catalog_tenant(&mut admin, "pz_migrate").await.password;
    let proxy = catalog_proxy().await;
    let client = login(&proxy, "pz_migrate", &password).await;
    let statement = client
        .prepare("SELECT $1::int + 1, pg_backend_pid()")
        .await
        .unwrap();
    client.query_one(&statement, &[&1]).await.unwrap();
    let old = backend_pids(&admin, "pz_migrate").await;

    let pause = bounded(
        "begin",
        Pause::begin(&catalog_config(), &request("pz_migrate")),
    )
    .await
    .unwrap();
    let held = tokio::spawn(async move {
        let row = client.query_one(&statement, &[&41]).await.unwrap();
        (row.get::<_, i32>(0), row.get::<_, i32>(1))
    });
    admin
        .execute(
            "UPDATE pgtenant.tenants SET generation = generation + 1 WHERE name = 'pz_migrate'",
            &[],
        )
        .await
        .unwrap();
    bounded("resume", pause.resume()).await.unwrap();

    let (answer, pid) = bounded("held query", held).await.unwrap();
    assert_eq!(answer, 42);
    assert!(
        !old.contains(&pid),
        "ran on a backend of the new generation"
    );
}

/// Two proxies following one catalog both pause the tenant and both acknowledge.
#[tokio::test]
async fn every_proxy_acknowledges() {
    let mut admin = fleet().superuser().await;
    let password = catalog_tenant(&mut admin, "pz_fleet").await.password;
    let (one, two) = (catalog_proxy().await, catalog_proxy().await);
    let via_one = login(&one, "pz_fleet", &password).await;
    let via_two = login(&two, "pz_fleet", &password).await;

    let pause = bounded(
        "begin",
        Pause::begin(&catalog_config(), &request("pz_fleet")),
    )
    .await
    .unwrap();
    for proxy in [&one, &two] {
        let name = proxy_name(&proxy.addr.to_string());
        assert!(pause.acked_by().contains(&name), "{name} acknowledged");
    }
    let held = [query_in_background(via_one), query_in_background(via_two)];
    tokio::time::sleep(HOLD).await;
    assert!(
        held.iter().all(|q| !q.is_finished()),
        "both proxies hold it"
    );

    bounded("resume", pause.resume()).await.unwrap();
    for query in held {
        assert_eq!(bounded("held query", query).await.unwrap().1, 42);
    }
}
