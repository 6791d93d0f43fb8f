//! The load generator behind `pgpilot-loadtest`, as a library so that the proxy's integration
//! tests can drive it against a real cluster: a small asynchronous PostgreSQL client
//! ([`client`]), the workloads ([`workload`]), the loop that runs one ([`run`]) and the report
//! ([`report`]).

// The workspace bans blocking calls because they stall a glommio core; only the thread that
// starts a run sleeps (between progress lines) and joins the load threads.
#![allow(clippy::disallowed_methods)]

pub mod client;
pub mod report;
pub mod run;
pub mod workload;
