//! Integration tests: pgpilot in-process in front of a real primary and two streaming replicas.

// Test helpers panic on purpose, and run on plain threads where sleeping blocks no executor.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;
mod raw;

mod admin;
mod auth;
mod basics;
mod events;
mod health;
mod hostile;
mod hostile_auth;
mod limits;
mod loadtest;
mod metrics;
mod peers;
mod pgbench;
mod pooling;
mod primary;
mod reload;
mod restart;
mod routing;
mod runtime;
mod shutdown;
mod tcp;
mod tls;
mod transparency;
