//! Server connections. `connect` opens one and logs in as the tenant's role with the schema
//! pinned; `conn` is the connection itself and what it knows about its server-side state;
//! `sync` makes a connection match what the next client expects (parameters, SQL-level
//! prepared statements) and resets it on release; `pipeline` tracks the responses still owed
//! for what a client sent, so the proxy can add and hide messages without reordering.

pub mod conn;
pub mod connect;
pub mod pipeline;
pub mod statement;
pub mod sync;

pub use conn::{BackendConn, BackendKey};
pub use connect::{ConnectError, connect};
