//! pgpilot: a thread-per-core PostgreSQL proxy that pools connections and sends writes to the
//! primary and reads to replicas.
//!
//! ```text
//! client ──► core k: SO_REUSEPORT listener ──► Session (startup, auth)
//!                                                 │ relay: frames in, frames out, no payload copies
//!                                                 ▼
//!                                    Router: classify each unit → primary | replica i
//!                                                 │
//!                                                 ▼
//!                            core k's Pool[(backend, user, database)] ──► Backend
//!                                                 ▲
//! Control plane (one thread, off the data path):  │ versioned ClusterState snapshots
//!   health checks ─ DNS re-resolution ─ signals ─► crossbeam-channel ─► every core
//! ```
//!
//! # Layout
//! - [`config`]: the TOML model; `Config::load` → validated, immutable `Config`.
//! - [`proxy`]: starts the control plane and one runtime per core; the handle stops them.
//! - [`control`]: cluster state, control and core messages, the control-plane loop.
//! - [`health`]: the checks (on a thread of their own) and the hysteresis that turns them
//!   into detach, attach, lag exclusion and slow start.
//! - [`worker`]: a worker core's thread and monoio runtime; a worker that dies ends the process.
//! - [`core`]: one runtime's state: pools, sessions (for cancel), the control channel it follows.
//! - [`listener`]: SO_REUSEPORT listeners (socket2) and the accept loop.
//! - [`session`]: one client: startup and auth, then a sans-IO session core (routing, pooling,
//!   statement rewriting) inside a thin I/O shell.
//! - [`router`]: picks the backend for a route; pure.
//! - [`pool`]: per-core connection pools with bounded checkout.
//! - [`backend`]: one server connection: connect, authenticate, parameters.
//! - [`tcp`]: keepalive and TCP_USER_TIMEOUT on every client and backend socket.
//! - [`catalog`]: learns from the primary which functions may write.
//! - [`cluster`]: starts a local primary + streaming replicas (demo and tests).
//! - [`demo`]: `pgpilot demo`.
//! - [`error`]: the daemon's error type.

pub mod admin;
pub mod auth_query;
pub mod backend;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod control;
pub mod core;
pub mod demo;
pub mod error;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod permits;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod session;
pub mod tcp;
pub mod tls;
pub mod worker;

pub use config::Config;
pub use proxy::{Proxy, StartError};
