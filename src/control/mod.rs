//! The control plane beside the data path: creating tenants in PostgreSQL (`provision`) and
//! the demo fleet used by `pgtenant dev`, the tests and the benchmarks (`demo`).

pub mod demo;
pub mod provision;
