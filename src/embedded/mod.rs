//! A throwaway PostgreSQL server for `pgtenant dev`, the integration tests and the benchmarks.
//!
//! This module owns the whole life of that server: it finds the PostgreSQL binaries
//! (`binaries`), runs `initdb` into a fresh temporary directory (`layout`), starts `postgres` on
//! a free loopback port, waits until it accepts connections, and shuts it down again
//! (`postmaster`). When the process runs as root the server runs as the `postgres` system user,
//! because PostgreSQL refuses to run as root (`run_as`). A small shell watchdog (`watchdog`)
//! stops the server and removes its directory if this process dies without dropping the
//! [`Cluster`] (tests keep theirs in a `static`, which is never dropped).
//!
//! Everything here blocks the calling thread except [`Cluster::connect_superuser`].

mod binaries;
mod layout;
mod postmaster;
mod run_as;
mod watchdog;

#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Child;

use rand::RngExt;
use rand::distr::Alphanumeric;
use tempfile::TempDir;
use tokio_postgres::NoTls;

pub use binaries::find_binary;

use binaries::Binaries;
use layout::{Layout, init_data_dir};
use postmaster::{launch_with_retries, shut_down};
use run_as::{postgres_user, running_as_root};

/// Loopback address the server listens on.
const HOST: &str = "127.0.0.1";

/// Name of the bootstrap superuser created by `initdb`.
const SUPERUSER: &str = "postgres";

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

/// A fresh random superuser password: 24 alphanumeric characters.
fn random_password() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// An [`EmbeddedError::Io`] for `action` on `path`.
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
