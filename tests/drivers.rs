//! Real drivers through the proxy in transaction pooling mode with server-side prepared
//! statements: psycopg 3, asyncpg, pgJDBC and node-postgres.
//!
//! Each test starts a proxy with a pool of 2 backends per tenant and runs a small program
//! from `tests/drivers/` that opens more client connections than that: first all at once,
//! used in turn by one thread (which works only if every backend goes back to the pool
//! between transactions), then concurrently, then one after another. It runs named prepared
//! statements many times inside and outside explicit transactions, with the same driver
//! statement names meaning different SQL on different connections, and provokes errors inside
//! transactions followed by rollback and more queries. A program prints `OK <n> queries` and
//! exits 0, or exits non-zero on any failure; the test then checks that a backend holds
//! protocol-level named statements, so the driver really prepared server-side.
//!
//! Drivers are installed into `target/driver-deps/` (`scripts/setup.sh` does it ahead of
//! time; the tests try once more when something is missing). A test skips, printing why,
//! only when its driver or runtime cannot be installed on this machine.
//!
//! Every test owns its table; `acme` is shared by two tests, each in its own table.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{Proxy, ProxyOptions, fleet};
use tokio::process::Command;
use tokio::sync::OnceCell;

/// A driver program that runs longer than this has hung; it is killed and the test fails.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(120);

/// Upper bound for installing a driver (pip, npm, apt) or compiling the Java program.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Client connections each program opens at once; the proxy has 2 backends per tenant.
const CLIENTS: usize = 5;

/// Root of the repository.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where drivers are installed: `target/driver-deps/<what>`.
fn deps_dir(what: &str) -> PathBuf {
    repo().join("target").join("driver-deps").join(what)
}

/// A driver program under `tests/drivers/`.
fn program(name: &str) -> PathBuf {
    repo().join("tests").join("drivers").join(name)
}

/// Output of a finished command, or why it could not run or finish.
async fn try_run(command: &mut Command, limit: Duration) -> Result<Output, String> {
    let what = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: still running after {limit:?}, killed")),
    }
}

/// Whether a command runs and exits 0.
async fn succeeds(command: &mut Command) -> bool {
    try_run(command, INSTALL_TIMEOUT)
        .await
        .is_ok_and(|out| out.status.success())
}

/// stdout and stderr of a command, for messages.
fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs an install step; `Err` carries what went wrong.
async fn install(command: &mut Command) -> Result<(), String> {
    let output = try_run(command, INSTALL_TIMEOUT).await?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed: {}", describe(&output)))
    }
}

/// Prints why a test does not run its driver. The test then passes.
#[allow(
    clippy::print_stdout,
    reason = "a skipped driver test says why in the test output"
)]
fn skip(test: &str, reason: &str) {
    println!("SKIP {test}: {reason}");
}

/// Runs a driver program against `proxy` as `tenant`'s `app` login, owning `table`, and
/// fails the test unless it exits 0 with a last line `OK <n> queries`.
#[allow(
    clippy::print_stdout,
    reason = "the program's summary line is shown with --nocapture"
)]
async fn run_driver(what: &str, mut command: Command, proxy: &Proxy, tenant: &str, table: &str) {
    let t = fleet().tenant(tenant);
    command
        .env("PGT_HOST", "127.0.0.1")
        .env("PGT_PORT", proxy.addr.port().to_string())
        .env("PGT_USER", &t.user)
        .env("PGT_PASSWORD", &t.user_password)
        .env("PGT_DATABASE", tenant)
        .env("PGT_TABLE", table)
        .env("PGT_CLIENTS", CLIENTS.to_string())
        .env_remove("PGOPTIONS")
        .env_remove("PGSERVICE")
        .current_dir(repo());
    let output = try_run(&mut command, DRIVER_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        output.status.success() && last.starts_with("OK ") && last.ends_with(" queries"),
        "{what} failed: {}",
        describe(&output)
    );
    println!("{what}: {last}");

    // The driver's statements really were prepared server-side: the backend that serves a
    // fresh client holds protocol-level named statements (the simple query itself is not one).
    let client = proxy.connect(tenant).await;
    let rows = client
        .simple_query("SELECT count(*) FROM pg_prepared_statements WHERE NOT from_sql")
        .await
        .unwrap();
    let named: i64 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        named > 0,
        "{what}: no named statement on a backend after the run"
    );
}

/// A proxy in transaction mode with 2 backends per tenant, fewer than the program's clients.
async fn shared_backends_proxy() -> Proxy {
    Proxy::with(ProxyOptions {
        pool_size: 2,
        ..ProxyOptions::default()
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Python: psycopg 3 and asyncpg, installed with pip into target/driver-deps/python
// ---------------------------------------------------------------------------------------

/// Whether `python3` imports `module` with `path` on `PYTHONPATH`.
async fn python_imports(path: &Path, module: &str) -> bool {
    succeeds(
        Command::new("python3")
            .env("PYTHONPATH", path)
            .args(["-c", &format!("import {module}")]),
    )
    .await
}

/// `PYTHONPATH` for the Python driver programs, installing psycopg and asyncpg there when
/// they cannot be imported yet; `Err` says why they cannot be.
async fn python_path() -> Result<PathBuf, String> {
    static READY: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();
    READY
        .get_or_init(|| async {
            let path = deps_dir("python");
            if !succeeds(Command::new("python3").arg("--version")).await {
                return Err("python3 is not installed".to_owned());
            }
            if python_imports(&path, "psycopg").await && python_imports(&path, "asyncpg").await {
                return Ok(path);
            }
            install(
                Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                    ])
                    .args(["--upgrade", "--target"])
                    .arg(&path)
                    .args(["psycopg[binary]", "asyncpg"]),
            )
            .await?;
            Ok(path)
        })
        .await
        .clone()
}

/// The Python program `name` (with `args`) with `module` importable, or why not.
async fn python_program(name: &str, args: &[&str], module: &str) -> Result<Command, String> {
    let path = python_path().await?;
    if !python_imports(&path, module).await {
        return Err(format!(
            "python3 cannot import {module} from {}",
            path.display()
        ));
    }
    let mut command = Command::new("python3");
    command
        .env("PYTHONPATH", &path)
        .env("PYTHONUNBUFFERED", "1")
        .arg(program(name))
        .args(args);
    Ok(command)
}

/// psycopg 3 with prepare_threshold=0: 5 threads with their own connections share 2 backends;
/// prepared statements, transactions, pipelines and errors with rollback all give right results.
#[tokio::test(flavor = "multi_thread")]
async fn psycopg3_prepared_statements_in_transaction_mode() {
    let command = match python_program("psycopg_check.py", &[], "psycopg").await {
        Ok(command) => command,
        Err(reason) => return skip("psycopg", &reason),
    };
    let proxy = shared_backends_proxy().await;
    run_driver("psycopg", command, &proxy, "acme", "drv_psycopg").await;
}

/// asyncpg (prepares and caches every statement): 5 concurrent connections share 2 backends;
/// a client `search_path` is ignored; transactions, cursors, errors and rollbacks stay right.
#[tokio::test(flavor = "multi_thread")]
async fn asyncpg_prepared_statements_in_transaction_mode() {
    let args = ["connections"];
    let command = match python_program("asyncpg_check.py", &args, "asyncpg").await {
        Ok(command) => command,
        Err(reason) => return skip("asyncpg", &reason),
    };
    let proxy = shared_backends_proxy().await;
    run_driver("asyncpg", command, &proxy, "globex", "drv_asyncpg").await;
}

/// asyncpg's own pool of 5 connections over 2 backends: the reset asyncpg runs when a
/// connection goes back to its pool must not take a backend away for good.
#[tokio::test(flavor = "multi_thread")]
async fn asyncpg_pool_shares_backends_in_transaction_mode() {
    let args = ["pool"];
    let command = match python_program("asyncpg_check.py", &args, "asyncpg").await {
        Ok(command) => command,
        Err(reason) => return skip("asyncpg pool", &reason),
    };
    let proxy = shared_backends_proxy().await;
    run_driver(
        "asyncpg pool",
        command,
        &proxy,
        "globex",
        "drv_asyncpg_pool",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Java: pgJDBC from Debian's libpostgresql-jdbc-java
// ---------------------------------------------------------------------------------------

/// The pgJDBC jar: `PGTENANT_JDBC_JAR` or Debian's `/usr/share/java/postgresql.jar`.
fn jdbc_jar() -> PathBuf {
    std::env::var_os("PGTENANT_JDBC_JAR").map_or_else(
        || PathBuf::from("/usr/share/java/postgresql.jar"),
        PathBuf::from,
    )
}

/// Installs `libpostgresql-jdbc-java` with apt (as root, or through passwordless sudo).
async fn apt_install_jdbc() -> Result<(), String> {
    let root = try_run(Command::new("id").arg("-u"), INSTALL_TIMEOUT)
        .await
        .is_ok_and(|out| out.stdout.starts_with(b"0"));
    let mut command = if root {
        Command::new("apt-get")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "apt-get"]);
        sudo
    };
    command.env("DEBIAN_FRONTEND", "noninteractive").args([
        "install",
        "-y",
        "-qq",
        "libpostgresql-jdbc-java",
    ]);
    install(&mut command).await
}

/// The pgJDBC jar once `java`, `javac` and the jar are there (installing the jar with apt
/// when missing, once per test binary), or why they cannot be.
async fn jdbc_ready() -> Result<PathBuf, String> {
    static READY: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();
    READY
        .get_or_init(|| async {
            for tool in ["java", "javac"] {
                if !succeeds(Command::new(tool).arg("-version")).await {
                    return Err(format!("{tool} is not installed"));
                }
            }
            let jar = jdbc_jar();
            if !jar.exists() {
                apt_install_jdbc().await.map_err(|e| {
                    format!(
                        "{} is missing and apt could not install it: {e}",
                        jar.display()
                    )
                })?;
                if !jar.exists() {
                    return Err(format!(
                        "{} is missing after installing libpostgresql-jdbc-java",
                        jar.display()
                    ));
                }
            }
            Ok(jar)
        })
        .await
        .clone()
}

/// The Java program compiled into a temporary directory (kept until the returned handle
/// drops), with its classpath, or why it cannot be built.
async fn jdbc_program() -> Result<(Command, tempfile::TempDir), String> {
    let jar = jdbc_ready().await?;
    let classes = tempfile::tempdir().unwrap();
    let output = try_run(
        Command::new("javac")
            .arg("-d")
            .arg(classes.path())
            .arg("-cp")
            .arg(&jar)
            .arg(program("JdbcCheck.java")),
        INSTALL_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("javac: {e}"));
    assert!(
        output.status.success(),
        "javac JdbcCheck.java: {}",
        describe(&output)
    );

    let classpath = std::env::join_paths([classes.path(), &jar]).unwrap();
    let mut command = Command::new("java");
    command.arg("-cp").arg(classpath).arg("JdbcCheck");
    Ok((command, classes))
}

/// pgJDBC with prepareThreshold=1 and default settings: 5 connections open at once share 2
/// backends; the same PreparedStatement runs many times across transactions, errors,
/// savepoints, batches, rollbacks and connections.
#[tokio::test(flavor = "multi_thread")]
async fn pgjdbc_prepared_statements_in_transaction_mode() {
    let (command, _classes) = match jdbc_program().await {
        Ok(built) => built,
        Err(reason) => return skip("pgjdbc", &reason),
    };
    let proxy = shared_backends_proxy().await;
    run_driver("pgjdbc", command, &proxy, "solo", "drv_jdbc").await;
}

/// pgJDBC with assumeMinServerVersion=9.0 (its session settings go in the startup packet
/// instead of a `SET` after login): the same workload as above with 5 connections on 2 backends.
#[tokio::test(flavor = "multi_thread")]
async fn pgjdbc_assume_min_server_version_in_transaction_mode() {
    let (mut command, _classes) = match jdbc_program().await {
        Ok(built) => built,
        Err(reason) => return skip("pgjdbc assumeMinServerVersion", &reason),
    };
    command.env("PGT_JDBC_OPTIONS", "&assumeMinServerVersion=9.0");
    let proxy = shared_backends_proxy().await;
    run_driver(
        "pgjdbc assumeMinServerVersion",
        command,
        &proxy,
        "solo",
        "drv_jdbc_assume",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Node.js: node-postgres (`pg`), installed with npm into target/driver-deps/node
// ---------------------------------------------------------------------------------------

/// Whether node can `require('pg')` from `modules`.
async fn node_has_pg(modules: &Path) -> bool {
    succeeds(
        Command::new("node")
            .env("NODE_PATH", modules)
            .args(["-e", "require('pg')"]),
    )
    .await
}

/// The Node program with `pg` installed, or why it cannot be.
async fn node_program() -> Result<Command, String> {
    if !succeeds(Command::new("node").arg("--version")).await {
        return Err("node is not installed".to_owned());
    }
    let dir = deps_dir("node");
    let modules = dir.join("node_modules");
    if !node_has_pg(&modules).await {
        if !succeeds(Command::new("npm").arg("--version")).await {
            return Err("npm is not installed, so pg cannot be".to_owned());
        }
        std::fs::create_dir_all(&dir).unwrap();
        install(
            Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&dir)
                .arg("pg"),
        )
        .await?;
        if !node_has_pg(&modules).await {
            return Err(format!("node cannot require pg from {}", modules.display()));
        }
    }
    let mut command = Command::new("node");
    command
        .env("NODE_PATH", &modules)
        .arg(program("node_pg_check.js"));
    Ok(command)
}

/// node-postgres named queries: 5 clients and a pg.Pool share 2 backends; the same statement
/// name with different SQL per client, transactions, errors and rollbacks give right results.
#[tokio::test(flavor = "multi_thread")]
async fn node_postgres_named_queries_in_transaction_mode() {
    let command = match node_program().await {
        Ok(command) => command,
        Err(reason) => return skip("node-postgres", &reason),
    };
    let proxy = shared_backends_proxy().await;
    run_driver("node-postgres", command, &proxy, "acme", "drv_node").await;
}
