//! Pausing one tenant's traffic at every proxy for the instant of a schema change: the
//! migration runner's side of the pause protocol (the proxies' side is
//! `tenant::catalog::pauses` and `pool::pause`).
//!
//! ```text
//! let pause = Pause::begin(&config, &PauseRequest { tenant, requested_by, max_pause,
//!                                                   drain_timeout }).await?;
//! // one transaction: the schema change, committed before the pause is lifted; when the
//! // gate opens, every proxy stops reusing the tenant's connections opened before it
//! let paused_for = pause.resume().await?;
//! ```
//!
//! [`Pause::begin`] opens a connection of its own to the catalog (as `[catalog] user`, named
//! `pgtenant pause <tenant>`): tokio-postgres hands notifications only to whoever drives the
//! connection, so the pause drives its own and keeps it until [`Pause::resume`]. On it, it
//! `LISTEN`s on `pgtenant_pause_ack`, then inserts the tenant's row in `pgtenant.pauses`
//! with a fresh token and `expires_at = now() + max_pause + 1 s`. Every proxy's catalog
//! watcher closes the tenant's gate (new transactions wait, those in flight go on) and,
//! once nothing of the tenant is in flight there, sends `<token> <proxy name>` on
//! `pgtenant_pause_ack`. `begin` returns when every live proxy has acknowledged and no
//! backend of the tenant's role is inside a transaction, which also covers clients that
//! bypass the proxies. Live proxies are the connections to this database whose
//! `application_name` starts with `pgtenant catalog watcher `, told apart by their pid (the
//! pid that sent the acknowledgement), so two proxies with the same listen address on two
//! hosts still count twice. After `drain_timeout`, `begin` deletes the row again, so
//! traffic resumes, and fails with [`PauseError::NotDrained`].
//!
//! A pause dropped without `resume` leaves its row: every proxy opens the gate on its own at
//! `expires_at`, and the next `begin` for that tenant replaces the expired row. A proxy
//! whose catalog connection is down does not hear of the pause and is not waited for.
//!
//! Privileges: a `[catalog] user` that is not a superuser needs `pg_read_all_stats`, to see
//! the state of the tenant role's backends (without it `begin` fails with
//! [`PauseError::Invisible`] rather than guess), and `pg_signal_backend` for
//! [`Pause::cancel_in_flight`], which a runner calls from another task while `begin` waits.
//!
//! Loop: while `begin` waits, it reads `pg_stat_activity` every 10 ms and wakes at once on
//! each acknowledgement.

mod row;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::demo::random_secret;
use crate::config::Config;
use crate::tenant::catalog::pauses::MAX_PAUSE;
use crate::tenant::catalog::watch::WATCHER_PREFIX;
use crate::tenant::catalog::{self, CatalogError, describe, field};
use row::{Ack, insert, listen, tenant_role};

/// Added to `max_pause` in `expires_at`, so a runner that resumes right at `max_pause` does
/// not race the proxies' own expiry.
const GRACE: Duration = Duration::from_secs(1);

/// How often `begin` reads `pg_stat_activity` while it waits.
const POLL: Duration = Duration::from_millis(10);

/// The states of a backend inside a transaction.
const IN_TRANSACTION: &str =
    "state IN ('active', 'idle in transaction', 'idle in transaction (aborted)')";

/// What to pause and for how long at most.
#[derive(Debug, Clone, Copy)]
pub struct PauseRequest<'a> {
    /// The tenant, by name.
    pub tenant: &'a str,
    /// Who asks, recorded in the row (`migrate:<os user>`, say).
    pub requested_by: &'a str,
    /// How long the proxies hold the tenant at most; they open the gate on their own after.
    /// At most one day.
    pub max_pause: Duration,
    /// How long `begin` waits for every proxy and backend to drain before giving up; never
    /// longer than `max_pause`, since the gates open then anyway.
    pub drain_timeout: Duration,
}

/// Why a pause could not be taken or lifted.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// No catalog, or it cannot be reached.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// No such tenant in the catalog.
    #[error("no tenant named {0:?} in the catalog")]
    UnknownTenant(String),
    /// Someone else holds a pause on the tenant.
    #[error(
        "tenant {tenant:?} is already paused by {requested_by} (for {} s more)",
        .expires_in.as_secs()
    )]
    AlreadyPaused {
        /// The tenant.
        tenant: String,
        /// Who holds the pause.
        requested_by: String,
        /// Until it expires.
        expires_in: Duration,
    },
    /// The tenant did not drain in time; the pause was lifted again.
    #[error(
        "tenant {tenant:?} did not drain within {waited:?}: {} proxies had not acknowledged \
         {waiting_proxies:?} and {busy_backends} backends were in a transaction; the pause \
         was lifted",
        .waiting_proxies.len()
    )]
    NotDrained {
        /// The tenant.
        tenant: String,
        /// How long `begin` waited.
        waited: Duration,
        /// Live proxies that had not acknowledged, by name.
        waiting_proxies: Vec<String>,
        /// Backends of the tenant's role still inside a transaction.
        busy_backends: usize,
    },
    /// `pg_stat_activity` hides the state of the tenant role's backends from `[catalog] user`.
    #[error(
        "cannot see whether backends of role {role:?} are in a transaction: [catalog] user \
         needs pg_read_all_stats (and track_activities on); the pause was lifted"
    )]
    Invisible {
        /// The tenant's role.
        role: String,
    },
    /// A statement failed.
    #[error("cannot {step} for tenant {tenant:?}: {}", describe(.source))]
    Query {
        /// What was being done.
        step: &'static str,
        /// The tenant.
        tenant: String,
        /// The server's error.
        source: tokio_postgres::Error,
    },
    /// The pause's own connection ended.
    #[error("the pause connection for tenant {0:?} was closed")]
    Lost(String),
    /// At `resume`, the pause had already expired (or its row was removed by someone else):
    /// traffic may have flowed before the change was finished.
    #[error("the pause of tenant {tenant:?} lapsed before it was resumed (after {paused_for:?})")]
    Lapsed {
        /// The tenant.
        tenant: String,
        /// Since `begin` inserted the row.
        paused_for: Duration,
    },
}

/// Where the drain stands.
#[derive(Debug, Default)]
struct Drain {
    acked: HashMap<i32, String>,
    waiting: Vec<String>,
    busy: usize,
}

/// A pause in force on one tenant at every live proxy. Lifted by [`Pause::resume`]; dropped
/// without it, the row stays and the proxies open the gate at its expiry.
#[derive(Debug)]
pub struct Pause {
    tenant: String,
    role: String,
    token: String,
    client: Client,
    acks: mpsc::UnboundedReceiver<Ack>,
    paused_at: Instant,
    expires_at: Instant,
    drained_in: Duration,
    acked_by: Vec<String>,
}

impl Pause {
    /// Pauses the tenant and waits until every live proxy has drained it and none of its
    /// role's backends is in a transaction; see the module docs.
    pub async fn begin(config: &Config, request: &PauseRequest<'_>) -> Result<Self, PauseError> {
        let max_pause = request.max_pause.min(MAX_PAUSE);
        let request = &PauseRequest {
            max_pause,
            drain_timeout: request.drain_timeout.min(max_pause),
            ..*request
        };
        let (client, acks) = listen(config, request.tenant).await?;
        let role = tenant_role(&client, request.tenant).await?;
        let token = random_secret(24);

        insert(&client, request, &token).await?;
        let paused_at = Instant::now();
        let mut pause = Self {
            tenant: request.tenant.to_owned(),
            role,
            token,
            client,
            acks,
            paused_at,
            expires_at: paused_at + request.max_pause,
            drained_in: Duration::ZERO,
            acked_by: Vec::new(),
        };

        match pause.wait_drained(request.drain_timeout).await {
            Ok(acked_by) => Ok(pause.drained(acked_by)),
            Err(error) => Err(pause.give_up(error).await),
        }
    }

    fn drained(mut self, acked_by: Vec<String>) -> Self {
        self.drained_in = self.paused_at.elapsed();
        self.acked_by = acked_by;
        tracing::info!(
            tenant = %self.tenant,
            token = %self.token,
            proxies = self.acked_by.len(),
            drained_in = ?self.drained_in,
            "tenant paused and drained at every proxy"
        );
        self
    }

    /// Lifts a pause that did not drain; the error that ended it is what the caller sees.
    async fn give_up(self, error: PauseError) -> PauseError {
        if let Err(lift) = self.delete_row().await {
            tracing::warn!(
                tenant = %self.tenant,
                error = %lift,
                "could not lift a failed pause; it expires on its own"
            );
        }
        tracing::info!(tenant = %self.tenant, token = %self.token, %error, "pause lifted");
        error
    }

    /// The tenant paused.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The pause's token, as in `pgtenant.pauses` and the acknowledgements.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// When the row was inserted: the gates closed shortly after.
    pub fn paused_at(&self) -> Instant {
        self.paused_at
    }

    /// When the proxies will open the gate on their own, at the earliest (`paused_at` plus
    /// `max_pause`; the row says one second later).
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// How long `begin` waited for the tenant to drain.
    pub fn drained_in(&self) -> Duration {
        self.drained_in
    }

    /// The proxies that acknowledged, by name, sorted.
    pub fn acked_by(&self) -> &[String] {
        &self.acked_by
    }

    /// Cancels the statements of the tenant role's backends still in a transaction
    /// (`pg_cancel_backend`), for the runner's `cancel` drain policy; returns how many were
    /// signalled. It takes the configuration rather than a `Pause` because it is called
    /// while `begin` still waits for the drain, from another task, on a connection of its
    /// own. A cancelled statement inside `BEGIN` leaves its transaction aborted until the
    /// client rolls back; a backend idle in a transaction has no statement to cancel and is
    /// left alone.
    pub async fn cancel_in_flight(config: &Config, tenant: &str) -> Result<usize, PauseError> {
        Self::signal_in_flight(config, tenant, "pg_cancel_backend").await
    }

    /// Ends the tenant role's backends still in a transaction (`pg_terminate_backend`), idle
    /// ones included, for the `terminate` drain policy; returns how many. Their
    /// transactions roll back, and the proxy tells each client the connection was lost.
    pub async fn terminate_in_flight(config: &Config, tenant: &str) -> Result<usize, PauseError> {
        Self::signal_in_flight(config, tenant, "pg_terminate_backend").await
    }

    async fn signal_in_flight(
        config: &Config,
        tenant: &str,
        signal: &'static str,
    ) -> Result<usize, PauseError> {
        let client = catalog::connect(config).await?;
        let role = tenant_role(&client, tenant).await?;
        let sql = format!(
            "SELECT count(*) FILTER (WHERE {signal}(pid)) FROM pg_stat_activity \
             WHERE usename = $1 AND backend_type = 'client backend' AND {IN_TRANSACTION} \
               AND pid <> pg_backend_pid()"
        );
        let row = client
            .query_one(&sql, &[&role])
            .await
            .map_err(|source| PauseError::Query {
                step: "signal backends in a transaction",
                tenant: tenant.to_owned(),
                source,
            })?;
        let signalled: i64 = field(&row, 0, "pg_stat_activity")?;

        tracing::info!(%tenant, signal, signalled, "backends in a transaction signalled");
        Ok(usize::try_from(signalled).unwrap_or(0))
    }

    /// Deletes the row (only if it still carries this pause's token) so every proxy opens
    /// the gate; returns how long the tenant was paused. [`PauseError::Lapsed`] if the pause
    /// had expired or was removed meanwhile.
    pub async fn resume(self) -> Result<Duration, PauseError> {
        let in_force = self.delete_row().await?;
        let paused_for = self.paused_at.elapsed();
        if !in_force {
            return Err(PauseError::Lapsed {
                tenant: self.tenant,
                paused_for,
            });
        }

        tracing::info!(tenant = %self.tenant, token = %self.token, ?paused_for, "tenant resumed");
        Ok(paused_for)
    }

    /// Deletes this pause's row; true if it was there and not yet expired.
    async fn delete_row(&self) -> Result<bool, PauseError> {
        let row = self
            .client
            .query_opt(
                "DELETE FROM pgtenant.pauses WHERE tenant = $1 AND token = $2 \
                 RETURNING expires_at > now()",
                &[&self.tenant, &self.token],
            )
            .await
            .map_err(self.query_error("delete the pause"))?;
        match row {
            Some(row) => Ok(field(&row, 0, "pauses")?),
            None => Ok(false),
        }
    }

    /// Waits until every live proxy acknowledged and the role has no transaction open;
    /// returns the proxies that acknowledged.
    async fn wait_drained(&mut self, timeout: Duration) -> Result<Vec<String>, PauseError> {
        let deadline = self.paused_at + timeout;
        let mut drain = Drain::default();
        loop {
            self.take_acks(&mut drain)?;
            self.look(&mut drain).await?;
            if drain.waiting.is_empty() && drain.busy == 0 {
                let mut names: Vec<String> = drain.acked.into_values().collect();
                names.sort();
                return Ok(names);
            }

            if Instant::now() >= deadline {
                return Err(self.not_drained(drain, timeout));
            }
            self.next_ack(&mut drain, deadline).await?;
        }
    }

    fn not_drained(&self, drain: Drain, waited: Duration) -> PauseError {
        PauseError::NotDrained {
            tenant: self.tenant.clone(),
            waited,
            waiting_proxies: drain.waiting,
            busy_backends: drain.busy,
        }
    }

    /// Records the acknowledgements of this pause already received.
    fn take_acks(&mut self, drain: &mut Drain) -> Result<(), PauseError> {
        loop {
            match self.acks.try_recv() {
                Ok(ack) => self.note(ack, drain),
                Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Err(PauseError::Lost(self.tenant.clone()));
                }
            }
        }
    }

    fn note(&self, ack: Ack, drain: &mut Drain) {
        if ack.token == self.token {
            drain.acked.insert(ack.pid, ack.proxy);
        }
    }

    /// Sleeps until the next acknowledgement, the next poll or the deadline.
    async fn next_ack(&mut self, drain: &mut Drain, deadline: Instant) -> Result<(), PauseError> {
        let wake = deadline.min(Instant::now() + POLL);
        tokio::select! {
            ack = self.acks.recv() => match ack {
                Some(ack) => self.note(ack, drain),
                None => return Err(PauseError::Lost(self.tenant.clone())),
            },
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        Ok(())
    }

    /// Reads which live proxies have not acknowledged and how many backends are busy.
    async fn look(&self, drain: &mut Drain) -> Result<(), PauseError> {
        let proxies = self
            .client
            .query(
                "SELECT pid, application_name FROM pg_stat_activity \
                 WHERE datname = current_database() AND backend_type = 'client backend' \
                   AND left(application_name, length($1)) = $1 ORDER BY application_name",
                &[&WATCHER_PREFIX],
            )
            .await
            .map_err(self.query_error("list the proxies"))?;

        drain.waiting.clear();
        for row in &proxies {
            let pid: i32 = field(row, 0, "pg_stat_activity")?;
            if !drain.acked.contains_key(&pid) {
                drain.waiting.push(field(row, 1, "pg_stat_activity")?);
            }
        }
        drain.busy = self.busy_backends().await?;
        Ok(())
    }

    /// Backends of the tenant's role inside a transaction.
    async fn busy_backends(&self) -> Result<usize, PauseError> {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE {IN_TRANSACTION}), \
                    count(*) FILTER (WHERE state IS NULL OR state = 'disabled') \
             FROM pg_stat_activity \
             WHERE usename = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        );
        let row = self
            .client
            .query_one(&sql, &[&self.role])
            .await
            .map_err(self.query_error("read the tenant's backends"))?;

        let (busy, hidden): (i64, i64) = (
            field(&row, 0, "pg_stat_activity")?,
            field(&row, 1, "pg_stat_activity")?,
        );
        if hidden > 0 {
            return Err(PauseError::Invisible {
                role: self.role.clone(),
            });
        }
        Ok(usize::try_from(busy).unwrap_or(0))
    }

    fn query_error(&self, step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PauseError {
        let tenant = self.tenant.clone();
        move |source| PauseError::Query {
            step,
            tenant,
            source,
        }
    }
}
