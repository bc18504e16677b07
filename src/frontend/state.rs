//! What a client expects any backend to look like: its reported parameters, the session
//! items to replay (settings, SQL prepared statements), its protocol-level statements, and a
//! fingerprint of the replayable part so that a backend already in that state is used as is.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::classify::Effect;
use super::relay::{Statement, Statements};
use crate::backend::BackendConn;
use crate::backend::conn::{ItemKind, SessionItems};
use crate::backend::sync::SETTABLE;

/// A client's session state as the proxy carries it between backends.
#[derive(Debug, Clone, Default)]
pub struct ClientState {
    /// Reported parameters, as the client last heard them.
    pub reported: HashMap<String, String>,
    /// Settings and SQL prepared statements to replay.
    pub items: SessionItems,
    /// Settings given at login: what `RESET` and `DISCARD ALL` return to.
    pub startup: SessionItems,
    /// Protocol-level named statements.
    pub statements: Statements,
    /// The unnamed statement from the client's last `Parse`, until a simple query.
    pub unnamed: Option<Arc<Statement>>,
    /// Digest of the settable parameters and items; `None` after a change.
    fingerprint: Option<u64>,
}

impl ClientState {
    /// A fresh state from what the login produced.
    pub fn new(reported: HashMap<String, String>, items: SessionItems) -> Self {
        Self {
            reported,
            startup: items.clone(),
            items,
            ..Self::default()
        }
    }

    /// Digest of everything a backend sync applies. Equal digests mean a backend left in
    /// one client's state needs no statement to serve the other.
    pub fn fingerprint(&mut self) -> u64 {
        if let Some(fp) = self.fingerprint {
            return fp;
        }

        let mut hasher = DefaultHasher::new();
        for name in SETTABLE {
            self.reported.get(*name).hash(&mut hasher);
        }
        self.items.hash(&mut hasher);
        let fp = hasher.finish();
        self.fingerprint = Some(fp);
        fp
    }

    /// Records a `ParameterStatus` the client received.
    pub fn note_parameter(&mut self, name: String, value: String) {
        self.reported.insert(name, value);
        self.fingerprint = None;
    }

    /// Drops an item the server refused to recreate.
    pub fn forget_item(&mut self, key: &(ItemKind, String)) {
        self.items.remove(key);
        self.fingerprint = None;
    }

    /// Applies a completed statement's effect here and on the backend that ran it.
    pub fn apply(&mut self, effect: Effect, conn: &mut BackendConn) {
        apply_effect(effect, self, conn);
        self.fingerprint = None;
    }
}

/// Applies a completed statement's session effect to both the client and the backend.
fn apply_effect(effect: Effect, state: &mut ClientState, conn: &mut BackendConn) {
    match effect {
        Effect::SetItem { kind, name, sql } => {
            state.items.insert((kind, name.clone()), sql.clone());
            conn.items.insert((kind, name), sql);
        }
        Effect::ResetItem { kind, name } => {
            let key = (kind, name);
            conn.items.remove(&key);
            match state.startup.get(&key) {
                Some(sql) => state.items.insert(key, sql.clone()),
                None => state.items.remove(&key),
            };
        }
        Effect::ResetAll => {
            state.items.retain(|(k, _), _| *k != ItemKind::Setting);
            conn.items.retain(|(k, _), _| *k != ItemKind::Setting);
            state.items.extend(state.startup.clone());
        }
        Effect::DeallocateAll => {
            state.items.retain(|(k, _), _| *k != ItemKind::Prepared);
            conn.items.retain(|(k, _), _| *k != ItemKind::Prepared);
            state.statements.clear();
            conn.prepared.clear();
        }
        Effect::DiscardAll => {
            state.unnamed = None;
            conn.unnamed = None;
            state.items = state.startup.clone();
            conn.items.clear();
            state.statements.clear();
            conn.prepared.clear();
        }
        Effect::None | Effect::Pin(_) => {}
    }
}
