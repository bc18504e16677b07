//! The budget check of catalog changes.
//!
//! Proxies refuse a whole catalog snapshot whose pinned tiers and `pool_size` overrides do
//! not fit in the budget (`max_connections` minus `reserve`), and no later change reaches
//! them until the catalog fits again. So a command that can raise what the tenants are
//! promised measures the catalog inside its transaction before and after its change, with
//! the proxies' own check ([`Config::catalog_fit`]), and refuses a change that leaves the
//! tenants over the budget. A change that does not raise the total is never refused, so a
//! catalog already over the budget (after a lowered `max_connections`) can still be repaired.
//! Measurements queue on an advisory lock held to the end of the transaction, so two changes
//! that each fit cannot together overflow.

use tokio_postgres::Transaction;

use super::error::{ControlError, query};
use crate::config::Config;
use crate::tenant::catalog;

/// Key of the advisory lock that serialises changes to what tenants are promised.
const FIT_LOCK: i64 = 0x7067_7465_6e61_6662;

/// What the catalog promised before a change.
#[derive(Debug, Clone, Copy)]
pub struct Before {
    need: usize,
}

/// Takes the lock and measures the catalog as `tx` sees it, before the change to `tenant`.
pub async fn before(
    tx: &Transaction<'_>,
    config: &Config,
    tenant: &str,
) -> Result<Before, ControlError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FIT_LOCK])
        .await
        .map_err(query("lock the connection budget", tenant))?;

    let snapshot = catalog::load(tx).await?;
    let need = config
        .catalog_fit(&snapshot.tenants)
        .unwrap_or_else(|over| over.need);
    Ok(Before { need })
}

/// Measures the catalog again, the change made in `tx`; refuses the change (described as
/// `change`, e.g. `set-tier big hot`) when it leaves the tenants over the budget and
/// promises them more than before. The caller's error rolls the transaction back.
pub async fn after(
    tx: &Transaction<'_>,
    config: &Config,
    before: Before,
    change: String,
) -> Result<(), ControlError> {
    let snapshot = catalog::load(tx).await?;
    let Err(over) = config.catalog_fit(&snapshot.tenants) else {
        return Ok(());
    };
    if over.need <= before.need {
        return Ok(());
    }

    tracing::debug!(
        change,
        need = over.need,
        budget = over.budget.for_tenants(),
        "catalog change refused: over the connection budget"
    );
    Err(ControlError::OverBudget { change, over })
}
