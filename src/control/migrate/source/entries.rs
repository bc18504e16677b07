//! The top level of a migrations directory: what each entry is, and which layout they add up
//! to. Classifying refuses `.sql` files with bad names at once; whether an entry belongs is
//! decided later, by the layout's reader.

use std::path::{Path, PathBuf};

use super::{Layout, file_name, list, split_stem};
use crate::control::migrate::MigrateError;

/// A file or directory named `<version>_<name>…`.
#[derive(Debug)]
pub(super) struct Named {
    pub path: PathBuf,
    pub version: String,
    pub name: String,
}

/// One top-level entry that matters; non-SQL files are left out.
#[derive(Debug)]
pub(super) enum Entry {
    /// `0001_init.sql`.
    Forward(Named),
    /// `0001_init.up.sql`.
    Up(Named),
    /// `0001_init.down.sql`.
    Down(Named),
    /// `0001_init/`, a Prisma migration.
    PrismaDir(Named),
    /// `checks/`.
    ChecksDir(PathBuf),
    /// Any other subdirectory.
    OtherDir(PathBuf),
}

impl Entry {
    /// The layout this entry implies; down files and subdirectories imply none.
    fn layout(&self) -> Option<Layout> {
        match self {
            Self::Forward(_) => Some(Layout::Numbered),
            Self::Up(_) => Some(Layout::UpDown),
            Self::PrismaDir(_) => Some(Layout::Prisma),
            Self::Down(_) | Self::ChecksDir(_) | Self::OtherDir(_) => None,
        }
    }

    fn path(&self) -> &Path {
        match self {
            Self::Forward(n) | Self::Up(n) | Self::Down(n) | Self::PrismaDir(n) => &n.path,
            Self::ChecksDir(path) | Self::OtherDir(path) => path,
        }
    }
}

/// Every entry of `dir` that matters, sorted by path.
pub(super) fn classify_all(dir: &Path) -> Result<Vec<Entry>, MigrateError> {
    let mut entries = Vec::new();
    for path in list(dir)? {
        if let Some(entry) = classify(path)? {
            entries.push(entry);
        }
    }
    Ok(entries)
}

/// The one layout `entries` use; `Numbered` when none implies a layout.
pub(super) fn layout(entries: &[Entry]) -> Result<Layout, MigrateError> {
    let mut first: Option<(Layout, &Entry)> = None;

    for entry in entries {
        let Some(layout) = entry.layout() else {
            continue;
        };
        let Some((seen, seen_entry)) = first else {
            first = Some((layout, entry));
            continue;
        };
        if seen != layout {
            return Err(MigrateError::MixedLayouts {
                first: seen_entry.path().to_owned(),
                first_layout: seen,
                second: entry.path().to_owned(),
                second_layout: layout,
            });
        }
    }
    Ok(first.map_or(Layout::Numbered, |(layout, _)| layout))
}

fn classify(path: PathBuf) -> Result<Option<Entry>, MigrateError> {
    let file_name = file_name(&path);
    if path.is_dir() {
        return Ok(Some(classify_dir(path, &file_name)));
    }

    let Some(stem) = file_name.strip_suffix(".sql") else {
        return Ok(None);
    };

    let (stem, kind): (_, fn(Named) -> Entry) = if let Some(s) = stem.strip_suffix(".up") {
        (s, Entry::Up)
    } else if let Some(s) = stem.strip_suffix(".down") {
        (s, Entry::Down)
    } else {
        (stem, Entry::Forward)
    };

    let Some(named) = named(&path, stem) else {
        return Err(MigrateError::BadFileName { path });
    };
    Ok(Some(kind(named)))
}

fn classify_dir(path: PathBuf, file_name: &str) -> Entry {
    if file_name == "checks" {
        return Entry::ChecksDir(path);
    }

    match named(&path, file_name) {
        Some(named) => Entry::PrismaDir(named),
        None => Entry::OtherDir(path),
    }
}

fn named(path: &Path, stem: &str) -> Option<Named> {
    let (version, name) = split_stem(stem)?;
    Some(Named {
        path: path.to_owned(),
        version: version.to_owned(),
        name: name.to_owned(),
    })
}
