//! The shell watchdog that cleans up after a process that died holding a [`Cluster`].
//!
//! A [`Cluster`] stops its server and removes its directory on drop, but tests keep theirs in a
//! `static`, which is never dropped, and a process may also be killed. So each cluster starts a
//! `sh` process, in its own process group, that checks every 0.5 s whether this process is still
//! alive (a zombie counts as dead). Once it is not, the watchdog asks the postmaster for a fast
//! shutdown, kills it after about 10 s, and deletes the temporary directory.
//! [`Cluster::stop`] ends the watchdog once the server is down, so it never outlives a normal stop.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use super::{Cluster, EmbeddedError};

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

impl Cluster {
    /// Starts the shell watchdog that cleans up if this process dies without dropping us.
    pub(super) fn spawn_watchdog(&self) -> Result<Child, EmbeddedError> {
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
