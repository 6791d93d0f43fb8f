//! `SHOW STATS`, `SHOW STATS_TOTALS`, `SHOW STATS_AVERAGES`.

use std::collections::BTreeMap;

use super::{num, text};
use crate::admin::{CoreReport, Table, Totals, NUMERIC, TEXT};

/// Which of PgBouncer's three stats commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsKind {
    /// `SHOW STATS`: totals, then averages (`total_*`, `avg_*`).
    Both,
    /// `SHOW STATS_TOTALS`.
    Totals,
    /// `SHOW STATS_AVERAGES`.
    Averages,
}

/// The column names of one half of `SHOW STATS`, in PgBouncer's order.
const TOTALS: [&str; 7] = [
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
];
/// `SHOW STATS` names the same figures differently.
const STATS_TOTAL: [&str; 7] = [
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
];
const STATS_AVG: [&str; 7] = [
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
];

/// Every database's totals over the cores, and its averages: rates add up, times per
/// transaction or query are weighted by each core's rate.
fn stats_by_database(reports: &[CoreReport]) -> BTreeMap<String, (Totals, [u64; 7])> {
    let mut by: BTreeMap<String, (Totals, [u64; 7])> = BTreeMap::new();
    for r in reports {
        for (db, t) in &r.stats {
            by.entry(db.clone()).or_default().0.add(t);
        }
    }
    for (db, (_, avg)) in &mut by {
        let each: Vec<&[u64; 7]> = (reports.iter().flat_map(|r| &r.averages))
            .filter(|(d, _)| d == db)
            .map(|(_, a)| a)
            .collect();
        for i in 0..4 {
            avg[i] = each.iter().map(|a| a[i]).sum();
        }
        // xact_time per transaction; query_time and wait_time per query.
        for (i, weight) in [(4, 0), (5, 1), (6, 1)] {
            let n: u64 = each.iter().map(|a| a[weight]).sum();
            let total: u64 = each.iter().map(|a| a[i].saturating_mul(a[weight])).sum();
            avg[i] = total.checked_div(n).unwrap_or(0);
        }
    }
    by
}

pub fn stats(reports: &[CoreReport], kind: StatsKind) -> Table {
    let names: Vec<&'static str> = match kind {
        StatsKind::Both => STATS_TOTAL.iter().chain(&STATS_AVG).copied().collect(),
        StatsKind::Totals | StatsKind::Averages => TOTALS.to_vec(),
    };
    let mut columns = vec![("database", TEXT)];
    columns.extend(names.iter().map(|n| (*n, NUMERIC)));
    let rows = stats_by_database(reports)
        .into_iter()
        .map(|(db, (t, avg))| {
            let totals = [
                t.xacts, t.queries, t.received, t.sent, t.xact_us, t.query_us, t.wait_us,
            ];
            let values: Vec<u64> = match kind {
                StatsKind::Both => totals.iter().chain(&avg).copied().collect(),
                StatsKind::Totals => totals.to_vec(),
                StatsKind::Averages => avg.to_vec(),
            };
            let mut row = vec![text(db)];
            row.extend(values.into_iter().map(num));
            row
        })
        .collect();
    Table { columns, rows }
}
