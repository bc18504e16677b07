//! Health checks a migration must pass before its transaction commits.
//!
//! Built in: every relation the migration creates (`CREATE TABLE`, `INDEX`, `VIEW`,
//! `MATERIALIZED VIEW`, `SEQUENCE`) exists in the tenant's schema and every column it adds
//! (`ALTER TABLE … ADD [COLUMN]`) exists on its table; the schema's fingerprint changed when
//! the migration holds DDL; no index of the schema is invalid. User checks are the files of
//! the migrations directory's `checks/` folder: each query runs as the tenant's role in its
//! schema and passes when it returns no rows. A failure rolls the whole migration back.
//!
//! The built-in reading of the SQL is deliberately narrow: it follows names written in the
//! tenant's schema (unqualified or qualified with it) and ignores the rest, so objects it does
//! not understand are left to the user checks rather than reported falsely.

use tokio_postgres::{GenericClient, Transaction};

use super::fingerprint::Fingerprint;
use super::source::Check;
use super::{Target, become_self, become_tenant};
use crate::frontend::classify::statement_words;
use crate::tenant::catalog::describe;

/// Why a migration's health checks failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthFailure {
    /// A relation the migration creates is not there.
    #[error("expected relation {0:?} does not exist after the migration")]
    MissingRelation(String),
    /// A column the migration adds is not there.
    #[error("expected column {table:?}.{column:?} does not exist after the migration")]
    MissingColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// DDL ran but the schema looks the same.
    #[error("the migration holds DDL but the schema's fingerprint did not change")]
    Unchanged,
    /// An index was left invalid.
    #[error("index {0:?} is invalid after the migration")]
    InvalidIndex(String),
    /// A user check returned a row.
    #[error("check {name} failed: {message}")]
    Check {
        /// The check's name.
        name: String,
        /// The first column of its first row.
        message: String,
    },
    /// A check query itself failed.
    #[error("check {name} could not run: {message}")]
    CheckError {
        /// The check's name (or `built-in`).
        name: String,
        /// The server's error.
        message: String,
    },
}

/// What a migration's SQL says should exist after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Relations created, by name.
    pub relations: Vec<String>,
    /// Columns added: (table, column).
    pub columns: Vec<(String, String)>,
    /// Whether any statement is DDL.
    pub has_ddl: bool,
}

/// Reads what the files `sqls` together create in `schema`.
pub fn expected<'a>(sqls: impl IntoIterator<Item = &'a str>, schema: &str) -> Expected {
    let mut found = Expected::default();
    let statements = sqls.into_iter().flat_map(statement_words);
    for words in statements {
        found.has_ddl |= is_ddl(&words);
        if let Some(name) = created_relation(&words).and_then(|n| local_name(n, schema)) {
            found.relations.push(name.to_owned());
        }
        found.columns.extend(added_columns(&words, schema));
    }
    found
}

/// Whether the statement changes something the fingerprint covers (relations, columns,
/// defaults, constraints, indexes, views, routines, types). Triggers, policies, row-level
/// security, owners, privileges and comments are outside it, so a migration made only of
/// those leaves the fingerprint as it was and must not fail for it.
fn is_ddl(words: &[String]) -> bool {
    let verb = words.first().map(String::as_str).unwrap_or_default();
    if !matches!(verb, "create" | "alter" | "drop") {
        return false;
    }
    let modifiers = [
        "or",
        "replace",
        "unique",
        "unlogged",
        "temporary",
        "temp",
        "materialized",
        "recursive",
    ];
    let kind = (words[1..].iter())
        .map(String::as_str)
        .find(|w| !modifiers.contains(w))
        .unwrap_or_default();
    match kind {
        "table" if verb == "alter" => alters_columns_or_constraints(words),
        "table" | "index" | "view" | "sequence" | "function" | "procedure" | "type" | "domain" => {
            true
        }
        _ => false,
    }
}

/// `ALTER TABLE` forms that change columns, defaults, constraints or names, as opposed to
/// `OWNER TO`, `ENABLE ROW LEVEL SECURITY`, `ENABLE TRIGGER`, storage parameters and such.
fn alters_columns_or_constraints(words: &[String]) -> bool {
    let changes = ["add", "drop", "rename", "type", "default", "not"];
    words.iter().any(|w| changes.contains(&w.as_str()))
}

/// The name in `CREATE [OR REPLACE] [UNIQUE|UNLOGGED|MATERIALIZED] TABLE|INDEX|VIEW|SEQUENCE
/// [CONCURRENTLY] [IF NOT EXISTS] name`.
fn created_relation(words: &[String]) -> Option<&str> {
    if words.first()? != "create" {
        return None;
    }
    let skip = [
        "or",
        "replace",
        "unique",
        "unlogged",
        "materialized",
        "recursive",
    ];
    let mut rest = words[1..].iter().skip_while(|w| skip.contains(&w.as_str()));
    let kind = rest.next()?;
    if !["table", "index", "view", "sequence"].contains(&kind.as_str()) {
        return None;
    }

    let mut rest =
        rest.skip_while(|w| ["concurrently", "if", "not", "exists"].contains(&w.as_str()));
    let name = rest.next()?;
    // An unnamed index (`CREATE INDEX ON t …`) has no name to look for.
    (name != "on").then_some(name.as_str())
}

/// Columns in `ALTER TABLE [IF EXISTS] [ONLY] t ADD [COLUMN] [IF NOT EXISTS] c …, ADD …`.
fn added_columns(words: &[String], schema: &str) -> Vec<(String, String)> {
    let is = |i: usize, w: &str| words.get(i).is_some_and(|x| x == w);
    if !(is(0, "alter") && is(1, "table")) {
        return Vec::new();
    }
    let skip = ["if", "exists", "only"];
    let mut i = 2;
    while words.get(i).is_some_and(|w| skip.contains(&w.as_str())) {
        i += 1;
    }
    let Some(table) = words.get(i).and_then(|t| local_name(t, schema)) else {
        return Vec::new();
    };

    let mut columns = Vec::new();
    for (at, word) in words.iter().enumerate().skip(i + 1) {
        if word == "add"
            && let Some(column) = column_after_add(&words[at + 1..])
        {
            columns.push((table.to_owned(), column.to_owned()));
        }
    }
    columns
}

/// The column name after `ADD`, unless the `ADD` adds a constraint.
fn column_after_add(words: &[String]) -> Option<&str> {
    let constraint = [
        "constraint",
        "primary",
        "unique",
        "check",
        "foreign",
        "exclude",
    ];
    let mut rest = words
        .iter()
        .skip_while(|w| ["column", "if", "not", "exists"].contains(&w.as_str()));
    let name = rest.next()?;
    (!constraint.contains(&name.as_str())).then_some(name.as_str())
}

/// `t` or `schema.t` → `t`; a name in another schema → `None`.
fn local_name<'a>(name: &'a str, schema: &str) -> Option<&'a str> {
    match name.split_once('.') {
        None => Some(name),
        Some((qualifier, rest)) if qualifier == schema && !rest.is_empty() => Some(rest),
        Some(_) => None,
    }
}

/// Runs the built-in checks in `tx` for `target`, after its migrations ran.
pub async fn built_in(
    tx: &Transaction<'_>,
    schema: &str,
    expected: &Expected,
    before: &Fingerprint,
    after: &Fingerprint,
) -> Result<(), HealthFailure> {
    for relation in &expected.relations {
        if !relation_exists(tx, schema, relation).await? {
            return Err(HealthFailure::MissingRelation(relation.clone()));
        }
    }
    for (table, column) in &expected.columns {
        if !column_exists(tx, schema, table, column).await? {
            return Err(HealthFailure::MissingColumn {
                table: table.clone(),
                column: column.clone(),
            });
        }
    }
    if expected.has_ddl && before == after {
        return Err(HealthFailure::Unchanged);
    }
    match invalid_index(tx, schema).await? {
        Some(index) => Err(HealthFailure::InvalidIndex(index)),
        None => Ok(()),
    }
}

async fn relation_exists(
    client: &impl GenericClient,
    schema: &str,
    name: &str,
) -> Result<bool, HealthFailure> {
    let sql = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = $1 AND c.relname = $2)";
    let row = client
        .query_one(sql, &[&schema, &name])
        .await
        .map_err(built_in_error)?;
    row.try_get(0).map_err(built_in_error)
}

async fn column_exists(
    client: &impl GenericClient,
    schema: &str,
    table: &str,
    column: &str,
) -> Result<bool, HealthFailure> {
    let sql = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
               JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 \
               AND a.attnum > 0 AND NOT a.attisdropped)";
    let row = client
        .query_one(sql, &[&schema, &table, &column])
        .await
        .map_err(built_in_error)?;
    row.try_get(0).map_err(built_in_error)
}

async fn invalid_index(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Option<String>, HealthFailure> {
    let sql = "SELECT i.relname::text FROM pg_catalog.pg_index x \
               JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid \
               JOIN pg_catalog.pg_namespace n ON n.oid = i.relnamespace \
               WHERE n.nspname = $1 AND NOT x.indisvalid ORDER BY 1 LIMIT 1";
    let row = client
        .query_opt(sql, &[&schema])
        .await
        .map_err(built_in_error)?;
    row.map(|r| r.try_get(0))
        .transpose()
        .map_err(built_in_error)
}

fn built_in_error(error: tokio_postgres::Error) -> HealthFailure {
    HealthFailure::CheckError {
        name: "built-in".into(),
        message: describe(&error),
    }
}

/// Runs the user checks in `tx` as the tenant's role in its schema, in order.
pub async fn user_checks(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    checks: &[Check],
) -> Result<(), HealthFailure> {
    if checks.is_empty() {
        return Ok(());
    }
    become_tenant(tx, target).await.map_err(built_in_error)?;
    for check in checks {
        run_check(tx, check).await?;
    }
    become_self(tx).await.map_err(built_in_error)
}

async fn run_check(tx: &Transaction<'_>, check: &Check) -> Result<(), HealthFailure> {
    let messages = tx
        .simple_query(&check.sql)
        .await
        .map_err(|e| HealthFailure::CheckError {
            name: check.name.clone(),
            message: describe(&e),
        })?;

    let first_row = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    });
    match first_row {
        None => Ok(()),
        Some(row) => Err(HealthFailure::Check {
            name: check.name.clone(),
            message: row.get(0).unwrap_or("(null)").to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Created relations and added columns are read from the SQL, in the tenant's schema only.
    #[test]
    fn expected_objects_follow_the_tenant_schema() {
        let sql = "CREATE TABLE IF NOT EXISTS orders (id int);
                   create unique index concurrently orders_id on orders (id);
                   CREATE INDEX ON orders (id);
                   CREATE OR REPLACE VIEW acme.v AS SELECT 1;
                   CREATE TABLE other.t (x int);
                   ALTER TABLE acme.orders ADD COLUMN note text, ADD total int,
                       ADD CONSTRAINT c CHECK (total > 0);
                   CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ CREATE TABLE x $$;";
        let found = expected([sql], "acme");

        assert_eq!(found.relations, ["orders", "orders_id", "v"]);
        assert_eq!(
            found.columns,
            [
                ("orders".to_owned(), "note".to_owned()),
                ("orders".to_owned(), "total".to_owned())
            ]
        );
        assert!(found.has_ddl);
    }

    /// Statements outside the fingerprint (triggers, policies, privileges, comments, owners)
    /// do not make a migration count as DDL; changes inside it do.
    #[test]
    fn only_fingerprinted_changes_count_as_ddl() {
        let outside = [
            "CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f();",
            "CREATE POLICY p ON orders USING (true);",
            "ALTER TABLE orders ENABLE ROW LEVEL SECURITY;",
            "ALTER TABLE orders OWNER TO someone;",
            "GRANT SELECT ON orders TO reader;",
            "COMMENT ON TABLE orders IS 'x';",
            "DROP TRIGGER t ON orders;",
        ];
        for sql in outside {
            assert!(!expected([sql], "acme").has_ddl, "{sql}");
        }

        let inside = [
            "ALTER TABLE orders ALTER COLUMN note SET DEFAULT 'x';",
            "ALTER TABLE orders ALTER COLUMN total TYPE bigint;",
            "ALTER TABLE orders DROP CONSTRAINT c;",
            "ALTER TABLE orders RENAME TO purchases;",
            "DROP TABLE orders;",
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';",
            "CREATE TYPE mood AS ENUM ('ok');",
            "DROP INDEX orders_id;",
        ];
        for sql in inside {
            assert!(expected([sql], "acme").has_ddl, "{sql}");
        }
    }

    /// Data-only migrations are not DDL, so an unchanged fingerprint is fine for them.
    #[test]
    fn data_only_sql_is_not_ddl() {
        let found = expected(["INSERT INTO t VALUES (1);", "UPDATE t SET x = 2;"], "acme");
        assert!(!found.has_ddl);
        assert!(found.relations.is_empty());
    }
}
