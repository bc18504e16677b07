//! Pausing one tenant's traffic at every proxy for the instant of a schema change: the
//! migration runner's side of the pause protocol (the proxies' side is
//! `tenant::catalog::pauses` and `pool::pause`).
//!
//! ```text
//! let pause = Pause::begin(&config, &PauseRequest { tenant, requested_by, max_pause,
//!                                                   drain_timeout }).await?;
//! // one transaction: the schema change and
//! //   UPDATE pgtenant.tenants SET generation = generation + 1 WHERE name = $1
//! // committed before the pause is lifted, so every proxy retires the tenant's pools first
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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::demo::random_secret;
use crate::config::Config;
use crate::tenant::catalog::pauses::MAX_PAUSE;
use crate::tenant::catalog::watch::WATCHER_PREFIX;
use crate::tenant::catalog::{
    self, CatalogError, PAUSE_ACK_CHANNEL, connect_error, describe, field,
};

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
    #[error("tenant {tenant:?} is already paused by {requested_by} (for {} s more)", .expires_in.as_secs())]
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
        "tenant {tenant:?} did not drain within {waited:?}: waiting for {} proxies {waiting_proxies:?} \
         and {busy_backends} backends in a transaction; the pause was lifted",
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

/// An acknowledgement heard on `pgtenant_pause_ack`.
#[derive(Debug)]
struct Ack {
    pid: i32,
    token: String,
    proxy: String,
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
            tracing::warn!(tenant = %self.tenant, error = %lift, "could not lift a failed pause; it expires on its own");
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
        let client = catalog::connect(config).await?;
        let role = tenant_role(&client, tenant).await?;
        let sql = format!(
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity \
             WHERE usename = $1 AND backend_type = 'client backend' AND {IN_TRANSACTION} \
               AND pid <> pg_backend_pid()"
        );
        let row = client
            .query_one(&sql, &[&role])
            .await
            .map_err(|source| PauseError::Query {
                step: "cancel backends in a transaction",
                tenant: tenant.to_owned(),
                source,
            })?;
        let cancelled: i64 = field(&row, 0, "pg_stat_activity")?;

        tracing::info!(%tenant, cancelled, "statements in flight cancelled");
        Ok(usize::try_from(cancelled).unwrap_or(0))
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

/// Opens the pause's own connection and listens for acknowledgements on it.
async fn listen(
    config: &Config,
    tenant: &str,
) -> Result<(Client, mpsc::UnboundedReceiver<Ack>), PauseError> {
    let name = format!("pgtenant pause {tenant}");
    let (client, mut connection) = catalog::pg_config(config, &name)?
        .connect(NoTls)
        .await
        .map_err(|source| connect_error(config, source))?;

    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) if n.channel() == PAUSE_ACK_CHANNEL => {
                    let _ = tx.send(parse_ack(n.process_id(), n.payload()));
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(error = %describe(&error), "pause connection failed");
                    return;
                }
            }
        }
    });

    client
        .batch_execute(&format!("LISTEN {PAUSE_ACK_CHANNEL}"))
        .await
        .map_err(|source| PauseError::Query {
            step: "listen for acknowledgements",
            tenant: tenant.to_owned(),
            source,
        })?;
    Ok((client, rx))
}

/// `<token> <proxy name>`, sent by the proxy whose catalog connection is `pid`.
fn parse_ack(pid: i32, payload: &str) -> Ack {
    let (token, proxy) = payload.split_once(' ').unwrap_or((payload, ""));
    Ack {
        pid,
        token: token.to_owned(),
        proxy: proxy.to_owned(),
    }
}

async fn tenant_role(client: &Client, tenant: &str) -> Result<String, PauseError> {
    let row = client
        .query_opt(
            "SELECT role_name FROM pgtenant.tenants WHERE name = $1",
            &[&tenant],
        )
        .await
        .map_err(|source| PauseError::Query {
            step: "read the tenant",
            tenant: tenant.to_owned(),
            source,
        })?
        .ok_or_else(|| PauseError::UnknownTenant(tenant.to_owned()))?;
    Ok(field(&row, 0, &format!("tenant {tenant:?}"))?)
}

/// Inserts the row, replacing an expired one; someone else's pause in force is an error.
async fn insert(
    client: &Client,
    request: &PauseRequest<'_>,
    token: &str,
) -> Result<(), PauseError> {
    let seconds = (request.max_pause + GRACE).as_secs_f64();
    let inserted = client
        .query_opt(
            "INSERT INTO pgtenant.pauses AS p (tenant, token, requested_by, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
             ON CONFLICT (tenant) DO UPDATE SET token = EXCLUDED.token, \
                 requested_by = EXCLUDED.requested_by, requested_at = EXCLUDED.requested_at, \
                 expires_at = EXCLUDED.expires_at \
             WHERE p.expires_at <= now() \
             RETURNING 1",
            &[&request.tenant, &token, &request.requested_by, &seconds],
        )
        .await
        .map_err(|source| PauseError::Query {
            step: "insert the pause",
            tenant: request.tenant.to_owned(),
            source,
        })?;

    match inserted {
        Some(_) => Ok(()),
        None => Err(held_by_another(client, request.tenant).await),
    }
}

/// The error for a tenant someone else has paused.
async fn held_by_another(client: &Client, tenant: &str) -> PauseError {
    let row = client
        .query_opt(
            "SELECT requested_by, GREATEST(0, EXTRACT(EPOCH FROM expires_at - now()))::float8 \
             FROM pgtenant.pauses WHERE tenant = $1",
            &[&tenant],
        )
        .await;
    let (requested_by, seconds) = match row {
        Ok(Some(row)) => (
            row.try_get::<_, String>(0).unwrap_or_default(),
            row.try_get::<_, f64>(1).unwrap_or_default(),
        ),
        _ => (String::from("?"), 0.0),
    };
    PauseError::AlreadyPaused {
        tenant: tenant.to_owned(),
        requested_by,
        expires_in: Duration::try_from_secs_f64(seconds).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_carry_token_and_proxy_name() {
        let ack = parse_ack(7, "k3y pgtenant catalog watcher 127.0.0.1:6432");
        assert_eq!(ack.pid, 7);
        assert_eq!(ack.token, "k3y");
        assert_eq!(ack.proxy, "pgtenant catalog watcher 127.0.0.1:6432");

        let bare = parse_ack(8, "lonely");
        assert_eq!((bare.token.as_str(), bare.proxy.as_str()), ("lonely", ""));
    }
}
