//! Isolation in depth: tenant `acme`, through a transaction-mode proxy with one backend per
//! tenant (two where a listener pins one), attacks tenant `globex`'s data. Every attack must fail with its specific error and
//! without a single `globex` row reaching the client. Also: what a client that bypasses the
//! proxy still cannot do, notification channels, and row-level security on a shared table.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification, SimpleQueryMessage};

use common::{Proxy, ProxyOptions, fleet, sqlstate, wire};

/// How `globex`'s demo rows are named; no answer to `acme` may contain it.
const GLOBEX_MARK: &str = "globex";

/// Rows and error of a simple query: the rows that arrived before the error, if any.
struct Outcome {
    rows: Vec<Vec<Option<String>>>,
    error: Option<tokio_postgres::Error>,
}

impl Outcome {
    /// The SQLSTATE of the failure; panics when the statement succeeded.
    fn code(&self, sql: &str) -> String {
        let error = self
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{sql}: succeeded with {:?}", self.rows));
        sqlstate(error)
    }

    /// The server's primary message of the failure.
    fn message(&self) -> String {
        let error = self.error.as_ref().expect("an error");
        error
            .as_db_error()
            .expect("a server error")
            .message()
            .into()
    }

    /// Whether any value mentions `globex`.
    fn leaks(&self) -> bool {
        self.rows
            .iter()
            .flatten()
            .flatten()
            .any(|v| v.to_ascii_lowercase().contains(GLOBEX_MARK))
    }
}

/// Runs a simple query, keeping every row that arrives even when an error follows.
async fn attempt(client: &Client, sql: &str) -> Outcome {
    let mut rows = Vec::new();
    let stream = match client.simple_query_raw(sql).await {
        Ok(stream) => stream,
        Err(error) => {
            return Outcome {
                rows,
                error: Some(error),
            };
        }
    };
    futures_util::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(SimpleQueryMessage::Row(row)) => {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
            Ok(_) => {}
            Err(error) => {
                return Outcome {
                    rows,
                    error: Some(error),
                };
            }
        }
    }
    Outcome { rows, error: None }
}

/// Asserts that `sql` fails with `code` and returns no `globex` row.
async fn refused(client: &Client, sql: &str, code: &str) -> Outcome {
    let outcome = attempt(client, sql).await;
    assert_eq!(outcome.code(sql), code, "{sql}");
    assert!(!outcome.leaks(), "{sql} leaked {:?}", outcome.rows);
    assert!(outcome.rows.is_empty(), "{sql} returned {:?}", outcome.rows);
    outcome
}

/// The first column of the only row of a query that must succeed.
async fn scalar(client: &Client, sql: &str) -> Option<String> {
    let outcome = attempt(client, sql).await;
    if let Some(error) = outcome.error {
        panic!("{sql}: {error}");
    }
    assert_eq!(outcome.rows.len(), 1, "{sql}: {:?}", outcome.rows);
    outcome.rows[0][0].clone()
}

/// `globex`'s customers as the superuser sees them: the attacks must leave them alone.
async fn globex_customers() -> i64 {
    let su = fleet().superuser().await;
    let row = su
        .query_one("SELECT count(*) FROM globex.customers", &[])
        .await
        .expect("globex.customers still exists");
    row.get(0)
}

/// Reads, writes and DDL on `globex`'s schema are denied for lack of USAGE on it.
#[tokio::test(flavor = "multi_thread")]
async fn schema_qualified_reads_and_writes_are_denied() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;
    let before = globex_customers().await;

    for sql in [
        "SELECT * FROM globex.customers",
        "SELECT * FROM globex.invoices",
        "INSERT INTO globex.customers (name, plan) VALUES ('acme was here', 'free')",
        "UPDATE globex.customers SET plan = 'free' RETURNING *",
        "DELETE FROM globex.customers RETURNING *",
        "CREATE TABLE globex.planted (id int)",
        "TABLE globex.customers",
        "COPY globex.customers TO STDOUT",
    ] {
        let outcome = refused(&acme, sql, "42501").await;
        assert!(outcome.message().contains("schema globex"), "{sql}");
    }
    assert_eq!(globex_customers().await, before);
}

/// Pointing `search_path` at `globex` (by `SET` or `set_config`) finds none of its tables.
#[tokio::test(flavor = "multi_thread")]
async fn search_path_to_globex_resolves_nothing() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;

    attempt(&acme, "SET search_path = globex").await;
    refused(&acme, "SELECT * FROM customers", "42P01").await;
    attempt(&acme, "SET search_path = globex, public").await;
    refused(&acme, "SELECT name FROM customers", "42P01").await;

    let other = proxy.connect("acme").await;
    let sql = "SELECT set_config('search_path', 'globex', false)";
    assert_eq!(scalar(&other, sql).await.as_deref(), Some("globex"));
    refused(&other, "SELECT * FROM customers", "42P01").await;
    refused(&other, "SELECT * FROM invoices", "42P01").await;
}

/// Neither `SET ROLE` nor `SET SESSION AUTHORIZATION` can become `globex`.
#[tokio::test(flavor = "multi_thread")]
async fn role_switches_are_denied() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;

    for sql in [
        "SET ROLE globex",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION globex",
        "SET SESSION AUTHORIZATION postgres",
        "SET LOCAL ROLE globex",
    ] {
        let outcome = refused(&acme, sql, "42501").await;
        assert!(
            outcome.message().contains("permission denied to set"),
            "{sql}"
        );
    }
    let sql = "SELECT current_user || ' ' || session_user";
    assert_eq!(scalar(&acme, sql).await.as_deref(), Some("acme acme"));
}

/// A failed `SET ROLE` by one client leaves nothing on the shared backend: the next client
/// is `acme`, and `RESET ROLE` does not give it anything either.
#[tokio::test(flavor = "multi_thread")]
async fn role_attempts_do_not_carry_over_the_pool() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let first = proxy.connect("acme").await;
    let pid = scalar(&first, "SELECT pg_backend_pid()").await;
    refused(&first, "SET ROLE globex", "42501").await;
    refused(
        &first,
        "SELECT set_config('role', 'globex', false)",
        "42501",
    )
    .await;
    drop(first);

    let second = proxy.connect("acme").await;
    assert_eq!(scalar(&second, "SELECT pg_backend_pid()").await, pid);
    attempt(&second, "RESET ROLE").await;
    let sql = "SELECT current_user || ' ' || session_user";
    assert_eq!(scalar(&second, sql).await.as_deref(), Some("acme acme"));
    refused(&second, "SELECT * FROM globex.customers", "42501").await;
}

/// Server programs, server files and password catalogs are out of reach.
#[tokio::test(flavor = "multi_thread")]
async fn server_programs_files_and_secrets_are_denied() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;

    for sql in [
        "COPY (SELECT 1) TO PROGRAM 'id'",
        "COPY acme.customers FROM PROGRAM 'id'",
        "COPY acme.customers TO '/tmp/pgtenant-stolen'",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_read_binary_file('/etc/passwd')",
        "SELECT pg_ls_dir('.')",
        "SELECT * FROM pg_authid",
        "SELECT * FROM pg_shadow",
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'globex'",
        "SELECT * FROM pg_user_mappings WHERE umoptions IS NOT NULL",
    ] {
        let outcome = attempt(&acme, sql).await;
        assert!(!outcome.leaks(), "{sql}");
        if sql.contains("pg_user_mappings") {
            // A view every role may read; it shows only the caller's own options.
            assert!(outcome.error.is_none() && outcome.rows.is_empty(), "{sql}");
            continue;
        }
        assert_eq!(outcome.code(sql), "42501", "{sql}");
    }
    let sql = "SELECT passwd FROM pg_user WHERE usename = 'globex'";
    assert_eq!(scalar(&acme, sql).await.as_deref(), Some("********"));
}

/// Role, grant and function changes that would reach `globex` or other roles are denied.
#[tokio::test(flavor = "multi_thread")]
async fn role_and_grant_changes_are_denied() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;

    for sql in [
        "ALTER ROLE globex PASSWORD 'taken'",
        "ALTER ROLE globex NOLOGIN",
        "ALTER ROLE acme SUPERUSER",
        "ALTER ROLE acme BYPASSRLS",
        "CREATE ROLE intruder LOGIN PASSWORD 'x'",
        "GRANT globex TO acme",
        "GRANT SELECT ON globex.customers TO acme",
        "GRANT USAGE ON SCHEMA globex TO acme",
        "ALTER SCHEMA globex OWNER TO acme",
        "DROP SCHEMA globex CASCADE",
        "CREATE FUNCTION public.trap() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE TABLE public.trap (id int)",
        "ALTER ROLE acme SET pgtenant.tenant = 'globex'",
    ] {
        refused(&acme, sql, "42501").await;
    }
    assert_eq!(globex_customers().await, 3);
}

/// Connecting straight to PostgreSQL as role `acme`, without the proxy, still reaches
/// nothing of `globex`: the database's own privileges are the first layer.
#[tokio::test(flavor = "multi_thread")]
async fn bypassing_the_proxy_still_cannot_read_globex() {
    let fleet = fleet();
    let password = &fleet.tenant("acme").role_password;
    let url = fleet.cluster.url("acme", password, "postgres");
    let (direct, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);

    for sql in [
        "SELECT * FROM globex.customers",
        "DELETE FROM globex.invoices",
        "SET ROLE globex",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT pg_notify('globex_events', 'spoofed')",
    ] {
        refused(&direct, sql, "42501").await;
    }
    attempt(&direct, "SET search_path = globex").await;
    refused(&direct, "SELECT * FROM customers", "42P01").await;

    // Other databases keep PostgreSQL's default CONNECT for PUBLIC, but hold no tenant data.
    let url = fleet.cluster.url("acme", password, "template1");
    let (elsewhere, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    refused(&elsewhere, "SELECT * FROM globex.customers", "42P01").await;
}

/// A login through the proxy, with raw startup parameters: every message after the
/// password, up to `ReadyForQuery` or the error.
async fn raw_attempt(proxy: &Proxy, database: &str, extra: &[(&str, &str)]) -> Vec<wire::Msg> {
    let tenant = fleet().tenant("acme");
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut params = vec![("user", tenant.user.as_str()), ("database", database)];
    params.extend_from_slice(extra);
    stream
        .write_all(&wire::startup_packet(3, 0, &params))
        .await
        .unwrap();
    let (tag, _) = wire::read_message(&mut stream).await.unwrap();
    assert_eq!(tag, b'R');
    wire::scram(&mut stream, &tenant.user_password).await
}

/// The error fields of a failed login.
fn login_error(seen: &[wire::Msg]) -> std::collections::HashMap<char, String> {
    let (tag, body) = seen.last().expect("an answer");
    assert_eq!(*tag, b'E', "the login must fail");
    wire::error_fields(body)
}

/// Sends a simple query on a raw session and returns the first column of each row, or the
/// error's SQLSTATE.
async fn raw_query(stream: &mut tokio::net::TcpStream, sql: &str) -> Result<Vec<String>, String> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    let mut frame = vec![b'Q'];
    frame.extend(wire::with_length(&body));
    stream.write_all(&frame).await.unwrap();

    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let (tag, body) = wire::read_message(stream).await.unwrap();
        match tag {
            b'D' => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                let len = usize::try_from(len).unwrap_or(0);
                rows.push(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
            }
            b'E' => error = Some(wire::error_fields(&body)[&'C'].clone()),
            b'Z' => return error.map_or(Ok(rows), Err),
            _ => {}
        }
    }
}

/// Startup parameters cannot take `globex`'s role: PostgreSQL refuses them and the login
/// fails before any query.
#[tokio::test(flavor = "multi_thread")]
async fn startup_role_parameters_fail_the_login() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    for extra in [
        [("options", "-c role=globex")],
        [("options", "-c session_authorization=globex")],
        [("options", "--role=globex")],
        [("role", "globex")],
        [("session_authorization", "globex")],
    ] {
        let seen = raw_attempt(&proxy, "acme", &extra).await;
        let fields = login_error(&seen);
        assert_eq!(fields[&'V'], "FATAL", "{extra:?}");
        assert_eq!(fields[&'C'], "22023", "{extra:?}: {fields:?}");
        assert!(fields[&'M'].contains("permission denied"), "{fields:?}");
    }
}

/// Startup parameters naming `globex`'s schema are ignored: the schema stays pinned to
/// `acme` and unqualified names find `acme`'s rows.
#[tokio::test(flavor = "multi_thread")]
async fn startup_search_path_parameters_are_ignored() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    for extra in [
        [("options", "-c search_path=globex")],
        [("options", "-csearch_path=globex")],
        [("options", "--search-path=globex")],
        [("search_path", "globex")],
        [("SEARCH_PATH", "globex,public")],
    ] {
        let mut stream = proxy.raw_login(&extra).await;
        let path = raw_query(&mut stream, "SHOW search_path").await;
        assert_eq!(path, Ok(vec!["acme".to_owned()]), "{extra:?}");
        let names = raw_query(&mut stream, "SELECT name FROM customers")
            .await
            .unwrap();
        assert!(
            names.iter().all(|n| n.starts_with("Acme")),
            "{extra:?}: {names:?}"
        );
    }

    // pgJDBC sends `currentSchema` as `search_path`; sent under its own name it is not a
    // setting PostgreSQL knows.
    let seen = raw_attempt(&proxy, "acme", &[("currentSchema", "globex")]).await;
    assert_eq!(login_error(&seen)[&'C'], "22023");
}

/// A database (tenant) name with SQL in it is an unknown tenant: FATAL 28P01, and
/// `globex` is intact.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_names_with_sql_are_unknown_tenants() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    for database in [
        "acme; DROP SCHEMA globex CASCADE",
        "acme\" OR 1=1",
        "acme' OR '1'='1",
        "acme\"; DROP SCHEMA globex CASCADE; --",
        "ACME",
        "acme ",
    ] {
        let seen = raw_attempt(&proxy, database, &[]).await;
        let fields = login_error(&seen);
        assert_eq!(fields[&'V'], "FATAL", "{database:?}");
        assert_eq!(fields[&'C'], "28P01", "{database:?}");
    }

    let options = [(
        "options",
        "-c pgtenant.tenant=globex\\;\\ DROP\\ SCHEMA\\ globex",
    )];
    let seen = raw_attempt(&proxy, "nobody", &options).await;
    assert_eq!(login_error(&seen)[&'C'], "28P01");
    assert_eq!(globex_customers().await, 3);
}

/// `pgtenant.tenant` names the tenant for row-level security: the proxy refuses every
/// direct way of changing it, and naming `globex` at login does not move `acme` there.
#[tokio::test(flavor = "multi_thread")]
async fn tenant_setting_cannot_be_changed() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;

    for sql in [
        "SET pgtenant.tenant = 'globex'",
        "SET SESSION pgtenant.tenant TO globex",
        "SET \"pgtenant\".\"tenant\" = 'globex'",
        "RESET pgtenant.tenant",
        "SELECT set_config('pgtenant.tenant', 'globex', false)",
        "SELECT 1; SET pgtenant.tenant = 'globex'",
    ] {
        let outcome = refused(&acme, sql, "42501").await;
        assert!(outcome.message().contains("pgtenant.tenant"), "{sql}");
    }
    assert_eq!(
        scalar(&acme, "SHOW pgtenant.tenant").await.as_deref(),
        Some("acme")
    );

    // Inside a transaction block the refusal aborts the block, as a server error would.
    acme.batch_execute("BEGIN").await.unwrap();
    refused(&acme, "SET LOCAL pgtenant.tenant = 'globex'", "42501").await;
    refused(&acme, "SHOW pgtenant.tenant", "25P02").await;
    acme.batch_execute("ROLLBACK").await.unwrap();

    // The extended protocol gets the same answer.
    let error = acme
        .query(
            "SELECT set_config('pgtenant.tenant', $1, false)",
            &[&"globex"],
        )
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&error), "42501");
    let row = acme
        .query_one("SELECT current_setting('pgtenant.tenant')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "acme");

    let mut config = proxy.pg_config("acme");
    config.options("-c pgtenant.tenant=globex");
    let moved = common::connect_plain(config).await.unwrap();
    let sql = "SELECT current_setting('pgtenant.tenant') || ' ' || current_user";
    assert_eq!(scalar(&moved, sql).await.as_deref(), Some("acme acme"));
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

/// The next notification, within a few seconds.
async fn next_note(notes: &mut mpsc::UnboundedReceiver<Notification>) -> Notification {
    tokio::time::timeout(Duration::from_secs(10), notes.recv())
        .await
        .expect("no notification arrived")
        .expect("connection closed")
}

/// `acme` may not LISTEN, UNLISTEN or NOTIFY on `globex`'s channels; the refusal names
/// the channel and the rule, and the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_channels_are_refused() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;

    for sql in [
        "LISTEN globex_events",
        "LISTEN \"globex_events\"",
        "LISTEN GLOBEX",
        "UNLISTEN globex_events",
        "NOTIFY globex_events, 'spoofed'",
        "NOTIFY \"ACME_events\"",
        "LISTEN \"globex$pgt$x\"",
    ] {
        let outcome = refused(&acme, sql, "42501").await;
        let message = outcome.message();
        assert!(message.contains("on channel"), "{sql}: {message}");
        let db = outcome.error.as_ref().unwrap().as_db_error().unwrap();
        assert!(db.detail().unwrap().contains("\"acme_\""), "{sql}");
    }
    let message = refused(&acme, "LISTEN globex_events", "42501")
        .await
        .message();
    assert_eq!(
        message,
        "LISTEN on channel \"globex_events\" is not allowed for tenant \"acme\""
    );
    refused(&acme, "SELECT pg_notify('globex_events', 'x')", "42501").await;
    assert_eq!(scalar(&acme, "SELECT 1").await.as_deref(), Some("1"));

    let error = acme.query("LISTEN globex_events", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&error), "42501");
    let channels = acme.query("SELECT pg_listening_channels()", &[]).await;
    assert!(channels.unwrap().is_empty(), "something listens");
}

/// A NOTIFY `acme` tries on `globex`'s channel never reaches a `globex` listener, while a
/// later one from `globex` itself does.
#[tokio::test(flavor = "multi_thread")]
async fn spoofed_notify_does_not_reach_globex() {
    let proxy = Proxy::start().await;
    let (listener, mut notes) = connect_listening(&proxy, "globex").await;
    listener
        .batch_execute("LISTEN globex_billing")
        .await
        .unwrap();
    let acme = proxy.connect("acme").await;
    let globex = proxy.connect("globex").await;

    refused(&acme, "NOTIFY globex_billing, 'spoofed'", "42501").await;
    refused(
        &acme,
        "SELECT pg_notify('globex_billing', 'spoofed')",
        "42501",
    )
    .await;
    globex
        .batch_execute("NOTIFY globex_billing, 'genuine'")
        .await
        .unwrap();
    assert_eq!(next_note(&mut notes).await.payload(), "genuine");
}

/// `acme`'s own channels work end to end between two `acme` clients.
#[tokio::test(flavor = "multi_thread")]
async fn own_channels_work_end_to_end() {
    let proxy = Proxy::start().await;
    let (listener, mut notes) = connect_listening(&proxy, "acme").await;
    listener.batch_execute("LISTEN acme_events").await.unwrap();
    let sender = proxy.connect("acme").await;

    sender
        .batch_execute("NOTIFY acme_events, 'hello'")
        .await
        .unwrap();
    let note = next_note(&mut notes).await;
    assert_eq!((note.channel(), note.payload()), ("acme_events", "hello"));

    // The pinned listener is still held to the rule.
    refused(&listener, "LISTEN globex_events", "42501").await;
}

/// A backend made to listen on `globex`'s channel through dynamic SQL the proxy cannot
/// read still delivers nothing of it: notifications are filtered on the way out.
#[tokio::test(flavor = "multi_thread")]
async fn foreign_notifications_are_never_delivered() {
    let proxy = Proxy::start().await;
    let (acme, mut notes) = connect_listening(&proxy, "acme").await;
    let sql = "DO $$BEGIN EXECUTE 'LISTEN ' || 'globex_secrets'; END$$; LISTEN acme_markers";
    acme.batch_execute(sql).await.unwrap();
    let listening = acme.query("SELECT pg_listening_channels()", &[]).await;
    assert_eq!(listening.unwrap().len(), 2, "the backend listens on both");

    let globex = proxy.connect("globex").await;
    globex
        .batch_execute("NOTIFY globex_secrets, 'secret'")
        .await
        .unwrap();
    let sender = proxy.connect("acme").await;
    sender
        .batch_execute("NOTIFY acme_markers, 'marker'")
        .await
        .unwrap();

    let note = next_note(&mut notes).await;
    assert_eq!((note.channel(), note.payload()), ("acme_markers", "marker"));
}

/// Creates `table` in `public`, shared by `acme` and `globex` under row-level security with
/// `policy`, holding one row of each tenant.
async fn shared_table(table: &str, policy: &str) {
    let su = fleet().superuser().await;
    let sql = format!(
        "DROP TABLE IF EXISTS public.{table};
         CREATE TABLE public.{table} (tenant text NOT NULL, payload text NOT NULL);
         ALTER TABLE public.{table} ENABLE ROW LEVEL SECURITY;
         ALTER TABLE public.{table} FORCE ROW LEVEL SECURITY;
         CREATE POLICY by_tenant ON public.{table} USING ({policy});
         GRANT USAGE ON SCHEMA public TO acme, globex;
         GRANT SELECT, INSERT ON public.{table} TO acme, globex;
         INSERT INTO public.{table} VALUES
             ('acme', 'acme one'), ('acme', 'acme two'), ('globex', 'globex secret')"
    );
    su.batch_execute(&sql).await.unwrap();
}

/// Payloads of the shared table as `client` sees them.
async fn payloads(client: &Client, table: &str) -> Vec<String> {
    let sql = format!("SELECT payload FROM public.{table} ORDER BY payload");
    let rows = client.query(sql.as_str(), &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Row-level security keyed on `pgtenant.tenant`: each tenant sees its own rows of a shared
/// table, even on a backend another client used, and cannot write rows as another tenant.
#[tokio::test(flavor = "multi_thread")]
async fn row_level_security_shows_each_tenant_its_rows() {
    let table = "shared_events";
    shared_table(table, "tenant = current_setting('pgtenant.tenant', true)").await;
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;
    let globex = proxy.connect("globex").await;

    assert_eq!(payloads(&acme, table).await, ["acme one", "acme two"]);
    assert_eq!(payloads(&globex, table).await, ["globex secret"]);

    let sql = format!("INSERT INTO public.{table} VALUES ('globex', 'planted')");
    refused(&acme, &sql, "42501").await;

    refused(&acme, "SET pgtenant.tenant = 'globex'", "42501").await;
    let second = proxy.connect("acme").await;
    assert_eq!(payloads(&second, table).await, ["acme one", "acme two"]);
    assert_eq!(payloads(&acme, table).await, ["acme one", "acme two"]);
}

/// The policy that also checks the login role holds even when the setting is changed by
/// SQL built at run time, which the proxy cannot read.
#[tokio::test(flavor = "multi_thread")]
async fn role_checked_policy_survives_a_changed_setting() {
    let table = "shared_events_by_role";
    let policy = "tenant = current_setting('pgtenant.tenant', true) AND tenant = session_user";
    shared_table(table, policy).await;
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;
    assert_eq!(payloads(&acme, table).await, ["acme one", "acme two"]);

    let sql = "DO $$BEGIN PERFORM set_config('pgtenant.' || 'tenant', 'globex', false); END$$";
    acme.batch_execute(sql).await.unwrap();
    let changed = scalar(&acme, "SHOW pgtenant.tenant").await;
    assert_eq!(changed.as_deref(), Some("globex"), "the change took effect");
    assert!(payloads(&acme, table).await.is_empty());
}

/// What the database shows every role by design: names of other schemas, roles, tables,
/// columns and function sources, other sessions without their queries, server settings,
/// and any notification channel to a client that bypasses the proxy.
#[tokio::test(flavor = "multi_thread")]
async fn what_stays_visible_by_design() {
    let proxy = Proxy::with(ProxyOptions::one_backend()).await;
    let acme = proxy.connect("acme").await;
    let globex = proxy.connect("globex").await;
    let sql = "CREATE OR REPLACE FUNCTION globex.visible_fn() RETURNS int \
               LANGUAGE sql AS 'SELECT 42'";
    globex.batch_execute(sql).await.unwrap();
    let globex_pid = scalar(&globex, "SELECT pg_backend_pid()").await.unwrap();
    globex.batch_execute("BEGIN").await.unwrap();

    let names = [
        (
            "SELECT nspname FROM pg_namespace WHERE nspname = 'globex'",
            "globex",
        ),
        (
            "SELECT rolname FROM pg_roles WHERE rolname = 'globex'",
            "globex",
        ),
        (
            "SELECT relname FROM pg_class WHERE relname = 'customers' \
          AND relnamespace = 'globex'::regnamespace",
            "customers",
        ),
        ("SELECT current_setting('port')::int > 0", "t"),
        ("SELECT current_setting('max_connections')::int > 0", "t"),
        (
            "SELECT attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
          WHERE c.relname = 'customers' AND attname = 'plan' \
          AND c.relnamespace = 'globex'::regnamespace",
            "plan",
        ),
        (
            "SELECT prosrc FROM pg_proc WHERE proname = 'visible_fn'",
            "SELECT 42",
        ),
    ];
    for (sql, expected) in names {
        assert_eq!(scalar(&acme, sql).await.as_deref(), Some(expected), "{sql}");
    }

    let sql = format!(
        "SELECT usename || ' ' || coalesce(query, 'null') FROM pg_stat_activity \
         WHERE pid = {globex_pid}"
    );
    let seen = scalar(&acme, &sql).await;
    assert_eq!(seen.as_deref(), Some("globex <insufficient privilege>"));

    let sql = "SELECT count(*) FROM pg_stats WHERE schemaname = 'globex'";
    assert_eq!(scalar(&acme, sql).await.as_deref(), Some("0"));
    refused(&acme, "SHOW data_directory", "42501").await;
    globex.batch_execute("ROLLBACK").await.unwrap();

    let fleet = fleet();
    let password = &fleet.tenant("acme").role_password;
    let url = fleet.cluster.url("acme", password, "postgres");
    let (direct, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    direct.batch_execute("LISTEN globex_events").await.unwrap();
    direct
        .batch_execute("NOTIFY globex_events, 'spoofed'")
        .await
        .unwrap();
}
