//! Starting the server process, waiting until it is ready, and stopping it.
//!
//! A start picks a loopback port that was free a moment ago, launches `postgres` on it with
//! settings tuned for speed over durability, and polls every 100 ms for up to 30 s until the
//! server has logged readiness and answers. Another process may grab the port in between; the
//! server then exits with a bind error and the start is retried on a new port, up to three
//! times. A stop asks for a fast shutdown and kills the server after 10 s. Startup errors quote
//! the tail of the server log.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::binaries::Binaries;
use super::layout::Layout;
use super::run_as::{RunAs, describe_command, server_command};
use super::{ClusterOptions, EmbeddedError, HOST, io_error};

/// How many times a start is retried when another process grabbed the chosen port.
const PORT_ATTEMPTS: u32 = 3;

/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two readiness or shutdown checks.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Number of server log lines quoted in startup errors.
const LOG_TAIL_LINES: usize = 15;

/// Log line PostgreSQL prints once it accepts connections.
const READY_MARKER: &str = "database system is ready to accept connections";

/// How one launch attempt ended, when it did not fail outright.
pub(super) enum Launch {
    /// The server is up and answering.
    Ready(Child),
    /// The server exited because the port was taken; try another one.
    PortTaken,
}

/// Starts the server on a fresh free port, retrying when the port was taken meanwhile.
pub(super) fn launch_with_retries(
    binaries: &Binaries,
    layout: &Layout,
    run_as: Option<RunAs>,
    options: &ClusterOptions,
) -> Result<(u16, Child), EmbeddedError> {
    let mut port = 0;
    for attempt in 1..=PORT_ATTEMPTS {
        port = free_port()?;
        tracing::debug!(port, attempt, "starting postgres");

        match launch(binaries, layout, run_as, options, port)? {
            Launch::Ready(child) => return Ok((port, child)),
            Launch::PortTaken => tracing::debug!(port, attempt, "port taken, retrying"),
        }
    }

    Err(EmbeddedError::StartFailed {
        port,
        reason: format!("the chosen port was taken {PORT_ATTEMPTS} times in a row"),
        log_tail: log_tail(&layout.log),
    })
}

/// Picks a loopback port that was free a moment ago.
fn free_port() -> Result<u16, EmbeddedError> {
    let address = format!("{HOST}:0");
    TcpListener::bind(&address)
        .and_then(|listener| listener.local_addr())
        .map(|local| local.port())
        .map_err(|source| io_error("bind", &address, source))
}

/// Starts `postgres` once and waits until it is ready, exits or times out.
fn launch(
    binaries: &Binaries,
    layout: &Layout,
    run_as: Option<RunAs>,
    options: &ClusterOptions,
    port: u16,
) -> Result<Launch, EmbeddedError> {
    let log =
        fs::File::create(&layout.log).map_err(|source| io_error("create", &layout.log, source))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(|source| io_error("duplicate handle of", &layout.log, source))?;

    let mut command = server_command(&binaries.postgres, layout, run_as);
    command
        .arg("-D")
        .arg(&layout.data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(&layout.sockets)
        .args(
            server_settings(options)
                .iter()
                .flat_map(|s| ["-c", s.as_str()]),
        )
        .stdout(log)
        .stderr(log_for_stderr)
        .process_group(0);

    let child = command.spawn().map_err(|source| EmbeddedError::Spawn {
        command: describe_command(&command),
        source,
    })?;
    wait_until_ready(child, port, layout, binaries.pg_isready.as_deref())
}

/// The `name=value` settings passed with `-c`, ours first and the caller's after.
fn server_settings(options: &ClusterOptions) -> Vec<String> {
    let ours = [
        ("listen_addresses", HOST.to_owned()),
        ("fsync", "off".to_owned()),
        ("synchronous_commit", "off".to_owned()),
        ("full_page_writes", "off".to_owned()),
        ("max_connections", options.max_connections.to_string()),
        ("password_encryption", "scram-sha-256".to_owned()),
    ];
    let theirs = options
        .extra_settings
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()));

    ours.into_iter()
        .chain(theirs)
        .map(|(name, value)| format!("{name}={value}"))
        .collect()
}

/// Polls until the server logs readiness and accepts connections.
fn wait_until_ready(
    mut child: Child,
    port: u16,
    layout: &Layout,
    pg_isready: Option<&Path>,
) -> Result<Launch, EmbeddedError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let exited = child
            .try_wait()
            .map_err(|source| io_error("wait for", &layout.data, source))?;
        if let Some(status) = exited {
            return startup_exit(status, port, &layout.log);
        }

        if is_ready(port, &layout.log, pg_isready) {
            return Ok(Launch::Ready(child));
        }

        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(start_failed(port, "not ready after 30 s", &layout.log));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Classifies an early exit of the server: a taken port is retried, anything else fails.
pub(super) fn startup_exit(
    status: std::process::ExitStatus,
    port: u16,
    log: &Path,
) -> Result<Launch, EmbeddedError> {
    let text = fs::read_to_string(log).unwrap_or_default();
    if text.contains("could not bind") || text.contains("Address already in use") {
        return Ok(Launch::PortTaken);
    }
    Err(start_failed(
        port,
        &format!("postgres exited ({status})"),
        log,
    ))
}

/// Ready means our server logged readiness (so no other server holds the port) and answers.
fn is_ready(port: u16, log: &Path, pg_isready: Option<&Path>) -> bool {
    let logged = fs::read_to_string(log).is_ok_and(|text| text.contains(READY_MARKER));
    if !logged {
        return false;
    }

    match pg_isready {
        Some(program) => Command::new(program)
            .args(["-q", "-t", "2", "-h", HOST, "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success()),
        None => TcpStream::connect((HOST, port)).is_ok(),
    }
}

/// Asks the postmaster for a fast shutdown, and kills it if that takes too long.
pub(super) fn shut_down(mut postmaster: Child, port: u16) {
    let pid = postmaster.id();
    let signalled = Command::new("sh")
        .args(["-c", "kill -INT \"$1\"", "sh", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());

    let deadline = Instant::now() + STOP_TIMEOUT;
    while signalled && Instant::now() < deadline {
        if let Ok(Some(_)) = postmaster.try_wait() {
            tracing::info!(port, pid, "embedded PostgreSQL stopped");
            return;
        }
        std::thread::sleep(POLL_INTERVAL);
    }

    tracing::info!(
        port,
        pid,
        signalled,
        "embedded PostgreSQL did not stop in time, killing"
    );
    let _ = postmaster.kill();
    let _ = postmaster.wait();
}

/// A [`EmbeddedError::StartFailed`] quoting the tail of the server log.
fn start_failed(port: u16, reason: &str, log: &Path) -> EmbeddedError {
    EmbeddedError::StartFailed {
        port,
        reason: reason.to_owned(),
        log_tail: log_tail(log),
    }
}

/// The last lines of the server log, joined into one line.
fn log_tail(log: &Path) -> String {
    match fs::read_to_string(log) {
        Ok(text) => last_lines(&text),
        Err(error) => format!("(unreadable: {error})"),
    }
}

/// The last non-blank lines of `text` joined with ` | `, or `(empty)` if there are none.
pub(super) fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    let tail = lines[start..].join(" | ");
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail
    }
}
