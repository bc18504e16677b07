//! Blue/green schema primitives: build a tenant's next schema beside the live one, swap the
//! two by renaming, swap back, and drop what is no longer needed. A fleet migration runner
//! calls them for changes that must not run in place; everything runs on a transaction the
//! caller owns, as pgtenant's catalog role (a superuser or a member of every tenant role).
//!
//! # The copy ([`build_next`])
//!
//! The copy is made as the tenant's role, so the tenant owns every object of `next` and any
//! of its own functions an index, a constraint or a generated column calls runs with the
//! tenant's rights, never with pgtenant's. It first takes `SHARE` locks on every table of the
//! live schema, so the copy is one consistent state and writers wait until the caller's
//! transaction ends (the caller's `lock_timeout` bounds the wait for running writers). Writes
//! committed to the live schema after the copy are not in `next`: build, migrate and swap in
//! one transaction, or keep the tenant paused from before `build_next` until the swap commits.
//!
//! Preserved: tables with their columns, types, collations, `NOT NULL`, defaults, identity
//! and generated columns, storage and compression settings, `UNLOGGED` and storage
//! parameters; data, inserted with `OVERRIDING SYSTEM VALUE` (generated columns are computed
//! again); sequences with their options and current values, and their `OWNED BY` columns;
//! `CHECK`, primary key, unique, exclusion and foreign key constraints (foreign keys after the
//! data); indexes, partial and on expressions, and `CLUSTER` marks; replica identity; views
//! with their options; SQL and PL/pgSQL functions and procedures; comments on the schema,
//! relations, columns, indexes, constraints and functions; privileges on the schema,
//! relations, columns, sequences and functions, and the schema's default privileges.
//!
//! Definitions are read back from PostgreSQL (`pg_get_viewdef`, `pg_get_constraintdef`,
//! `pg_get_indexdef`, `pg_get_expr`, `pg_get_functiondef`) with `search_path` set to the live
//! schema alone, which prints the schema's own objects unqualified, and run again with
//! `search_path` set to `next`, so views, defaults (a serial column's `nextval`), constraints
//! and indexes refer to `next`'s objects. A last check refuses the copy if any object of
//! `next` still depends on an object of the live schema. Function bodies written as text are
//! stored unchanged and resolved by name when they run: a name qualified with the tenant's
//! schema name refers, after the swap, to the new live schema, which is what the function
//! meant. Bodies written as `BEGIN ATOMIC` are read back like views.
//!
//! Refused before anything is created ([`refusals`], one [`Refusal`] each): triggers, rules,
//! row-level security (policies or the table flags), materialized views, partitioned tables
//! and table inheritance, typed and foreign tables, tables or indexes in a tablespace of
//! their own, user-defined types (enum, composite, domain, range, base), columns whose type
//! belongs to the schema, generated columns calling the schema's functions, aggregates and
//! functions in languages other than SQL and PL/pgSQL, operators, operator classes and
//! families, collations, conversions, text search objects, extended statistics, extensions
//! installed in the schema and objects belonging to extensions, foreign keys to or from
//! another schema, objects elsewhere that depend on the schema's objects (views, functions,
//! defaults, publications, ...: they would keep pointing at the retired copy), publications
//! of the whole schema, and objects not owned by the schema's owner.
//!
//! Not copied, and not refused: grants made by a grantee holding the grant option (they are
//! made again by the owner), comments and privileges on identity columns' own sequences,
//! per-column statistics targets and options, security labels. Large objects are out of
//! scope: they belong to the database, not to a schema, so columns holding their OIDs are
//! copied as numbers and both copies refer to the same objects.
//!
//! # Swaps
//!
//! [`swap`] renames the live schema to a retired name and `next` to the live name, and
//! records the retired schema in `pgtenant.retired_schemas` with its expiry; [`swap_back`]
//! does the reverse with the newest retained schema, setting the current one aside as a
//! `rollback` row with the same retention. Both are renames and catalog rows only, so they
//! finish in milliseconds whatever the data size. Open sessions follow: PostgreSQL resolves
//! `search_path` by name and plans prepared statements again after the rename. Renaming a
//! schema needs `CREATE` on the database besides ownership, which a superuser has.
//! [`purge_expired`] drops retained schemas past their expiry, and [`discard_next`] drops an
//! unfinished copy. None of them touches `pgtenant.migrations`: recording which version is
//! live is the runner's part.

mod constraints;
mod copy;
mod depend;
mod grants;
mod names;
mod refuse;
mod routines;
mod swap;
mod tables;

use std::fmt;
use std::time::Duration;

pub use copy::build_next;
pub use names::{next_name, retired_name};
pub use refuse::refusals;
pub use swap::{discard_next, purge_expired, purge_expired_of, swap, swap_back};

use super::super::provision::quote_ident;
use crate::tenant::catalog::{CatalogError, describe};

/// An object of the live schema the copy cannot reproduce faithfully.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What kind of object, such as `trigger` or `enum type`.
    pub kind: &'static str,
    /// Which object, as PostgreSQL names it (`acme.orders.audit`).
    pub object: String,
    /// Why it is refused.
    pub reason: &'static str,
}

impl fmt::Display for Refusal {
    /// One line, even for names holding line breaks (quoted identifiers may).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = self.object.replace(char::is_control, " ");
        write!(f, "{} {object}: {}", self.kind, self.reason)
    }
}

/// What [`build_next`] copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Tables.
    pub tables: usize,
    /// Rows over all tables.
    pub rows: u64,
    /// Sequences, identity sequences included.
    pub sequences: usize,
    /// Views.
    pub views: usize,
    /// Functions and procedures.
    pub functions: usize,
    /// Indexes, those behind constraints included.
    pub indexes: usize,
    /// How long the copy took.
    pub duration: Duration,
}

/// What [`swap_back`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapBack {
    /// The retained schema that is live again (its name before the swap back).
    pub restored: String,
    /// The name the schema that was live now has; it is retained as a `rollback` row.
    pub retired: String,
    /// The version the restored schema holds, as recorded when it was retired.
    pub version: Option<String>,
    /// How long the renames and catalog rows took.
    pub duration: Duration,
}

/// Why a blue/green step failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlueGreenError {
    /// The live schema holds objects the copy cannot reproduce; nothing was created.
    #[error("schema {schema:?} cannot be copied: {}", join(.refusals))]
    NotCopyable {
        /// The live schema.
        schema: String,
        /// Every refused object.
        refusals: Vec<Refusal>,
    },
    /// A schema that must exist does not.
    #[error("schema {0:?} does not exist")]
    NoSchema(String),
    /// A schema that must not exist yet does.
    #[error("schema {0:?} already exists (discard an unfinished copy with discard_next)")]
    SchemaExists(String),
    /// The live schema is not owned by the tenant's role.
    #[error("schema {schema:?} is owned by {owner:?}, not by the tenant role {role:?}")]
    WrongOwner {
        /// The schema.
        schema: String,
        /// Its owner.
        owner: String,
        /// The tenant's role.
        role: String,
    },
    /// No such tenant in the catalog.
    #[error("no tenant named {0:?} in the catalog")]
    UnknownTenant(String),
    /// The catalog names another live schema for the tenant.
    #[error("tenant {tenant:?} lives in schema {catalog:?} according to the catalog, not {live:?}")]
    NotLive {
        /// The tenant.
        tenant: String,
        /// The schema the caller named.
        live: String,
        /// The schema in the catalog.
        catalog: String,
    },
    /// `swap_back` found no retained schema.
    #[error("tenant {0:?} has no retained schema to swap back to")]
    NothingRetained(String),
    /// A schema `discard_next` must never drop.
    #[error("schema {schema:?} is {why}; discard_next drops only unfinished copies")]
    Protected {
        /// The schema.
        schema: String,
        /// Why it is kept.
        why: &'static str,
    },
    /// A definition read back from PostgreSQL has an unexpected shape.
    #[error("cannot copy {object}: {message}")]
    Definition {
        /// The object.
        object: String,
        /// What was unexpected.
        message: String,
    },
    /// The copy still depends on the live schema.
    #[error("the copy is not detached from {live:?}: {dependent} depends on {referenced}")]
    NotDetached {
        /// The live schema.
        live: String,
        /// The object of the copy.
        dependent: String,
        /// The live schema's object it depends on.
        referenced: String,
    },
    /// Views and functions depend on each other in a cycle.
    #[error("views and functions of schema {schema:?} depend on each other in a cycle: {objects}")]
    Cycle {
        /// The live schema.
        schema: String,
        /// The objects left.
        objects: String,
    },
    /// A catalog row could not be read.
    #[error(transparent)]
    Row(#[from] CatalogError),
    /// A statement failed; the caller's transaction is aborted.
    #[error("cannot {step} for {object}: {}", describe(.source))]
    Query {
        /// What was being done.
        step: &'static str,
        /// The schema or object it was done for.
        object: String,
        /// The server's error.
        source: tokio_postgres::Error,
    },
}

fn join(refusals: &[Refusal]) -> String {
    let all: Vec<String> = refusals.iter().map(Refusal::to_string).collect();
    all.join("; ")
}

/// A [`BlueGreenError::Query`] maker for `map_err`.
fn query(step: &'static str, object: &str) -> impl FnOnce(tokio_postgres::Error) -> BlueGreenError {
    let object = object.to_owned();
    move |source| BlueGreenError::Query {
        step,
        object,
        source,
    }
}

/// `"schema"."name"`, always quoted.
fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_one_line_naming_kind_object_and_reason() {
        let refusal = Refusal {
            kind: "trigger",
            object: "acme.\"odd\nname\".audit".to_owned(),
            reason: "triggers are not copied",
        };
        assert_eq!(
            refusal.to_string(),
            "trigger acme.\"odd name\".audit: triggers are not copied"
        );

        let error = BlueGreenError::NotCopyable {
            schema: "acme".to_owned(),
            refusals: vec![refusal.clone(), refusal],
        };
        assert_eq!(error.to_string().lines().count(), 1);
    }
}
