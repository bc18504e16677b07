//! The cluster's temporary directory and the data directory `initdb` creates in it.
//!
//! The directory holds `data/` (the data directory), `sockets/` (the server's Unix sockets),
//! `postgres.log` (everything the server prints) and, only while `initdb` runs,
//! `superuser.pw`. The directory is mode 0700 and, when we are root, owned by the `postgres`
//! user; the password file is mode 0600 and deleted once `initdb` has read it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::binaries::Binaries;
use super::run_as::{RunAs, chown_tree, run_to_completion, server_command};
use super::{EmbeddedError, SUPERUSER, io_error};

/// Paths inside the cluster's temporary directory.
pub(super) struct Layout {
    pub(super) root: PathBuf,
    pub(super) data: PathBuf,
    pub(super) sockets: PathBuf,
    pub(super) log: PathBuf,
    pub(super) password_file: PathBuf,
}

impl Layout {
    /// The layout under `root`; nothing is created yet.
    pub(super) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            data: root.join("data"),
            sockets: root.join("sockets"),
            log: root.join("postgres.log"),
            password_file: root.join("superuser.pw"),
        }
    }

    /// Creates the socket directory and password file and hands everything to `run_as`.
    pub(super) fn prepare(
        &self,
        password: &str,
        run_as: Option<RunAs>,
    ) -> Result<(), EmbeddedError> {
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

/// Runs `initdb`, then deletes the password file it read.
pub(super) fn init_data_dir(
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

/// Sets the permission bits of `path` to `mode`.
fn set_mode(path: &Path, mode: u32) -> Result<(), EmbeddedError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|source| io_error("change permissions of", path, source))
}
