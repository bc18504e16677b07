//! Reload and shutdown: in-process through `ServerHandle`, and through the real binary with
//! SIGHUP and SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    Proxy, ProxyOptions, bounded, connect_plain, fleet, pgtenant_bin, sqlstate, wait_until,
};
use pgtenant::control::demo;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_postgres::{Client, SimpleQueryMessage};

/// True once nothing accepts TCP connections at `addr`.
async fn refuses_connections(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await,
        Ok(Err(_))
    )
}

/// `SELECT 1` over the simple protocol (no prepared statement left to close afterwards, so
/// the session is idle when this returns).
async fn select_one(client: &Client) -> Result<i32, tokio_postgres::Error> {
    let messages = bounded("SELECT 1", client.simple_query("SELECT 1")).await?;
    let value = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(-1))
}

/// The error a client sees once the proxy ended its session: 57P01 or a closed connection.
fn assert_ended_by_shutdown(result: Result<i32, tokio_postgres::Error>) {
    let err = result.expect_err("the session must have been ended by the shutdown");
    let code = err.code().map(|c| c.code().to_owned());
    assert!(
        code.as_deref() == Some("57P01") || err.is_closed(),
        "expected 57P01 or a closed connection, got {err:?}"
    );
}

// ---------------------------------------------------------------------------------------
// In-process reload
// ---------------------------------------------------------------------------------------

/// Reload without `globex`: new globex logins get 28P01, acme clients carry on unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn reload_removing_a_tenant_refuses_its_new_logins() {
    let options = ProxyOptions::default();
    let proxy = Proxy::with(options.clone()).await;
    let acme = proxy.connect("acme").await;
    assert_eq!(select_one(&acme).await.unwrap(), 1);
    let globex = connect_plain(proxy.pg_config("globex")).await.unwrap();
    assert_eq!(select_one(&globex).await.unwrap(), 1);

    let mut config = options.config();
    assert!(config.tenants.remove("globex").is_some());
    proxy.handle.reload(config).expect("reload");

    let err = connect_plain(proxy.pg_config("globex"))
        .await
        .expect_err("a removed tenant must not accept logins");
    assert_eq!(sqlstate(&err), "28P01", "{err:?}");

    // The acme client never reconnects and keeps working; new acme logins work too.
    for _ in 0..3 {
        assert_eq!(select_one(&acme).await.unwrap(), 1);
    }
    let again = proxy.connect("acme").await;
    let schema: String = again
        .query_one("SELECT current_schema()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, "acme");
}

/// Reload without `globex`: its connected client keeps working or is cleanly disconnected, never half-alive.
#[tokio::test(flavor = "multi_thread")]
async fn reload_removing_a_tenant_does_not_leave_its_clients_half_alive() {
    let options = ProxyOptions::default();
    let proxy = Proxy::with(options.clone()).await;
    let globex = connect_plain(proxy.pg_config("globex")).await.unwrap();
    assert_eq!(select_one(&globex).await.unwrap(), 1);

    let mut config = options.config();
    config.tenants.remove("globex");
    proxy.handle.reload(config).expect("reload");

    let result = bounded(
        "globex query after reload",
        globex.query_one("SELECT current_schema()::text", &[]),
    )
    .await;
    let err = match result {
        // Keeps working until it disconnects.
        Ok(row) => {
            assert_eq!(row.get::<_, String>(0), "globex");
            return;
        }
        Err(err) => err,
    };
    // Or ends: FATAL, then the connection closes.
    let fatal = err.as_db_error().map(|e| e.severity().to_owned());
    assert!(
        err.is_closed() || fatal.as_deref() == Some("FATAL"),
        "unexpected error after the reload: {err:?}"
    );
    let started = Instant::now();
    while !globex.is_closed() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the proxy answered {} {:?} and kept the connection open; the next query gets {:?}",
            sqlstate(&err),
            err.as_db_error().map(|e| e.message()),
            select_one(&globex).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reload changing acme's pool size: acme's connected client keeps working without reconnecting.
#[tokio::test(flavor = "multi_thread")]
async fn reload_changing_a_tenant_keeps_its_connected_clients_working() {
    let options = ProxyOptions::default();
    let proxy = Proxy::with(options.clone()).await;
    let acme = proxy.connect("acme").await;
    assert_eq!(select_one(&acme).await.unwrap(), 1);

    let changed = ProxyOptions {
        pool_size: options.pool_size + 1,
        ..options
    };
    proxy.handle.reload(changed.config()).expect("reload");

    let result = bounded(
        "acme query after reload",
        acme.query_one("SELECT current_schema()::text", &[]),
    )
    .await;
    match result {
        Ok(row) => assert_eq!(row.get::<_, String>(0), "acme"),
        Err(err) => panic!(
            "connected acme client broken by a pool_size reload: {} {:?} (closed: {})",
            sqlstate(&err),
            err.as_db_error().map(|e| (e.severity(), e.message())),
            err.is_closed()
        ),
    }

    // A new login gets the new pool.
    let fresh = proxy.connect("acme").await;
    assert_eq!(select_one(&fresh).await.unwrap(), 1);
}

// ---------------------------------------------------------------------------------------
// In-process shutdown
// ---------------------------------------------------------------------------------------

/// `shutdown()` with an idle client: the client's session ends (57P01 or closed), the task ends.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_idle_sessions_and_the_server_task() {
    let mut proxy = Proxy::start().await;
    let client = proxy.connect("acme").await;
    assert_eq!(select_one(&client).await.unwrap(), 1);

    proxy.handle.shutdown();
    let task = proxy.task.take().expect("server task");
    bounded("server task after shutdown", task)
        .await
        .expect("server task must finish cleanly");

    assert_ended_by_shutdown(select_one(&client).await);
    assert!(
        refuses_connections(proxy.addr).await,
        "a stopped proxy must not accept connections"
    );
    assert_eq!(proxy.handle.sessions(), 0);
}

/// `shutdown()` with session-mode and pinned clients between transactions: they end at once
/// with the idle ones (HANG is far below the drain timeout), not when the drain times out.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_clients_that_hold_a_backend_between_transactions() {
    let mut proxy = Proxy::with(ProxyOptions {
        pool_mode: pgtenant::config::PoolMode::Session,
        shutdown_timeout: Duration::from_secs(600),
        ..ProxyOptions::default()
    })
    .await;
    let session_client = proxy.connect("acme").await;
    assert_eq!(select_one(&session_client).await.unwrap(), 1);

    proxy.handle.shutdown();
    let task = proxy.task.take().expect("server task");
    bounded("server task after shutdown", task)
        .await
        .expect("server task must finish cleanly");
    assert_ended_by_shutdown(select_one(&session_client).await);
}

/// `shutdown()` mid-transaction: the listener closes, yet the transaction can still COMMIT.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_lets_a_running_transaction_commit() {
    let mut proxy = Proxy::with(ProxyOptions {
        shutdown_timeout: Duration::from_secs(60),
        ..ProxyOptions::default()
    })
    .await;
    let client = proxy.connect("acme").await;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS drain_probe (id int); \
             BEGIN; INSERT INTO drain_probe VALUES (42)",
        )
        .await
        .unwrap();

    proxy.handle.shutdown();
    let addr = proxy.addr;
    wait_until(
        "the listener to close",
        Duration::from_secs(10),
        || async move { refuses_connections(addr).await },
    )
    .await;

    bounded("COMMIT during drain", client.batch_execute("COMMIT"))
        .await
        .expect("a transaction running at shutdown must be allowed to commit");

    let task = proxy.task.take().expect("server task");
    bounded("server task after drain", task)
        .await
        .expect("server task must finish cleanly");
    assert_ended_by_shutdown(select_one(&client).await);

    let su = fleet().superuser().await;
    let n: i64 = su
        .query_one("SELECT count(*) FROM acme.drain_probe WHERE id = 42", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the committed row must be there");
}

/// A transaction still open when the drain timeout expires is ended and its lock released.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_timeout_ends_lingering_transactions() {
    let mut proxy = Proxy::with(ProxyOptions {
        shutdown_timeout: Duration::from_secs(1),
        ..ProxyOptions::default()
    })
    .await;
    let client = proxy.connect("acme").await;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS linger_lock (id int); \
             BEGIN; LOCK TABLE linger_lock IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();

    proxy.handle.shutdown();
    let task = proxy.task.take().expect("server task");
    bounded("server task after the drain timeout", task)
        .await
        .expect("server task must finish cleanly");

    let su = fleet().superuser().await;
    wait_until("the lock to go", Duration::from_secs(10), || async {
        let n: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'acme' AND c.relname = 'linger_lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n == 0
    })
    .await;

    assert!(
        select_one(&client).await.is_err(),
        "the lingering session must be gone"
    );
}

// ---------------------------------------------------------------------------------------
// The real binary: SIGHUP and SIGTERM
// ---------------------------------------------------------------------------------------

/// A free TCP port on loopback (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A configuration file for the fleet, listening on `port`, with `extra` appended.
fn config_text(port: u16, extra: &str) -> String {
    let f = fleet();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\ntls = \"preferred\"\n\
         tls_cert = \"{cert}\"\ntls_key = \"{key}\"\nshutdown_timeout = \"60s\"\n\n\
         [backend]\nhost = \"{host}\"\nport = {pg_port}\ndatabase = \"postgres\"\n\n\
         {tenants}{extra}",
        cert = f.cert.display(),
        key = f.key.display(),
        host = f.cluster.host(),
        pg_port = f.cluster.port(),
        tenants = demo::tenants_toml(&f.tenants, 2, "transaction"),
    )
}

/// Replaces the file in one step so a reload never reads half of it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

/// A `pgtenant serve` child process.
struct Served {
    child: Child,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let port = free_port();
        let config = dir.path().join("pgtenant.toml");
        let log = dir.path().join("pgtenant.log");
        write_atomically(&config, &config_text(port, ""));

        let child = Command::new(pgtenant_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .env("PGTENANT_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pgtenant serve");

        let mut served = Self {
            child,
            config,
            log,
            port,
            _dir: dir,
        };
        served.wait_ready().await;
        served
    }

    fn pg_config(&self, tenant: &str, user: &str, password: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(tenant)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    async fn connect(&self, tenant: &str) -> Result<Client, tokio_postgres::Error> {
        let t = fleet().tenant(tenant);
        connect_plain(self.pg_config(tenant, &t.user, &t.user_password)).await
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("pgtenant serve exited early ({status}):\n{}", self.logs());
            }
            if let Ok(client) = self.connect("acme").await
                && select_one(&client).await.is_ok()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "pgtenant serve never became ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_count(&self, needle: &str) -> usize {
        self.logs().matches(needle).count()
    }

    async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("child still running");
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Rewrites the file, sends SIGHUP and waits for the log line that shows it was handled.
    async fn reload_with(&self, text: &str, outcome: &str) {
        let before = self.log_count(outcome);
        write_atomically(&self.config, text);
        self.signal("HUP").await;
        wait_until(
            &format!("log line {outcome:?} after SIGHUP"),
            Duration::from_secs(20),
            || async { self.log_count(outcome) > before },
        )
        .await;
    }
}

const RELOADED: &str = "configuration reloaded";
const REJECTED: &str = "reload rejected";

/// SIGHUP: invalid files are rejected and the old config keeps serving; a valid one applies.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_rejects_invalid_files_and_applies_valid_ones() {
    let served = Served::start().await;
    let existing = served.connect("acme").await.expect("connect");
    assert_eq!(select_one(&existing).await.unwrap(), 1);

    // A login the valid reload will add; refused before it.
    let ops_password = demo::random_secret(16);
    let ops_verifier = postgres_protocol::password::scram_sha_256(ops_password.as_bytes());
    let ops = || served.pg_config("solo", "ops", &ops_password);
    let err = connect_plain(ops())
        .await
        .expect_err("ops does not exist yet");
    assert_eq!(sqlstate(&err), "28P01");

    let port = served.port;
    let good = config_text(port, "");
    let invalid_files = [
        good.replace("tls = \"preferred\"", "tls = \"sometimes\""),
        good.replacen("pool_size = 2\n", "pool_size = 0\n", 1),
        format!("{good}\n[[tenants]]\nname = \"Not An Identifier\"\n"),
        "this is not TOML [".to_owned(),
    ];
    for (i, text) in invalid_files.iter().enumerate() {
        assert_ne!(text, &good, "invalid file {i} is unchanged");
        served.reload_with(text, REJECTED).await;

        assert_eq!(
            select_one(&existing)
                .await
                .expect("existing client after a rejected reload"),
            1
        );
        let fresh = served
            .connect("globex")
            .await
            .unwrap_or_else(|e| panic!("new login after rejected file {i}: {e:?}"));
        assert_eq!(select_one(&fresh).await.unwrap(), 1);
    }
    assert_eq!(served.log_count(RELOADED), 0, "no invalid file may apply");

    // A valid change: a second login for `solo` (the last tenant in the file).
    assert_eq!(
        fleet().tenants.last().map(|t| t.name.as_str()),
        Some("solo")
    );
    let with_ops = config_text(
        port,
        &format!("[[tenants.users]]\nname = \"ops\"\nverifier = \"{ops_verifier}\"\n"),
    );
    served.reload_with(&with_ops, RELOADED).await;

    let client = connect_plain(ops())
        .await
        .expect("ops logs in after the reload");
    let schema: String = client
        .query_one("SELECT current_schema()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, "solo");
    assert_eq!(
        select_one(&existing)
            .await
            .expect("acme client after a reload that left acme alone"),
        1
    );
    let logs = served.logs();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("ERROR") && !l.contains(REJECTED))
        .collect();
    assert!(
        errors.is_empty(),
        "unexpected ERROR log lines:\n{}",
        errors.join("\n")
    );
}

/// SIGTERM: new connections refused, a running transaction commits, idle clients end, exit status 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_cleanly() {
    let mut served = Served::start().await;
    let idle = served.connect("acme").await.expect("connect");
    let busy = served.connect("acme").await.expect("connect");
    busy.batch_execute(
        "CREATE TABLE IF NOT EXISTS sigterm_probe (id int); \
         BEGIN; INSERT INTO sigterm_probe VALUES (7)",
    )
    .await
    .unwrap();
    assert_eq!(select_one(&idle).await.unwrap(), 1);

    served.signal("TERM").await;
    let addr: SocketAddr = ([127, 0, 0, 1], served.port).into();
    wait_until(
        "the listener to close after SIGTERM",
        Duration::from_secs(20),
        || async move { refuses_connections(addr).await },
    )
    .await;
    assert!(
        served.connect("acme").await.is_err(),
        "new logins must be refused while draining"
    );

    bounded("COMMIT while draining", busy.batch_execute("COMMIT"))
        .await
        .expect("the running transaction must be allowed to commit");

    let status = bounded("pgtenant to exit after SIGTERM", served.child.wait())
        .await
        .expect("wait for child");
    assert!(
        status.success(),
        "pgtenant exited with {status}:\n{}",
        served.logs()
    );

    assert_ended_by_shutdown(select_one(&idle).await);
    let su = fleet().superuser().await;
    let n: i64 = su
        .query_one("SELECT count(*) FROM acme.sigterm_probe WHERE id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        n, 1,
        "the transaction committed during the drain must be kept"
    );
}
