//! What a copy refuses, found up front: each check is one catalog query naming the objects of
//! one kind the copy cannot reproduce, so a refused schema is reported whole and nothing is
//! created. See the module documentation of `bluegreen` for the list and the reasons.

use tokio_postgres::GenericClient;
use tokio_postgres::error::SqlState;

use super::depend::{members, outside_dependents_sql};
use super::{BlueGreenError, Refusal, query};
use crate::tenant::catalog::field;

/// One kind of refused object: a query taking the schema's oid as `$1` and returning one
/// text column, the objects' names.
struct Check {
    kind: &'static str,
    reason: &'static str,
    sql: String,
    /// Reads a catalog older PostgreSQL versions lack, which then have nothing to refuse.
    newer_catalog: bool,
}

impl Check {
    fn new(kind: &'static str, reason: &'static str, sql: &str) -> Self {
        Self {
            kind,
            reason,
            sql: sql.to_owned(),
            newer_catalog: false,
        }
    }

    fn on_newer_catalog(self) -> Self {
        Self {
            newer_catalog: true,
            ..self
        }
    }
}

/// Schema objects of other kinds, refused whole: kind, reason, catalog, and the prefix of
/// the catalog's `name` and `namespace` columns.
const OTHER_OBJECTS: &[(&str, &str, &str, &str)] = &[
    ("operator", "operators are not copied", "pg_operator", "opr"),
    (
        "operator class",
        "operator classes are not copied",
        "pg_opclass",
        "opc",
    ),
    (
        "operator family",
        "operator families are not copied",
        "pg_opfamily",
        "opf",
    ),
    (
        "collation",
        "collations are not copied",
        "pg_collation",
        "coll",
    ),
    (
        "conversion",
        "conversions are not copied",
        "pg_conversion",
        "con",
    ),
    (
        "text search configuration",
        "text search objects are not copied",
        "pg_ts_config",
        "cfg",
    ),
    (
        "text search dictionary",
        "text search objects are not copied",
        "pg_ts_dict",
        "dict",
    ),
    (
        "text search parser",
        "text search objects are not copied",
        "pg_ts_parser",
        "prs",
    ),
    (
        "text search template",
        "text search objects are not copied",
        "pg_ts_template",
        "tmpl",
    ),
    (
        "statistics object",
        "extended statistics are not copied",
        "pg_statistic_ext",
        "stx",
    ),
];

/// `schema.relation` for a `pg_class` row `c` joined with its namespace `n`.
const REL: &str = "format('%I.%I', n.nspname, c.relname)";

/// Every object of `schema` the copy cannot reproduce faithfully; empty when the schema can
/// be copied.
pub async fn refusals(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Vec<Refusal>, BlueGreenError> {
    let oid = schema_oid(client, schema)
        .await?
        .ok_or_else(|| BlueGreenError::NoSchema(schema.to_owned()))?;
    let mut found = Vec::new();

    for check in checks() {
        for object in run_check(client, &check, oid, schema).await? {
            found.push(Refusal {
                kind: check.kind,
                object,
                reason: check.reason,
            });
        }
    }
    Ok(found)
}

/// The oid of `schema`, if it exists.
pub(super) async fn schema_oid(
    client: &impl GenericClient,
    schema: &str,
) -> Result<Option<u32>, BlueGreenError> {
    let row = client
        .query_opt(
            "SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await
        .map_err(query("look up the schema", schema))?;
    row.map(|row| field(&row, 0, "pg_namespace").map_err(BlueGreenError::from))
        .transpose()
}

async fn run_check(
    client: &impl GenericClient,
    check: &Check,
    oid: u32,
    schema: &str,
) -> Result<Vec<String>, BlueGreenError> {
    let rows = match client.query(check.sql.as_str(), &[&oid]).await {
        Ok(rows) => rows,
        Err(error) if check.newer_catalog && error.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            return Ok(Vec::new());
        }
        Err(error) => return Err(query("check what the copy refuses", schema)(error)),
    };
    rows.iter()
        .map(|row| field(row, 0, check.kind).map_err(BlueGreenError::from))
        .collect()
}

/// The checks, in the order their refusals are reported.
fn checks() -> Vec<Check> {
    let mut all = relation_checks();
    all.extend(table_form_checks());
    all.extend(type_checks());
    all.extend(routine_checks());
    all.extend(OTHER_OBJECTS.iter().map(|(kind, reason, catalog, prefix)| {
        Check::new(kind, reason, &other_objects(catalog, prefix))
    }));
    all.extend(link_checks());
    all
}

/// Objects of `catalog` in the schema, whose columns are `{prefix}name` and
/// `{prefix}namespace`.
fn other_objects(catalog: &str, prefix: &str) -> String {
    format!(
        "SELECT format('%I.%I', n.nspname, x.{prefix}name) FROM pg_catalog.{catalog} x \
         JOIN pg_catalog.pg_namespace n ON n.oid = x.{prefix}namespace \
         WHERE x.{prefix}namespace = $1 ORDER BY 1"
    )
}

/// `FROM pg_class c JOIN pg_namespace n` restricted to the schema, for relation checks.
fn relations(condition: &str) -> String {
    format!(
        "SELECT {REL} FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relnamespace = $1 AND ({condition}) ORDER BY 1"
    )
}

/// Triggers, rules and policies: `{what}` of a relation `c`, from `{from}` joined on `{on}`.
fn on_relations(what: &str, from: &str, on: &str, condition: &str) -> String {
    format!(
        "SELECT format('%I.%I.%I', n.nspname, c.relname, {what}) FROM {from} \
         JOIN pg_catalog.pg_class c ON c.oid = {on} \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relnamespace = $1 AND {condition} ORDER BY 1"
    )
}

/// Triggers, rules and row-level security on the schema's relations.
fn relation_checks() -> Vec<Check> {
    vec![
        Check::new(
            "trigger",
            "triggers are not copied",
            &on_relations(
                "t.tgname",
                "pg_catalog.pg_trigger t",
                "t.tgrelid",
                "NOT t.tgisinternal",
            ),
        ),
        Check::new(
            "rule",
            "rules are not copied",
            &on_relations(
                "r.rulename",
                "pg_catalog.pg_rewrite r",
                "r.ev_class",
                "r.rulename <> '_RETURN'",
            ),
        ),
        Check::new(
            "row-level security policy",
            "row-level security is not copied",
            &on_relations("p.polname", "pg_catalog.pg_policy p", "p.polrelid", "true"),
        ),
        Check::new(
            "row-level security",
            "row-level security is not copied (the table has it enabled or forced)",
            &relations("c.relrowsecurity OR c.relforcerowsecurity"),
        ),
    ]
}

/// Tables of forms the copy does not make: materialized, partitioned, foreign, typed,
/// elsewhere than the default tablespace, or inheriting.
fn table_form_checks() -> Vec<Check> {
    vec![
        Check::new(
            "materialized view",
            "materialized views are not copied",
            &relations("c.relkind = 'm'"),
        ),
        Check::new(
            "partitioned table",
            "partitioned tables and partitions are not copied",
            &relations("c.relkind = 'p' OR c.relispartition"),
        ),
        Check::new(
            "foreign table",
            "foreign tables are not copied",
            &relations("c.relkind = 'f'"),
        ),
        Check::new(
            "typed table",
            "tables made from a type (OF type) are not copied",
            &relations("c.reloftype <> 0"),
        ),
        Check::new(
            "relation",
            "relations in a tablespace of their own are not copied",
            &relations("c.reltablespace <> 0"),
        ),
        Check::new(
            "table inheritance",
            "table inheritance is not copied",
            "SELECT format('%I.%I inherits from %I.%I', \
                            n.nspname, c.relname, pn.nspname, p.relname) \
             FROM pg_catalog.pg_inherits i \
             JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_class p ON p.oid = i.inhparent \
             JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE NOT c.relispartition AND (c.relnamespace = $1 OR p.relnamespace = $1) \
             ORDER BY 1",
        ),
    ]
}

/// User-defined types of `typtype` in the schema, array types left out (their element type is
/// reported instead).
fn types(condition: &str) -> String {
    format!(
        "SELECT format('%I.%I', n.nspname, t.typname) FROM pg_catalog.pg_type t \
         JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
         WHERE t.typnamespace = $1 AND ({condition}) \
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid) \
         ORDER BY 1"
    )
}

fn type_checks() -> Vec<Check> {
    vec![
        Check::new(
            "enum type",
            "user-defined types are not copied",
            &types("t.typtype = 'e'"),
        ),
        Check::new(
            "domain",
            "user-defined types are not copied",
            &types("t.typtype = 'd'"),
        ),
        Check::new(
            "range type",
            "user-defined types are not copied",
            &types("t.typtype = 'r'"),
        ),
        Check::new(
            "base type",
            "user-defined types are not copied",
            &types("t.typtype IN ('b', 'p')"),
        ),
        Check::new(
            "composite type",
            "user-defined types are not copied",
            &relations("c.relkind = 'c'"),
        ),
        Check::new(
            "column",
            "its type belongs to the schema, and the copied column would keep the live one's",
            "SELECT format('%I.%I.%I', n.nspname, c.relname, a.attname) \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_catalog.pg_type e ON e.typarray = t.oid \
             WHERE c.relnamespace = $1 AND c.relkind = 'r' AND a.attnum > 0 \
               AND NOT a.attisdropped AND (t.typnamespace = $1 OR e.typnamespace = $1) \
             ORDER BY 1",
        ),
    ]
}

/// `schema.name(arguments)` for a `pg_proc` row `p` joined with its namespace `n`.
const ROUTINE: &str = "format('%I.%I(%s)', n.nspname, p.proname, \
                               pg_catalog.pg_get_function_identity_arguments(p.oid))";

/// A routine `p` that is part of another object (a range type's constructors), made and
/// dropped with it.
const INTERNAL_ROUTINE: &str = "EXISTS (SELECT 1 FROM pg_catalog.pg_depend i \
     WHERE i.classid = 'pg_catalog.pg_proc'::regclass AND i.objid = p.oid AND i.deptype = 'i')";

/// The schema's own routines (`p`, namespace `n`, language `l`) that meet `condition`.
fn routines(what: &str, condition: &str) -> String {
    format!(
        "SELECT {what} FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
         WHERE p.pronamespace = $1 AND NOT {INTERNAL_ROUTINE} AND ({condition}) ORDER BY 1"
    )
}

fn routine_checks() -> Vec<Check> {
    vec![
        Check::new(
            "aggregate",
            "aggregates are not copied",
            &routines(ROUTINE, "p.prokind = 'a'"),
        ),
        Check::new(
            "function",
            "only SQL and PL/pgSQL functions are copied",
            &routines(
                &format!("{ROUTINE} || ' in ' || l.lanname"),
                "p.prokind <> 'a' AND l.lanname NOT IN ('sql', 'plpgsql')",
            ),
        ),
        Check::new(
            "generated column",
            "its expression calls a function of the schema, which the copy would keep calling",
            "SELECT DISTINCT format('%I.%I.%I', n.nspname, c.relname, a.attname) \
             FROM pg_catalog.pg_attrdef d \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
             JOIN pg_catalog.pg_class c ON c.oid = d.adrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_attrdef'::regclass \
                  AND dep.objid = d.oid AND dep.refclassid = 'pg_catalog.pg_proc'::regclass \
             JOIN pg_catalog.pg_proc p ON p.oid = dep.refobjid \
             WHERE c.relnamespace = $1 AND a.attgenerated <> '' AND p.pronamespace = $1 \
             ORDER BY 1",
        ),
        Check::new(
            "object",
            "not owned by the schema's owner, who makes and owns the copy",
            &format!(
                "SELECT x.what || ' (owned by ' || pg_catalog.quote_ident(r.rolname) || ')' \
                 FROM (SELECT {REL} AS what, c.relowner AS owner FROM pg_catalog.pg_class c \
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                       WHERE c.relnamespace = $1 AND c.relkind <> 'i' \
                       UNION ALL \
                       SELECT {ROUTINE}, p.proowner FROM pg_catalog.pg_proc p \
                       JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                       WHERE p.pronamespace = $1 AND NOT {INTERNAL_ROUTINE}) x \
                 JOIN pg_catalog.pg_roles r ON r.oid = x.owner \
                 WHERE x.owner <> (SELECT nspowner FROM pg_catalog.pg_namespace WHERE oid = $1) \
                 ORDER BY 1"
            ),
        ),
    ]
}

/// Links between the schema and the rest of the database.
fn link_checks() -> Vec<Check> {
    vec![
        Check::new(
            "extension",
            "extensions installed in the schema are not copied",
            "SELECT pg_catalog.quote_ident(extname) FROM pg_catalog.pg_extension \
             WHERE extnamespace = $1 ORDER BY 1",
        ),
        Check::new(
            "extension object",
            "objects belonging to an extension are not copied",
            &format!(
                "WITH m AS ({}) \
                 SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) \
                        || ' (extension ' || x.extname || ')' \
                 FROM pg_catalog.pg_depend d JOIN m ON (m.classid, m.objid) = (d.classid, d.objid) \
                 JOIN pg_catalog.pg_extension x ON x.oid = d.refobjid \
                 WHERE d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e' \
                 ORDER BY 1",
                members("$1")
            ),
        ),
        Check::new(
            "foreign key",
            "foreign keys to or from another schema are not copied",
            "SELECT format('%I on %I.%I references %I.%I', k.conname, cn.nspname, c.relname, \
                           fn.nspname, f.relname) \
             FROM pg_catalog.pg_constraint k \
             JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
             JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_catalog.pg_class f ON f.oid = k.confrelid \
             JOIN pg_catalog.pg_namespace fn ON fn.oid = f.relnamespace \
             WHERE k.contype = 'f' AND (c.relnamespace = $1) <> (f.relnamespace = $1) \
             ORDER BY 1",
        ),
        Check::new(
            "dependent object",
            "it is outside the schema and would keep pointing at the retired copy",
            &outside_dependents_sql(),
        ),
        Check::new(
            "publication",
            "publications of the whole schema would keep publishing the retired copy",
            "SELECT pg_catalog.quote_ident(p.pubname) FROM pg_catalog.pg_publication_namespace s \
             JOIN pg_catalog.pg_publication p ON p.oid = s.pnpubid WHERE s.pnnspid = $1 \
             ORDER BY 1",
        )
        .on_newer_catalog(),
    ]
}
