//! Real clients through the proxy: psql, pgbench, COPY with tokio-postgres, cancel requests,
//! clients that vanish mid-transaction and backends that die under a client.
//!
//! Tenant use in this binary: `acme` for ordinary work, `globex` for pgbench, and `solo` only
//! for the test that terminates every backend of its tenant, so that test cannot disturb the
//! others running at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use common::{Proxy, ProxyOptions, bounded, fleet, sqlstate, wait_until};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// A libpq URL for psql and pgbench (no TLS, no GSSAPI attempt).
fn libpq_url(proxy: &Proxy, tenant: &str) -> String {
    format!("{}&gssencmode=disable", proxy.url(tenant))
}

/// Runs a command to completion (killed if it hangs) and returns its output.
async fn run(command: &mut Command) -> Output {
    command
        .kill_on_drop(true)
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .env("PGCONNECT_TIMEOUT", "10");
    let what = format!("{command:?}");
    bounded(&what, command.output())
        .await
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"))
}

/// Runs psql against `url` with `args`, asserting success; returns stdout.
async fn psql(url: &str, args: &[&str]) -> String {
    let out = run(Command::new("psql")
        .arg(url)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(args))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "psql {args:?} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

/// Connects and keeps the connection task's handle so the test can kill the socket.
async fn connect_abortable(proxy: &Proxy, tenant: &str) -> (Client, JoinHandle<()>) {
    let (client, connection) = proxy
        .pg_config(tenant)
        .connect(NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// Sends `client`'s cancel request to the proxy and waits until the proxy has handled it
/// (it closes the cancel connection when done).
async fn cancel_and_wait(proxy: &Proxy, client: &Client) {
    let mut stream = TcpStream::connect(proxy.addr)
        .await
        .expect("cancel connect");
    client
        .cancel_token()
        .cancel_query_raw(&mut stream, NoTls)
        .await
        .expect("send cancel request");
    let mut rest = Vec::new();
    bounded(
        "proxy closing the cancel connection",
        stream.read_to_end(&mut rest),
    )
    .await
    .expect("read cancel connection");
}

/// Number of granted locks on `schema.table`.
async fn locks_on(su: &Client, schema: &str, table: &str) -> i64 {
    su.query_one(
        "SELECT count(*) FROM pg_locks l \
         JOIN pg_class c ON c.oid = l.relation \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND l.granted",
        &[&schema, &table],
    )
    .await
    .expect("pg_locks")
    .get(0)
}

/// `pg_stat_activity.state` of a backend; `None` once the process is gone.
async fn backend_state(su: &Client, pid: i32) -> Option<String> {
    su.query_opt("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .expect("pg_stat_activity")
        .and_then(|row| row.get::<_, Option<String>>(0))
}

/// Whether a backend still exists.
async fn backend_exists(su: &Client, pid: i32) -> bool {
    su.query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .expect("pg_stat_activity")
        .is_some()
}

/// Starts a transaction on `client` and returns the pid of the backend serving it.
async fn begin_on_backend(client: &Client) -> i32 {
    client.batch_execute("BEGIN").await.expect("BEGIN");
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid")
        .get(0)
}

// ---------------------------------------------------------------------------------------
// psql
// ---------------------------------------------------------------------------------------

/// psql runs single queries, multi-statement strings and several -c commands through the proxy.
#[tokio::test(flavor = "multi_thread")]
async fn psql_runs_queries_and_multiple_statements() {
    let proxy = Proxy::start().await;
    let url = libpq_url(&proxy, "acme");

    let schema = psql(&url, &["-c", "SELECT current_schema()"]).await;
    assert_eq!(schema.trim(), "acme");

    let count = psql(
        &url,
        &[
            "-c",
            "DROP TABLE IF EXISTS psql_multi; \
             CREATE TABLE psql_multi (id int PRIMARY KEY, label text); \
             INSERT INTO psql_multi VALUES (1, 'one'), (2, 'two'), (3, 'three'); \
             SELECT count(*) FROM psql_multi",
        ],
    )
    .await;
    // psql prints every statement's result; the count comes last.
    assert_eq!(count.lines().last(), Some("3"), "{count}");

    // Several -c options: each is its own query, a transaction spans three of them.
    let out = psql(
        &url,
        &[
            "-c",
            "BEGIN",
            "-c",
            "INSERT INTO psql_multi VALUES (4, 'four')",
            "-c",
            "COMMIT",
            "-c",
            "SELECT string_agg(label, ',' ORDER BY id) FROM psql_multi",
        ],
    )
    .await;
    assert_eq!(out.lines().last(), Some("one,two,three,four"), "{out}");

    // The table went to the tenant's schema.
    let su = fleet().superuser().await;
    let found: Option<String> = su
        .query_one("SELECT to_regclass('acme.psql_multi')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(found.as_deref(), Some("acme.psql_multi"));
}

/// psql `\copy ... FROM file` and `\copy ... TO file` move the same rows both ways.
#[tokio::test(flavor = "multi_thread")]
async fn psql_copy_both_ways() {
    let proxy = Proxy::start().await;
    let url = libpq_url(&proxy, "acme");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    let output = dir.path().join("out.csv");

    let mut text = String::new();
    for i in 1..=3000 {
        text.push_str(&format!("{i},\"row {i}, with comma\",{}\n", i * 7));
    }
    std::fs::write(&input, &text).unwrap();

    psql(
        &url,
        &[
            "-c",
            "DROP TABLE IF EXISTS psql_copy; \
             CREATE TABLE psql_copy (id int PRIMARY KEY, label text NOT NULL, n bigint NOT NULL)",
        ],
    )
    .await;

    let copy_in = format!(
        "\\copy psql_copy FROM '{}' WITH (FORMAT csv)",
        input.display()
    );
    let out = psql(&url, &["-c", &copy_in]).await;
    assert!(out.contains("COPY 3000") || out.trim().is_empty(), "{out}");

    let count = psql(&url, &["-c", "SELECT count(*), sum(n) FROM psql_copy"]).await;
    let expected_sum: i64 = (1..=3000).map(|i| i * 7).sum();
    assert_eq!(count.trim(), format!("3000|{expected_sum}"));

    let copy_out = format!(
        "\\copy (SELECT id, label, n FROM psql_copy ORDER BY id) TO '{}' WITH (FORMAT csv)",
        output.display()
    );
    psql(&url, &["-c", &copy_out]).await;
    let back = std::fs::read_to_string(&output).unwrap();
    assert_eq!(back, text, "rows read back differ from rows written");

    // To stdout as well, and the session is usable afterwards in the same psql.
    let out = psql(
        &url,
        &[
            "-c",
            "\\copy (SELECT id FROM psql_copy WHERE id <= 3 ORDER BY id) TO STDOUT",
            "-c",
            "SELECT 'after'",
        ],
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["1", "2", "3", "after"], "{out}");
}

// ---------------------------------------------------------------------------------------
// pgbench
// ---------------------------------------------------------------------------------------

/// Serializes the pgbench tests (they share `globex`'s pgbench tables) and records whether
/// `pgbench -i` has run.
static PGBENCH: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);

/// Number after `label` in pgbench's report.
fn pgbench_number(report: &str, label: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.starts_with(label))?;
    let rest = line[label.len()..].trim();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Runs `pgbench -M <mode> -c 8 -j <threads> -t 200` on `globex` through a proxy with pool
/// size 2 and checks that all 1600 transactions were processed and none failed.
async fn pgbench_mode(mode: &str, threads: u32) {
    let mut initialized = PGBENCH.lock().await;
    let proxy = Proxy::with(ProxyOptions {
        pool_size: 2,
        query_wait_timeout: Duration::from_secs(30),
        ..ProxyOptions::default()
    })
    .await;
    let url = libpq_url(&proxy, "globex");

    if !*initialized {
        let out = run(Command::new("pgbench").args(["-i", "-s", "1", &url])).await;
        assert!(
            out.status.success(),
            "pgbench -i failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let su = fleet().superuser().await;
        let accounts: i64 = su
            .query_one("SELECT count(*) FROM globex.pgbench_accounts", &[])
            .await
            .expect("pgbench tables are in the tenant schema")
            .get(0);
        assert_eq!(accounts, 100_000);
        *initialized = true;
    }

    let (clients, per_client) = (8u64, 200u64);
    let out = run(Command::new("pgbench").args([
        "-n",
        "-M",
        mode,
        "-c",
        &clients.to_string(),
        "-j",
        &threads.to_string(),
        "-t",
        &per_client.to_string(),
        &url,
    ]))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench -M {mode} exited with {}:\n{stdout}\n{stderr}",
        out.status
    );

    let failed = pgbench_number(&stdout, "number of failed transactions:");
    assert_eq!(failed, Some(0), "{stdout}\n{stderr}");
    let processed = pgbench_number(&stdout, "number of transactions actually processed:");
    assert_eq!(processed, Some(clients * per_client), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("query mode: {mode}")),
        "pgbench did not run in {mode} mode:\n{stdout}"
    );
}

/// pgbench -M simple, 8 clients on 2 threads and 2 backends: all 1600 transactions, none failed.
#[tokio::test(flavor = "multi_thread")]
async fn pgbench_simple_protocol() {
    pgbench_mode("simple", 2).await;
}

/// pgbench -M extended, 8 clients on 2 threads and 2 backends: all 1600 transactions, none failed.
#[tokio::test(flavor = "multi_thread")]
async fn pgbench_extended_protocol() {
    pgbench_mode("extended", 2).await;
}

/// pgbench -M prepared (named statements moving between 2 backends): all 1600, none failed.
#[tokio::test(flavor = "multi_thread")]
async fn pgbench_prepared_statements() {
    // One thread per client: pgbench prepares each statement with a blocking `PQprepare` on
    // first use, so a thread serving several clients can block there while its other clients
    // hold every pooled backend mid-transaction, a client-side deadlock under any transaction
    // pooler (it ends in 53300 after `query_wait_timeout`).
    pgbench_mode("prepared", 8).await;
}

// ---------------------------------------------------------------------------------------
// COPY with tokio-postgres
// ---------------------------------------------------------------------------------------

/// COPY FROM STDIN then COPY TO STDOUT (extended protocol) round-trips 5000 rows unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn copy_in_and_out_round_trip() {
    let proxy = Proxy::start().await;
    let client = proxy.connect("acme").await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS copy_rows; \
             CREATE TABLE copy_rows (id int PRIMARY KEY, label text NOT NULL, amount numeric NOT NULL)",
        )
        .await
        .unwrap();

    let mut text = String::new();
    for i in 0..5000u32 {
        text.push_str(&format!(
            "{i}\tlabel {i} \\t tab\t{}.{:02}\n",
            i * 3,
            i % 100
        ));
    }

    let sink = bounded(
        "COPY FROM STDIN start",
        client.copy_in("COPY copy_rows (id, label, amount) FROM STDIN"),
    )
    .await
    .expect("copy_in");
    let mut sink = std::pin::pin!(sink);
    // Chunks that do not end on row boundaries.
    for chunk in text.as_bytes().chunks(7001) {
        bounded("COPY data", sink.send(Bytes::copy_from_slice(chunk)))
            .await
            .expect("send COPY data");
    }
    let rows = bounded("COPY FROM STDIN finish", sink.as_mut().finish())
        .await
        .expect("finish COPY FROM STDIN");
    assert_eq!(rows, 5000);

    // The session is usable right after, and the rows are in the tenant's schema.
    let su = fleet().superuser().await;
    let n: i64 = su
        .query_one("SELECT count(*) FROM acme.copy_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5000);
    let n: i64 = bounded(
        "query after COPY",
        client.query_one("SELECT count(*) FROM copy_rows", &[]),
    )
    .await
    .expect("query after COPY FROM STDIN")
    .get(0);
    assert_eq!(n, 5000);

    let stream = bounded(
        "COPY TO STDOUT start",
        client.copy_out("COPY (SELECT id, label, amount FROM copy_rows ORDER BY id) TO STDOUT"),
    )
    .await
    .expect("copy_out");
    let mut stream = std::pin::pin!(stream);
    let mut back = Vec::new();
    while let Some(chunk) = bounded("COPY TO STDOUT data", stream.next()).await {
        back.extend_from_slice(&chunk.expect("COPY data"));
    }
    assert!(
        back == text.as_bytes(),
        "COPY TO STDOUT returned {} bytes, expected {} bytes identical to the input",
        back.len(),
        text.len()
    );

    let one: i32 = bounded("query after COPY OUT", client.query_one("SELECT 1", &[]))
        .await
        .expect("query after COPY TO STDOUT")
        .get(0);
    assert_eq!(one, 1);
}

/// A COPY FROM STDIN that hits bad data mid-stream fails with 22P02; the session stays usable.
#[tokio::test(flavor = "multi_thread")]
async fn copy_in_with_bad_data_fails_and_session_survives() {
    let proxy = Proxy::start().await;
    let client = proxy.connect("acme").await;
    client
        .batch_execute(
            "DROP TABLE IF EXISTS copy_bad; CREATE TABLE copy_bad (id int NOT NULL, label text)",
        )
        .await
        .unwrap();

    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!("{i}\tgood\n"));
    }
    text.push_str("not-a-number\tbad\n");
    for i in 2000..4000 {
        text.push_str(&format!("{i}\tgood\n"));
    }

    let sink = bounded(
        "COPY FROM STDIN start",
        client.copy_in("COPY copy_bad (id, label) FROM STDIN"),
    )
    .await
    .expect("copy_in");
    let mut sink = std::pin::pin!(sink);
    let outcome = bounded("failing COPY", async {
        for chunk in text.as_bytes().chunks(4096) {
            sink.send(Bytes::copy_from_slice(chunk)).await?;
        }
        sink.as_mut().finish().await
    })
    .await;
    let err = outcome.expect_err("COPY with a non-integer id must fail");
    assert_eq!(sqlstate(&err), "22P02", "{err:?}");

    let n: i64 = bounded(
        "query after failed COPY",
        client.query_one("SELECT count(*) FROM copy_bad", &[]),
    )
    .await
    .expect("the session must survive a failed COPY")
    .get(0);
    assert_eq!(n, 0, "a failed COPY must leave no rows");

    // Another COPY on the same session works.
    let sink = bounded(
        "second COPY start",
        client.copy_in("COPY copy_bad (id, label) FROM STDIN"),
    )
    .await
    .expect("second copy_in");
    let mut sink = std::pin::pin!(sink);
    bounded(
        "second COPY data",
        sink.send(Bytes::from_static(b"1\tok\n2\tok\n")),
    )
    .await
    .unwrap();
    let rows = bounded("second COPY finish", sink.as_mut().finish())
        .await
        .expect("second COPY");
    assert_eq!(rows, 2);
}

// ---------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------

/// A cancel request stops the client's running `pg_sleep(30)` with SQLSTATE 57014.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_running_query() {
    let proxy = Proxy::start().await;
    let client = proxy.connect("acme").await;
    let token = client.cancel_token();
    let su = fleet().superuser().await;

    let running = tokio::spawn(async move {
        let result = client
            .simple_query("SELECT pg_sleep(30) /* cancel-me-57014 */")
            .await;
        (client, result)
    });

    wait_until("the sleep to start", Duration::from_secs(20), || async {
        su.query_opt(
            "SELECT 1 FROM pg_stat_activity \
             WHERE state = 'active' AND query LIKE '%cancel-me-57014%' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .is_some()
    })
    .await;

    token.cancel_query(NoTls).await.expect("send cancel");
    let (client, result) = bounded("cancelled query", running).await.unwrap();
    let err = result.expect_err("the sleep must be cancelled");
    assert_eq!(sqlstate(&err), "57014", "{err:?}");

    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the session must survive a cancel");
}

/// With one backend, an idle client's cancel does not hit the client now using that backend.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_of_idle_client_does_nothing() {
    let proxy = Proxy::with(ProxyOptions {
        query_wait_timeout: Duration::from_secs(30),
        ..ProxyOptions::one_backend()
    })
    .await;
    let idle = proxy.connect("acme").await;
    let busy = proxy.connect("acme").await;
    let su = fleet().superuser().await;

    // The idle client has used the only backend and released it.
    idle.query_one("SELECT 1", &[]).await.unwrap();

    // The busy client now runs on that backend, blocked on an advisory lock we hold.
    let key: i64 = 0x5eed_0001;
    let holder = fleet().superuser().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .query_one("SELECT pg_advisory_xact_lock($1)", &[&key])
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        busy.query_one("SELECT pg_advisory_xact_lock($1), 'done'::text", &[&key])
            .await
    });
    let blocked_sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                       AND objid::bigint = $1";
    wait_until(
        "the busy client to wait for the lock",
        Duration::from_secs(20),
        || async {
            su.query_one(blocked_sql, &[&key])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        },
    )
    .await;

    cancel_and_wait(&proxy, &idle).await;

    // Still waiting: the cancel reached nobody.
    let still: i64 = su.query_one(blocked_sql, &[&key]).await.unwrap().get(0);
    assert_eq!(still, 1, "the busy client's query was disturbed");
    assert!(
        !waiting.is_finished(),
        "the busy client's query ended early"
    );

    holder.batch_execute("COMMIT").await.unwrap();
    let row = bounded("busy client's query", waiting)
        .await
        .unwrap()
        .expect("the busy client's query must succeed");
    assert_eq!(row.get::<_, String>(1), "done");

    let one: i32 = idle.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the idle client's next query must succeed");
}

/// A cancel for client A stops A's query only; B's concurrent query completes normally.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_only_its_own_client() {
    let proxy = Proxy::start().await;
    let a = proxy.connect("acme").await;
    let b = proxy.connect("acme").await;
    let a_token = a.cancel_token();
    let su = fleet().superuser().await;

    let key: i64 = 0x5eed_0002;
    let holder = fleet().superuser().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .query_one("SELECT pg_advisory_xact_lock($1)", &[&key])
        .await
        .unwrap();

    let a_task = tokio::spawn(async move {
        a.simple_query("SELECT pg_sleep(30) /* cancel-a-only */")
            .await
    });
    let b_task = tokio::spawn(async move {
        b.query_one("SELECT pg_advisory_xact_lock($1), 'b-done'::text", &[&key])
            .await
    });

    let blocked_sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                       AND objid::bigint = $1";
    wait_until("both queries to run", Duration::from_secs(20), || async {
        let a_running = su
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE state = 'active' \
                 AND query LIKE '%cancel-a-only%' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .is_some();
        let b_waiting = su
            .query_one(blocked_sql, &[&key])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1;
        a_running && b_waiting
    })
    .await;

    a_token.cancel_query(NoTls).await.expect("send cancel");
    let err = bounded("A's cancelled query", a_task)
        .await
        .unwrap()
        .expect_err("A's query must be cancelled");
    assert_eq!(sqlstate(&err), "57014", "{err:?}");

    let still: i64 = su.query_one(blocked_sql, &[&key]).await.unwrap().get(0);
    assert_eq!(still, 1, "B's query was disturbed by A's cancel");
    assert!(!b_task.is_finished(), "B's query ended early");

    holder.batch_execute("COMMIT").await.unwrap();
    let row = bounded("B's query", b_task)
        .await
        .unwrap()
        .expect("B's query must succeed");
    assert_eq!(row.get::<_, String>(1), "b-done");
}

// ---------------------------------------------------------------------------------------
// Clients that vanish
// ---------------------------------------------------------------------------------------

/// Makes `acme.<table>` exist.
async fn create_lock_table(proxy: &Proxy, table: &str) {
    let client = proxy.connect("acme").await;
    client
        .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} (id int)"))
        .await
        .unwrap();
}

/// Another client can take the table's ACCESS EXCLUSIVE lock without waiting.
async fn assert_lock_free(proxy: &Proxy, table: &str) {
    let other = proxy.connect("acme").await;
    bounded(
        "taking the lock again",
        other.batch_execute(&format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE NOWAIT; COMMIT"
        )),
    )
    .await
    .expect("another client must get the lock");
}

/// A client dropped while idle in a transaction holding a lock: rolled back, lock released.
#[tokio::test(flavor = "multi_thread")]
async fn client_dropped_idle_in_transaction_releases_its_lock() {
    let proxy = Proxy::start().await;
    create_lock_table(&proxy, "drop_idle_lock").await;
    let su = fleet().superuser().await;

    let (client, connection) = connect_abortable(&proxy, "acme").await;
    let pid = begin_on_backend(&client).await;
    client
        .batch_execute("LOCK TABLE drop_idle_lock IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    assert_eq!(locks_on(&su, "acme", "drop_idle_lock").await, 1);
    assert_eq!(
        backend_state(&su, pid).await.as_deref(),
        Some("idle in transaction")
    );

    // The client vanishes: its socket closes without a Terminate.
    connection.abort();
    let _ = connection.await;
    drop(client);

    wait_until(
        "the lock to go and the backend to leave its transaction",
        Duration::from_secs(10),
        || async {
            let locks = locks_on(&su, "acme", "drop_idle_lock").await;
            let state = backend_state(&su, pid).await;
            locks == 0 && state.as_deref() != Some("idle in transaction")
        },
    )
    .await;

    assert_lock_free(&proxy, "drop_idle_lock").await;
}

/// A client dropped while its statement runs inside a locking transaction: the lock goes away.
#[tokio::test(flavor = "multi_thread")]
async fn client_dropped_during_statement_releases_its_lock() {
    let proxy = Proxy::start().await;
    create_lock_table(&proxy, "drop_busy_lock").await;
    let su = fleet().superuser().await;

    let (client, connection) = connect_abortable(&proxy, "acme").await;
    let pid = begin_on_backend(&client).await;
    client
        .batch_execute("LOCK TABLE drop_busy_lock IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let sleeping = tokio::spawn(async move {
        let _ = client.simple_query("SELECT pg_sleep(30)").await;
    });

    wait_until("the sleep to start", Duration::from_secs(20), || async {
        backend_state(&su, pid).await.as_deref() == Some("active")
    })
    .await;
    assert_eq!(locks_on(&su, "acme", "drop_busy_lock").await, 1);

    connection.abort();
    let _ = connection.await;
    let _ = bounded("the orphaned query future", sleeping).await;

    wait_until(
        "the lock to go and the statement to stop",
        Duration::from_secs(10),
        || async {
            let locks = locks_on(&su, "acme", "drop_busy_lock").await;
            let state = backend_state(&su, pid).await;
            locks == 0
                && !matches!(
                    state.as_deref(),
                    Some("active" | "idle in transaction" | "idle in transaction (aborted)")
                )
        },
    )
    .await;

    assert_lock_free(&proxy, "drop_busy_lock").await;
}

// ---------------------------------------------------------------------------------------
// Backends that die
// ---------------------------------------------------------------------------------------

/// Backend of an idle-in-transaction client terminated: its next query errors (no hang); new logins work.
#[tokio::test(flavor = "multi_thread")]
async fn backend_terminated_under_idle_transaction() {
    let proxy = Proxy::start().await;
    let su = fleet().superuser().await;
    let client = proxy.connect("acme").await;
    let pid = begin_on_backend(&client).await;

    let killed: bool = su
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    wait_until("the backend to exit", Duration::from_secs(10), || async {
        !backend_exists(&su, pid).await
    })
    .await;

    let err = bounded(
        "query on a dead transaction",
        client.query_one("SELECT 1", &[]),
    )
    .await
    .expect_err("a query in a transaction whose backend died must fail");
    let code = err.code().map(|c| c.code().to_owned());
    assert!(
        matches!(code.as_deref(), Some("57P01" | "08006")) || err.is_closed(),
        "expected 57P01, 08006 or a closed connection, got {err:?}"
    );

    let fresh = bounded("new connection", proxy.connect("acme")).await;
    let one: i32 = fresh.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Idle pooled backends all terminated: an existing client's next queries still succeed.
#[tokio::test(flavor = "multi_thread")]
async fn idle_pooled_backends_that_died_are_replaced() {
    let proxy = Proxy::with(ProxyOptions {
        pool_size: 2,
        ..ProxyOptions::default()
    })
    .await;
    let su = fleet().superuser().await;
    let a = proxy.connect("solo").await;
    let b = proxy.connect("solo").await;

    // Two transactions at once, so both pooled backends exist and go back idle.
    let pid_a = begin_on_backend(&a).await;
    let pid_b = begin_on_backend(&b).await;
    assert_ne!(pid_a, pid_b);
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();

    let count_sql = "SELECT count(*) FROM pg_stat_activity \
                     WHERE usename = 'solo' AND backend_type = 'client backend'";
    let before: i64 = su.query_one(count_sql, &[]).await.unwrap().get(0);
    assert!(before >= 2, "expected the pooled backends, found {before}");

    let terminated: i64 = su
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE usename = 'solo' AND backend_type = 'client backend') t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(terminated >= 2);
    wait_until(
        "solo's backends to exit",
        Duration::from_secs(10),
        || async { su.query_one(count_sql, &[]).await.unwrap().get::<_, i64>(0) == 0 },
    )
    .await;

    for round in 0..3 {
        for (name, client) in [("a", &a), ("b", &b)] {
            let schema: String = bounded(
                "query after the pool died",
                client.query_one("SELECT current_schema()::text", &[]),
            )
            .await
            .unwrap_or_else(|e| panic!("client {name}, round {round}: {e:?}"))
            .get(0);
            assert_eq!(schema, "solo");
        }
    }
    // Both clients at once, so the second pooled connection is exercised too.
    let pid_a = begin_on_backend(&a).await;
    let pid_b = begin_on_backend(&b).await;
    assert_ne!(pid_a, pid_b);
    a.batch_execute("COMMIT").await.unwrap();
    b.batch_execute("COMMIT").await.unwrap();
}

/// Session state set inside a function is invisible to the proxy, so in transaction mode
/// the next client on that backend inherits it (a known limitation), unless
/// `backend.reset_after_transaction` cleans every backend after every transaction.
#[tokio::test(flavor = "multi_thread")]
async fn reset_after_transaction_clears_state_set_inside_functions() {
    for reset in [false, true] {
        let edit = move |file: &mut pgtenant::config::file::ConfigFile| {
            file.backend.reset_after_transaction = reset;
        };
        let proxy = Proxy::with(ProxyOptions {
            edit: Some(std::sync::Arc::new(edit)),
            ..ProxyOptions::one_backend()
        })
        .await;

        let first = proxy.connect("acme").await;
        first
            .batch_execute(
                "CREATE OR REPLACE FUNCTION acme.quiet_timeout() RETURNS text LANGUAGE sql \
                 AS $$ SELECT set_config('statement_timeout', '4321', false) $$",
            )
            .await
            .unwrap();
        first
            .batch_execute("SELECT acme.quiet_timeout()")
            .await
            .unwrap();

        let second = proxy.connect("acme").await;
        let row = second
            .query_one("SHOW statement_timeout", &[])
            .await
            .unwrap();
        let seen: String = row.get(0);
        let expected = if reset { "0" } else { "4321ms" };
        assert_eq!(seen, expected, "reset_after_transaction = {reset}");
        assert_eq!(
            second
                .query_one("SHOW search_path", &[])
                .await
                .unwrap()
                .get::<_, String>(0),
            "acme",
            "the pinned search_path survives DISCARD ALL"
        );
    }
}
