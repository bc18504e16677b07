//! Dependency queries over `pg_depend`, shared by the refusal checks, the detachment check
//! of a finished copy and the purge of retained schemas. An object belongs to a schema when
//! it is one of its relations, routines, types, constraints, statistics objects, operators or
//! collations, or a rule, default, trigger or policy of one of its relations.

/// Objects outside schema `$1` that depend on an object of it. Internal dependents (a table's
/// toast table, a range type's casts) are part of that object; foreign keys are reported on
/// their own.
pub(super) fn outside_dependents_sql() -> String {
    format!(
        "WITH m AS ({}) \
         SELECT DISTINCT {} || ' depends on ' \
                || pg_catalog.pg_describe_object(d.refclassid, d.refobjid, 0) \
         FROM pg_catalog.pg_depend d JOIN m ON (m.classid, m.objid) = (d.refclassid, d.refobjid) \
         WHERE NOT EXISTS (SELECT 1 FROM m o WHERE (o.classid, o.objid) = (d.classid, d.objid)) \
           AND d.deptype <> 'i' \
           AND NOT (d.classid = 'pg_catalog.pg_constraint'::regclass AND EXISTS ( \
                SELECT 1 FROM pg_catalog.pg_constraint k \
                WHERE k.oid = d.objid AND k.contype = 'f')) \
         ORDER BY 1",
        members("$1"),
        DESCRIBE_DEPENDENT
    )
}

/// A dependent `d.objid` described as a person would name it: a view rather than its
/// `_RETURN` rule.
const DESCRIBE_DEPENDENT: &str = "CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass \
    THEN pg_catalog.pg_describe_object('pg_catalog.pg_class'::regclass, \
         (SELECT r.ev_class FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid), 0) \
    ELSE pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid) END";

/// Every object that belongs to the schema whose oid is `param`, as `(classid, objid)` rows
/// of `pg_depend`: relations, routines, types, constraints, and the rules, defaults,
/// triggers and policies of its relations.
pub(super) fn members(param: &str) -> String {
    let class = |name: &str| format!("'pg_catalog.{name}'::regclass::oid");
    let by_relation = |catalog: &str, column: &str| {
        format!(
            "SELECT {}, x.oid FROM pg_catalog.{catalog} x \
             JOIN pg_catalog.pg_class c ON c.oid = x.{column} WHERE c.relnamespace = {param}",
            class(catalog)
        )
    };
    let direct = [
        ("pg_class", "relnamespace"),
        ("pg_proc", "pronamespace"),
        ("pg_type", "typnamespace"),
        ("pg_constraint", "connamespace"),
        ("pg_statistic_ext", "stxnamespace"),
        ("pg_operator", "oprnamespace"),
        ("pg_collation", "collnamespace"),
    ]
    .map(|(catalog, ns)| {
        format!(
            "SELECT {} AS classid, oid AS objid FROM pg_catalog.{catalog} WHERE {ns} = {param}",
            class(catalog)
        )
    });
    let attached = [
        by_relation("pg_rewrite", "ev_class"),
        by_relation("pg_attrdef", "adrelid"),
        by_relation("pg_trigger", "tgrelid"),
        by_relation("pg_policy", "polrelid"),
    ];
    direct
        .iter()
        .chain(&attached)
        .cloned()
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Dependencies of objects of `next` (named by `$1`) on objects of the live schema (oid
/// `$2`): `(dependent, referenced)` descriptions, at most one row.
pub(super) fn detached_sql() -> String {
    format!(
        "WITH n AS ({}), l AS ({}) \
         SELECT pg_catalog.pg_describe_object(d.classid, d.objid, d.objsubid), \
                pg_catalog.pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) \
         FROM pg_catalog.pg_depend d \
         JOIN n ON (n.classid, n.objid) = (d.classid, d.objid) \
         JOIN l ON (l.classid, l.objid) = (d.refclassid, d.refobjid) \
         LIMIT 1",
        members("(SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1)"),
        members("$2::oid")
    )
}
