//! Transaction pooling against a real PostgreSQL: what one client does to its session must
//! never be seen by another client that shares its backend, and what a client relies on
//! (settings, prepared statements, pinned state) must follow it from backend to backend.
//!
//! Most tests use a pool of one connection, so two clients of a tenant always take turns on
//! the same backend; `SELECT pg_backend_pid()` checks that they really do.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use futures_util::StreamExt;
use pgtenant::config::file::PoolMode;
use postgres_protocol::IsNull;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification, SimpleQueryMessage};

use common::{Proxy, ProxyOptions, backend_pid, fleet, sqlstate};

/// `statement_timeout` as a fresh backend of the test cluster reports it.
const DEFAULT_TIMEOUT: &str = "0";

/// Pool size 1 with a short queue, so a client that cannot get the backend hears so quickly.
fn one_backend_short_wait() -> ProxyOptions {
    ProxyOptions {
        query_wait_timeout: Duration::from_millis(300),
        ..ProxyOptions::one_backend()
    }
}

/// The first column of the first row of a simple query, or the error.
async fn try_scalar(client: &Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    let row = messages.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    let row = row.unwrap_or_else(|| panic!("{sql}: no row"));
    Ok(row.get(0).map(str::to_owned))
}

/// The first column of the first row of a simple query; `None` for NULL.
async fn scalar(client: &Client, sql: &str) -> Option<String> {
    try_scalar(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The first column of the first row of a simple query, which must not be NULL.
async fn text(client: &Client, sql: &str) -> String {
    scalar(client, sql)
        .await
        .unwrap_or_else(|| panic!("{sql}: NULL"))
}

/// `SHOW name`.
async fn show(client: &Client, name: &str) -> String {
    text(client, &format!("SHOW {name}")).await
}

/// The SQLSTATE a simple query fails with; panics if it succeeds.
async fn failure(client: &Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(_) => panic!("{sql}: succeeded, expected an error"),
        Err(e) => sqlstate(&e),
    }
}

/// The backend pid, retrying while the pool answers 53300 (the backend is still being
/// cleaned after its previous client left).
async fn pid_once_served(client: &Client) -> i32 {
    for _ in 0..100 {
        match try_scalar(client, "SELECT pg_backend_pid()").await {
            Ok(pid) => return pid.unwrap().parse().unwrap(),
            Err(e) if sqlstate(&e) == "53300" => continue,
            Err(e) => panic!("SELECT pg_backend_pid(): {e}"),
        }
    }
    panic!("never got a backend");
}

/// Opens a transaction and returns the pid of the backend it holds.
async fn hold(client: &Client) -> i32 {
    client.batch_execute("BEGIN").await.unwrap();
    backend_pid(client).await
}

/// Connects and collects the notifications the connection receives.
async fn connect_listening(
    proxy: &Proxy,
    tenant: &str,
) -> (Client, mpsc::UnboundedReceiver<Notification>) {
    let (client, mut connection) = proxy.pg_config(tenant).connect(NoTls).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send(n);
            }
        }
    });
    (client, rx)
}

/// Creates a role that tenant `acme` may `SET ROLE` to.
async fn role_for_acme(name: &str) {
    let su = fleet().superuser().await;
    su.batch_execute(&format!(
        "DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
                 CREATE ROLE {name} NOLOGIN;
             END IF;
         END $$;
         GRANT {name} TO acme;"
    ))
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// Session settings
// ---------------------------------------------------------------------------------------

/// A session `SET` stays with its client and never shows on a shared backend for another.
#[tokio::test(flavor = "multi_thread")]
async fn session_set_follows_its_client_and_does_not_leak() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);
    assert_eq!(show(&b, "statement_timeout").await, DEFAULT_TIMEOUT);

    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    assert_eq!(show(&b, "statement_timeout").await, DEFAULT_TIMEOUT);

    for _ in 0..3 {
        b.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
        b.query_one("SELECT 1", &[]).await.unwrap();
    }
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    assert_eq!(show(&b, "statement_timeout").await, DEFAULT_TIMEOUT);

    b.batch_execute("SET statement_timeout = '5678ms'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(show(&a, "statement_timeout").await, "1234ms");
        assert_eq!(show(&b, "statement_timeout").await, "5678ms");
    }
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);
}

/// `RESET` forgets a setting for its client only; the other client keeps its own.
#[tokio::test(flavor = "multi_thread")]
async fn reset_forgets_only_the_clients_own_setting() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    b.batch_execute("SET statement_timeout = '5678ms'")
        .await
        .unwrap();
    a.batch_execute("RESET statement_timeout").await.unwrap();

    assert_eq!(show(&a, "statement_timeout").await, DEFAULT_TIMEOUT);
    assert_eq!(show(&b, "statement_timeout").await, "5678ms");
    assert_eq!(show(&a, "statement_timeout").await, DEFAULT_TIMEOUT);
}

/// A `SET` inside a transaction block pins the client: a later `ROLLBACK` undoes it, and
/// only its backend knows. The client sees exactly what PostgreSQL says; nobody else does.
#[tokio::test(flavor = "multi_thread")]
async fn set_rolled_back_with_its_transaction_is_not_replayed() {
    let proxy = Proxy::with(one_backend_short_wait()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, DEFAULT_TIMEOUT);

    let waited = try_scalar(&b, "SHOW statement_timeout").await.unwrap_err();
    assert_eq!(sqlstate(&waited), "53300", "A must hold its backend");
    assert_eq!(show(&a, "statement_timeout").await, DEFAULT_TIMEOUT);

    drop(a);
    assert_eq!(
        eventually_show(&b, "statement_timeout").await,
        DEFAULT_TIMEOUT
    );
}

/// A `RESET` undone by `ROLLBACK` leaves the setting in force for its client, and the
/// backend is clean before anyone else uses it.
#[tokio::test(flavor = "multi_thread")]
async fn reset_rolled_back_with_its_transaction_does_not_leak() {
    let proxy = Proxy::with(one_backend_short_wait()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("RESET statement_timeout").await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    let a_pid = backend_pid(&a).await;

    drop(a);
    assert_eq!(
        eventually_show(&b, "statement_timeout").await,
        DEFAULT_TIMEOUT,
        "another client's setting leaked onto this client"
    );
    assert_eq!(backend_pid(&b).await, a_pid);
}

/// `SHOW name`, retrying while the only backend is still held by a client that is leaving.
async fn eventually_show(client: &Client, name: &str) -> String {
    for _ in 0..50 {
        match try_scalar(client, &format!("SHOW {name}")).await {
            Ok(Some(value)) => return value,
            Ok(None) => panic!("SHOW {name}: NULL"),
            Err(e) if sqlstate(&e) == "53300" => continue,
            Err(e) => panic!("SHOW {name}: {e}"),
        }
    }
    panic!("SHOW {name}: the backend never came back");
}

/// A setting named in another letter case is still one setting: `RESET` forgets it for good.
#[tokio::test(flavor = "multi_thread")]
async fn reset_matches_a_setting_set_under_a_quoted_name() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.batch_execute(r#"SET "Statement_Timeout" = '1234ms'"#)
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    a.batch_execute("RESET statement_timeout").await.unwrap();
    assert_eq!(show(&a, "statement_timeout").await, DEFAULT_TIMEOUT);

    assert_eq!(show(&b, "statement_timeout").await, DEFAULT_TIMEOUT);
    assert_eq!(
        show(&a, "statement_timeout").await,
        DEFAULT_TIMEOUT,
        "the reset setting came back on the client's next turn"
    );
}

/// Reported parameters set by two clients on one backend are each client's own.
#[tokio::test(flavor = "multi_thread")]
async fn reported_parameters_are_tracked_per_client() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let zone = show(&b, "TimeZone").await;
    let zone_a = if zone == "Asia/Tokyo" {
        "America/Lima"
    } else {
        "Asia/Tokyo"
    };

    a.batch_execute("SET application_name = 'a'").await.unwrap();
    a.batch_execute(&format!("SET TimeZone = '{zone_a}'"))
        .await
        .unwrap();
    b.batch_execute("SET application_name = 'b'").await.unwrap();

    for _ in 0..5 {
        assert_eq!(show(&a, "application_name").await, "a");
        assert_eq!(show(&b, "application_name").await, "b");
        assert_eq!(show(&a, "TimeZone").await, zone_a);
        assert_eq!(show(&b, "TimeZone").await, zone);
    }
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);

    let c = proxy.connect("acme").await;
    assert_eq!(show(&c, "application_name").await, "");
    assert_eq!(show(&c, "TimeZone").await, zone);
}

/// A client whose login settings are new to the proxy does not inherit parameters another
/// client left on the backend used to learn them.
#[tokio::test(flavor = "multi_thread")]
async fn new_login_settings_do_not_inherit_another_clients_parameters() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let zone = show(&a, "TimeZone").await;
    let other = if zone == "Asia/Tokyo" {
        "America/Lima"
    } else {
        "Asia/Tokyo"
    };
    a.batch_execute(&format!("SET TimeZone = '{other}'"))
        .await
        .unwrap();

    let mut config = proxy.pg_config("acme");
    config.application_name("pooling-test");
    let b = common::connect_plain(config).await.unwrap();

    assert_eq!(show(&b, "application_name").await, "pooling-test");
    assert_eq!(
        show(&b, "TimeZone").await,
        zone,
        "the new client took over the TimeZone another client had set"
    );
    assert_eq!(show(&a, "TimeZone").await, other);
}

// ---------------------------------------------------------------------------------------
// State that pins a client to its backend
// ---------------------------------------------------------------------------------------

/// `SET ROLE` pins its client; after it leaves, the backend is back to the tenant role.
#[tokio::test(flavor = "multi_thread")]
async fn set_role_pins_and_is_reset_when_the_client_leaves() {
    role_for_acme("pool_auditor").await;
    let proxy = Proxy::with(one_backend_short_wait()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let shared = backend_pid(&a).await;
    assert_eq!(backend_pid(&b).await, shared);

    a.batch_execute("SET ROLE pool_auditor").await.unwrap();
    assert_eq!(text(&a, "SELECT current_user").await, "pool_auditor");
    assert_eq!(
        failure(&b, "SELECT current_user").await,
        "53300",
        "B ran on the backend of a client pinned by SET ROLE"
    );
    assert_eq!(text(&a, "SELECT current_user").await, "pool_auditor");

    drop(a);
    assert_eq!(pid_once_served(&b).await, shared);
    assert_eq!(text(&b, "SELECT current_user").await, "acme");
    assert_eq!(text(&b, "SELECT session_user").await, "acme");
}

/// With two backends, a client under `SET ROLE` keeps its role while another does not see it.
#[tokio::test(flavor = "multi_thread")]
async fn set_role_stays_with_its_client() {
    role_for_acme("pool_reader").await;
    let proxy = Proxy::start().await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.batch_execute("SET ROLE pool_reader").await.unwrap();
    let pinned = backend_pid(&a).await;
    for _ in 0..3 {
        assert_eq!(text(&b, "SELECT current_user").await, "acme");
        assert_ne!(backend_pid(&b).await, pinned);
        assert_eq!(text(&a, "SELECT current_user").await, "pool_reader");
        assert_eq!(backend_pid(&a).await, pinned);
    }
}

/// A `SET` through the extended protocol pins its client rather than leaking.
#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_set_pins_the_client() {
    let proxy = Proxy::with(one_backend_short_wait()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let shared = backend_pid(&a).await;

    a.execute("SET statement_timeout = '1234ms'", &[])
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    assert_eq!(failure(&b, "SHOW statement_timeout").await, "53300");

    drop(a);
    assert_eq!(pid_once_served(&b).await, shared);
    assert_eq!(show(&b, "statement_timeout").await, DEFAULT_TIMEOUT);
}

/// A temporary table pins its creator; after it leaves, the next client finds no trace of it.
#[tokio::test(flavor = "multi_thread")]
async fn temp_table_is_dropped_before_the_backend_is_reused() {
    let proxy = Proxy::with(one_backend_short_wait()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let shared = backend_pid(&a).await;

    a.batch_execute("CREATE TEMP TABLE tmp_x (i int)")
        .await
        .unwrap();
    a.batch_execute("INSERT INTO tmp_x VALUES (1), (2)")
        .await
        .unwrap();
    assert_eq!(text(&a, "SELECT count(*) FROM tmp_x").await, "2");
    assert_eq!(failure(&b, "SELECT 1").await, "53300");

    drop(a);
    assert_eq!(pid_once_served(&b).await, shared);
    assert_eq!(scalar(&b, "SELECT to_regclass('tmp_x')::text").await, None);
}

/// With two backends, a temporary table lives on with its creator and is invisible to others.
#[tokio::test(flavor = "multi_thread")]
async fn temp_table_stays_with_its_client() {
    let proxy = Proxy::start().await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.execute("CREATE TEMP TABLE tmp_y (i int)", &[])
        .await
        .unwrap();
    let pinned = backend_pid(&a).await;
    for i in 0..3 {
        a.execute("INSERT INTO tmp_y VALUES ($1)", &[&i])
            .await
            .unwrap();
        assert_eq!(scalar(&b, "SELECT to_regclass('tmp_y')::text").await, None);
        assert_ne!(backend_pid(&b).await, pinned);
    }
    assert_eq!(text(&a, "SELECT count(*) FROM tmp_y").await, "3");
    assert_eq!(backend_pid(&a).await, pinned);
}

/// A temporary table created inside a `DO` block is no more visible to others than any other.
#[tokio::test(flavor = "multi_thread")]
async fn temp_table_created_in_a_do_block_does_not_leak() {
    let proxy = Proxy::with(one_backend_short_wait()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.batch_execute("DO $$ BEGIN CREATE TEMP TABLE tmp_do (i int); END $$")
        .await
        .unwrap();
    match try_scalar(&b, "SELECT to_regclass('tmp_do')::text").await {
        Ok(found) => assert_eq!(found, None, "B sees A's temporary table"),
        Err(e) => assert_eq!(sqlstate(&e), "53300", "{e}"),
    }
    assert_eq!(text(&a, "SELECT count(*) FROM tmp_do").await, "0");
}

/// A session advisory lock is released when its client leaves, before anyone reuses the backend.
#[tokio::test(flavor = "multi_thread")]
async fn session_advisory_lock_is_released_when_the_client_leaves() {
    const KEY: i64 = 7_341_001;
    let su = fleet().superuser().await;
    let try_lock = format!("SELECT pg_try_advisory_xact_lock({KEY})");
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let shared = backend_pid(&a).await;

    a.batch_execute(&format!("SELECT pg_advisory_lock({KEY})"))
        .await
        .unwrap();
    assert_eq!(text(&su, &try_lock).await, "f", "A does not hold the lock");

    drop(a);
    assert_eq!(pid_once_served(&b).await, shared);
    assert_eq!(
        text(&su, &try_lock).await,
        "t",
        "the lock outlived its client"
    );
}

/// `LISTEN` pins its client, which receives notifications; after it leaves, nothing listens.
#[tokio::test(flavor = "multi_thread")]
async fn listen_is_undone_when_the_client_leaves() {
    let su = fleet().superuser().await;
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let (a, mut notes) = connect_listening(&proxy, "acme").await;
    let b = proxy.connect("acme").await;
    let shared = backend_pid(&a).await;

    a.batch_execute("LISTEN acme_pool_events").await.unwrap();
    let channels = a
        .query("SELECT pg_listening_channels()", &[])
        .await
        .unwrap();
    assert_eq!(channels.len(), 1);

    su.batch_execute("NOTIFY acme_pool_events, 'hello'")
        .await
        .unwrap();
    let note = tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("no notification arrived")
        .expect("connection closed");
    assert_eq!(note.channel(), "acme_pool_events");
    assert_eq!(note.payload(), "hello");

    drop(a);
    assert_eq!(pid_once_served(&b).await, shared);
    let channels = b
        .query("SELECT pg_listening_channels()", &[])
        .await
        .unwrap();
    assert!(channels.is_empty(), "the backend still listens");
}

/// A client that leaves inside a transaction has it rolled back before the backend is reused.
#[tokio::test(flavor = "multi_thread")]
async fn transaction_left_open_is_rolled_back() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let shared = backend_pid(&a).await;

    a.batch_execute("BEGIN").await.unwrap();
    a.batch_execute("CREATE TABLE pool_left_open (i int)")
        .await
        .unwrap();
    drop(a);

    assert_eq!(pid_once_served(&b).await, shared);
    assert_eq!(
        scalar(&b, "SELECT to_regclass('pool_left_open')::text").await,
        None
    );
    b.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Prepared statements
// ---------------------------------------------------------------------------------------

/// Two clients' named statements on one backend run interleaved, each with its own meaning.
#[tokio::test(flavor = "multi_thread")]
async fn named_statements_of_two_clients_interleave_on_one_backend() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    let add = a.prepare("SELECT $1::int4 + 1").await.unwrap();
    let double = b.prepare("SELECT $1::int4 * 2").await.unwrap();
    let same_a = a.prepare("SELECT $1::int4 - 1").await.unwrap();
    let same_b = b.prepare("SELECT $1::int4 - 1").await.unwrap();

    for i in 0..25_i32 {
        let x: i32 = a.query_one(&add, &[&i]).await.unwrap().get(0);
        let y: i32 = b.query_one(&double, &[&i]).await.unwrap().get(0);
        let z: i32 = b.query_one(&same_b, &[&i]).await.unwrap().get(0);
        let w: i32 = a.query_one(&same_a, &[&i]).await.unwrap().get(0);
        assert_eq!((x, y, z, w), (i + 1, i * 2, i - 1, i - 1));
    }
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);

    drop(same_b);
    let w: i32 = a.query_one(&same_a, &[&5]).await.unwrap().get(0);
    assert_eq!(w, 4, "closing B's copy broke A's statement");
}

/// Named statements follow their client to a backend they were never prepared on.
#[tokio::test(flavor = "multi_thread")]
async fn named_statements_move_between_backends() {
    let proxy = Proxy::start().await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let h1 = proxy.connect("acme").await;
    let h2 = proxy.connect("acme").await;

    // Two holders take both backends; then exactly one is free at each step.
    let p1 = hold(&h1).await;
    let p2 = hold(&h2).await;
    assert_ne!(p1, p2);

    h1.batch_execute("COMMIT").await.unwrap();
    let add = a.prepare("SELECT $1::int4 + 100").await.unwrap();
    assert_eq!(backend_pid(&a).await, p1);
    assert_eq!(hold(&h1).await, p1);

    h2.batch_execute("COMMIT").await.unwrap();
    let double = b.prepare("SELECT $1::int4 * 3").await.unwrap();
    for i in 0..5_i32 {
        let x: i32 = a.query_one(&add, &[&i]).await.unwrap().get(0);
        let y: i32 = b.query_one(&double, &[&i]).await.unwrap().get(0);
        assert_eq!((x, y), (i + 100, i * 3));
    }
    assert_eq!(backend_pid(&a).await, p2, "A's statement did not move");

    assert_eq!(hold(&h2).await, p2);
    h1.batch_execute("COMMIT").await.unwrap();
    for i in 0..5_i32 {
        let y: i32 = b.query_one(&double, &[&i]).await.unwrap().get(0);
        let x: i32 = a.query_one(&add, &[&i]).await.unwrap().get(0);
        assert_eq!((x, y), (i + 100, i * 3));
    }
    assert_eq!(backend_pid(&b).await, p1, "B's statement did not move");
    h2.batch_execute("COMMIT").await.unwrap();
}

/// `DISCARD ALL` from one client ends its own statements and leaves another client's intact.
#[tokio::test(flavor = "multi_thread")]
async fn discard_all_from_one_client_spares_the_other() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    let a_stmt = a.prepare("SELECT $1::int4 + 1").await.unwrap();
    let b_stmt = b.prepare("SELECT $1::int4 + 1").await.unwrap();
    let b_other = b.prepare("SELECT $1::int4 * 10").await.unwrap();
    b.batch_execute("PREPARE b_sql AS SELECT 77").await.unwrap();
    b.batch_execute("SET statement_timeout = '5678ms'")
        .await
        .unwrap();
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    a.query_one(&a_stmt, &[&1]).await.unwrap();

    a.batch_execute("DISCARD ALL").await.unwrap();

    let err = a.query_one(&a_stmt, &[&1]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "26000", "statement survived DISCARD ALL");
    assert_eq!(show(&a, "statement_timeout").await, DEFAULT_TIMEOUT);
    let again = a.prepare("SELECT $1::int4 + 1").await.unwrap();
    for i in 0..3_i32 {
        let x: i32 = a.query_one(&again, &[&i]).await.unwrap().get(0);
        let y: i32 = b.query_one(&b_stmt, &[&i]).await.unwrap().get(0);
        let z: i32 = b.query_one(&b_other, &[&i]).await.unwrap().get(0);
        assert_eq!((x, y, z), (i + 1, i + 1, i * 10));
    }
    assert_eq!(text(&b, "EXECUTE b_sql").await, "77");
    assert_eq!(show(&b, "statement_timeout").await, "5678ms");
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);
}

/// `DEALLOCATE ALL` from one client ends its own statements and leaves another client's intact.
#[tokio::test(flavor = "multi_thread")]
async fn deallocate_all_from_one_client_spares_the_other() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    let a_stmt = a.prepare("SELECT $1::int4 + 2").await.unwrap();
    let b_stmt = b.prepare("SELECT $1::int4 * 5").await.unwrap();
    a.batch_execute("PREPARE a_sql AS SELECT 11").await.unwrap();
    b.batch_execute("PREPARE b_sql AS SELECT 22").await.unwrap();
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();

    a.batch_execute("DEALLOCATE ALL").await.unwrap();

    let err = a.query_one(&a_stmt, &[&1]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "26000", "statement survived DEALLOCATE ALL");
    assert_eq!(failure(&a, "EXECUTE a_sql").await, "26000");
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");

    let again = a.prepare("SELECT $1::int4 + 2").await.unwrap();
    for i in 0..3_i32 {
        let x: i32 = a.query_one(&again, &[&i]).await.unwrap().get(0);
        let y: i32 = b.query_one(&b_stmt, &[&i]).await.unwrap().get(0);
        assert_eq!((x, y), (i + 2, i * 5));
    }
    assert_eq!(text(&b, "EXECUTE b_sql").await, "22");
    a.batch_execute("PREPARE a_sql AS SELECT 33").await.unwrap();
    assert_eq!(text(&a, "EXECUTE a_sql").await, "33");
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);
}

/// SQL `PREPARE` follows its client across transactions; another client cannot `EXECUTE` it.
#[tokio::test(flavor = "multi_thread")]
async fn sql_prepare_is_private_to_its_client() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.batch_execute("PREPARE p AS SELECT 42").await.unwrap();
    b.query_one("SELECT 1", &[]).await.unwrap();
    assert_eq!(text(&a, "EXECUTE p").await, "42");
    assert_eq!(failure(&b, "EXECUTE p").await, "26000");
    assert_eq!(text(&a, "EXECUTE p").await, "42");

    b.batch_execute("PREPARE p AS SELECT 7").await.unwrap();
    for _ in 0..3 {
        assert_eq!(text(&a, "EXECUTE p").await, "42");
        assert_eq!(text(&b, "EXECUTE p").await, "7");
    }

    a.batch_execute("DEALLOCATE p").await.unwrap();
    assert_eq!(failure(&a, "EXECUTE p").await, "26000");
    assert_eq!(text(&b, "EXECUTE p").await, "7");
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);
}

/// A SQL statement prepared under a quoted, mixed-case name is private to its client too.
#[tokio::test(flavor = "multi_thread")]
async fn sql_prepare_with_quoted_name_is_private_to_its_client() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.batch_execute(r#"PREPARE "MixedCase" AS SELECT 42"#)
        .await
        .unwrap();
    assert_eq!(text(&a, r#"EXECUTE "MixedCase""#).await, "42");
    assert_eq!(
        failure(&b, r#"EXECUTE "MixedCase""#).await,
        "26000",
        "B executed A's prepared statement"
    );
    assert_eq!(text(&a, r#"EXECUTE "MixedCase""#).await, "42");
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// An error inside a transaction, then `ROLLBACK`, leaves a clean backend for everyone.
#[tokio::test(flavor = "multi_thread")]
async fn error_in_transaction_then_rollback_leaves_a_clean_backend() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(failure(&a, "SELECT 1/0").await, "22012");
    assert_eq!(failure(&a, "SELECT 1").await, "25P02");
    a.batch_execute("ROLLBACK").await.unwrap();

    assert_eq!(text(&a, "SELECT 1").await, "1");
    assert_eq!(text(&b, "SELECT 2").await, "2");
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);

    let mut tx_client = a;
    let tx = tx_client.transaction().await.unwrap();
    let err = tx.query_one("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    tx.rollback().await.unwrap();
    let one: i32 = tx_client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    assert_eq!(text(&b, "SELECT 3").await, "3");
}

/// Failed `Parse` and `Execute` in the extended protocol leave the session and backend usable.
#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_errors_do_not_break_later_queries() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;

    let err = a.prepare("SELEC 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42601");
    let one: i32 = a.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    let err = a.query_one("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    let stmt = a.prepare("SELECT $1::int4 + 1").await.unwrap();
    let err = a
        .query_one("SELECT 1/$1::int4", &[&0_i32])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "22012");
    let two: i32 = a.query_one(&stmt, &[&1_i32]).await.unwrap().get(0);
    assert_eq!(two, 2);

    let three: i32 = b.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(three, 3);
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);
}

// ---------------------------------------------------------------------------------------
// Queueing and pool modes
// ---------------------------------------------------------------------------------------

/// A client that waits too long gets 53300 naming the tenant, and its session stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn queue_timeout_is_an_error_not_the_end_of_the_session() {
    let proxy = Proxy::with(one_backend_short_wait()).await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let b_stmt = b.prepare("SELECT $1::int4 + 1").await.unwrap();

    let held = hold(&a).await;
    let err = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("acme"), "{message}");

    let err = b.query_one("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300");
    let err = b.query_one(&b_stmt, &[&1_i32]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300");

    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(text(&b, "SELECT 1").await, "1");
    let two: i32 = b.query_one(&b_stmt, &[&1_i32]).await.unwrap().get(0);
    assert_eq!(two, 2);
    assert_eq!(backend_pid(&b).await, held);
}

/// In session mode a client keeps its backend and settings; the next client gets neither.
#[tokio::test(flavor = "multi_thread")]
async fn session_mode_keeps_the_backend_and_resets_it_after() {
    let proxy = Proxy::with(ProxyOptions {
        pool_mode: PoolMode::Session,
        ..ProxyOptions::one_backend()
    })
    .await;
    let a = proxy.connect("acme").await;
    let first = backend_pid(&a).await;

    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .unwrap();
    a.execute("SET lock_timeout = '4321ms'", &[]).await.unwrap();
    a.batch_execute("SET application_name = 'session-a'")
        .await
        .unwrap();
    a.batch_execute("PREPARE sp AS SELECT 5").await.unwrap();
    for _ in 0..3 {
        a.batch_execute("BEGIN; SELECT 1; COMMIT").await.unwrap();
        assert_eq!(backend_pid(&a).await, first);
    }
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    assert_eq!(show(&a, "lock_timeout").await, "4321ms");
    assert_eq!(text(&a, "EXECUTE sp").await, "5");
    drop(a);

    let b = proxy.connect("acme").await;
    assert_eq!(pid_once_served(&b).await, first);
    assert_eq!(show(&b, "statement_timeout").await, DEFAULT_TIMEOUT);
    assert_eq!(show(&b, "lock_timeout").await, "0");
    assert_eq!(show(&b, "application_name").await, "");
    assert_eq!(failure(&b, "EXECUTE sp").await, "26000");
}

// ---------------------------------------------------------------------------------------
// Startup settings
// ---------------------------------------------------------------------------------------

/// Settings a client sent at login apply to it alone on a shared backend.
#[tokio::test(flavor = "multi_thread")]
async fn startup_settings_stay_with_their_client() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let a = proxy.connect("acme").await;
    let mut config = proxy.pg_config("acme");
    config
        .options("-c statement_timeout=5s")
        .application_name("startup-app");
    let b = common::connect_plain(config).await.unwrap();

    for _ in 0..3 {
        assert_eq!(show(&b, "statement_timeout").await, "5s");
        assert_eq!(show(&b, "application_name").await, "startup-app");
        assert_eq!(show(&a, "statement_timeout").await, DEFAULT_TIMEOUT);
        assert_eq!(show(&a, "application_name").await, "");
    }
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);
}

/// `RESET` returns a setting given at login to its login value, as PostgreSQL itself does.
#[tokio::test(flavor = "multi_thread")]
async fn reset_returns_a_startup_setting_to_its_login_value() {
    // What PostgreSQL does when the client talks to it directly.
    let fleet = fleet();
    let mut direct = tokio_postgres::Config::new();
    direct
        .host(fleet.cluster.host())
        .port(fleet.cluster.port())
        .user("acme")
        .password(&fleet.tenant("acme").role_password)
        .dbname("postgres")
        .options("-c statement_timeout=5s");
    let direct = common::connect_plain(direct).await.unwrap();
    direct
        .batch_execute("SET statement_timeout = '1s'; RESET statement_timeout")
        .await
        .unwrap();
    assert_eq!(show(&direct, "statement_timeout").await, "5s");

    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let mut config = proxy.pg_config("acme");
    config.options("-c statement_timeout=5s");
    let a = common::connect_plain(config).await.unwrap();
    a.batch_execute("SET statement_timeout = '1s'")
        .await
        .unwrap();
    assert_eq!(show(&a, "statement_timeout").await, "1s");
    a.batch_execute("RESET statement_timeout").await.unwrap();

    assert_eq!(
        show(&a, "statement_timeout").await,
        "5s",
        "RESET went to the server default, not the value the client logged in with"
    );
}

// ---------------------------------------------------------------------------------------
// The unnamed statement, through the bare protocol
// ---------------------------------------------------------------------------------------

/// A client speaking the protocol message by message, for sequences tokio-postgres never
/// sends: here a `Parse` of the unnamed statement and its `Bind` in separate `Sync` batches.
struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
}

/// What came back for one batch, up to `ReadyForQuery`.
#[derive(Debug, Default)]
struct Reply {
    /// The first column of every `DataRow`.
    rows: Vec<Option<String>>,
    /// The SQLSTATE of an `ErrorResponse`.
    error: Option<String>,
}

impl RawClient {
    /// Logs in as the tenant's `app` user with SCRAM-SHA-256, without TLS.
    async fn connect(proxy: &Proxy, tenant: &str) -> Self {
        let t = fleet().tenant(tenant);
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        let mut raw = Self {
            stream,
            buf: BytesMut::new(),
        };

        let mut out = BytesMut::new();
        let params = [("user", t.user.as_str()), ("database", tenant)];
        frontend::startup_message(params, &mut out).unwrap();
        raw.send(&out).await;
        raw.authenticate(&t.user_password).await;

        let reply = raw.reply().await;
        assert_eq!(reply.error, None, "login failed");
        raw
    }

    async fn authenticate(&mut self, password: &str) {
        let Message::AuthenticationSasl(_) = self.recv().await else {
            panic!("expected AuthenticationSASL");
        };
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let mut out = BytesMut::new();
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out).unwrap();
        self.send(&out).await;

        let Message::AuthenticationSaslContinue(body) = self.recv().await else {
            panic!("expected AuthenticationSASLContinue");
        };
        scram.update(body.data()).unwrap();
        out.clear();
        frontend::sasl_response(scram.message(), &mut out).unwrap();
        self.send(&out).await;

        let Message::AuthenticationSaslFinal(body) = self.recv().await else {
            panic!("expected AuthenticationSASLFinal");
        };
        scram.finish(body.data()).unwrap();
        let Message::AuthenticationOk = self.recv().await else {
            panic!("expected AuthenticationOk");
        };
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn recv(&mut self) -> Message {
        loop {
            if let Some(message) = Message::parse(&mut self.buf).unwrap() {
                return message;
            }
            let n = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "the proxy closed the connection");
        }
    }

    /// Collects rows and the error up to `ReadyForQuery`.
    async fn reply(&mut self) -> Reply {
        let mut reply = Reply::default();
        loop {
            match self.recv().await {
                Message::DataRow(row) => {
                    let first = row.ranges().next().unwrap().expect("a column");
                    let value = first.map(|r| String::from_utf8_lossy(&row.buffer()[r]).into());
                    reply.rows.push(value);
                }
                Message::ErrorResponse(body) => {
                    let code = body
                        .fields()
                        .find(|f| Ok(f.type_() == b'C'))
                        .unwrap()
                        .map(|f| String::from_utf8_lossy(f.value_bytes()).into_owned());
                    reply.error = code;
                }
                Message::ReadyForQuery(_) => return reply,
                _ => {}
            }
        }
    }

    /// `Parse` of the unnamed statement, then `Sync`.
    async fn parse_unnamed(&mut self, sql: &str) -> Reply {
        let mut out = BytesMut::new();
        frontend::parse("", sql, [], &mut out).unwrap();
        frontend::sync(&mut out);
        self.send(&out).await;
        self.reply().await
    }

    /// `Bind` and `Execute` of the unnamed statement (no parameters), then `Sync`.
    async fn execute_unnamed(&mut self) -> Reply {
        let mut out = BytesMut::new();
        let no_values = std::iter::empty::<()>();
        frontend::bind("", "", [], no_values, |(), _| Ok(IsNull::No), [], &mut out)
            .map_err(|_| "bind encoding")
            .unwrap();
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
        self.send(&out).await;
        self.reply().await
    }
}

/// The unnamed statement parsed in one batch and bound in the next is the client's own,
/// never another client's unnamed statement on the shared backend.
#[tokio::test(flavor = "multi_thread")]
async fn unnamed_statement_bound_later_is_the_clients_own() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let mut raw = RawClient::connect(&proxy, "acme").await;
    let b = proxy.connect("acme").await;

    let parsed = raw.parse_unnamed("SELECT 'mine'::text").await;
    assert_eq!(parsed.error, None);
    let theirs: String = b
        .query_typed_one("SELECT 'theirs'::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(theirs, "theirs");

    let reply = raw.execute_unnamed().await;
    assert_ne!(
        reply.rows,
        vec![Some("theirs".to_owned())],
        "the client ran another client's unnamed statement"
    );
    assert_eq!(reply.error, None);
    assert_eq!(reply.rows, vec![Some("mine".to_owned())]);
}
