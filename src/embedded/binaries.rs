//! Finding the PostgreSQL programs a cluster needs.
//!
//! A program is looked for on `PATH` first, then in the newest `/usr/lib/postgresql/<version>/bin`
//! that has it (Debian and Ubuntu install the server there, off `PATH`). `postgres` and
//! `pg_isready` are preferred from the directory `initdb` was found in, so that all three come
//! from the same PostgreSQL version. `pg_isready` is optional; without it readiness is checked
//! with a plain TCP connect.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::EmbeddedError;

/// The programs a start needs.
pub(super) struct Binaries {
    pub(super) initdb: PathBuf,
    pub(super) postgres: PathBuf,
    pub(super) pg_isready: Option<PathBuf>,
}

impl Binaries {
    /// Finds `initdb`, then prefers `postgres` and `pg_isready` from the same directory.
    pub(super) fn find() -> Result<Self, EmbeddedError> {
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
pub(super) fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// Whether `path` is a regular file with an execute bit set.
fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
