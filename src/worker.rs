//! The thread of one worker core: it builds its monoio runtime (io_uring where the kernel and
//! seccomp allow it, epoll otherwise), runs the core's main future, and takes the whole
//! process down if it dies.
//!
//! A panic that escapes a session is caught at the session boundary (`session::run`); one that
//! escapes anything else on a core (the accept loop, the control drain) ends the worker
//! thread. A process with a dead worker is worse than no process: the dead core's
//! SO_REUSEPORT share of new connections would go unanswered, or, once its listener closes,
//! its sessions would be lost without the supervisor knowing. So the process exits with
//! status 1 and systemd or Kubernetes restarts it.

use std::sync::mpsc;
use std::thread::JoinHandle;

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver};

/// Exit status of a process whose worker died (DESIGN: 1 = runtime failure).
pub const DIED: i32 = 1;

/// Set to `epoll` to run on the epoll driver even where io_uring works (tests, comparisons).
pub const DRIVER_ENV: &str = "PGPILOT_IO";

/// A worker's runtime: io_uring or epoll, with timers.
type Runtime = monoio::FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Where a worker thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On this CPU only.
    Fixed(usize),
    /// Wherever the scheduler puts it.
    Unbound,
}

/// A runtime on io_uring unless it is unavailable (an old kernel, a seccomp profile that
/// refuses it, a ring that cannot be set up) or `PGPILOT_IO=epoll` asks for epoll; and the
/// name of the driver it got.
fn build_runtime() -> std::io::Result<(Runtime, &'static str)> {
    let forced = std::env::var(DRIVER_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("epoll"));
    if !forced && monoio::utils::detect_uring() {
        match monoio::RuntimeBuilder::<IoUringDriver>::new()
            .enable_timer()
            .build()
        {
            Ok(rt) => return Ok((Runtime::from(rt), "io_uring")),
            Err(e) => log::warn!("io_uring cannot be set up ({e}); running on epoll"),
        }
    }
    let rt = monoio::RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()?;
    Ok((Runtime::from(rt), "epoll"))
}

/// Ends the process when the worker thread unwinds from a panic.
struct Watch {
    name: String,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            log::error!(
                "{} panicked outside any session; exiting so that the supervisor restarts pgpilot",
                self.name
            );
            std::process::exit(DIED);
        }
    }
}

/// Runs a future to completion on a runtime of this thread's own (tests, tools).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    build_runtime()
        .expect("a runtime for this thread")
        .0
        .block_on(future)
}

/// Starts a worker thread named `name`, placed by `placement`, with its runtime, and runs the
/// future `main` makes on it. Returns once the runtime exists, with the name of its I/O driver,
/// or with the reason it could not be built.
pub fn spawn<G, F>(
    name: String,
    placement: Placement,
    main: G,
) -> Result<(JoinHandle<()>, &'static str), String>
where
    G: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = ()> + 'static,
{
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<&'static str, String>>(1);
    let thread_name = name.clone();
    let thread = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _watch = Watch { name: thread_name };
            if let Placement::Fixed(cpu) = placement {
                if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
                    log::warn!("{name}: cannot pin to CPU {cpu}: {e}");
                }
            }
            let mut runtime = match build_runtime() {
                Ok((r, driver)) => {
                    let _ = ready_tx.send(Ok(driver));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(main());
        })
        .map_err(|e| e.to_string())?;
    match ready_rx.recv() {
        Ok(Ok(driver)) => Ok((thread, driver)),
        Ok(Err(reason)) => {
            let _ = thread.join();
            Err(reason)
        }
        Err(_) => Err("the worker thread ended before its runtime started".into()),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the test thread is no core: it may sleep
mod tests {
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::Placement;

    const CHILD: &str = "PGPILOT_TEST_WORKER_CHILD";

    /// Run twice: as the test, it starts itself again as a child whose worker panics, and
    /// checks that the child process exits with status 1 by itself.
    #[test]
    fn a_worker_that_panics_ends_the_process() {
        if std::env::var_os(CHILD).is_some() {
            let (thread, _) = super::spawn("pgpilot-test".into(), Placement::Unbound, || async {
                panic!("a bug outside any session");
            })
            .expect("the worker starts");
            let _ = thread.join();
            // Only reached if the worker's death did not end the process.
            std::thread::sleep(Duration::from_secs(30));
            std::process::exit(0);
        }
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "worker::tests::a_worker_that_panics_ends_the_process",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .spawn()
            .expect("the child starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("child status") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the process outlived its dead worker");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(super::DIED));
    }
}
