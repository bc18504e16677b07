//! The PostgreSQL wire protocol as far as the proxy needs it.
//!
//! `frame` splits byte streams into messages without copying bodies; `message` reads the few
//! bodies that change routing or session state and builds the few messages the proxy writes
//! itself; `sqlstate` holds every SQLSTATE the proxy raises; `error` turns proxy failures into
//! `ErrorResponse` frames. Everything here is pure: no I/O, no async.

pub mod error;
pub mod frame;
pub mod message;
pub mod sqlstate;

pub use error::{ClientError, ErrorKind, Severity};
pub use frame::{FrameError, next_frame};
