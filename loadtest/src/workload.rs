//! The workloads and the loop that runs one of them against one target for a while.

use std::collections::BTreeMap;
use std::time::Duration;

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
    /// The first [`SLOW_KEPT`] transactions slower than [`SLOW`], to tell a stall of one
    /// client from one of a whole proxy thread.
    pub slow: Vec<Slow>,
}

/// A transaction is reported as slow from this latency on.
pub const SLOW: Duration = Duration::from_millis(50);
/// Slow transactions kept per run.
pub const SLOW_KEPT: usize = 64;

/// One slow transaction: which client, when it started, how long it took.
#[derive(Clone, Copy, Debug)]
pub struct Slow {
    pub client: usize,
    /// Start, from the beginning of the measured window.
    pub start: Duration,
    pub latency: Duration,
}

impl RunResult {
    /// Nothing measured yet, over a window of `elapsed`.
    pub fn empty(elapsed: Duration) -> RunResult {
        RunResult {
            transactions: 0,
            elapsed,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            errors: BTreeMap::new(),
            slow: Vec::new(),
        }
    }

    /// Notes a slow transaction, while fewer than [`SLOW_KEPT`] are kept.
    pub fn note_slow(&mut self, slow: Slow) {
        if self.slow.len() < SLOW_KEPT {
            self.slow.push(slow);
        }
    }

    /// The longest latency recorded.
    pub fn max(&self) -> Duration {
        Duration::from_micros(self.latency.max())
    }

    /// Adds another result's transactions, latencies and errors to this one.
    pub fn absorb(&mut self, other: &RunResult) {
        self.transactions += other.transactions;
        let _ = self.latency.add(&other.latency);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        let room = SLOW_KEPT.saturating_sub(self.slow.len());
        self.slow.extend(other.slow.iter().take(room));
    }

    /// Transactions per second.
    pub fn tps(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Xorshift: cheap, and each client's sequence is fixed by its index.
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator of client number `i`.
    pub(crate) fn for_client(i: usize) -> Rng {
        Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub(crate) const SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// One transaction of the workload on an open connection.
pub(crate) async fn transaction(
    conn: &mut Conn,
    s: &Settings,
    rng: &mut Rng,
) -> Result<(), ClientError> {
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

/// Creates the pgbench tables at `scale` (like `pgbench -i`), through `target`.
pub fn init(target: &Target, scale: u32) -> Result<(), ClientError> {
    let target = target.clone();
    crate::on_thread("loadtest-init".into(), move || async move {
        init_tables(&target, scale).await
    })
    .map_err(|e| ClientError::Protocol(e.to_string()))?
    .join()
    .map_err(|_| ClientError::Protocol("the init thread panicked".into()))?
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
