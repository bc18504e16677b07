//! Which user the server runs as, and how its programs are launched.
//!
//! PostgreSQL refuses to run as root, so when this process is root every server program
//! (`initdb`, `postgres`) runs as the `postgres` system user and the cluster's temporary
//! directory is handed to that user first. Otherwise everything runs as ourselves. Every
//! server program starts in the cluster's temporary directory with stdin closed.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::layout::Layout;
use super::postmaster::last_lines;
use super::{EmbeddedError, SUPERUSER, io_error};

/// The system user the server runs as when we are root.
#[derive(Clone, Copy)]
pub(super) struct RunAs {
    uid: u32,
    gid: u32,
}

/// Whether this process's effective uid is 0.
pub(super) fn running_as_root() -> bool {
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
pub(super) fn postgres_user() -> Result<RunAs, EmbeddedError> {
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

/// Hands a directory tree to `user`, without following symbolic links.
pub(super) fn chown_tree(path: &Path, user: RunAs) -> Result<(), EmbeddedError> {
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

/// A command for a server program: runs in the temp dir, as `run_as` when we are root.
pub(super) fn server_command(program: &Path, layout: &Layout, run_as: Option<RunAs>) -> Command {
    let mut command = Command::new(program);
    command.current_dir(&layout.root).stdin(Stdio::null());
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
    command
}

/// Runs a command to the end, turning a failure into an error carrying its output.
pub(super) fn run_to_completion(command: &mut Command) -> Result<(), EmbeddedError> {
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

/// The program and its arguments on one line, for error messages.
pub(super) fn describe_command(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}
