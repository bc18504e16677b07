//! The client side of the proxy, in the order a connection meets it: `listener` accepts and
//! drives a login (`startup` negotiation and TLS, `auth` with `scram`), then `session` runs
//! the client's transactions, with `relay` translating each client message for the backend
//! and `classify` reading SQL for session-state effects; `guard` refuses what reaches
//! outside the tenant's namespace.

pub mod auth;
pub mod classify;
pub mod guard;
pub mod listener;
pub mod login;
pub mod relay;
pub mod scram;
pub mod session;
pub mod startup;
pub mod state;
pub mod stream;
pub mod support;
