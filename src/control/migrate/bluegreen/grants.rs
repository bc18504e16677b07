//! Privileges, default privileges and comments of the live schema, given to `next`.
//!
//! Privileges are compared rather than replayed: a new object already has its owner's
//! privileges and whatever default privileges applied, so for every object whose privileges
//! differ from the live one's, everything is revoked and the live list granted again. Objects
//! are matched by name (functions by name and argument types, printed unqualified under each
//! schema's own `search_path`). Table privileges go before column privileges, since revoking
//! a table privilege also revokes it on every column.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Row;

use super::copy::Ctx;
use super::{BlueGreenError, qualified, query};
use crate::control::provision::{quote_ident, quote_literal};
use crate::tenant::catalog::field;

/// An object's kind (`SCHEMA`, `TABLE`, `SEQUENCE`, `COLUMN`, `FUNCTION`, `PROCEDURE`), name
/// and column or argument list.
type Object = (String, String, String);

/// One privilege: grantee (`None` for `PUBLIC`), privilege, grant option.
type Grant = (Option<String>, String, bool);

/// Every object's privileges in one schema.
pub(super) type Acl = BTreeMap<Object, BTreeSet<Grant>>;

/// What is neither compared nor diffed, just replayed: comments and default privileges.
pub(super) struct Extras {
    comments: Vec<(Object, String)>,
    default_privileges: Vec<DefaultPrivilege>,
}

struct DefaultPrivilege {
    role: String,
    objects: String,
    grant: Grant,
}

/// An identity column's sequence, which has no name of its own in the copy.
const NOT_IDENTITY: &str = "NOT (c.relkind = 'S' AND EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass
    AND d.objid = c.oid AND d.deptype = 'i'))";

/// `kind, name, sub, acl, owner, kind for acldefault` per object of schema `$1`.
fn acl_objects() -> String {
    format!(
        "SELECT 'SCHEMA' AS kind, '' AS name, '' AS sub, n.nspacl AS acl, n.nspowner AS owner,
                'n'::\"char\" AS dkind
         FROM pg_catalog.pg_namespace n WHERE n.oid = $1
         UNION ALL
         SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.relname::text, '',
                c.relacl, c.relowner, CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::\"char\"
         FROM pg_catalog.pg_class c
         WHERE c.relnamespace = $1 AND c.relkind IN ('r', 'v', 'S') AND {NOT_IDENTITY}
         UNION ALL
         SELECT 'COLUMN', c.relname::text, a.attname::text, a.attacl, c.relowner, NULL
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = $1 AND c.relkind IN ('r', 'v') AND a.attnum > 0
           AND NOT a.attisdropped AND a.attacl IS NOT NULL
         UNION ALL
         SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.proname::text,
                pg_catalog.pg_get_function_identity_arguments(p.oid), p.proacl, p.proowner,
                'f'::\"char\"
         FROM pg_catalog.pg_proc p WHERE p.pronamespace = $1 AND p.prokind IN ('f', 'p')"
    )
}

fn acl_query() -> String {
    format!(
        "SELECT o.kind, o.name, o.sub,
                CASE WHEN e.grantee = 0 THEN NULL
                     ELSE pg_catalog.pg_get_userbyid(e.grantee)::text END,
                e.privilege_type, e.is_grantable
         FROM ({}) o
         CROSS JOIN LATERAL pg_catalog.aclexplode(coalesce(o.acl, CASE WHEN o.dkind IS NULL
             THEN '{{}}'::aclitem[] ELSE pg_catalog.acldefault(o.dkind, o.owner) END)) e",
        acl_objects()
    )
}

fn comments_query() -> String {
    format!(
        "SELECT 'SCHEMA', '', '', d.description FROM pg_catalog.pg_description d
         WHERE d.classoid = 'pg_catalog.pg_namespace'::regclass AND d.objoid = $1
         UNION ALL
         SELECT CASE WHEN d.objsubid <> 0 THEN 'COLUMN' WHEN c.relkind = 'v' THEN 'VIEW'
                     WHEN c.relkind = 'S' THEN 'SEQUENCE' WHEN c.relkind = 'i' THEN 'INDEX'
                     ELSE 'TABLE' END,
                c.relname::text, coalesce(a.attname::text, ''), d.description
         FROM pg_catalog.pg_description d JOIN pg_catalog.pg_class c ON c.oid = d.objoid
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid
         WHERE d.classoid = 'pg_catalog.pg_class'::regclass AND c.relnamespace = $1
           AND c.relkind IN ('r', 'v', 'S', 'i') AND {NOT_IDENTITY}
         UNION ALL
         SELECT 'CONSTRAINT', c.relname::text, k.conname::text, d.description
         FROM pg_catalog.pg_description d JOIN pg_catalog.pg_constraint k ON k.oid = d.objoid
         JOIN pg_catalog.pg_class c ON c.oid = k.conrelid
         WHERE d.classoid = 'pg_catalog.pg_constraint'::regclass AND c.relnamespace = $1
         UNION ALL
         SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.proname::text,
                pg_catalog.pg_get_function_identity_arguments(p.oid), d.description
         FROM pg_catalog.pg_description d JOIN pg_catalog.pg_proc p ON p.oid = d.objoid
         WHERE d.classoid = 'pg_catalog.pg_proc'::regclass AND p.pronamespace = $1
         ORDER BY 1, 2, 3"
    )
}

const DEFAULT_PRIVILEGES: &str = "
SELECT pg_catalog.pg_get_userbyid(d.defaclrole)::text,
       CASE d.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
            WHEN 'f' THEN 'FUNCTIONS' WHEN 'T' THEN 'TYPES' ELSE 'SCHEMAS' END,
       CASE WHEN e.grantee = 0 THEN NULL ELSE pg_catalog.pg_get_userbyid(e.grantee)::text END,
       e.privilege_type, e.is_grantable
FROM pg_catalog.pg_default_acl d CROSS JOIN LATERAL pg_catalog.aclexplode(d.defaclacl) e
WHERE d.defaclnamespace = $1 ORDER BY 1, 2, 3, 4";

/// The privileges of every object of the schema `oid`, as named under the current
/// `search_path`.
pub(super) async fn read_acl(ctx: &Ctx<'_>, oid: u32) -> Result<Acl, BlueGreenError> {
    let rows = ctx
        .tx
        .query(acl_query().as_str(), &[&oid])
        .await
        .map_err(query("read privileges", ctx.live))?;

    let mut acl = Acl::new();
    for row in &rows {
        let object = (
            field(row, 0, "privileges")?,
            field(row, 1, "privileges")?,
            field(row, 2, "privileges")?,
        );
        let grant = (
            field(row, 3, "privileges")?,
            field(row, 4, "privileges")?,
            field(row, 5, "privileges")?,
        );
        acl.entry(object).or_default().insert(grant);
    }
    Ok(acl)
}

/// Gives each object of `next` the live object's privileges where they differ; runs as
/// the owner with `search_path` naming `next`.
pub(super) async fn apply_acl(ctx: &Ctx<'_>, live: &Acl, next: &Acl) -> Result<(), BlueGreenError> {
    let none = BTreeSet::new();
    let mut objects: Vec<&Object> = live.keys().chain(next.keys()).collect();
    objects.sort_by(|a, b| (a.0 == "COLUMN", a).cmp(&(b.0 == "COLUMN", b)));
    objects.dedup();

    for object in objects {
        let wanted = live.get(object).unwrap_or(&none);
        let present = next.get(object).unwrap_or(&none);
        if wanted != present {
            regrant(ctx, object, wanted, present).await?;
        }
    }
    Ok(())
}

async fn regrant(
    ctx: &Ctx<'_>,
    object: &Object,
    wanted: &BTreeSet<Grant>,
    present: &BTreeSet<Grant>,
) -> Result<(), BlueGreenError> {
    let (on, columns) = grant_target(ctx.next, object);
    let holders: BTreeSet<&Option<String>> =
        present.iter().map(|(grantee, _, _)| grantee).collect();
    let mut sql = Vec::new();

    for grantee in holders {
        sql.push(format!(
            "REVOKE ALL{columns} ON {on} FROM {}",
            grantee_sql(grantee)
        ));
    }
    for (grantee, privilege, grantable) in wanted {
        let privilege = keyword(privilege, &on)?;
        let option = if *grantable { " WITH GRANT OPTION" } else { "" };
        sql.push(format!(
            "GRANT {privilege}{columns} ON {on} TO {}{option}",
            grantee_sql(grantee)
        ));
    }
    ctx.run("copy privileges", &on, &sql.join("; ")).await
}

/// `ON` target and column list for GRANT and REVOKE.
fn grant_target(next: &str, (kind, name, sub): &Object) -> (String, String) {
    match kind.as_str() {
        "SCHEMA" => (format!("SCHEMA {}", quote_ident(next)), String::new()),
        "COLUMN" => (
            format!("TABLE {}", qualified(next, name)),
            format!(" ({})", quote_ident(sub)),
        ),
        "FUNCTION" | "PROCEDURE" => (
            format!("{kind} {}({sub})", qualified(next, name)),
            String::new(),
        ),
        _ => (format!("{kind} {}", qualified(next, name)), String::new()),
    }
}

fn grantee_sql(grantee: &Option<String>) -> String {
    grantee
        .as_deref()
        .map_or_else(|| "PUBLIC".to_owned(), quote_ident)
}

/// A privilege name as `aclexplode` prints it, checked to be a bare keyword.
fn keyword<'p>(privilege: &'p str, object: &str) -> Result<&'p str, BlueGreenError> {
    if !privilege.is_empty()
        && privilege
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b' ')
    {
        return Ok(privilege);
    }
    Err(BlueGreenError::Definition {
        object: object.to_owned(),
        message: format!("unexpected privilege {privilege:?}"),
    })
}

impl Extras {
    /// Reads comments and default privileges; `search_path` must name the live schema only.
    pub(super) async fn read(ctx: &Ctx<'_>) -> Result<Self, BlueGreenError> {
        let rows = ctx.rows("read comments", &comments_query()).await?;
        let comments = rows.iter().map(comment).collect::<Result<_, _>>()?;

        let rows = ctx
            .rows("read default privileges", DEFAULT_PRIVILEGES)
            .await?;
        let default_privileges = rows
            .iter()
            .map(default_privilege)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            comments,
            default_privileges,
        })
    }

    /// Comments the copies as the live objects are commented.
    pub(super) async fn apply_comments(&self, ctx: &Ctx<'_>) -> Result<(), BlueGreenError> {
        for ((kind, name, sub), text) in &self.comments {
            let on = match kind.as_str() {
                "SCHEMA" => format!("SCHEMA {}", quote_ident(ctx.next)),
                "COLUMN" => format!("COLUMN {}.{}", qualified(ctx.next, name), quote_ident(sub)),
                "CONSTRAINT" => {
                    format!(
                        "CONSTRAINT {} ON {}",
                        quote_ident(sub),
                        qualified(ctx.next, name)
                    )
                }
                "FUNCTION" | "PROCEDURE" => format!("{kind} {}({sub})", qualified(ctx.next, name)),
                _ => format!("{kind} {}", qualified(ctx.next, name)),
            };
            let sql = format!("COMMENT ON {on} IS {}", quote_literal(text));
            ctx.run("copy a comment", &on, &sql).await?;
        }
        Ok(())
    }

    /// Gives `next` the live schema's default privileges; runs as pgtenant's role, which may
    /// act for every role that set them.
    pub(super) async fn apply_default_privileges(
        &self,
        ctx: &Ctx<'_>,
    ) -> Result<(), BlueGreenError> {
        for default in &self.default_privileges {
            let (grantee, privilege, grantable) = &default.grant;
            let privilege = keyword(privilege, ctx.next)?;
            let sql = format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT {privilege} ON {} TO {}{}",
                quote_ident(&default.role),
                quote_ident(ctx.next),
                keyword(&default.objects, ctx.next)?,
                grantee_sql(grantee),
                if *grantable { " WITH GRANT OPTION" } else { "" },
            );
            ctx.run("copy default privileges", ctx.next, &sql).await?;
        }
        Ok(())
    }
}

fn comment(row: &Row) -> Result<(Object, String), BlueGreenError> {
    let object = (
        field(row, 0, "comments")?,
        field(row, 1, "comments")?,
        field(row, 2, "comments")?,
    );
    Ok((object, field(row, 3, "comments")?))
}

fn default_privilege(row: &Row) -> Result<DefaultPrivilege, BlueGreenError> {
    let owner = "default privileges";
    Ok(DefaultPrivilege {
        role: field(row, 0, owner)?,
        objects: field(row, 1, owner)?,
        grant: (
            field(row, 2, owner)?,
            field(row, 3, owner)?,
            field(row, 4, owner)?,
        ),
    })
}
