//! The load generator behind `pgpilot-loadtest`, as a library so that the proxy's integration
//! tests can drive it against a real cluster: a small asynchronous PostgreSQL client
//! ([`client`], with TLS from [`tls`]), the workloads ([`workload`]), the loop that runs one ([`run`]) and the report
//! ([`report`]).

// The workspace bans blocking calls because they stall a core's runtime; only the thread that
// starts a run sleeps (between progress lines) and joins the load threads.
#![allow(clippy::disallowed_methods)]

pub mod client;
pub mod report;
pub mod run;
pub mod tls;
pub mod workload;

/// Runs `main` on a thread of its own named `name`, with a monoio runtime (io_uring, or epoll
/// where io_uring is refused).
pub fn on_thread<G, F>(name: String, main: G) -> std::io::Result<std::thread::JoinHandle<F::Output>>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future + 'static,
    F::Output: Send + 'static,
{
    std::thread::Builder::new().name(name).spawn(move || {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("a runtime for a load thread")
            .block_on(main())
    })
}
