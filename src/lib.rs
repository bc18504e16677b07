//! pgtenant: a PostgreSQL wire-protocol proxy for products that keep each tenant in its own
//! schema.
//!
//! The modules follow a client's bytes: `frontend` accepts, negotiates TLS and authenticates;
//! `tenant` maps the client to a tenant; `pool` hands out backend connections per tenant;
//! `backend` owns the server connections; `protocol` is the wire format shared by both sides.
//! `control` and `embedded` sit beside the data path: provisioning and a throwaway PostgreSQL.

pub mod backend;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod control;
pub mod embedded;
pub mod frontend;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod server;
pub mod tenant;
pub mod tls;
