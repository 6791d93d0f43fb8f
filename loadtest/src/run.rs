//! Running a workload: clients as tasks on a few load threads (a monoio runtime each), a measured window
//! after a warm-up, a progress line, and one merged result per run.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{ClientError, Conn, Target};
use crate::workload::{transaction, Rng, RunResult, Settings, Slow, Workload, SELECT, SLOW};

/// What every client of a run adds to, across load threads.
#[derive(Default)]
struct Counters {
    /// Transactions completed in the measured window (for the progress line).
    done: AtomicU64,
    /// Connections logged in and not closed (for RSS per open connection).
    open: Arc<AtomicUsize>,
}

/// When a run starts measuring and when it ends, shared by every client.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// Runs the workload against one target with `clients` connections spread over
/// `s.threads` load threads (one runtime each); `sample` is called once the warm-up
/// is over, and its value returned with the number of connections open at that moment.
pub fn run(
    target: &Target,
    s: &Settings,
    sample: &dyn Fn() -> Option<u64>,
) -> (RunResult, Option<(u64, usize)>) {
    let start = Instant::now();
    let window = Window {
        measure_from: start + s.warmup,
        end: start + s.warmup + s.duration,
    };
    let counters = Arc::new(Counters::default());
    let threads = s.threads.clamp(1, s.clients);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (target, s, counters) = (target.clone(), s.clone(), counters.clone());
            let mine: Vec<usize> = (t..s.clients).step_by(threads).collect();
            crate::on_thread(format!("loadtest-{t}"), move || {
                load_thread(target, s, mine, window, counters)
            })
        })
        .collect();
    let mut sampled = None;
    let mut last = (Instant::now(), 0u64);
    let progress = s.warmup + s.duration >= Duration::from_secs(10);
    while Instant::now() < window.end {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if sampled.is_none()
            && now >= window.measure_from + Duration::from_millis(200).min(s.duration / 2)
        {
            sampled = Some(sample().map(|v| (v, counters.open.load(Ordering::Relaxed))));
        }
        if progress && now.duration_since(last.0) >= Duration::from_secs(1) {
            let n = counters.done.load(Ordering::Relaxed);
            eprintln!(
                "  {:>5.1} s  {:>9.0} tps",
                now.duration_since(start).as_secs_f64(),
                (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64()
            );
            last = (now, n);
        }
    }
    let mut total = RunResult::empty(s.duration);
    for h in handles {
        match h
            .map_err(|e| e.to_string())
            .and_then(|h| h.join().map_err(|_| "a load thread panicked".to_owned()))
        {
            Ok(r) => total.absorb(&r),
            Err(e) => *total.errors.entry(format!("thread: {e}")).or_default() += 1,
        }
    }
    (total, sampled.flatten())
}

/// One load thread: its clients run as tasks on this thread's runtime; their results merged.
async fn load_thread(
    target: Target,
    s: Settings,
    clients: Vec<usize>,
    window: Window,
    counters: Arc<Counters>,
) -> RunResult {
    // One result per thread, shared by its clients: a histogram is ~190 KB, too much to keep
    // per connection when 10,000 of them idle.
    let total = Rc::new(RefCell::new(RunResult::empty(s.duration)));
    let (target, s) = (Rc::new(target), Rc::new(s));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|i| {
            let (target, s, counters, total) =
                (target.clone(), s.clone(), counters.clone(), total.clone());
            monoio::spawn(
                async move { client_loop(&target, &s, i, window, &counters, &total).await },
            )
        })
        .collect();
    for task in tasks {
        task.await;
    }
    total.replace(RunResult::empty(s.duration))
}

async fn client_loop(
    target: &Target,
    s: &Settings,
    i: usize,
    window: Window,
    counters: &Counters,
    total: &RefCell<RunResult>,
) {
    let mut rng = Rng::for_client(i);
    let interval = s
        .rate
        .map(|rate| Duration::from_secs_f64(s.clients as f64 / rate.max(1e-3)));
    // Open loop: clients start spread over one interval, not all at once.
    let mut next =
        Instant::now() + interval.map_or(Duration::ZERO, |iv| iv * i as u32 / s.clients as u32);
    let mut conn = None;
    while Instant::now() < window.end {
        let intended = match interval {
            Some(iv) => {
                let now = Instant::now();
                if next > now {
                    monoio::time::sleep(next - now).await;
                }
                let t = next;
                next += iv;
                t
            }
            None => Instant::now(),
        };
        let outcome = one(target, s, &mut conn, &mut rng, window.end, &counters.open).await;
        let finished = Instant::now();
        if intended < window.measure_from || finished > window.end {
            if outcome.is_err() {
                conn = None;
            }
            continue;
        }
        let mut r = total.borrow_mut();
        match outcome {
            Ok(()) => {
                r.transactions += 1;
                counters.done.fetch_add(1, Ordering::Relaxed);
                let latency = finished - intended;
                let _ = r.latency.record(latency.as_micros().max(1) as u64);
                if latency >= SLOW {
                    r.note_slow(Slow {
                        client: i,
                        start: intended - window.measure_from,
                        latency,
                    });
                }
            }
            Err(e) => {
                *r.errors.entry(e.code()).or_default() += 1;
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        c.close().await;
    }
}

/// One unit of work, connecting first when needed.
async fn one(
    target: &Target,
    s: &Settings,
    conn: &mut Option<Conn>,
    rng: &mut Rng,
    end: Instant,
    open: &Arc<AtomicUsize>,
) -> Result<(), ClientError> {
    match s.workload {
        Workload::Churn => {
            let mut c = Conn::connect(target).await?;
            c.simple("SELECT 1").await?;
            c.close().await;
            Ok(())
        }
        Workload::Idle => {
            if conn.is_none() {
                let mut c = Conn::connect(target).await?;
                c.count_in(open);
                *conn = Some(c);
            }
            let nap = end.saturating_duration_since(Instant::now());
            monoio::time::sleep(nap.min(Duration::from_millis(100))).await;
            Ok(())
        }
        _ => {
            if conn.is_none() {
                let mut c = Conn::connect(target).await?;
                c.count_in(open);
                if s.workload == Workload::Prepared {
                    c.prepare("lt_select", SELECT).await?;
                }
                *conn = Some(c);
            }
            match conn.as_mut() {
                Some(c) => transaction(c, s, rng).await,
                None => Err(ClientError::Protocol("no connection".into())),
            }
        }
    }
}
