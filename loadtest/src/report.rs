//! Turns samples into the report: per target medians, latency percentiles, errors by SQLSTATE,
//! ratios to the first target taken round by round, and CPU per 1,000 transactions.

use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::workload::{RunResult, Settings};

/// One run of one target in one round.
pub struct Sample {
    pub round: usize,
    pub target: String,
    pub result: RunResult,
    /// CPU clock ticks the target's process used during the run (from `--pid`).
    pub cpu_ticks: Option<u64>,
    /// Growth of the target process's RSS per open connection (from `--pid`), measured once
    /// every connection is open.
    pub rss_per_client: Option<f64>,
}

/// VmRSS of the process registered for `target` with `--pid`, in bytes.
pub fn rss_bytes(pids: &[(String, u32)], target: &str) -> Option<u64> {
    let pid = pids.iter().find(|(n, _)| n == target)?.1;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// utime + stime of the process registered for `target` with `--pid` and of all its
/// descendants (pgpool-II and PostgreSQL work in forked children), in clock ticks.
pub fn cpu_ticks(pids: &[(String, u32)], target: &str) -> Option<u64> {
    let pid = pids.iter().find(|(n, _)| n == target)?.1;
    let mut total = process_ticks(pid)?;
    let mut todo = children(pid);
    while let Some(child) = todo.pop() {
        total += process_ticks(child).unwrap_or(0);
        todo.extend(children(child));
    }
    Some(total)
}

fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Child processes of `pid`, from every one of its threads.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Clock ticks per second (USER_HZ); 100 on every Linux this runs on.
const TICKS_PER_SECOND: f64 = 100.0;

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

/// Latency columns, in milliseconds: p50, p90, p99, p99.9 and max.
fn latency_ms(h: &Histogram<u64>) -> [f64; 5] {
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    [q(0.5), q(0.9), q(0.99), q(0.999), h.max() as f64 / 1000.0]
}

struct Row {
    name: String,
    tps: f64,
    ratio: f64,
    latency: Histogram<u64>,
    errors: u64,
    error_codes: String,
    cpu_per_1000: Option<f64>,
    rss_per_client: Option<f64>,
}

fn rows(names: &[String], samples: &[Sample]) -> Vec<Row> {
    names
        .iter()
        .map(|name| {
            let mine: Vec<&Sample> = samples.iter().filter(|s| &s.target == name).collect();
            let mut all = RunResult::empty(Duration::ZERO);
            for s in &mine {
                all.absorb(&s.result);
            }
            let (latency, codes) = (all.latency, all.errors);
            // Ratio to the first target, pair by pair within each round, then the median.
            let ratios = mine
                .iter()
                .filter_map(|s| {
                    let base = samples
                        .iter()
                        .find(|b| b.round == s.round && b.target == names[0])?;
                    Some(s.result.tps() / base.result.tps().max(1e-9))
                })
                .collect();
            let cpu: Vec<f64> = mine
                .iter()
                // No figure for a run that completed nothing (PgBouncer fails `prepared`).
                .filter(|s| s.result.transactions > 0)
                .filter_map(|s| {
                    Some(
                        s.cpu_ticks? as f64
                            / TICKS_PER_SECOND
                            / (s.result.transactions as f64 / 1000.0),
                    )
                })
                .collect();
            Row {
                name: name.clone(),
                tps: median(mine.iter().map(|s| s.result.tps()).collect()),
                ratio: median(ratios),
                latency,
                errors: codes.values().sum(),
                error_codes: codes
                    .iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                cpu_per_1000: (!cpu.is_empty()).then(|| median(cpu)),
                rss_per_client: {
                    let rss: Vec<f64> = mine.iter().filter_map(|s| s.rss_per_client).collect();
                    (!rss.is_empty()).then(|| median(rss))
                },
            }
        })
        .collect()
}

/// The report as a table, or as JSON with `--json`.
pub fn render(names: &[String], samples: &[Sample], s: &Settings, json: bool) -> String {
    let rows = rows(names, samples);
    let mut out = String::new();
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|r| {
                let [p50, p90, p99, p999, max] = latency_ms(&r.latency);
                format!(
                    "{{\"target\":\"{}\",\"tps\":{:.1},\"ratio\":{:.4},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3},\"errors\":{},\"cpu_s_per_1000\":{},\"rss_bytes_per_connection\":{}}}",
                    r.name,
                    r.tps,
                    r.ratio,
                    p50,
                    p90,
                    p99,
                    p999,
                    max,
                    r.errors,
                    r.cpu_per_1000.map_or("null".to_owned(), |c| format!("{c:.4}")),
                    r.rss_per_client.map_or("null".to_owned(), |b| format!("{b:.0}"))
                )
            })
            .collect();
        let _ = write!(
            out,
            "{{\"workload\":\"{}\",\"clients\":{},\"duration_s\":{},\"rate\":{},\"results\":[{}]}}",
            s.workload.name(),
            s.clients,
            s.duration.as_secs_f64(),
            s.rate.map_or("null".to_owned(), |r| r.to_string()),
            items.join(",")
        );
        return out;
    }
    let _ = writeln!(
        out,
        "workload {} | {} clients | {:.0}s per run | {}",
        s.workload.name(),
        s.clients,
        s.duration.as_secs_f64(),
        s.rate.map_or("closed loop".to_owned(), |r| format!(
            "open loop at {r} tps"
        ))
    );
    let _ = writeln!(
        out,
        "{:<12} {:>10} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>10} {:>8}  errors",
        "target",
        "tps",
        "ratio",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "cpu s/1k",
        "B/conn"
    );
    for r in &rows {
        let [p50, p90, p99, p999, max] = latency_ms(&r.latency);
        let _ = writeln!(
            out,
            "{:<12} {:>10.0} {:>7.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>8.1} {:>10} {:>8}  {}",
            r.name,
            r.tps,
            r.ratio,
            p50,
            p90,
            p99,
            p999,
            max,
            r.cpu_per_1000.map_or("-".to_owned(), |c| format!("{c:.4}")),
            r.rss_per_client
                .map_or("-".to_owned(), |b| format!("{b:.0}")),
            if r.errors == 0 {
                "0".to_owned()
            } else {
                r.error_codes.clone()
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::RunResult;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn sample(round: usize, target: &str, transactions: u64) -> Sample {
        let mut latency = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        latency.record(1000).unwrap();
        let result = RunResult {
            transactions,
            elapsed: Duration::from_secs(1),
            latency,
            errors: BTreeMap::new(),
            slow: Vec::new(),
        };
        Sample {
            round,
            target: target.into(),
            result,
            cpu_ticks: Some(50),
            rss_per_client: None,
        }
    }

    #[test]
    fn ratios_are_taken_round_by_round() {
        let names = vec!["a".to_owned(), "b".to_owned()];
        let samples = vec![
            sample(0, "a", 1000),
            sample(0, "b", 900),
            sample(1, "a", 2000),
            sample(1, "b", 1900),
            sample(2, "a", 1000),
            sample(2, "b", 800),
        ];
        let rows = rows(&names, &samples);
        assert_eq!(rows[0].ratio, 1.0);
        assert!((rows[1].ratio - 0.9).abs() < 1e-9, "{}", rows[1].ratio);
        assert_eq!(rows[1].tps, 900.0);
        // 0.5 s of CPU per 1000 transactions in the middle round.
        assert!((rows[0].cpu_per_1000.unwrap() - 0.5).abs() < 1e-9);
        let text = render(&names, &samples, &Settings::default(), true);
        assert!(text.contains("\"target\":\"b\""), "{text}");
    }

    #[test]
    fn cpu_of_this_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_ticks(&[("me".into(), pid)], "me").is_some());
        assert!(cpu_ticks(&[], "me").is_none());
        assert!(rss_bytes(&[("me".into(), pid)], "me").is_some_and(|b| b > 0));
    }

    #[test]
    fn children_are_found_for_cpu_accounting() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep runs");
        let found = children(std::process::id()).contains(&child.id());
        let _ = child.kill();
        let _ = child.wait();
        assert!(found, "child {} not listed", child.id());
    }
}
