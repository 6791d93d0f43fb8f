//! Per-database counters of one core, as PgBouncer's `SHOW STATS` reports them: transactions,
//! queries, bytes to and from clients, time in transactions, in queries and waiting for a
//! connection; and a histogram of query times for the metrics. Sessions hold an `Rc` of their
//! database's counters and add to them as they go (plain cell additions on the core's own
//! thread, no lock); the console and the metrics ask each core for a copy.

use std::cell::Cell;
use std::time::Duration;

/// Upper bounds of the query-time histogram's buckets, in microseconds (the last bucket,
/// unbounded, follows).
pub const BUCKETS_US: [u64; 12] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    5_000_000,
];

/// One database's counters on one core.
#[derive(Default)]
pub struct DbStats {
    xacts: Cell<u64>,
    queries: Cell<u64>,
    received: Cell<u64>,
    sent: Cell<u64>,
    xact_us: Cell<u64>,
    query_us: Cell<u64>,
    wait_us: Cell<u64>,
    /// Queries by time, per bucket of [`BUCKETS_US`] and one more for the rest.
    buckets: [Cell<u64>; BUCKETS_US.len() + 1],
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl DbStats {
    /// A query (a simple Query, or the messages up to a Sync) answered in `took`.
    pub fn query(&self, took: Duration) {
        let us = micros(took);
        add(&self.queries, 1);
        add(&self.query_us, us);
        let bucket = BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(BUCKETS_US.len());
        if let Some(c) = self.buckets.get(bucket) {
            add(c, 1);
        }
    }

    /// A transaction (or an autocommit statement) that took `took`, from its first statement
    /// to the ReadyForQuery that ended it.
    pub fn transaction(&self, took: Duration) {
        add(&self.xacts, 1);
        add(&self.xact_us, micros(took));
    }

    /// Bytes read from a client.
    pub fn received(&self, n: usize) {
        add(&self.received, n as u64);
    }

    /// Bytes written to a client.
    pub fn sent(&self, n: usize) {
        add(&self.sent, n as u64);
    }

    /// Time a client waited for a backend connection.
    pub fn waited(&self, took: Duration) {
        add(&self.wait_us, micros(took));
    }

    /// A copy of the counters.
    pub fn totals(&self) -> Totals {
        Totals {
            xacts: self.xacts.get(),
            queries: self.queries.get(),
            received: self.received.get(),
            sent: self.sent.get(),
            xact_us: self.xact_us.get(),
            query_us: self.query_us.get(),
            wait_us: self.wait_us.get(),
            buckets: self.buckets.iter().map(Cell::get).collect(),
        }
    }
}

/// Counters as reported (totals since start, or a sum over cores).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
    /// Queries per bucket of [`BUCKETS_US`] (not cumulative), the unbounded one last.
    pub buckets: Vec<u64>,
}

impl Totals {
    /// Adds another core's counters.
    pub fn add(&mut self, o: &Totals) {
        self.xacts = self.xacts.wrapping_add(o.xacts);
        self.queries = self.queries.wrapping_add(o.queries);
        self.received = self.received.wrapping_add(o.received);
        self.sent = self.sent.wrapping_add(o.sent);
        self.xact_us = self.xact_us.wrapping_add(o.xact_us);
        self.query_us = self.query_us.wrapping_add(o.query_us);
        self.wait_us = self.wait_us.wrapping_add(o.wait_us);
        if self.buckets.len() < o.buckets.len() {
            self.buckets.resize(o.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a = a.wrapping_add(*b);
        }
    }

    /// PgBouncer's averages between two reports `period` apart (`self` the later): counts and
    /// bytes per second, times per transaction and per query (µs), waiting per query.
    pub fn averages(&self, before: &Totals, period: Duration) -> [u64; 7] {
        let secs = period.as_secs().max(1);
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let (xacts, queries) = (d(self.xacts, before.xacts), d(self.queries, before.queries));
        let per = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
        [
            xacts / secs,
            queries / secs,
            d(self.received, before.received) / secs,
            d(self.sent, before.sent) / secs,
            per(d(self.xact_us, before.xact_us), xacts),
            per(d(self.query_us, before.query_us), queries),
            per(d(self.wait_us, before.wait_us), queries),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up_and_averages_are_per_second_and_per_unit() {
        let s = DbStats::default();
        s.query(Duration::from_micros(400));
        s.query(Duration::from_millis(30));
        s.query(Duration::from_secs(9));
        s.transaction(Duration::from_millis(31));
        s.received(100);
        s.sent(250);
        s.waited(Duration::from_micros(70));
        let t = s.totals();
        assert_eq!((t.xacts, t.queries, t.received, t.sent), (1, 3, 100, 250));
        assert_eq!(t.query_us, 400 + 30_000 + 9_000_000);
        assert_eq!(t.buckets.iter().sum::<u64>(), 3);
        assert_eq!(t.buckets[0], 1, "400 µs: up to 500 µs");
        assert_eq!(t.buckets[6], 1, "30 ms: up to 50 ms");
        assert_eq!(t.buckets[12], 1, "9 s: the unbounded bucket");
        let mut sum = Totals::default();
        sum.add(&t);
        sum.add(&t);
        assert_eq!((sum.queries, sum.buckets[0]), (6, 2));
        let avg = sum.averages(&t, Duration::from_secs(3));
        // 3 more queries and 1 transaction in 3 s.
        assert_eq!(avg[0], 0);
        assert_eq!(avg[1], 1);
        assert_eq!(avg[4], 31_000, "µs per transaction");
        assert_eq!(avg[5], (400 + 30_000 + 9_000_000) / 3, "µs per query");
        assert_eq!(
            Totals::default().averages(&Totals::default(), Duration::ZERO),
            [0; 7]
        );
    }
}

/// How often a core takes the averages of `SHOW STATS_AVERAGES` (PgBouncer's `stats_period`).
pub const STATS_PERIOD: Duration = Duration::from_secs(15);

/// When a stats period began, and every database's totals then.
type Period = (std::time::Instant, Vec<(String, Totals)>);

/// Every database's counters on one core, and the averages of the latest period.
#[derive(Default)]
pub struct CoreStats {
    by_database:
        std::cell::RefCell<std::collections::HashMap<std::rc::Rc<str>, std::rc::Rc<DbStats>>>,
    /// The totals at the start of the current period, and when it began.
    before: std::cell::RefCell<Option<Period>>,
    /// The averages of the latest whole period, by database.
    averages: std::cell::RefCell<Vec<(String, [u64; 7])>>,
}

impl CoreStats {
    /// The counters a session on `database` adds to.
    pub fn for_database(&self, database: &std::rc::Rc<str>) -> std::rc::Rc<DbStats> {
        self.by_database
            .borrow_mut()
            .entry(database.clone())
            .or_default()
            .clone()
    }

    /// Every database's totals.
    pub fn totals(&self) -> Vec<(String, Totals)> {
        let mut all: Vec<(String, Totals)> = (self.by_database.borrow().iter())
            .map(|(db, s)| (db.to_string(), s.totals()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The averages of the latest whole period.
    pub fn averages(&self) -> Vec<(String, [u64; 7])> {
        self.averages.borrow().clone()
    }

    /// Called about once a second: at the end of each [`STATS_PERIOD`] the averages over it
    /// are taken.
    pub fn tick(&self, now: std::time::Instant) {
        let mut before = self.before.borrow_mut();
        let Some((since, old)) = before.as_ref() else {
            *before = Some((now, self.totals()));
            return;
        };
        let period = now.saturating_duration_since(*since);
        if period < STATS_PERIOD {
            return;
        }
        let totals = self.totals();
        let empty = Totals::default();
        *self.averages.borrow_mut() = (totals.iter())
            .map(|(db, t)| {
                let was = old.iter().find(|(d, _)| d == db).map_or(&empty, |(_, t)| t);
                (db.clone(), t.averages(was, period))
            })
            .collect();
        *before = Some((now, totals));
    }
}
