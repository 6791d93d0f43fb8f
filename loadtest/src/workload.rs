//! The workloads and the loop that runs one of them against one target for a while.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

use crate::client::{ClientError, Conn, Target};

/// What each client does in a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Point lookup on pgbench_accounts, simple protocol.
    Select,
    /// The same lookup, extended protocol with an unnamed statement.
    SelectExtended,
    /// The same lookup through a statement prepared once per connection.
    Prepared,
    /// pgbench's TPC-B-like transaction, simple protocol.
    Tpcb,
    /// Select, with `write_share` of the transactions TPC-B-like.
    Mixed,
    /// Connect, authenticate, one query, disconnect.
    Churn,
    /// Open the connections and hold them.
    Idle,
}

impl Workload {
    /// Parses a `--workload` name.
    pub fn parse(s: &str) -> Option<Workload> {
        Some(match s {
            "select" => Workload::Select,
            "select-extended" => Workload::SelectExtended,
            "prepared" => Workload::Prepared,
            "tpcb" => Workload::Tpcb,
            "mixed" => Workload::Mixed,
            "churn" => Workload::Churn,
            "idle" => Workload::Idle,
            _ => return None,
        })
    }

    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Select => "select",
            Workload::SelectExtended => "select-extended",
            Workload::Prepared => "prepared",
            Workload::Tpcb => "tpcb",
            Workload::Mixed => "mixed",
            Workload::Churn => "churn",
            Workload::Idle => "idle",
        }
    }
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub workload: Workload,
    pub write_share: f64,
    pub clients: usize,
    /// Load threads the clients are spread over.
    pub threads: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Open loop at this many transactions per second over all clients; closed loop if None.
    pub rate: Option<f64>,
    /// pgbench scale: 100,000 accounts per unit.
    pub scale: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workload: Workload::Select,
            write_share: 0.1,
            clients: 32,
            threads: 2,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            rate: None,
            scale: 1,
        }
    }
}

/// What one run measured.
pub struct RunResult {
    /// Transactions completed in the measured window.
    pub transactions: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Latency in microseconds (open loop: from the intended start).
    pub latency: Histogram<u64>,
    /// Errors by SQLSTATE (or "io", "protocol", "connect").
    pub errors: BTreeMap<String, u64>,
}

impl RunResult {
    /// Transactions per second.
    pub fn tps(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// One transaction of the workload on an open connection.
async fn transaction(conn: &mut Conn, s: &Settings, rng: &mut Rng) -> Result<(), ClientError> {
    let accounts = u64::from(s.scale.max(1)) * 100_000;
    let aid = rng.next() % accounts + 1;
    let write = match s.workload {
        Workload::Tpcb => true,
        Workload::Mixed => (rng.next() % 10_000) as f64 / 10_000.0 < s.write_share,
        _ => false,
    };
    if write {
        let (bid, tid, delta) = (
            rng.next() % u64::from(s.scale.max(1)) + 1,
            rng.next() % (10 * u64::from(s.scale.max(1))) + 1,
            (rng.next() % 10_001) as i64 - 5000,
        );
        for sql in [
            "BEGIN".to_owned(),
            format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid}"),
            format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"),
            format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid}"),
            format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid}"),
            format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                 VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP)"
            ),
            "END".to_owned(),
        ] {
            conn.simple(&sql).await?;
        }
        return Ok(());
    }
    let aid = aid.to_string();
    match s.workload {
        Workload::SelectExtended => conn.extended(SELECT, &[aid.as_bytes()]).await.map(|_| ()),
        Workload::Prepared => conn
            .execute_prepared("lt_select", &[aid.as_bytes()])
            .await
            .map(|_| ()),
        _ => conn
            .simple(&format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {aid}"
            ))
            .await
            .map(|_| ()),
    }
}

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
/// `s.threads` load threads (one glommio executor each); `sample` is called once the warm-up
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
            LocalExecutorBuilder::new(Placement::Unbound)
                .name(&format!("loadtest-{t}"))
                .io_memory(64 << 10)
                .spawn(move || load_thread(target, s, mine, window, counters))
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
    let mut total = RunResult {
        transactions: 0,
        elapsed: s.duration,
        latency: new_histogram(),
        errors: BTreeMap::new(),
    };
    for h in handles {
        match h
            .map_err(|e| e.to_string())
            .and_then(|h| h.join().map_err(|e| e.to_string()))
        {
            Ok(r) => {
                total.transactions += r.transactions;
                let _ = total.latency.add(&r.latency);
                for (k, v) in r.errors {
                    *total.errors.entry(k).or_default() += v;
                }
            }
            Err(e) => *total.errors.entry(format!("thread: {e}")).or_default() += 1,
        }
    }
    (total, sampled.flatten())
}

/// One load thread: its clients run as tasks on this thread's executor; their results merged.
async fn load_thread(
    target: Target,
    s: Settings,
    clients: Vec<usize>,
    window: Window,
    counters: Arc<Counters>,
) -> RunResult {
    // One result per thread, shared by its clients: a histogram is ~190 KB, too much to keep
    // per connection when 10,000 of them idle.
    let total = Rc::new(RefCell::new(RunResult {
        transactions: 0,
        elapsed: s.duration,
        latency: new_histogram(),
        errors: BTreeMap::new(),
    }));
    let (target, s) = (Rc::new(target), Rc::new(s));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|i| {
            let (target, s, counters, total) =
                (target.clone(), s.clone(), counters.clone(), total.clone());
            glommio::spawn_local(async move {
                client_loop(&target, &s, i, window, &counters, &total).await
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    total.replace(RunResult {
        transactions: 0,
        elapsed: s.duration,
        latency: new_histogram(),
        errors: BTreeMap::new(),
    })
}

async fn client_loop(
    target: &Target,
    s: &Settings,
    i: usize,
    window: Window,
    counters: &Counters,
    total: &RefCell<RunResult>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
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
                    glommio::timer::sleep(next - now).await;
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
                let _ = r
                    .latency
                    .record((finished - intended).as_micros().max(1) as u64);
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
            glommio::timer::sleep(nap.min(Duration::from_millis(100))).await;
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

/// Creates the pgbench tables at `scale` (like `pgbench -i`), through `target`.
pub fn init(target: &Target, scale: u32) -> Result<(), ClientError> {
    let target = target.clone();
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("loadtest-init")
        .io_memory(64 << 10)
        .spawn(move || async move { init_tables(&target, scale).await })
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .join()
        .map_err(|e| ClientError::Protocol(e.to_string()))?
}

async fn init_tables(target: &Target, scale: u32) -> Result<(), ClientError> {
    let mut c = Conn::connect(target).await?;
    let scale = scale.max(1);
    for sql in [
        "DROP TABLE IF EXISTS pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history".to_owned(),
        "CREATE TABLE pgbench_branches (bid int primary key, bbalance int, filler char(88))".to_owned(),
        "CREATE TABLE pgbench_tellers (tid int primary key, bid int, tbalance int, filler char(84))".to_owned(),
        "CREATE TABLE pgbench_accounts (aid int primary key, bid int, abalance int, filler char(84))".to_owned(),
        "CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))".to_owned(),
        format!("INSERT INTO pgbench_branches SELECT b, 0, '' FROM generate_series(1, {scale}) b"),
        format!("INSERT INTO pgbench_tellers SELECT t, (t - 1) / 10 + 1, 0, '' FROM generate_series(1, {}) t", scale * 10),
        format!("INSERT INTO pgbench_accounts SELECT a, (a - 1) / 100000 + 1, 0, '' FROM generate_series(1, {}) a", scale * 100_000),
        "ANALYZE pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history".to_owned(),
    ] {
        c.simple(&sql).await?;
    }
    c.close().await;
    Ok(())
}
