//! The pause gate: how a migration holds one tenant's new transactions at this proxy for the
//! instant of a schema change, without failing any of them.
//!
//! Each tenant has one [`PauseGate`] in [`PauseGates`], shared by every pool the tenant has
//! had, so a gate survives pool replacement. [`TenantPool::acquire`](super::TenantPool)
//! passes the gate before it joins the pool's FIFO queue: while the gate is closed, callers
//! (transactions, and logins that need a backend) wait there, and the wait is not counted
//! against `query_wait_timeout`. Callers that already hold a backend are never stopped. The
//! catalog watcher closes and opens gates to match `pgtenant.pauses`; a gate also opens on its
//! own at the pause's deadline, with a WARN, so a pause never hangs a tenant.
//!
//! The gate counts the tenant's transactions in flight: every caller that passed it, until
//! its lease goes back, in any of the tenant's pools, waiting for a connection included.
//! [`PauseGate::drained`] resolves once that count is zero under a given pause. Passing adds
//! to the count and then reads the gate; closing sets the gate and then reads the count
//! (both sequentially consistent), so a caller either sees the gate closed and steps back,
//! or is seen by the drain. Session-mode and pinned clients hold their lease between
//! transactions, so while one is connected its tenant never drains.
//!
//! Loops: one timer task per pause, sleeping until the pause's deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use metrics::Histogram;
use tokio::sync::{Notify, watch};

use crate::metrics as m;

/// How often a drain re-checks the count, besides being woken when it reaches zero.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// A pause in force at this proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePause {
    /// The token the runner chose; acknowledgements carry it.
    pub token: String,
    /// Who asked for it, as the catalog row says.
    pub requested_by: String,
    /// When this proxy closed the gate.
    pub since: Instant,
    /// When the gate opens on its own.
    pub until: Instant,
}

#[derive(Debug, Clone, Default)]
enum GateState {
    #[default]
    Open,
    Closed(ActivePause),
}

/// What [`PauseGate::close`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// The gate was open and is now closed.
    Paused,
    /// The gate was closed by another pause, now replaced by this one; it stayed closed.
    Replaced,
    /// The gate was already closed by this pause.
    Unchanged,
    /// This pause already expired here; the gate stays open.
    Lapsed,
}

/// Why a gate opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    Resumed,
    Expired,
}

/// One tenant's pause gate and count of transactions in flight.
#[derive(Debug)]
pub struct PauseGate {
    tenant: String,
    closed: AtomicBool,
    /// Pauses ended so far; a backend connection opened before the last one may hold plans
    /// or prepared statements the schema change made stale.
    ended: AtomicU64,
    state: watch::Sender<GateState>,
    in_flight: AtomicUsize,
    idle: Notify,
    lapsed: Mutex<Option<String>>,
    wait: Histogram,
}

/// One caller counted in flight from the gate until it is dropped (with its lease).
#[derive(Debug)]
pub struct InFlight {
    gate: Arc<PauseGate>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gate.leave();
    }
}

impl PauseGate {
    /// An open gate for `tenant`.
    pub fn new(tenant: &str) -> Arc<Self> {
        Arc::new(Self {
            tenant: tenant.to_owned(),
            closed: AtomicBool::new(false),
            ended: AtomicU64::new(0),
            state: watch::Sender::new(GateState::Open),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            lapsed: Mutex::new(None),
            wait: m::pause_wait(tenant),
        })
    }

    /// Passes the gate, waiting while it is closed (until it opens or the pause expires),
    /// and counts the caller in flight until the returned guard is dropped.
    pub async fn pass(self: &Arc<Self>) -> InFlight {
        let mut waiting_since: Option<Instant> = None;
        loop {
            self.in_flight.fetch_add(1, SeqCst);
            let counted = InFlight { gate: self.clone() };
            if !self.closed.load(SeqCst) {
                if let Some(since) = waiting_since {
                    self.wait.record(since.elapsed().as_secs_f64());
                }
                return counted;
            }

            drop(counted);
            waiting_since.get_or_insert_with(Instant::now);
            self.wait_open().await;
        }
    }

    /// Waits until the gate is open, opening it if its pause's deadline has passed.
    async fn wait_open(&self) {
        let mut state = self.state.subscribe();
        loop {
            let until = match &*state.borrow_and_update() {
                GateState::Open => return,
                GateState::Closed(pause) => pause.until,
            };
            if Instant::now() >= until {
                self.expire_due();
                return;
            }

            tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep_until(until.into()) => {
                    self.expire_due();
                    return;
                }
            }
        }
    }

    fn leave(&self) {
        if self.in_flight.fetch_sub(1, SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Closes the gate for the pause `token`, which the catalog says ends in `remaining`.
    pub fn close(
        self: &Arc<Self>,
        token: &str,
        requested_by: &str,
        remaining: Duration,
    ) -> Closing {
        if self.lapsed_token().as_deref() == Some(token) {
            return Closing::Lapsed;
        }
        let now = Instant::now();
        let pause = ActivePause {
            token: token.to_owned(),
            requested_by: requested_by.to_owned(),
            since: now,
            until: now.checked_add(remaining).unwrap_or(now),
        };

        let mut outcome = Closing::Unchanged;
        let mut replaced = None;
        self.state.send_if_modified(|state| match state {
            GateState::Closed(held) if held.token == token => false,
            GateState::Closed(held) => {
                outcome = Closing::Replaced;
                replaced = Some(std::mem::replace(held, pause.clone()));
                true
            }
            GateState::Open => {
                outcome = Closing::Paused;
                self.closed.store(true, SeqCst);
                *state = GateState::Closed(pause.clone());
                true
            }
        });

        self.report_closing(outcome, &pause, replaced.as_ref());
        if matches!(outcome, Closing::Paused | Closing::Replaced) {
            self.arm_expiry(&pause);
        }
        outcome
    }

    fn report_closing(&self, outcome: Closing, pause: &ActivePause, old: Option<&ActivePause>) {
        let expires_in = pause.until.saturating_duration_since(pause.since);
        match (outcome, old) {
            (Closing::Paused, _) => {
                m::paused_tenants(1.0);
                tracing::info!(
                    tenant = %self.tenant,
                    token = %pause.token,
                    requested_by = %pause.requested_by,
                    ?expires_in,
                    "tenant paused: new transactions wait at the gate"
                );
            }
            (Closing::Replaced, Some(old)) => {
                m::pause_ended("replaced");
                tracing::info!(
                    tenant = %self.tenant,
                    token = %pause.token,
                    old_token = %old.token,
                    requested_by = %pause.requested_by,
                    ?expires_in,
                    "tenant pause replaced by a new one; the gate stays closed"
                );
            }
            _ => {}
        }
    }

    /// Opens the gate when the pause's deadline comes, in case nothing else does.
    fn arm_expiry(self: &Arc<Self>, pause: &ActivePause) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let gate: Weak<Self> = Arc::downgrade(self);
        let (token, until) = (pause.token.clone(), pause.until);
        runtime.spawn(async move {
            tokio::time::sleep_until(until.into()).await;
            if let Some(gate) = gate.upgrade() {
                gate.open(Opening::Expired, |p| p.token == token);
            }
        });
    }

    /// How many pauses of this tenant have ended here. Connections opened under an older
    /// count are not reused (`TenantPool`), whatever ended the pause: a resume, an expiry.
    pub fn epoch(&self) -> u64 {
        self.ended.load(SeqCst)
    }

    /// Opens the gate (the pause's row is gone); false if it was open.
    pub fn resume(&self) -> bool {
        self.open(Opening::Resumed, |_| true)
    }

    /// The catalog says the pause `token` has expired: opens the gate if it still holds.
    pub fn lapse(&self, token: &str) -> bool {
        self.open(Opening::Expired, |p| p.token == token)
    }

    fn expire_due(&self) {
        let now = Instant::now();
        self.open(Opening::Expired, |p| now >= p.until);
    }

    fn open(&self, why: Opening, applies: impl Fn(&ActivePause) -> bool) -> bool {
        let mut ended = None;
        self.state.send_if_modified(|state| match state {
            GateState::Closed(pause) if applies(pause) => {
                // Counted before anyone can pass, so no caller reuses a connection from
                // before the change.
                self.ended.fetch_add(1, SeqCst);
                self.closed.store(false, SeqCst);
                ended = match std::mem::take(state) {
                    GateState::Closed(pause) => Some(pause),
                    GateState::Open => None,
                };
                true
            }
            _ => false,
        });

        let Some(pause) = ended else {
            return false;
        };
        self.report_opening(why, &pause);
        true
    }

    fn report_opening(&self, why: Opening, pause: &ActivePause) {
        m::paused_tenants(-1.0);
        let paused_for = pause.since.elapsed();
        match why {
            Opening::Resumed => {
                m::pause_ended("resumed");
                tracing::info!(
                    tenant = %self.tenant,
                    token = %pause.token,
                    ?paused_for,
                    "tenant resumed: the pause gate is open"
                );
            }
            Opening::Expired => {
                m::pause_ended("expired");
                if let Ok(mut lapsed) = self.lapsed.lock() {
                    *lapsed = Some(pause.token.clone());
                }
                tracing::warn!(
                    tenant = %self.tenant,
                    token = %pause.token,
                    requested_by = %pause.requested_by,
                    ?paused_for,
                    "tenant pause expired before it was lifted; the gate opened on its own"
                );
            }
        }
    }

    fn lapsed_token(&self) -> Option<String> {
        self.lapsed.lock().ok().and_then(|t| t.clone())
    }

    /// The pause in force, if the gate is closed.
    pub fn pause(&self) -> Option<ActivePause> {
        match &*self.state.borrow() {
            GateState::Open => None,
            GateState::Closed(pause) => Some(pause.clone()),
        }
    }

    /// Callers counted in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Waits until nothing of the tenant is in flight while the pause `token` holds: true
    /// then, false as soon as the gate opens or another pause takes its place.
    pub async fn drained(&self, token: &str) -> bool {
        let mut state = self.state.subscribe();
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();

            let holds = matches!(&*state.borrow_and_update(),
                GateState::Closed(pause) if pause.token == token);
            if !holds {
                return false;
            }
            if self.in_flight.load(SeqCst) == 0 {
                return true;
            }

            tokio::select! {
                () = &mut idle => {}
                _ = state.changed() => {}
                () = tokio::time::sleep(DRAIN_POLL) => {}
            }
        }
    }
}

/// Every tenant's pause gate, kept across pool replacement and reloads.
#[derive(Debug, Default)]
pub struct PauseGates {
    map: DashMap<String, Arc<PauseGate>>,
}

impl PauseGates {
    /// The gate of `tenant`, created open on first use.
    pub fn for_tenant(&self, tenant: &str) -> Arc<PauseGate> {
        if let Some(gate) = self.map.get(tenant) {
            return gate.clone();
        }
        self.map
            .entry(tenant.to_owned())
            .or_insert_with(|| PauseGate::new(tenant))
            .clone()
    }

    /// Tenants whose gate is closed now.
    pub fn closed(&self) -> Vec<(String, Arc<PauseGate>)> {
        self.map
            .iter()
            .filter(|g| g.pause().is_some())
            .map(|g| (g.key().clone(), g.value().clone()))
            .collect()
    }

    /// Forgets the gates of tenants no longer served, unless closed or still in use.
    pub fn prune(&self, served: impl Fn(&str) -> bool) {
        self.map
            .retain(|name, gate| served(name) || gate.pause().is_some() || gate.in_flight() > 0);
    }
}

#[cfg(test)]
mod tests;
