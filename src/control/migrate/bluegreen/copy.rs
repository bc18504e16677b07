//! [`build_next`]: the steps of a copy, in order. The live schema is locked and checked for
//! refusals first; then `next` is created by pgtenant's role and owned by the tenant's, every
//! definition is read with `search_path` naming the live schema, and everything is made again
//! as the tenant's role with `search_path` naming `next`. A last check proves that nothing
//! in `next` still depends on the live schema.

use std::time::{Duration, Instant};

use tokio_postgres::{Row, Transaction};

use super::constraints::Finish;
use super::depend::detached_sql;
use super::grants::{self, Acl, Extras};
use super::refuse::{refusals, schema_oid};
use super::routines::{self, Routines};
use super::tables::{self, Identity, Sequence, Table};
use super::{BlueGreenError, CopyReport, query};
use crate::control::migrate::{Target, become_self};
use crate::control::provision::quote_ident;
use crate::tenant::catalog::field;

/// The schemas of one copy and the transaction it runs in.
pub(super) struct Ctx<'a> {
    /// The caller's transaction.
    pub(super) tx: &'a Transaction<'a>,
    /// The live schema.
    pub(super) live: &'a str,
    /// Its oid, the `$1` of every definition query.
    pub(super) live_oid: u32,
    /// The schema being built.
    pub(super) next: &'a str,
}

impl Ctx<'_> {
    /// Rows of a query about the live schema, which takes its oid as `$1`.
    pub(super) async fn rows(
        &self,
        step: &'static str,
        sql: &str,
    ) -> Result<Vec<Row>, BlueGreenError> {
        self.tx
            .query(sql, &[&self.live_oid])
            .await
            .map_err(query(step, self.live))
    }

    /// Runs statements without parameters; a failure names `object`.
    pub(super) async fn run(
        &self,
        step: &'static str,
        object: &str,
        sql: &str,
    ) -> Result<(), BlueGreenError> {
        self.tx
            .batch_execute(sql)
            .await
            .map_err(query(step, object))
    }

    /// Resolves unqualified names in `schema` (then `pg_catalog`) until changed again.
    async fn search_path(&self, schema: &str) -> Result<(), BlueGreenError> {
        let sql = format!(
            "SET LOCAL search_path TO {}, pg_catalog",
            quote_ident(schema)
        );
        self.run("set search_path", schema, &sql).await
    }
}

/// Everything read from the live schema before anything is made.
struct Plan {
    sequences: Vec<Sequence>,
    tables: Vec<Table>,
    identities: Vec<Identity>,
    routines: Routines,
    finish: Finish,
    extras: Extras,
    acl: Acl,
}

impl Plan {
    async fn read(ctx: &Ctx<'_>) -> Result<Self, BlueGreenError> {
        Ok(Self {
            sequences: tables::read_sequences(ctx).await?,
            tables: tables::read_tables(ctx).await?,
            identities: tables::read_identities(ctx).await?,
            routines: Routines::read(ctx).await?,
            finish: Finish::read(ctx).await?,
            extras: Extras::read(ctx).await?,
            acl: grants::read_acl(ctx, ctx.live_oid).await?,
        })
    }
}

/// Creates `next`, owned by the tenant's role, with a copy of the structure and data of
/// `target.schema`. Refuses, listing every [`Refusal`](super::Refusal), before creating
/// anything. Commits nothing; runs as pgtenant's role and returns to it.
pub async fn build_next(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    next: &str,
) -> Result<CopyReport, BlueGreenError> {
    let started = Instant::now();
    let live_oid = check_schemas(tx, target, next).await?;
    let ctx = Ctx {
        tx,
        live: target.schema,
        live_oid,
        next,
    };

    tables::lock(&ctx).await?;
    let refused = refusals(tx, target.schema).await?;
    if !refused.is_empty() {
        return Err(BlueGreenError::NotCopyable {
            schema: target.schema.to_owned(),
            refusals: refused,
        });
    }

    let mut report = copy(&ctx, target.role).await?;
    report.duration = started.elapsed();
    tracing::info!(
        tenant = target.tenant,
        live = target.schema,
        next,
        tables = report.tables,
        rows = report.rows,
        duration_ms = report.duration.as_secs_f64() * 1000.0,
        "blue/green copy built"
    );
    Ok(report)
}

/// The copy proper, from creating `next` to the detachment check.
async fn copy(ctx: &Ctx<'_>, role: &str) -> Result<CopyReport, BlueGreenError> {
    let sql = format!(
        "CREATE SCHEMA {} AUTHORIZATION {}",
        quote_ident(ctx.next),
        quote_ident(role)
    );
    ctx.run("create the schema", ctx.next, &sql).await?;

    let sql = format!("SET LOCAL ROLE {}", quote_ident(role));
    ctx.run("switch to the tenant role", ctx.live, &sql).await?;
    let made = read_and_make(ctx).await;

    // A failure found by pgtenant rather than the server leaves the transaction usable, so
    // the caller gets its own role back either way.
    let back = become_self(ctx.tx)
        .await
        .map_err(query("switch back from the tenant role", ctx.live));
    let (report, extras) = made?;
    back?;

    extras.apply_default_privileges(ctx).await?;
    check_detached(ctx).await?;
    Ok(report)
}

/// Reads the plan with `search_path` naming the live schema, then makes it in `next`.
async fn read_and_make(ctx: &Ctx<'_>) -> Result<(CopyReport, Extras), BlueGreenError> {
    ctx.search_path(ctx.live).await?;
    let plan = Plan::read(ctx).await?;

    ctx.search_path(ctx.next).await?;
    let report = make(ctx, &plan).await?;
    Ok((report, plan.extras))
}

/// Makes everything in `plan`, in dependency order; runs as the tenant's role with
/// `search_path` naming `next`.
async fn make(ctx: &Ctx<'_>, plan: &Plan) -> Result<CopyReport, BlueGreenError> {
    tables::create_sequences(ctx, &plan.sequences).await?;
    let rows = tables::create_tables(ctx, &plan.tables).await?;
    tables::set_identities(ctx, &plan.identities).await?;

    routines::create(ctx, &plan.routines.early).await?;
    plan.finish.apply_keys(ctx).await?;
    routines::create(ctx, &plan.routines.late).await?;
    plan.finish.apply_defaults(ctx).await?;

    plan.extras.apply_comments(ctx).await?;
    let next_oid = schema_oid(ctx.tx, ctx.next)
        .await?
        .ok_or_else(|| BlueGreenError::NoSchema(ctx.next.to_owned()))?;
    let next_acl = grants::read_acl(ctx, next_oid).await?;
    grants::apply_acl(ctx, &plan.acl, &next_acl).await?;

    let (views, functions) = plan.routines.counts();
    Ok(CopyReport {
        tables: plan.tables.len(),
        rows,
        sequences: plan.sequences.len() + plan.identities.len(),
        views,
        functions,
        indexes: plan.finish.index_count(),
        duration: Duration::ZERO,
    })
}

/// The live schema's oid, once it is known to exist and be the tenant's, and `next` not to.
async fn check_schemas(
    tx: &Transaction<'_>,
    target: &Target<'_>,
    next: &str,
) -> Result<u32, BlueGreenError> {
    let row = tx
        .query_opt(
            "SELECT n.oid, pg_catalog.pg_get_userbyid(n.nspowner)::text, \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $2) \
             FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
            &[&target.schema, &next],
        )
        .await
        .map_err(query("look up the schemas", target.schema))?
        .ok_or_else(|| BlueGreenError::NoSchema(target.schema.to_owned()))?;

    let owner: String = field(&row, 1, "pg_namespace")?;
    if owner != target.role {
        return Err(BlueGreenError::WrongOwner {
            schema: target.schema.to_owned(),
            owner,
            role: target.role.to_owned(),
        });
    }
    if field(&row, 2, "pg_namespace")? {
        return Err(BlueGreenError::SchemaExists(next.to_owned()));
    }
    Ok(field(&row, 0, "pg_namespace")?)
}

/// Refuses the copy if any object of `next` depends on an object of the live schema.
async fn check_detached(ctx: &Ctx<'_>) -> Result<(), BlueGreenError> {
    let sql = detached_sql();
    let row = ctx
        .tx
        .query_opt(sql.as_str(), &[&ctx.next, &ctx.live_oid])
        .await
        .map_err(query("check that the copy is detached", ctx.next))?;

    let Some(row) = row else {
        return Ok(());
    };
    Err(BlueGreenError::NotDetached {
        live: ctx.live.to_owned(),
        dependent: field(&row, 0, "dependencies")?,
        referenced: field(&row, 1, "dependencies")?,
    })
}
