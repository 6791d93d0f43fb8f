//! Integration tests: pgpilot in-process in front of a real primary and two streaming replicas.

mod common;
mod raw;

mod auth;
mod basics;
mod limits;
mod pgbench;
mod routing;
