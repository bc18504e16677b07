//! Reading migrations directories in each layout, and the rules that refuse a directory.

use std::path::Path;

use super::*;

/// Writes `files` (relative paths, parents created) under a fresh directory.
fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    for (file, text) in files {
        let path = dir.path().join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    dir
}

fn versions(found: &Directory) -> Vec<&str> {
    found
        .migrations
        .iter()
        .map(|m| m.version.as_str())
        .collect()
}

fn down_sql(migration: &Migration) -> Option<&str> {
    migration.down.as_ref().map(|d| d.sql.as_str())
}

fn refused(dir: &Path) -> MigrateError {
    read_dir(dir).expect_err("refused")
}

/// A file stem splits into digits and a name, and nothing else passes.
#[test]
fn file_names_split_into_version_and_name() {
    assert_eq!(split_stem("0001_init"), Some(("0001", "init")));
    assert_eq!(split_stem("12_add-users_2"), Some(("12", "add-users_2")));
    assert_eq!(split_stem("init"), None);
    assert_eq!(split_stem("v1_init"), None);
    assert_eq!(split_stem("0001_"), None);
    assert_eq!(split_stem(&format!("{}_x", "9".repeat(39))), None);
}

/// Numbered files are read in numeric order, each with its down file, non-SQL files ignored.
#[test]
fn numbered_layout_reads_down_files() {
    let dir = tree(&[
        ("10_ten.sql", "SELECT 10"),
        ("2_two.sql", "SELECT 2"),
        ("2_two.down.sql", "SELECT -2"),
        ("README.md", "notes"),
    ]);

    let found = read_dir(dir.path()).expect("reads");
    assert_eq!(found.layout, Layout::Numbered);
    assert_eq!(versions(&found), ["2", "10"]);
    assert_eq!(found.migrations[0].checksum, checksum(b"SELECT 2"));
    assert_eq!(down_sql(&found.migrations[0]), Some("SELECT -2"));
    assert_eq!(down_sql(&found.migrations[1]), None);
}

/// A down step's checksum is the SHA-256 of its own file's bytes.
#[test]
fn down_files_have_their_own_checksum() {
    let dir = tree(&[("1_a.sql", "SELECT 1"), ("1_a.down.sql", "DROP TABLE a")]);

    let found = read_dir(dir.path()).expect("reads");
    let down = found.migrations[0].down.as_ref().expect("down");
    assert_eq!(down.checksum, checksum(b"DROP TABLE a"));
    assert_eq!(down.path, dir.path().join("1_a.down.sql"));
}

/// sqlx and golang-migrate `.up.sql`/`.down.sql` pairs are one migration each.
#[test]
fn up_down_layout_pairs_files() {
    let dir = tree(&[
        ("20240201000000_b.up.sql", "SELECT 'b'"),
        ("20240101120000_a.up.sql", "SELECT 'a'"),
        ("20240101120000_a.down.sql", "SELECT '-a'"),
    ]);

    let found = read_dir(dir.path()).expect("reads");
    assert_eq!(found.layout, Layout::UpDown);
    assert_eq!(versions(&found), ["20240101120000", "20240201000000"]);
    assert_eq!(found.migrations[0].name, "a");
    assert_eq!(found.migrations[0].checksum, checksum(b"SELECT 'a'"));
    assert_eq!(down_sql(&found.migrations[0]), Some("SELECT '-a'"));
    assert_eq!(down_sql(&found.migrations[1]), None);
}

/// Prisma subdirectories are migrations with an optional `down.sql`; the lock file is ignored.
#[test]
fn prisma_layout_reads_directories_and_ignores_the_lock_file() {
    let dir = tree(&[
        ("migration_lock.toml", "provider = \"postgresql\""),
        ("20240101120000_init/migration.sql", "CREATE TABLE a ()"),
        ("20240101120000_init/down.sql", "DROP TABLE a"),
        ("20240301000000_add_b/migration.sql", "CREATE TABLE b ()"),
        ("20240301000000_add_b/README.md", "notes"),
    ]);

    let found = read_dir(dir.path()).expect("reads");
    assert_eq!(found.layout, Layout::Prisma);
    assert_eq!(versions(&found), ["20240101120000", "20240301000000"]);
    assert_eq!(found.migrations[0].name, "init");
    assert_eq!(
        found.migrations[0].path,
        dir.path().join("20240101120000_init/migration.sql")
    );
    assert_eq!(down_sql(&found.migrations[0]), Some("DROP TABLE a"));
    assert_eq!(down_sql(&found.migrations[1]), None);
}

/// `checks/` in a Prisma directory holds checks, not a migration, read in file-name order.
#[test]
fn checks_are_read_in_order_and_not_taken_as_migrations() {
    let dir = tree(&[
        ("20240101120000_init/migration.sql", "CREATE TABLE a ()"),
        ("checks/02_second.sql", "SELECT 2 WHERE false"),
        ("checks/01_first.sql", "SELECT 1 WHERE false"),
        ("checks/README.md", "what the checks mean"),
    ]);

    let found = read_dir(dir.path()).expect("reads");
    assert_eq!(found.migrations.len(), 1);
    let names: Vec<&str> = found.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["01_first", "02_second"]);
    assert_eq!(found.checks[0].sql, "SELECT 1 WHERE false");
}

/// A directory with nothing in it is an empty numbered set.
#[test]
fn empty_directory_is_numbered_and_empty() {
    let dir = tree(&[]);

    let found = read_dir(dir.path()).expect("reads");
    assert_eq!(found.layout, Layout::Numbered);
    assert!(found.migrations.is_empty() && found.checks.is_empty());
}

/// Files of two layouts in one directory are refused, naming one file of each.
#[test]
fn mixed_layouts_are_refused() {
    let dir = tree(&[("0001_a.sql", "SELECT 1"), ("0002_b.up.sql", "SELECT 2")]);
    let error = refused(dir.path());
    assert!(
        matches!(error, MigrateError::MixedLayouts { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("0001_a.sql") && message.contains("0002_b.up.sql"));

    let dir = tree(&[
        ("0001_a.sql", "SELECT 1"),
        ("0002_b/migration.sql", "SELECT 2"),
    ]);
    let error = refused(dir.path());
    assert!(
        matches!(error, MigrateError::MixedLayouts { .. }),
        "{error}"
    );
}

/// A down file with no forward file of the same version and name is refused.
#[test]
fn orphan_down_files_are_refused() {
    let dir = tree(&[("1_a.up.sql", "SELECT 1"), ("2_b.down.sql", "SELECT -2")]);
    let error = refused(dir.path());
    assert!(matches!(error, MigrateError::OrphanDown { .. }), "{error}");
    assert!(error.to_string().contains("2_b.up.sql"), "{error}");

    let dir = tree(&[("1_a.sql", "SELECT 1"), ("1_typo.down.sql", "SELECT -1")]);
    let error = refused(dir.path());
    assert!(matches!(error, MigrateError::OrphanDown { .. }), "{error}");
}

/// A `.sql` file that follows no layout's naming is refused, as are duplicate versions.
#[test]
fn bad_names_and_duplicates_are_refused() {
    for file in ["first.sql", "v1_a.up.sql", "1_.down.sql", "1_a b.sql"] {
        let dir = tree(&[(file, "SELECT 1")]);
        let error = refused(dir.path());
        assert!(
            matches!(error, MigrateError::BadFileName { .. }),
            "{file}: {error}"
        );
    }

    let dir = tree(&[("1_a.sql", "SELECT 1"), ("001_b.sql", "SELECT 1")]);
    let error = refused(dir.path());
    let duplicate = matches!(error, MigrateError::DuplicateVersion { .. });
    assert!(duplicate, "{error}");
}

/// In the Prisma layout, stray SQL and unknown subdirectories are refused, never skipped.
#[test]
fn prisma_layout_refuses_strays() {
    let init = ("1_init/migration.sql", "SELECT 1");
    for stray in ["1_init/extra.sql", "seeds/data.sql", "1_init.down.sql"] {
        let dir = tree(&[init, (stray, "SELECT 2")]);
        let error = refused(dir.path());
        assert!(
            matches!(error, MigrateError::Unexpected { .. }),
            "{stray}: {error}"
        );
    }

    let dir = tree(&[init, ("2_next/down.sql", "SELECT -2")]);
    let error = refused(dir.path());
    let missing = matches!(error, MigrateError::MissingMigrationSql { .. });
    assert!(missing, "{error}");
}

/// Down steps and checks obey the rules of forward files: UTF-8, no transaction control.
#[test]
fn down_and_check_sql_are_validated() {
    let dir = tree(&[("1_a.sql", "SELECT 1"), ("1_a.down.sql", "COMMIT")]);
    let error = refused(dir.path());
    let control = matches!(error, MigrateError::TransactionControl { .. });
    assert!(control, "{error}");

    let dir = tree(&[("1_a.sql", "SELECT 1"), ("checks/x.sql", "BEGIN")]);
    let error = refused(dir.path());
    let control = matches!(error, MigrateError::TransactionControl { .. });
    assert!(control, "{error}");

    let dir = tree(&[("1_a.up.sql", "SELECT 1")]);
    std::fs::write(dir.path().join("1_a.down.sql"), [0xff, 0xfe]).expect("write");
    let error = refused(dir.path());
    assert!(matches!(error, MigrateError::NotUtf8 { .. }), "{error}");
}

/// `find` compares versions as numbers, so `7` and `0007` name the same migration.
#[test]
fn find_compares_versions_as_numbers() {
    let dir = tree(&[("0007_a.sql", "SELECT 7"), ("0010_b.sql", "SELECT 10")]);

    let set = crate::control::migrate::MigrationSet::load(dir.path()).expect("reads");
    assert_eq!(set.find("7").map(|m| m.name.as_str()), Some("a"));
    assert_eq!(set.find("00010").map(|m| m.name.as_str()), Some("b"));
    assert!(set.find("8").is_none() && set.find("+7").is_none() && set.find("").is_none());
}

/// The demo migrations shipped in `config/migrations` still load.
#[test]
fn demo_migrations_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/migrations");

    let found = read_dir(&dir).expect("reads");
    assert_eq!(found.layout, Layout::Numbered);
    assert_eq!(versions(&found), ["0001", "0002"]);
}
