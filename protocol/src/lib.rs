#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::arithmetic_side_effects))]
//! PostgreSQL v3 wire protocol for pgpilot: bytes in, borrowed views out.
//!
//! No I/O, no runtime, no configuration: the daemon and the load generator drive it.
//!
//! # Layout
//! - [`frame`]: cut a byte stream into whole messages without copying them.
//! - [`startup`]: the untagged packets of the startup phase (StartupMessage, SSLRequest, CancelRequest…).
//! - [`frontend`]: tags and views of the messages a client sends.
//! - [`backend`]: tags and views of the messages a server sends.
//! - [`encode`]: writers for the messages pgpilot originates.
//! - [`classify`]: decides whether SQL text is provably read-only.
//! - [`scram`]: SCRAM-SHA-256 (both sides) and MD5 password hashing, on RustCrypto.
//! - [`error`]: the crate's error type, `ProtocolError`.

pub mod backend;
pub mod classify;
pub mod encode;
pub mod error;
pub mod frame;
pub mod frontend;
pub mod scram;
pub mod startup;

mod cstr;

pub use error::ProtocolError;
pub use frame::{Frame, Header};
