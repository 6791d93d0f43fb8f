//! `[events] command`: run for every event the control plane records, with the event in its
//! environment (`PGPILOT_EVENT`, `PGPILOT_BACKEND`, `PGPILOT_CAUSE`, `PGPILOT_TIME`), one at a
//! time on a thread of its own. The queue is bounded and offered to without waiting: an event
//! that finds it full is logged and skipped, and a command that outlives [`COMMAND_LIMIT`] is
//! killed and logged, so that nothing ever waits for a hook.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::admin::EventRecord;

/// Events waiting for the command, at most.
pub const QUEUE: usize = 64;
/// How long one run of the command may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(10);
/// How often a running command is looked at.
const POLL: Duration = Duration::from_millis(20);

/// The thread that runs the command; dropping it stops the thread (killing a command that is
/// still running) and joins it.
pub struct Hooks {
    tx: Option<Sender<EventRecord>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hooks {
    /// Starts the thread for `command` (run with `sh -c`); `None` when there is no command.
    pub fn start(command: &str) -> Option<Hooks> {
        if command.is_empty() {
            return None;
        }
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let (command, stopped) = (command.to_owned(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("pgpilot-events".into())
            .spawn(move || run(&command, &rx, &stopped));
        match thread {
            Ok(thread) => Some(Hooks {
                tx: Some(tx),
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                log::error!("cannot start the events command's thread: {e}; no command runs");
                None
            }
        }
    }

    /// Queues an event for the command, without waiting.
    pub fn offer(&self, event: &EventRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(event.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(e)) => log::warn!(
                "events command: {QUEUE} events wait already; event={} backend={} skipped",
                e.event,
                e.backend
            ),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::disallowed_methods)] // this thread is no core: it may block
fn run(command: &str, rx: &Receiver<EventRecord>, stop: &AtomicBool) {
    while let Ok(event) = rx.recv() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let child = Command::new("sh")
            .args(["-c", command])
            .env("PGPILOT_EVENT", &event.event)
            .env("PGPILOT_BACKEND", &event.backend)
            .env("PGPILOT_CAUSE", &event.cause)
            .env("PGPILOT_TIME", rfc3339(&event))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        match child {
            Ok(child) => wait(child, &event, stop),
            Err(e) => log::warn!(
                "events command: cannot run it for event={}: {e}",
                event.event
            ),
        }
    }
}

/// Waits for one run, up to [`COMMAND_LIMIT`] (or until the proxy stops), and logs a failure.
#[allow(clippy::disallowed_methods)] // this thread is no core: it may sleep
fn wait(mut child: Child, event: &EventRecord, stop: &AtomicBool) {
    let deadline = Instant::now() + COMMAND_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return,
            Ok(Some(status)) => {
                let mut said = String::new();
                if let Some(mut err) = child.stderr.take() {
                    use std::io::Read;
                    let _ = (&mut err).take(1024).read_to_string(&mut said);
                }
                log::warn!(
                    "events command failed ({status}) for event={} backend={}: {}",
                    event.event,
                    event.backend,
                    said.trim()
                );
                return;
            }
            Ok(None) if Instant::now() >= deadline || stop.load(Ordering::Acquire) => {
                let _ = child.kill();
                let _ = child.wait();
                log::warn!(
                    "events command killed after {} s for event={} backend={}",
                    COMMAND_LIMIT.as_secs(),
                    event.event,
                    event.backend
                );
                return;
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                log::warn!("events command: {e}");
                return;
            }
        }
    }
}

/// `PGPILOT_TIME`: the event's time, RFC 3339 in UTC (`2026-12-01T18:06:53Z`).
fn rfc3339(event: &EventRecord) -> String {
    let secs = event
        .at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let text = crate::admin::utc_seconds(secs);
    // "2026-12-01 18:06:53 UTC" → "2026-12-01T18:06:53Z"
    format!("{}Z", text.trim_end_matches(" UTC").replacen(' ', "T", 1))
}
