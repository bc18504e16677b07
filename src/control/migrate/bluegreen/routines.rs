//! Views and functions (procedures included), made again in `next` in dependency order.
//!
//! A view may use a function and a function's signature or `BEGIN ATOMIC` body may use a
//! view, so both are ordered together from `pg_depend`. Functions that need no view come
//! first, before constraints and indexes that may call them; views and the functions that
//! need them come after the keys, since a view grouping by a primary key needs the key.
//! Bodies written as text are not checked while they are created (`check_function_bodies`
//! off), as `pg_dump` does, since they may name objects made later.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::copy::Ctx;
use super::tables::with_options;
use super::{BlueGreenError, qualified};
use crate::tenant::catalog::field;

/// A view or function: the kind (`v` or `f`) and its oid in the live schema.
type Key = (char, u32);

/// One view or function and the statement that makes its copy.
pub(super) struct Routine {
    key: Key,
    name: String,
    sql: String,
}

/// Views and functions of the live schema in two ordered groups.
pub(super) struct Routines {
    /// Functions that need no view.
    pub(super) early: Vec<Routine>,
    /// Views, and functions that need a view.
    pub(super) late: Vec<Routine>,
}

const VIEWS: &str = "
SELECT c.oid, c.relname::text, coalesce(c.reloptions, '{}'), pg_catalog.pg_get_viewdef(c.oid)
FROM pg_catalog.pg_class c WHERE c.relnamespace = $1 AND c.relkind = 'v' ORDER BY 2";

const FUNCTIONS: &str = "
SELECT p.oid, p.proname::text, pg_catalog.pg_get_functiondef(p.oid),
       'CREATE OR REPLACE ' || CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END
           || ' ' || pg_catalog.quote_ident(n.nspname) || '.'
           || pg_catalog.quote_ident(p.proname) || '(',
       CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END
FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE p.pronamespace = $1 AND p.prokind IN ('f', 'p')
ORDER BY 2, 1";

/// Which view or function needs which: a view through its `_RETURN` rule, a function through
/// its argument and result types (a view's row type or an array of it) or its SQL body.
const EDGES: &str = "
WITH dep AS (
    SELECT CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass THEN 'v' ELSE 'f' END AS kind,
           CASE WHEN d.classid = 'pg_catalog.pg_rewrite'::regclass
                THEN (SELECT r.ev_class FROM pg_catalog.pg_rewrite r WHERE r.oid = d.objid)
                ELSE d.objid END AS obj,
           CASE WHEN d.refclassid = 'pg_catalog.pg_proc'::regclass THEN 'f' ELSE 'v' END
               AS ref_kind,
           CASE WHEN d.refclassid = 'pg_catalog.pg_type'::regclass
                THEN (SELECT coalesce(nullif(t.typrelid, 0), e.typrelid)
                      FROM pg_catalog.pg_type t
                      LEFT JOIN pg_catalog.pg_type e ON e.typarray = t.oid
                      WHERE t.oid = d.refobjid)
                ELSE d.refobjid END AS ref
    FROM pg_catalog.pg_depend d
    WHERE d.refclassid IN ('pg_catalog.pg_class'::regclass, 'pg_catalog.pg_proc'::regclass,
                           'pg_catalog.pg_type'::regclass)
      AND ((d.classid = 'pg_catalog.pg_proc'::regclass
            AND d.objid IN (SELECT oid FROM pg_catalog.pg_proc WHERE pronamespace = $1))
        OR (d.classid = 'pg_catalog.pg_rewrite'::regclass
            AND d.objid IN (SELECT r.oid FROM pg_catalog.pg_rewrite r
                            JOIN pg_catalog.pg_class c ON c.oid = r.ev_class
                            WHERE c.relnamespace = $1 AND c.relkind = 'v')))
)
SELECT kind, obj, ref_kind, ref FROM dep WHERE ref IS NOT NULL";

impl Routines {
    /// Reads and orders the live schema's views and functions; `search_path` must name the
    /// live schema only.
    pub(super) async fn read(ctx: &Ctx<'_>) -> Result<Self, BlueGreenError> {
        let mut all = read_views(ctx).await?;
        all.extend(read_functions(ctx).await?);
        let edges = read_edges(ctx).await?;

        let ordered = order(all, &edges, ctx.live)?;
        Ok(split(ordered, &edges))
    }

    /// How many views and functions there are.
    pub(super) fn counts(&self) -> (usize, usize) {
        let views = self
            .early
            .iter()
            .chain(&self.late)
            .filter(|r| r.key.0 == 'v');
        let views = views.count();
        (views, self.early.len() + self.late.len() - views)
    }
}

/// Creates `routines` in `next`, in order; `search_path` must name `next`.
pub(super) async fn create(ctx: &Ctx<'_>, routines: &[Routine]) -> Result<(), BlueGreenError> {
    ctx.run(
        "stop checking function bodies",
        ctx.next,
        "SET LOCAL check_function_bodies = off",
    )
    .await?;
    for routine in routines {
        let object = qualified(ctx.next, &routine.name);
        ctx.run("create a view or function", &object, &routine.sql)
            .await?;
    }
    ctx.run(
        "check function bodies again",
        ctx.next,
        "SET LOCAL check_function_bodies TO DEFAULT",
    )
    .await
}

async fn read_views(ctx: &Ctx<'_>) -> Result<Vec<Routine>, BlueGreenError> {
    let rows = ctx.rows("read the views", VIEWS).await?;
    rows.iter()
        .map(|row| {
            let name: String = field(row, 1, "views")?;
            let options: Vec<String> = field(row, 2, "views")?;
            let definition: String = field(row, 3, "views")?;
            let body = definition.trim_end().trim_end_matches(';');
            Ok(Routine {
                key: ('v', field(row, 0, "views")?),
                sql: format!(
                    "CREATE VIEW {}{} AS {body}",
                    qualified(ctx.next, &name),
                    with_options(&options)
                ),
                name,
            })
        })
        .collect()
}

async fn read_functions(ctx: &Ctx<'_>) -> Result<Vec<Routine>, BlueGreenError> {
    let rows = ctx.rows("read the functions", FUNCTIONS).await?;
    rows.iter()
        .map(|row| {
            let name: String = field(row, 1, "functions")?;
            let definition: String = field(row, 2, "functions")?;
            let header: String = field(row, 3, "functions")?;
            let kind: String = field(row, 4, "functions")?;
            let Some(rest) = definition.strip_prefix(&header) else {
                return Err(BlueGreenError::Definition {
                    object: format!("function {}.{name}", ctx.live),
                    message: format!("its definition does not start with {header:?}"),
                });
            };
            Ok(Routine {
                key: ('f', field(row, 0, "functions")?),
                sql: format!("CREATE {kind} {}({rest}", qualified(ctx.next, &name)),
                name,
            })
        })
        .collect()
}

/// `(dependent, referenced)` pairs.
async fn read_edges(ctx: &Ctx<'_>) -> Result<Vec<(Key, Key)>, BlueGreenError> {
    let rows = ctx.rows("read what views and functions use", EDGES).await?;
    let key = |kind: String, oid: u32| (kind.chars().next().unwrap_or('?'), oid);
    rows.iter()
        .map(|row| {
            let from = key(
                field(row, 0, "dependencies")?,
                field(row, 1, "dependencies")?,
            );
            let to = key(
                field(row, 2, "dependencies")?,
                field(row, 3, "dependencies")?,
            );
            Ok((from, to))
        })
        .collect()
}

/// Orders `all` so each comes after what it uses (Kahn's algorithm, ties by name).
fn order(
    all: Vec<Routine>,
    edges: &[(Key, Key)],
    schema: &str,
) -> Result<Vec<Routine>, BlueGreenError> {
    let mut pending: BTreeMap<(String, Key), Routine> = all
        .into_iter()
        .map(|r| ((r.name.clone(), r.key), r))
        .collect();
    let present: BTreeSet<Key> = pending.keys().map(|(_, key)| *key).collect();
    let mut needs: HashMap<Key, BTreeSet<Key>> = HashMap::new();
    for (from, to) in edges {
        if from != to && present.contains(from) && present.contains(to) {
            needs.entry(*from).or_default().insert(*to);
        }
    }

    let mut done: BTreeSet<Key> = BTreeSet::new();
    let mut ordered = Vec::with_capacity(pending.len());
    while let Some(ready) = next_ready(&pending, &needs, &done) {
        if let Some(routine) = pending.remove(&ready) {
            done.insert(routine.key);
            ordered.push(routine);
        }
    }

    if pending.is_empty() {
        return Ok(ordered);
    }
    let left: Vec<String> = pending.keys().map(|(name, _)| name.clone()).collect();
    Err(BlueGreenError::Cycle {
        schema: schema.to_owned(),
        objects: left.join(", "),
    })
}

/// The first pending routine (by name) whose needs are all done.
fn next_ready(
    pending: &BTreeMap<(String, Key), Routine>,
    needs: &HashMap<Key, BTreeSet<Key>>,
    done: &BTreeSet<Key>,
) -> Option<(String, Key)> {
    pending
        .keys()
        .find(|(_, key)| needs.get(key).is_none_or(|n| n.is_subset(done)))
        .cloned()
}

/// Splits the ordered routines into functions needing no view, and the rest.
fn split(ordered: Vec<Routine>, edges: &[(Key, Key)]) -> Routines {
    let mut needs_view: BTreeSet<Key> = BTreeSet::new();
    let mut routines = Routines {
        early: Vec::new(),
        late: Vec::new(),
    };

    for routine in ordered {
        let uses_view = edges
            .iter()
            .any(|(from, to)| *from == routine.key && needs_view.contains(to));
        if routine.key.0 == 'v' || uses_view {
            needs_view.insert(routine.key);
            routines.late.push(routine);
        } else {
            routines.early.push(routine);
        }
    }
    routines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routine(kind: char, oid: u32, name: &str) -> Routine {
        Routine {
            key: (kind, oid),
            name: name.to_owned(),
            sql: String::new(),
        }
    }

    fn names(routines: &[Routine]) -> Vec<&str> {
        routines.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn views_and_functions_come_after_what_they_use() {
        // b_view uses a_view and f; g takes b_view's row type; h needs nothing.
        let all = vec![
            routine('v', 1, "b_view"),
            routine('v', 2, "a_view"),
            routine('f', 3, "f"),
            routine('f', 4, "g"),
            routine('f', 5, "h"),
        ];
        let edges = [
            (('v', 1), ('v', 2)),
            (('v', 1), ('f', 3)),
            (('f', 4), ('v', 1)),
        ];

        let ordered = order(all, &edges, "acme").expect("no cycle");
        assert_eq!(names(&ordered), ["a_view", "f", "b_view", "g", "h"]);

        let routines = split(ordered, &edges);
        assert_eq!(names(&routines.early), ["f", "h"]);
        assert_eq!(names(&routines.late), ["a_view", "b_view", "g"]);
    }

    #[test]
    fn a_cycle_is_an_error_naming_what_is_left() {
        let all = vec![routine('f', 1, "f"), routine('f', 2, "g")];
        let edges = [(('f', 1), ('f', 2)), (('f', 2), ('f', 1))];
        let error = order(all, &edges, "acme").err().expect("a cycle");
        assert!(error.to_string().contains("f, g"), "{error}");
    }
}
