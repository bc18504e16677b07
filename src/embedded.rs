//! A throwaway PostgreSQL server for `pgtenant dev`, the integration tests and the benchmarks.
//!
//! This module owns the whole life of that server: it finds the PostgreSQL binaries, runs
//! `initdb` into a fresh temporary directory, starts `postgres` on a free loopback port, waits
//! until it accepts connections, and shuts it down again. When the process runs as root the
//! server runs as the `postgres` system user, because PostgreSQL refuses to run as root. A small
//! shell watchdog stops the server and removes its directory if this process dies without
//! dropping the [`Cluster`] (tests keep theirs in a `static`, which is never dropped).

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngExt;
use rand::distr::Alphanumeric;
use tempfile::TempDir;
use tokio_postgres::NoTls;

/// Loopback address the server listens on.
const HOST: &str = "127.0.0.1";

/// Name of the bootstrap superuser created by `initdb`.
const SUPERUSER: &str = "postgres";

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

/// Shell script run as the watchdog: `$1` is our pid, `$2` the postmaster's, `$3` the temp dir.
/// A zombie counts as dead, so an unreaped owner or server does not keep it waiting.
const WATCHDOG_SCRIPT: &str = r#"
alive() { kill -0 "$1" 2>/dev/null && ! grep -qs '^State:.*Z' "/proc/$1/status"; }
while alive "$1"; do sleep 0.5; done
kill -INT "$2" 2>/dev/null
n=0
while alive "$2" && [ "$n" -lt 20 ]; do sleep 0.5; n=$((n + 1)); done
kill -KILL "$2" 2>/dev/null
rm -rf "$3"
"#;

/// Settings for a throwaway cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Value of the server's `max_connections` (default 400, enough for pool benchmarks).
    pub max_connections: u32,
    /// Extra server settings, each passed as `-c name=value`.
    pub extra_settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            max_connections: 400,
            extra_settings: Vec::new(),
        }
    }
}

/// Why a throwaway cluster could not be set up, reached or used.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A PostgreSQL program is neither on `PATH` nor under `/usr/lib/postgresql/*/bin`.
    #[error(
        "PostgreSQL binary `{name}` not found on PATH or under /usr/lib/postgresql/*/bin \
         (install it with `apt-get install -y postgresql`)"
    )]
    BinaryNotFound {
        /// The program that was looked for.
        name: String,
    },

    /// Running as root, but there is no `postgres` user to run the server as.
    #[error(
        "running as root but /etc/passwd has no `postgres` user to run the server as \
         (install PostgreSQL with `apt-get install -y postgresql`)"
    )]
    NoPostgresUser,

    /// A file-system operation on the cluster's directory failed.
    #[error("could not {action} `{}`: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A helper program could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The program and its arguments.
        command: String,
        /// The underlying error.
        source: io::Error,
    },

    /// A helper program (such as `initdb`) ran but failed.
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        /// The program and its arguments.
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of what it printed, on one line.
        output: String,
    },

    /// The server exited or did not become ready in time.
    #[error("PostgreSQL did not start on port {port}: {reason}; server log: {log_tail}")]
    StartFailed {
        /// The port the server was asked to listen on.
        port: u16,
        /// What went wrong.
        reason: String,
        /// The last lines of the server log, on one line.
        log_tail: String,
    },

    /// Connecting to the running server failed.
    #[error("could not connect to PostgreSQL at {HOST}:{port}: {}", describe_pg_error(.source))]
    Connect {
        /// The server's port.
        port: u16,
        /// The underlying error.
        source: tokio_postgres::Error,
    },
}

/// A running throwaway PostgreSQL server; stopped and deleted on drop.
pub struct Cluster {
    port: u16,
    password: String,
    data_dir: PathBuf,
    postmaster: Option<Child>,
    watchdog: Option<Child>,
    temp_dir: TempDir,
}

/// Paths inside the cluster's temporary directory.
struct Layout {
    root: PathBuf,
    data: PathBuf,
    sockets: PathBuf,
    log: PathBuf,
    password_file: PathBuf,
}

/// The programs a start needs.
struct Binaries {
    initdb: PathBuf,
    postgres: PathBuf,
    pg_isready: Option<PathBuf>,
}

/// The system user the server runs as when we are root.
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// How one launch attempt ended, when it did not fail outright.
enum Launch {
    Ready(Child),
    PortTaken,
}

impl Cluster {
    /// Creates, starts and waits for a new cluster; blocks for up to about 30 seconds.
    pub fn start(options: ClusterOptions) -> Result<Cluster, EmbeddedError> {
        let binaries = Binaries::find()?;
        let run_as = if running_as_root() {
            Some(postgres_user()?)
        } else {
            None
        };

        let temp_dir = tempfile::Builder::new()
            .prefix("pgtenant-")
            .tempdir()
            .map_err(|source| io_error("create temporary directory", "pgtenant-*", source))?;
        let layout = Layout::new(temp_dir.path());
        let password = random_password();
        layout.prepare(&password, run_as)?;

        init_data_dir(&binaries, &layout, run_as)?;

        let (port, postmaster) = launch_with_retries(&binaries, &layout, run_as, &options)?;
        let mut cluster = Cluster {
            port,
            password,
            data_dir: layout.data.clone(),
            postmaster: Some(postmaster),
            watchdog: None,
            temp_dir,
        };

        cluster.watchdog = Some(cluster.spawn_watchdog()?);
        tracing::info!(
            port,
            data_dir = %cluster.data_dir.display(),
            as_postgres_user = run_as.is_some(),
            "embedded PostgreSQL ready"
        );
        Ok(cluster)
    }

    /// The address the server listens on, always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bootstrap superuser's name, `postgres`.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// The superuser's password, generated at random for this cluster.
    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The server's data directory. Callers may add their own files here (e.g. certificates);
    /// it is removed on drop. When this process runs as root the server runs as the `postgres`
    /// user, so such files must be readable by the owner of this directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A `postgres://` URL for this server, with user and password percent-encoded.
    pub fn url(&self, user: &str, password: &str, database: &str) -> String {
        format!(
            "postgres://{}:{}@{HOST}:{}/{}",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(database)
        )
    }

    /// Connects as the superuser to database `postgres` over TCP without TLS, running the
    /// connection task on the current Tokio runtime.
    pub async fn connect_superuser(&self) -> Result<tokio_postgres::Client, EmbeddedError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(HOST)
            .port(self.port)
            .user(SUPERUSER)
            .password(&self.password)
            .dbname("postgres");

        let port = self.port;
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|source| EmbeddedError::Connect { port, source })?;

        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %describe_pg_error(&error), "superuser connection ended");
            }
        });
        Ok(client)
    }

    /// Shuts the server down (fast shutdown, killed after 10 s) and ends the watchdog.
    /// Safe to call more than once; the directory itself goes away on drop.
    pub fn stop(&mut self) {
        if let Some(postmaster) = self.postmaster.take() {
            shut_down(postmaster, self.port);
        }

        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// Starts the shell watchdog that cleans up if this process dies without dropping us.
    fn spawn_watchdog(&self) -> Result<Child, EmbeddedError> {
        let server_pid = self.postmaster.as_ref().map_or(0, Child::id);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("pgtenant-watchdog")
            .arg(std::process::id().to_string())
            .arg(server_pid.to_string())
            .arg(self.temp_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);

        let watchdog = command.spawn().map_err(|source| EmbeddedError::Spawn {
            command: "sh -c <watchdog>".to_owned(),
            source,
        })?;
        tracing::debug!(watchdog_pid = watchdog.id(), server_pid, "watchdog started");
        Ok(watchdog)
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("running", &self.postmaster.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Layout {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            data: root.join("data"),
            sockets: root.join("sockets"),
            log: root.join("postgres.log"),
            password_file: root.join("superuser.pw"),
        }
    }

    /// Creates the socket directory and password file and hands everything to `run_as`.
    fn prepare(&self, password: &str, run_as: Option<RunAs>) -> Result<(), EmbeddedError> {
        fs::create_dir(&self.sockets)
            .map_err(|source| io_error("create directory", &self.sockets, source))?;

        fs::write(&self.password_file, password)
            .map_err(|source| io_error("write", &self.password_file, source))?;
        set_mode(&self.password_file, 0o600)?;
        set_mode(&self.root, 0o700)?;

        if let Some(user) = run_as {
            chown_tree(&self.root, user)?;
        }
        Ok(())
    }
}

impl Binaries {
    /// Finds `initdb`, then prefers `postgres` and `pg_isready` from the same directory.
    fn find() -> Result<Self, EmbeddedError> {
        let initdb = find_binary("initdb")?;
        let sibling_dir = initdb.parent().map(Path::to_path_buf).unwrap_or_default();
        let postgres = sibling_or_find(&sibling_dir, "postgres")?;
        let pg_isready = sibling_or_find(&sibling_dir, "pg_isready").ok();

        tracing::debug!(
            initdb = %initdb.display(),
            postgres = %postgres.display(),
            pg_isready = ?pg_isready,
            "PostgreSQL binaries found"
        );
        Ok(Self {
            initdb,
            postgres,
            pg_isready,
        })
    }
}

/// Finds a PostgreSQL program: on `PATH` first, then in the newest
/// `/usr/lib/postgresql/<version>/bin` that has it.
pub fn find_binary(name: &str) -> Result<PathBuf, EmbeddedError> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate));
    if let Some(found) = on_path {
        return Ok(found);
    }

    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = parse_version(&entry.file_name().to_string_lossy())?;
            Some((version, entry.path().join("bin").join(name)))
        })
        .filter(|(_, candidate)| is_executable(candidate))
        .collect();
    versions.sort();

    versions
        .pop()
        .map(|(_, found)| found)
        .ok_or_else(|| EmbeddedError::BinaryNotFound {
            name: name.to_owned(),
        })
}

/// Looks for `name` in `dir`, falling back to [`find_binary`].
fn sibling_or_find(dir: &Path, name: &str) -> Result<PathBuf, EmbeddedError> {
    let sibling = dir.join(name);
    if is_executable(&sibling) {
        return Ok(sibling);
    }
    find_binary(name)
}

/// Parses a directory name such as `16` or `9.6` into comparable numbers.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether this process's effective uid is 0.
fn running_as_root() -> bool {
    let from_proc = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|uid| uid == "0")
        });
    if let Some(root) = from_proc {
        return root;
    }

    Command::new("id")
        .arg("-u")
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// Looks up the `postgres` user's uid and gid in `/etc/passwd`.
fn postgres_user() -> Result<RunAs, EmbeddedError> {
    let passwd = fs::read_to_string("/etc/passwd")
        .map_err(|source| io_error("read", "/etc/passwd", source))?;

    passwd
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [name, _, uid, gid, ..] if *name == SUPERUSER => Some(RunAs {
                    uid: uid.parse().ok()?,
                    gid: gid.parse().ok()?,
                }),
                _ => None,
            }
        })
        .next()
        .ok_or(EmbeddedError::NoPostgresUser)
}

fn random_password() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Runs `initdb`, then deletes the password file it read.
fn init_data_dir(
    binaries: &Binaries,
    layout: &Layout,
    run_as: Option<RunAs>,
) -> Result<(), EmbeddedError> {
    let mut command = server_command(&binaries.initdb, layout, run_as);
    command
        .arg("-D")
        .arg(&layout.data)
        .args(["-U", SUPERUSER])
        .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
        .arg(format!("--pwfile={}", layout.password_file.display()))
        .args(["-E", "UTF8", "--locale=C", "--no-instructions", "--no-sync"]);

    tracing::debug!(data_dir = %layout.data.display(), "running initdb");
    let started = Instant::now();
    run_to_completion(&mut command)?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis(),
        "initdb finished"
    );

    fs::remove_file(&layout.password_file)
        .map_err(|source| io_error("remove", &layout.password_file, source))
}

/// Starts the server on a fresh free port, retrying when the port was taken meanwhile.
fn launch_with_retries(
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
fn startup_exit(
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
fn shut_down(mut postmaster: Child, port: u16) {
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

/// A command for a server program: runs in the temp dir, as `run_as` when we are root.
fn server_command(program: &Path, layout: &Layout, run_as: Option<RunAs>) -> Command {
    let mut command = Command::new(program);
    command.current_dir(&layout.root).stdin(Stdio::null());
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
    command
}

/// Runs a command to the end, turning a failure into an error carrying its output.
fn run_to_completion(command: &mut Command) -> Result<(), EmbeddedError> {
    let output = command.output().map_err(|source| EmbeddedError::Spawn {
        command: describe_command(command),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }

    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(EmbeddedError::CommandFailed {
        command: describe_command(command),
        status: output.status.to_string(),
        output: last_lines(&text),
    })
}

fn describe_command(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

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

fn last_lines(text: &str) -> String {
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

fn set_mode(path: &Path, mode: u32) -> Result<(), EmbeddedError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|source| io_error("change permissions of", path, source))
}

/// Hands a directory tree to `user`, without following symbolic links.
fn chown_tree(path: &Path, user: RunAs) -> Result<(), EmbeddedError> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))
        .map_err(|source| io_error("change owner of", path, source))?;

    let is_dir = fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir());
    if !is_dir {
        return Ok(());
    }
    let entries = fs::read_dir(path).map_err(|source| io_error("list", path, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_error("list", path, source))?;
        chown_tree(&entry.path(), user)?;
    }
    Ok(())
}

fn io_error(action: &'static str, path: impl AsRef<Path>, source: io::Error) -> EmbeddedError {
    EmbeddedError::Io {
        action,
        path: path.as_ref().to_path_buf(),
        source,
    }
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

/// A one-line description of a driver error, including the server's message if any.
fn describe_pg_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_answers_and_stops() {
        let mut cluster = Cluster::start(ClusterOptions::default()).expect("cluster starts");
        let port = cluster.port();
        assert_eq!(cluster.host(), "127.0.0.1");
        assert!(cluster.data_dir().join("PG_VERSION").exists());

        let client = cluster
            .connect_superuser()
            .await
            .expect("superuser connects");
        let row = client
            .query_one("SELECT 1", &[])
            .await
            .expect("SELECT 1 runs");
        assert_eq!(row.get::<_, i32>(0), 1);

        cluster.stop();
        cluster.stop();
        assert!(
            TcpStream::connect((HOST, port)).is_err(),
            "port {port} still accepts"
        );
    }

    #[test]
    fn url_encodes_credentials() {
        let cluster_url = format!(
            "postgres://{}:{}@",
            percent_encode("a b"),
            percent_encode("p@ss:/")
        );
        assert_eq!(cluster_url, "postgres://a%20b:p%40ss%3A%2F@");
    }

    #[test]
    fn taken_port_is_retried_other_exits_fail() {
        use std::os::unix::process::ExitStatusExt;

        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("postgres.log");
        let status = std::process::ExitStatus::from_raw(256);

        fs::write(
            &log,
            "LOG:  could not bind IPv4 address \"127.0.0.1\": Address already in use\n",
        )
        .expect("log written");
        assert!(matches!(
            startup_exit(status, 1, &log),
            Ok(Launch::PortTaken)
        ));

        fs::write(&log, "FATAL:  unrecognized configuration parameter \"x\"\n")
            .expect("log written");
        let error = startup_exit(status, 1, &log)
            .err()
            .expect("other exits fail");
        assert!(
            error
                .to_string()
                .contains("unrecognized configuration parameter"),
            "{error}"
        );
    }

    #[test]
    fn versions_sort_numerically() {
        assert!(parse_version("16") > parse_version("9.6"));
        assert_eq!(parse_version("main"), None);
    }
}
