//! Pool governance against a real PostgreSQL: tier sizes, the global budget and its reserve,
//! queue and waiting caps, per-tenant rate limits and client caps, dynamic tiering, taking a
//! cold tenant's idle connection for a tenant that needs one, lowering the budget by reload,
//! and pools created by simultaneous first logins.
//!
//! Every test provisions tenants of its own and serves only those, so counting a role's
//! sessions in `pg_stat_activity` sees this test's proxy and nothing else. Nothing here
//! asserts on timing: waits are bounded generously and only turn a hang into a failure.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::StreamExt;
use hmac::{Hmac, KeyInit, Mac};
use pgtenant::config::file::{ConfigFile, TenantSection, Tier};
use pgtenant::control::demo::{self, DemoTenant};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_postgres::error::DbError;
use tokio_postgres::{Client, SimpleQueryMessage};

use common::wire::{auth_code, error_fields, read_message, startup_packet};
use common::{
    Proxy, ProxyOptions, backend_pid, bounded, connect_plain, fleet, sqlstate, wait_until,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Provisions tenants of this test (roles, schemas, `app` logins) in the shared cluster.
async fn provision(names: &[&str]) -> Vec<DemoTenant> {
    demo::provision(&fleet().cluster, names)
        .await
        .unwrap_or_else(|e| panic!("provision {names:?}: {e}"))
}

/// A SCRAM-SHA-256 verifier with a single PBKDF2 iteration (`SCRAM-SHA-256$1:…`), so that
/// logging in costs microseconds rather than 4096 hash rounds in a debug build.
fn one_round_verifier(password: &str) -> String {
    let hmac = |key: &[u8], data: &[u8]| -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    };
    let salt = demo::random_secret(16);
    // PBKDF2 with one iteration is HMAC(password, salt ‖ INT(1)).
    let salted = hmac(
        password.as_bytes(),
        &[salt.as_bytes(), &[0, 0, 0, 1]].concat(),
    );
    let stored_key = Sha256::digest(hmac(&salted, b"Client Key"));
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256$1:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

/// Tenants with a role, a schema and an `app` login, created in one batch with one-round
/// SCRAM verifiers on both sides. For tests that need dozens of tenants and hundreds of
/// logins: `demo::provision` and 4096-round SCRAM cost a large part of a second per tenant
/// and per login in a debug build.
async fn provision_cheaply(names: &[String]) -> Vec<DemoTenant> {
    let su = fleet().superuser().await;
    let mut sql = String::new();
    let mut tenants = Vec::new();
    for name in names {
        pgtenant::config::check_identifier(name).unwrap();
        let role_password = demo::random_secret(24);
        let user_password = demo::random_secret(16);
        sql.push_str(&format!(
            "CREATE ROLE {name} LOGIN NOSUPERUSER NOINHERIT CONNECTION LIMIT 50 \
             PASSWORD '{}'; \
             CREATE SCHEMA {name} AUTHORIZATION {name}; \
             GRANT CONNECT ON DATABASE postgres TO {name};\n",
            one_round_verifier(&role_password)
        ));
        tenants.push(DemoTenant {
            name: name.clone(),
            role_password,
            user: "app".into(),
            user_verifier: one_round_verifier(&user_password),
            user_password,
        });
    }
    su.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("provision {} tenants: {e}", names.len()));
    tenants
}

/// Options that serve exactly `tenants` (the fleet's demo tenants are dropped), each sized
/// by its tier rather than a fixed `pool_size`, then `edit` applied.
fn serving(
    tenants: &[DemoTenant],
    edit: impl Fn(&mut ConfigFile) + Send + Sync + 'static,
) -> ProxyOptions {
    let keep: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
    ProxyOptions {
        extra_tenants: tenants.to_vec(),
        edit: Some(Arc::new(move |file: &mut ConfigFile| {
            file.tenants.retain(|t| keep.contains(&t.name));
            for tenant in &mut file.tenants {
                tenant.pool_size = None;
            }
            edit(file);
        })),
        ..ProxyOptions::default()
    }
}

/// The `[[tenants]]` block of `name`.
fn section<'f>(file: &'f mut ConfigFile, name: &str) -> &'f mut TenantSection {
    file.tenants
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tenant {name} in the config"))
}

/// A client configuration for an extra tenant's `app` login through the proxy.
fn login(proxy: &Proxy, tenant: &DemoTenant) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(proxy.addr.port())
        .user(&tenant.user)
        .password(&tenant.user_password)
        .dbname(&tenant.name)
        .connect_timeout(Duration::from_secs(10));
    config
}

/// Logs in as an extra tenant's `app` user; panics on failure.
async fn connect(proxy: &Proxy, tenant: &DemoTenant) -> Client {
    let what = format!("login to {}", tenant.name);
    bounded(&what, connect_plain(login(proxy, tenant)))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The server error behind a failed call; panics if there is none.
fn db_error(error: &tokio_postgres::Error) -> &DbError {
    error
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {error:?}"))
}

/// The first column of the first row of a simple query, or the error.
async fn try_scalar(client: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let messages = bounded(sql, client.simple_query(sql)).await?;
    let value = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    Ok(value.unwrap_or_else(|| panic!("{sql}: no value")))
}

/// `BEGIN; SELECT pg_sleep(seconds); COMMIT` as three round trips, so the backend is held
/// for the whole transaction. Fails only if `BEGIN` gets no backend.
async fn sleep_transaction(client: &Client, seconds: f64) -> Result<(), tokio_postgres::Error> {
    bounded("BEGIN", client.batch_execute("BEGIN")).await?;
    let sleep = format!("SELECT pg_sleep({seconds})");
    bounded(&sleep, client.batch_execute(&sleep)).await.unwrap();
    bounded("COMMIT", client.batch_execute("COMMIT"))
        .await
        .unwrap();
    Ok(())
}

/// Backends of each of `roles` in `pg_stat_activity` (the superuser's own excluded).
async fn sessions_by_role(su: &Client, roles: &[String]) -> HashMap<String, i64> {
    let rows = su
        .query(
            "SELECT usename::text, count(*) FROM pg_stat_activity \
             WHERE usename::text = ANY($1) AND pid <> pg_backend_pid() GROUP BY usename",
            &[&roles],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
        .collect()
}

/// Backends of one role in `pg_stat_activity`.
async fn sessions_of(su: &Client, role: &str) -> i64 {
    let roles = [role.to_owned()];
    sessions_by_role(su, &roles)
        .await
        .get(role)
        .copied()
        .unwrap_or(0)
}

/// Whether a backend with this pid is still in `pg_stat_activity`.
async fn backend_alive(su: &Client, pid: i32) -> bool {
    let row = su
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) > 0
}

/// What a [`Sampler`] saw.
#[derive(Debug, Default)]
struct Seen {
    /// Samples taken.
    samples: usize,
    /// Largest count per role.
    max_by_role: HashMap<String, i64>,
    /// Largest sum over the roles in one sample.
    max_total: i64,
}

/// Counts the backends of some roles in `pg_stat_activity` over and over, in the background,
/// through its own superuser connection.
struct Sampler {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Seen>,
}

impl Sampler {
    async fn start(roles: Vec<String>) -> Self {
        let su = fleet().superuser().await;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut seen = Seen::default();
            loop {
                let counts = sessions_by_role(&su, &roles).await;
                seen.samples += 1;
                seen.max_total = seen.max_total.max(counts.values().sum());
                for (role, n) in counts {
                    let max = seen.max_by_role.entry(role).or_default();
                    *max = (*max).max(n);
                }
                if *stopped.borrow() {
                    return seen;
                }
                let pause = tokio::time::sleep(Duration::from_millis(20));
                tokio::select! {
                    () = pause => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        Self { stop, task }
    }

    /// Takes one last sample and returns everything seen.
    async fn finish(self) -> Seen {
        self.stop.send(true).unwrap();
        bounded("sampler", self.task).await.unwrap()
    }
}

/// Runs `SELECT pg_sleep(seconds)` in a loop until `stop`; returns how many ran.
fn keep_busy(set: &mut JoinSet<usize>, client: Arc<Client>, seconds: f64, stop: Arc<AtomicBool>) {
    set.spawn(async move {
        let sql = format!("SELECT pg_sleep({seconds})");
        let mut done = 0;
        while !stop.load(Ordering::Acquire) {
            bounded(&sql, client.batch_execute(&sql))
                .await
                .unwrap_or_else(|e| panic!("load transaction: {e}"));
            done += 1;
        }
        done
    });
}

/// Waits for every task of a load and returns the transactions they ran.
async fn join_all(set: &mut JoinSet<usize>) -> usize {
    let mut total = 0;
    while let Some(done) = bounded("load task", set.join_next()).await {
        total += done.unwrap();
    }
    total
}

// ---------------------------------------------------------------------------------------
// Tier sizes
// ---------------------------------------------------------------------------------------

/// Tenants pinned hot/warm/cold never hold more backends than their tier size, under overload.
#[tokio::test(flavor = "multi_thread")]
async fn pinned_tiers_cap_backends_per_tenant() {
    let tenants = provision(&["tier_hot", "tier_warm", "tier_cold"]).await;
    let proxy = Proxy::with(serving(&tenants, |file| {
        file.tiers.hot = 3;
        file.tiers.warm = 2;
        file.tiers.cold = 1;
        section(file, "tier_hot").tier = Some(Tier::Hot);
        section(file, "tier_warm").tier = Some(Tier::Warm);
        section(file, "tier_cold").tier = Some(Tier::Cold);
    }))
    .await;
    let sizes = [3_i64, 2, 1];

    // Log everyone in first, one at a time: the load below is about transactions.
    let mut clients = Vec::new();
    for (tenant, size) in tenants.iter().zip(sizes) {
        for _ in 0..size + 2 {
            clients.push((tenant.name.clone(), connect(&proxy, tenant).await));
        }
    }

    let roles: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
    let sampler = Sampler::start(roles).await;
    let mut load = JoinSet::new();
    for (name, client) in clients {
        load.spawn(async move {
            for _ in 0..3 {
                sleep_transaction(&client, 0.3)
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        });
    }
    while let Some(done) = bounded("tier load", load.join_next()).await {
        done.unwrap();
    }
    let seen = sampler.finish().await;

    for (tenant, size) in tenants.iter().zip(sizes) {
        let max = seen.max_by_role.get(&tenant.name).copied().unwrap_or(0);
        assert!(
            max <= size,
            "{} held {max} backends at once; its tier allows {size} ({seen:?})",
            tenant.name
        );
        assert_eq!(
            max,
            size,
            "{} with {} busy clients should have filled its pool of {size} ({seen:?})",
            tenant.name,
            size + 2
        );
    }
}

// ---------------------------------------------------------------------------------------
// The global budget
// ---------------------------------------------------------------------------------------

/// 300 clients over 50 tenants never hold more than max_connections - reserve backends.
#[tokio::test(flavor = "multi_thread")]
async fn burst_over_fifty_tenants_stays_within_the_budget() {
    const TENANTS: usize = 50;
    const CLIENTS_PER_TENANT: usize = 6;
    const ROUNDS: usize = 3;
    const FOR_TENANTS: i64 = 60;

    let names: Vec<String> = (0..TENANTS).map(|i| format!("burst_{i:02}")).collect();
    let tenants = provision_cheaply(&names).await;
    let proxy = Proxy::with(serving(&tenants, |file| {
        file.budget.max_connections = 70;
        file.budget.reserve = 10;
        file.tiers.hot = 2;
        file.tiers.warm = 2;
        file.tiers.cold = 1;
        file.tiers.initial = Tier::Warm;
        file.tiers.dynamic = false;
    }))
    .await;

    // Log in at a modest pace, so that logins do not compete with the burst itself: one
    // client per tenant first, which creates the tenant's pool, then the others (first
    // logins racing each other are the subject of `first_logins_arriving_together_all_get_in`).
    let mut clients = Vec::new();
    let mut refused_logins = 0;
    for per_tenant in [1, CLIENTS_PER_TENANT - 1] {
        let logins = tenants
            .iter()
            .flat_map(|t| std::iter::repeat_n(t, per_tenant))
            .map(|t| {
                let config = login(&proxy, t);
                let name = t.name.clone();
                async move { (name, connect_plain(config).await) }
            });
        let logged_in: Vec<_> = bounded(
            "logins",
            futures_util::stream::iter(logins)
                .buffer_unordered(8)
                .collect::<Vec<_>>(),
        )
        .await;
        for (name, result) in logged_in {
            match result {
                Ok(client) => clients.push(client),
                Err(e) if sqlstate(&e) == "53300" => refused_logins += 1,
                Err(e) => panic!("login to {name}: {e}"),
            }
        }
    }

    let sampler = Sampler::start(names.clone()).await;
    let start = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let mut burst = JoinSet::new();
    for client in clients {
        let start = start.clone();
        burst.spawn(async move {
            start.wait().await;
            let (mut ok, mut busy) = (0_usize, 0_usize);
            for _ in 0..ROUNDS {
                match sleep_transaction(&client, 0.05).await {
                    Ok(()) => ok += 1,
                    Err(e) if sqlstate(&e) == "53300" => busy += 1,
                    Err(e) => panic!("burst transaction: {e}"),
                }
            }
            (ok, busy)
        });
    }
    let (mut ok, mut busy) = (0, 0);
    while let Some(done) = bounded("burst", burst.join_next()).await {
        let (o, b) = done.unwrap();
        ok += o;
        busy += b;
    }
    let seen = sampler.finish().await;

    let attempted = TENANTS * CLIENTS_PER_TENANT * ROUNDS;
    assert!(
        seen.max_total <= FOR_TENANTS,
        "{} tenant backends at once; the budget leaves {FOR_TENANTS} for tenants \
         ({} samples)",
        seen.max_total,
        seen.samples
    );
    assert!(
        seen.max_by_role.values().all(|&n| n <= 2),
        "a warm tenant went over its pool of 2: {:?}",
        seen.max_by_role
    );
    assert!(
        seen.max_total > TENANTS as i64,
        "the burst never needed more than one backend per tenant (max {}), so the budget \
         was not tested",
        seen.max_total
    );
    assert_eq!(
        ok + busy + refused_logins * ROUNDS,
        attempted,
        "every transaction must end"
    );
    assert!(
        ok * 10 >= attempted * 9,
        "with a 5 s queue most transactions should get a backend: {ok} of {attempted} did, \
         {busy} got 53300, {refused_logins} logins got 53300"
    );
}

// ---------------------------------------------------------------------------------------
// Queue timeout and waiting cap
// ---------------------------------------------------------------------------------------

/// A queue timeout is ERROR 53300 naming the tenant, and the same session then runs queries.
#[tokio::test(flavor = "multi_thread")]
async fn queue_timeout_is_an_error_and_the_session_survives() {
    let tenants = provision(&["queue_timeout"]).await;
    let tenant = &tenants[0];
    let mut options = serving(&tenants, |file| {
        section(file, "queue_timeout").pool_size = Some(1);
    });
    options.query_wait_timeout = Duration::from_millis(300);
    let proxy = Proxy::with(options).await;

    let holder = connect(&proxy, tenant).await;
    let waiter = connect(&proxy, tenant).await;
    holder.batch_execute("BEGIN").await.unwrap();
    let held = backend_pid(&holder).await;

    let err = try_scalar(&waiter, "SELECT 1").await.unwrap_err();
    let db = db_error(&err);
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert_eq!(db.severity(), "ERROR", "the session must survive: {db:?}");
    assert!(
        db.message().contains("tenant \"queue_timeout\""),
        "the message must name the tenant: {}",
        db.message()
    );

    holder.batch_execute("COMMIT").await.unwrap();
    assert_eq!(try_scalar(&waiter, "SELECT 41 + 1").await.unwrap(), "42");
    assert_eq!(
        backend_pid(&waiter).await,
        held,
        "one backend, now free, serves the waiter"
    );
}

/// Over `max_waiting`, a client gets 53300 at once instead of queueing; the waiter is served.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_cap_refuses_the_extra_waiter_at_once() {
    let tenants = provision(&["wait_cap"]).await;
    let tenant = &tenants[0];
    let mut options = serving(&tenants, |file| {
        section(file, "wait_cap").pool_size = Some(1);
        file.limits.max_waiting = 1;
    });
    // Far longer than the bound below: a refusal within it cannot be a queue timeout.
    options.query_wait_timeout = Duration::from_secs(120);
    let proxy = Proxy::with(options).await;

    let holder = connect(&proxy, tenant).await;
    let first = Arc::new(connect(&proxy, tenant).await);
    let second = Arc::new(connect(&proxy, tenant).await);
    holder.batch_execute("BEGIN").await.unwrap();

    // Both ask at once; exactly one becomes the waiter and the other is over the cap.
    let ask = |client: Arc<Client>| {
        tokio::spawn(async move { client.simple_query("SELECT 'served'").await })
    };
    let mut a = ask(first);
    let mut b = ask(second);
    let (refused, waiter) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            done = &mut a => (done.unwrap(), b),
            done = &mut b => (done.unwrap(), a),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("nobody was refused although max_waiting = 1"));

    let err = refused.unwrap_err();
    let db = db_error(&err);
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert_eq!(db.severity(), "ERROR", "{db:?}");
    assert!(
        db.message().contains("tenant \"wait_cap\"") && db.message().contains("1 waiting"),
        "the message must name the tenant and the client already waiting: {}",
        db.message()
    );
    assert!(
        db.message().contains("within 0"),
        "the refusal did not wait, and must not claim it did: {}",
        db.message()
    );

    holder.batch_execute("COMMIT").await.unwrap();
    let served = bounded("the waiter", waiter).await.unwrap();
    assert!(served.is_ok(), "the waiter must be served: {served:?}");
}

// ---------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------

/// Runs `n` single-statement transactions back to back; returns (succeeded, 53400 errors).
async fn tight_loop(client: &Client, n: usize) -> (usize, Vec<DbError>) {
    let mut ok = 0;
    let mut limited = Vec::new();
    for _ in 0..n {
        match try_scalar(client, "SELECT 1").await {
            Ok(_) => ok += 1,
            Err(e) if sqlstate(&e) == "53400" => limited.push(db_error(&e).clone()),
            Err(e) => panic!("unexpected error in the loop: {e}"),
        }
    }
    (ok, limited)
}

/// Over its rate a tenant gets ERROR 53400, others do not, and a reload raising it applies live.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_refuses_excess_transactions_and_reload_raises_it() {
    let tenants = provision(&["rate_limited", "rate_free"]).await;
    let (limited, free) = (&tenants[0], &tenants[1]);
    let limit = |per_second: f64, burst: u32| {
        move |file: &mut ConfigFile| {
            file.limits.rate_limit_wait = Duration::ZERO;
            let tenant = section(file, "rate_limited");
            tenant.transactions_per_second = Some(per_second);
            tenant.burst = Some(burst);
        }
    };
    let proxy = Proxy::with(serving(&tenants, limit(5.0, 5))).await;

    let session = connect(&proxy, limited).await;
    let other_session = connect(&proxy, limited).await;
    let free_session = connect(&proxy, free).await;

    let (ok, refused) = tight_loop(&session, 30).await;
    assert!(
        !refused.is_empty(),
        "30 transactions at once must exceed 5 per second with a burst of 5 ({ok} ran)"
    );
    assert!(ok >= 5, "the burst of 5 must run ({ok} ran)");
    for db in &refused {
        assert_eq!(db.severity(), "ERROR", "{db:?}");
        assert!(
            db.message().contains("tenant \"rate_limited\"")
                && db.message().contains("5 transactions per second"),
            "the message must name the tenant and its limit: {}",
            db.message()
        );
    }

    let (_, refused_elsewhere) = tight_loop(&other_session, 10).await;
    assert!(
        !refused_elsewhere.is_empty(),
        "the limit is the tenant's, so its other session is over it too"
    );

    let (free_ok, free_refused) = tight_loop(&free_session, 30).await;
    assert_eq!(free_ok, 30, "a tenant without a limit is never refused");
    assert!(free_refused.is_empty());

    wait_until(
        "the limited session runs again",
        Duration::from_secs(10),
        || {
            let session = &session;
            async move { try_scalar(session, "SELECT 1").await.is_ok() }
        },
    )
    .await;

    let raised = serving(&tenants, limit(100_000.0, 100_000));
    proxy.handle.reload(raised.config()).unwrap();
    let (ok, refused) = tight_loop(&session, 30).await;
    assert!(
        refused.is_empty(),
        "after raising the limit to 100000/s the same session must not be refused: \
         {ok} ran, refused with {:?}",
        refused.first().map(DbError::message)
    );
}

// ---------------------------------------------------------------------------------------
// Client connection cap
// ---------------------------------------------------------------------------------------

/// Over `max_client_connections` a login gets FATAL 53300, until a client of the tenant leaves.
#[tokio::test(flavor = "multi_thread")]
async fn client_cap_refuses_logins_over_it_until_a_client_leaves() {
    let tenants = provision(&["client_cap"]).await;
    let tenant = &tenants[0];
    let proxy = Proxy::with(serving(&tenants, |file| {
        section(file, "client_cap").max_client_connections = Some(2);
    }))
    .await;

    let first = connect(&proxy, tenant).await;
    let second = connect(&proxy, tenant).await;
    let refused = bounded("third login", connect_plain(login(&proxy, tenant)))
        .await
        .err()
        .unwrap_or_else(|| panic!("a third client logged in over max_client_connections = 2"));
    let db = db_error(&refused);
    assert_eq!(db.code().code(), "53300", "{db:?}");
    assert_eq!(db.severity(), "FATAL", "{db:?}");
    assert!(
        db.message().contains("tenant \"client_cap\""),
        "the message must name the tenant: {}",
        db.message()
    );
    try_scalar(&second, "SELECT 1").await.unwrap();

    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let replacement = loop {
        match bounded("login", connect_plain(login(&proxy, tenant))).await {
            Ok(client) => break client,
            Err(e) if sqlstate(&e) == "53300" => assert!(
                tokio::time::Instant::now() < deadline,
                "no login fits 10 s after a client left: {e}"
            ),
            Err(e) => panic!("login after a client left: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    try_scalar(&replacement, "SELECT 1").await.unwrap();

    let over = bounded(
        "login over the cap again",
        connect_plain(login(&proxy, tenant)),
    )
    .await;
    assert_eq!(
        over.as_ref().err().map(sqlstate).as_deref(),
        Some("53300"),
        "two clients are in again, so the next login is refused"
    );
}

// ---------------------------------------------------------------------------------------
// Dynamic tiering
// ---------------------------------------------------------------------------------------

/// A backend held through a long transaction counts as load while it is held, not only
/// once it is returned: the holder ranks hot during its transaction. (All other tenants
/// are idle; were the held time uncounted, every load would be 0, `dynh_a` would rank hot
/// by name and the holder, last by name, cold.)
#[tokio::test(flavor = "multi_thread")]
async fn held_backend_counts_as_load_while_held() {
    let names = ["dynh_a", "dynh_b", "dynh_c", "dynh_d", "dynh_e"];
    let tenants = provision(&names).await;
    let proxy = Proxy::with(serving(&tenants, |file| {
        file.tiers.initial = Tier::Warm;
        file.tiers.dynamic = true;
        file.tiers.interval = Duration::from_millis(200);
        file.tiers.hysteresis = 2;
    }))
    .await;
    for tenant in &tenants[..4] {
        let client = connect(&proxy, tenant).await;
        client.batch_execute("SELECT 1").await.unwrap();
    }

    let holder = connect(&proxy, &tenants[4]).await;
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let handle = &proxy.handle;
    wait_until("the holder ranked hot", Duration::from_secs(15), || async {
        handle.tier_of("dynh_e") == Some(Tier::Hot)
    })
    .await;

    holder.batch_execute("COMMIT").await.unwrap();
}

/// Dynamic tiering promotes the busiest tenant to hot, demotes the idle one to cold and back.
#[tokio::test(flavor = "multi_thread")]
async fn tiers_follow_load() {
    // Tenants of equal load rank by name, so `dyn_0` ranks first while nobody has load yet
    // and stays warm or better until it has its two backends; after that it is the idle one.
    let tenants = provision(&["dyn_0", "dyn_1", "dyn_2", "dyn_3", "dyn_4"]).await;
    let [idle, first, second, light_a, light_b] = [0, 1, 2, 3, 4].map(|i| &tenants[i]);
    let proxy = Proxy::with(serving(&tenants, |file| {
        file.tiers.hot = 3;
        file.tiers.warm = 2;
        file.tiers.cold = 1;
        file.tiers.initial = Tier::Warm;
        file.tiers.dynamic = true;
        file.tiers.interval = Duration::from_millis(200);
        file.tiers.hysteresis = 2;
    }))
    .await;
    let su = fleet().superuser().await;
    let roles: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();
    let sampler = Sampler::start(roles).await;

    // The idle tenant: two backends, then nothing more.
    let (i1, i2) = (connect(&proxy, idle).await, connect(&proxy, idle).await);
    i1.batch_execute("BEGIN").await.unwrap();
    i2.batch_execute("BEGIN").await.unwrap();
    let idle_pids = [backend_pid(&i1).await, backend_pid(&i2).await];
    assert_ne!(idle_pids[0], idle_pids[1], "a warm pool holds two backends");
    i1.batch_execute("COMMIT").await.unwrap();
    i2.batch_execute("COMMIT").await.unwrap();
    assert_eq!(sessions_of(&su, &idle.name).await, 2);

    // Two tenants with one steady client each; `first` with three, the busiest.
    let light_stop = Arc::new(AtomicBool::new(false));
    let mut light = JoinSet::new();
    for tenant in [light_a, light_b, second] {
        let client = Arc::new(connect(&proxy, tenant).await);
        keep_busy(&mut light, client, 0.02, light_stop.clone());
    }
    let first_stop = Arc::new(AtomicBool::new(false));
    let mut first_load = JoinSet::new();
    for _ in 0..3 {
        let client = Arc::new(connect(&proxy, first).await);
        keep_busy(&mut first_load, client, 0.05, first_stop.clone());
    }

    let su_ref = &su;
    let reaches = |tenant: &DemoTenant, n: i64| {
        let role = tenant.name.clone();
        move || {
            let role = role.clone();
            async move { sessions_of(su_ref, &role).await >= n }
        }
    };
    let falls_to = |tenant: &DemoTenant, n: i64| {
        let role = tenant.name.clone();
        move || {
            let role = role.clone();
            async move { sessions_of(su_ref, &role).await <= n }
        }
    };
    let limit = Duration::from_secs(15);
    wait_until(
        "the busiest tenant promoted to hot (3 backends)",
        limit,
        reaches(first, 3),
    )
    .await;
    wait_until(
        "the idle tenant demoted to cold (1 backend)",
        limit,
        falls_to(idle, 1),
    )
    .await;
    let survivors = [
        backend_alive(&su, idle_pids[0]).await,
        backend_alive(&su, idle_pids[1]).await,
    ];
    assert_eq!(
        survivors.iter().filter(|alive| **alive).count(),
        1,
        "one of the idle tenant's two backends was closed, one kept: {survivors:?}"
    );

    // `first` goes quiet and `second` becomes the busiest: it is promoted, `first` demoted.
    first_stop.store(true, Ordering::Release);
    assert!(join_all(&mut first_load).await > 0);
    let second_stop = Arc::new(AtomicBool::new(false));
    let mut second_load = JoinSet::new();
    for _ in 0..3 {
        let client = Arc::new(connect(&proxy, second).await);
        keep_busy(&mut second_load, client, 0.05, second_stop.clone());
    }
    wait_until(
        "the new busiest tenant promoted to hot",
        limit,
        reaches(second, 3),
    )
    .await;
    wait_until(
        "the quiet tenant demoted from hot (2 backends)",
        limit,
        falls_to(first, 2),
    )
    .await;

    second_stop.store(true, Ordering::Release);
    light_stop.store(true, Ordering::Release);
    join_all(&mut second_load).await;
    join_all(&mut light).await;
    let seen = sampler.finish().await;
    for (role, max) in &seen.max_by_role {
        assert!(*max <= 3, "{role} held {max} backends; hot is 3 ({seen:?})");
    }

    // The cold tenant still serves its clients.
    assert_eq!(try_scalar(&i1, "SELECT 7").await.unwrap(), "7");
}

// ---------------------------------------------------------------------------------------
// Taking idle connections when the budget is spent
// ---------------------------------------------------------------------------------------

/// With the budget spent, a tenant gets a cold tenant's idle backend at once, not after a wait.
#[tokio::test(flavor = "multi_thread")]
async fn full_budget_takes_a_cold_tenants_idle_connection() {
    let tenants = provision(&["evict_cold", "evict_busy", "evict_new"]).await;
    let (cold, busy, new) = (&tenants[0], &tenants[1], &tenants[2]);
    let mut options = serving(&tenants, |file| {
        // 3 backends for tenants: cold 1 + busy 2 (warm) fill it.
        file.budget.max_connections = 4;
        file.budget.reserve = 1;
        file.tiers.hot = 2;
        file.tiers.warm = 2;
        file.tiers.cold = 1;
        file.tiers.initial = Tier::Warm;
        file.tiers.dynamic = false;
        section(file, "evict_cold").tier = Some(Tier::Cold);
    });
    // Far longer than the bound below: being served within it means nobody queued it out.
    options.query_wait_timeout = Duration::from_secs(120);
    let proxy = Proxy::with(options).await;
    let su = fleet().superuser().await;
    let roles: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();

    let a = connect(&proxy, cold).await;
    let a_pid = backend_pid(&a).await;

    let b1 = connect(&proxy, busy).await;
    let b2 = connect(&proxy, busy).await;
    b1.batch_execute("BEGIN").await.unwrap();
    b2.batch_execute("BEGIN").await.unwrap();
    let b_pids = [backend_pid(&b1).await, backend_pid(&b2).await];
    assert_ne!(b_pids[0], b_pids[1]);
    let before = sessions_by_role(&su, &roles).await;
    assert_eq!(
        (before.get("evict_cold"), before.get("evict_busy")),
        (Some(&1), Some(&2)),
        "the budget of 3 is spent: {before:?}"
    );

    let served = tokio::time::timeout(Duration::from_secs(30), async {
        let c = connect_plain(login(&proxy, new)).await?;
        let pid = backend_pid(&c).await;
        Ok::<_, tokio_postgres::Error>((c, pid))
    })
    .await;
    let (c, c_pid) = served
        .unwrap_or_else(|_| panic!("evict_new waited although evict_cold had an idle backend"))
        .unwrap_or_else(|e| panic!("evict_new: {e}"));
    assert!(!b_pids.contains(&c_pid));

    let su_ref = &su;
    wait_until(
        "evict_cold's idle backend closed",
        Duration::from_secs(10),
        || async move { !backend_alive(su_ref, a_pid).await },
    )
    .await;
    let after = sessions_by_role(&su, &roles).await;
    assert!(
        after.values().sum::<i64>() <= 3,
        "still within the budget of 3: {after:?}"
    );

    // evict_cold runs again on a new backend, taken from evict_new's idle one.
    let again = tokio::time::timeout(Duration::from_secs(30), backend_pid(&a))
        .await
        .unwrap_or_else(|_| panic!("evict_cold waited although evict_new had an idle backend"));
    assert_ne!(again, a_pid);

    b1.batch_execute("COMMIT").await.unwrap();
    b2.batch_execute("COMMIT").await.unwrap();
    drop(c);
}

// ---------------------------------------------------------------------------------------
// Budget reload and pool creation
// ---------------------------------------------------------------------------------------

/// A reload lowering the budget closes idle backends until the tenants are within it again.
#[tokio::test(flavor = "multi_thread")]
async fn reload_lowering_the_budget_closes_idle_backends_above_it() {
    let tenants = provision(&["shrink_a", "shrink_b"]).await;
    let budget = |max_connections: usize| {
        move |file: &mut ConfigFile| {
            file.budget.max_connections = max_connections;
            file.budget.reserve = 2;
            file.tiers.hot = 4;
            file.tiers.warm = 4;
            file.tiers.cold = 1;
            file.tiers.initial = Tier::Warm;
            file.tiers.dynamic = false;
        }
    };
    let proxy = Proxy::with(serving(&tenants, budget(12))).await;
    let su = fleet().superuser().await;
    let roles: Vec<String> = tenants.iter().map(|t| t.name.clone()).collect();

    // Four idle backends per tenant: 8 of the 10 the budget allows.
    let mut clients = Vec::new();
    for tenant in &tenants {
        for _ in 0..4 {
            let client = connect(&proxy, tenant).await;
            client.batch_execute("BEGIN").await.unwrap();
            clients.push(client);
        }
    }
    for client in &clients {
        client.batch_execute("COMMIT").await.unwrap();
    }
    let open = sessions_by_role(&su, &roles).await;
    assert_eq!(open.values().sum::<i64>(), 8, "{open:?}");

    proxy
        .handle
        .reload(serving(&tenants, budget(6)).config())
        .unwrap();
    let (su_ref, roles_ref) = (&su, &roles);
    wait_until(
        "tenant backends down to the new budget of 4",
        Duration::from_secs(10),
        || async move {
            sessions_by_role(su_ref, roles_ref)
                .await
                .values()
                .sum::<i64>()
                <= 4
        },
    )
    .await;

    let seen = Sampler::start(roles.clone()).await;
    for client in &clients {
        try_scalar(client, "SELECT 1").await.unwrap();
    }
    let seen = seen.finish().await;
    assert!(
        seen.max_total <= 4,
        "clients served under the new budget: {seen:?}"
    );
}

/// Simultaneous first logins of unused tenants all get in; none finds its pool closed under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_logins_arriving_together_all_get_in() {
    const TENANTS: usize = 60;
    const PER_TENANT: usize = 6;
    const ROUNDS: usize = 10;

    let names: Vec<String> = (0..TENANTS).map(|i| format!("first_{i:02}")).collect();
    let tenants = provision_cheaply(&names).await;
    for round in 0..ROUNDS {
        // A new proxy each round: every login is among the first of its tenant.
        let proxy = Proxy::with(serving(&tenants, |_| {})).await;
        let mut pending = JoinSet::new();
        for tenant in &tenants {
            for _ in 0..PER_TENANT {
                pending.spawn(scram_until_last_message(proxy.addr, tenant.clone()));
            }
        }
        let mut ready = Vec::new();
        while let Some(login) = bounded("logins", pending.join_next()).await {
            ready.push(login.unwrap());
        }
        // The last SCRAM messages go out back to back, grouped by tenant.
        ready.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, stream, last) in &mut ready {
            stream.write_all(last).await.unwrap();
        }

        let mut refused = Vec::new();
        for (_, mut stream, _) in ready {
            if let Err(error) = login_outcome(&mut stream).await {
                refused.push(error);
            }
        }
        assert!(
            refused.is_empty(),
            "round {round}: {} of {} simultaneous first logins refused, e.g. {:?}",
            refused.len(),
            TENANTS * PER_TENANT,
            refused.first()
        );
    }
}

/// Runs a SCRAM login by hand up to the client's last message, which it returns unsent.
async fn scram_until_last_message(
    addr: std::net::SocketAddr,
    tenant: DemoTenant,
) -> (String, TcpStream, bytes::BytesMut) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let params = [
        ("user", tenant.user.as_str()),
        ("database", tenant.name.as_str()),
    ];
    stream
        .write_all(&startup_packet(3, 0, &params))
        .await
        .unwrap();
    let (tag, body) = read_message(&mut stream).await.unwrap();
    assert_eq!((tag, auth_code(&body)), (b'R', 10), "AuthenticationSASL");

    let mut scram = ScramSha256::new(
        tenant.user_password.as_bytes(),
        ChannelBinding::unsupported(),
    );
    let mut out = bytes::BytesMut::new();
    frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out).unwrap();
    stream.write_all(&out).await.unwrap();
    let (tag, body) = read_message(&mut stream).await.unwrap();
    assert_eq!(
        (tag, auth_code(&body)),
        (b'R', 11),
        "AuthenticationSASLContinue"
    );
    scram.update(&body[4..]).unwrap();
    let mut last = bytes::BytesMut::new();
    frontend::sasl_response(scram.message(), &mut last).unwrap();
    (tenant.name, stream, last)
}

/// Reads up to ReadyForQuery (logged in) or an ErrorResponse (its fields).
async fn login_outcome(stream: &mut TcpStream) -> Result<(), HashMap<char, String>> {
    loop {
        let (tag, body) = bounded("login", read_message(stream)).await.unwrap();
        match tag {
            b'Z' => return Ok(()),
            b'E' => return Err(error_fields(&body)),
            _ => {}
        }
    }
}
