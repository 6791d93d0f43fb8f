//! The Prometheus text exposition of the cores' and the control plane's reports.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use pgpilot_protocol::classify::Reason;

use crate::admin::stats::BUCKETS_US;
use crate::admin::{CoreReport, PlaneReport, Totals};
use crate::config::Role;
use crate::control::Status;

/// One metric family at a time: HELP and TYPE, then its samples.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

const STATES: [Status; 5] = [
    Status::Up,
    Status::Slow,
    Status::Lagging,
    Status::Unavailable,
    Status::Down,
];

/// A pool's figures summed over the cores.
#[derive(Default)]
struct PoolSum {
    active: usize,
    idle: usize,
    waiting: usize,
    max_wait: Duration,
}

/// The text exposition of one scrape.
pub fn render(cores: &[CoreReport], plane: &PlaneReport, netstat: &Option<(u64, u64)>) -> String {
    let mut t = Text(String::with_capacity(8192));
    let backends = &plane.backends;
    // Backends removed at a reload keep their places (pools name them by id), unshown.
    let shown = || backends.iter().filter(|b| !b.removed);
    t.family(
        "pgpilot_backend_info",
        "gauge",
        "Each backend, with its role and configured host (always 1).",
    );
    for b in shown() {
        let role = if b.role == Role::Primary {
            "primary"
        } else {
            "replica"
        };
        let host = format!("{}:{}", b.host, b.port);
        t.sample(
            "pgpilot_backend_info",
            &[("backend", &b.name), ("role", role), ("host", &host)],
            1,
        );
    }
    t.family(
        "pgpilot_backend_up",
        "gauge",
        "1 while the backend is in the rotation (not down or unavailable).",
    );
    for b in shown() {
        let up = !matches!(b.status, Status::Down | Status::Unavailable);
        t.sample("pgpilot_backend_up", &[("backend", &b.name)], u8::from(up));
    }
    t.family(
        "pgpilot_backend_state",
        "gauge",
        "1 for the backend's current state, 0 for the others.",
    );
    for b in shown() {
        for s in STATES {
            let state = s.to_string();
            let on = u8::from(b.status == s);
            t.sample(
                "pgpilot_backend_state",
                &[("backend", &b.name), ("state", &state)],
                on,
            );
        }
    }
    t.family(
        "pgpilot_backend_detached_by_hand",
        "gauge",
        "1 while DETACH (admin console) holds the backend out.",
    );
    for b in shown() {
        t.sample(
            "pgpilot_backend_detached_by_hand",
            &[("backend", &b.name)],
            u8::from(b.detached_by_hand),
        );
    }
    t.family(
        "pgpilot_backend_weight",
        "gauge",
        "The configured weight (share of reads).",
    );
    for b in shown() {
        t.sample("pgpilot_backend_weight", &[("backend", &b.name)], b.weight);
    }
    t.family(
        "pgpilot_backend_read_share_ratio",
        "gauge",
        "The share of reads the backend takes now.",
    );
    for b in shown() {
        let labels = [("backend", b.name.as_str())];
        t.sample(
            "pgpilot_backend_read_share_ratio",
            &labels,
            plane.read_share(b),
        );
    }
    t.family(
        "pgpilot_backend_lag_bytes",
        "gauge",
        "How far a replica's replay is behind the primary's WAL.",
    );
    for b in shown() {
        if let Some(lag) = b.lag_bytes {
            t.sample("pgpilot_backend_lag_bytes", &[("backend", &b.name)], lag);
        }
    }
    t.family(
        "pgpilot_backend_replay_delay_seconds",
        "gauge",
        "How long a replica's replay has been behind what it received.",
    );
    for b in shown() {
        if let Some(ms) = b.replay_delay_ms {
            t.sample(
                "pgpilot_backend_replay_delay_seconds",
                &[("backend", &b.name)],
                ms as f64 / 1000.0,
            );
        }
    }
    t.family(
        "pgpilot_backend_check_duration_seconds",
        "gauge",
        "The health check's answer time, smoothed.",
    );
    for b in shown() {
        if let Some(d) = b.answer {
            t.sample(
                "pgpilot_backend_check_duration_seconds",
                &[("backend", &b.name)],
                d.as_secs_f64(),
            );
        }
    }
    t.family(
        "pgpilot_backend_check_failures",
        "gauge",
        "Consecutive failed health checks.",
    );
    for b in shown() {
        t.sample(
            "pgpilot_backend_check_failures",
            &[("backend", &b.name)],
            b.failures,
        );
    }
    t.family(
        "pgpilot_cluster_epoch",
        "gauge",
        "The cluster-state version the control plane published last.",
    );
    t.sample("pgpilot_cluster_epoch", &[], plane.epoch);

    let name_of = |id: usize| backends.get(id).map_or("?", |b| b.name.as_str());
    t.family(
        "pgpilot_pool_server_connections",
        "gauge",
        "Backend connections by pool and state (active: serving a client).",
    );
    let mut pools: BTreeMap<(String, String, String), PoolSum> = BTreeMap::new();
    for p in cores.iter().flat_map(|c| &c.pools) {
        let e = pools
            .entry((
                p.database.clone(),
                p.user.clone(),
                name_of(p.backend_id).to_owned(),
            ))
            .or_default();
        e.active += p.active;
        e.idle += p.idle;
        e.waiting += p.waiting;
        e.max_wait = e.max_wait.max(p.max_wait);
    }
    for ((db, user, backend), sum) in &pools {
        for (state, n) in [("active", sum.active), ("idle", sum.idle)] {
            let labels = [
                ("database", db.as_str()),
                ("user", user.as_str()),
                ("backend", backend.as_str()),
                ("state", state),
            ];
            t.sample("pgpilot_pool_server_connections", &labels, n);
        }
    }
    t.family(
        "pgpilot_pool_waiting_clients",
        "gauge",
        "Clients waiting for a backend connection of the pool.",
    );
    for ((db, user, backend), sum) in &pools {
        let labels = [
            ("database", db.as_str()),
            ("user", user.as_str()),
            ("backend", backend.as_str()),
        ];
        t.sample("pgpilot_pool_waiting_clients", &labels, sum.waiting);
    }
    t.family(
        "pgpilot_pool_max_wait_seconds",
        "gauge",
        "How long the pool's longest-waiting client has waited.",
    );
    for ((db, user, backend), sum) in &pools {
        let labels = [
            ("database", db.as_str()),
            ("user", user.as_str()),
            ("backend", backend.as_str()),
        ];
        t.sample(
            "pgpilot_pool_max_wait_seconds",
            &labels,
            sum.max_wait.as_secs_f64(),
        );
    }
    t.family(
        "pgpilot_client_connections",
        "gauge",
        "Client connections by core and state.",
    );
    for c in cores {
        let core = c.core.to_string();
        let (mut active, mut waiting, mut console) = (0, 0, 0);
        for cl in &c.clients {
            match (cl.console, cl.waiting) {
                (true, _) => console += 1,
                (false, Some(_)) => waiting += 1,
                (false, None) => active += 1,
            }
        }
        for (state, n) in [
            ("active", active),
            ("waiting", waiting),
            ("console", console),
        ] {
            t.sample(
                "pgpilot_client_connections",
                &[("core", &core), ("state", state)],
                n,
            );
        }
    }
    t.family(
        "pgpilot_accepted_connections_total",
        "counter",
        "Client connections each core's listener accepted.",
    );
    for c in cores {
        t.sample(
            "pgpilot_accepted_connections_total",
            &[("core", &c.core.to_string())],
            c.accepted,
        );
    }
    stats(&mut t, cores);
    t.family(
        "pgpilot_statements_total",
        "counter",
        "Statements sent, by the classifier's target and the rule that decided it.",
    );
    for reason in Reason::ALL {
        for (side, target) in ["primary", "replica"].iter().enumerate() {
            let n: u64 = (cores.iter())
                .filter_map(|c| c.routes.get(reason.index())?.get(side))
                .sum();
            if n > 0 {
                let labels = [("target", *target), ("reason", reason.as_str())];
                t.sample("pgpilot_statements_total", &labels, n);
            }
        }
    }
    if let Some((overflows, drops)) = netstat {
        t.family("pgpilot_host_listen_overflows_total", "counter", "TcpExt ListenOverflows of the host (its network namespace): connections refused because an accept queue was full.");
        t.sample("pgpilot_host_listen_overflows_total", &[], overflows);
        t.family(
            "pgpilot_host_listen_drops_total",
            "counter",
            "TcpExt ListenDrops of the host (its network namespace).",
        );
        t.sample("pgpilot_host_listen_drops_total", &[], drops);
    }
    t.0
}

/// A counter family: name, help, and its value for one database.
type Counter = (&'static str, &'static str, fn(&Totals) -> f64);

/// Per-database counters summed over the cores, and the query-time histogram.
fn stats(t: &mut Text, cores: &[CoreReport]) {
    let mut by: BTreeMap<&str, Totals> = BTreeMap::new();
    for (db, s) in cores.iter().flat_map(|c| &c.stats) {
        by.entry(db.as_str()).or_default().add(s);
    }
    let secs = |us: u64| us as f64 / 1e6;
    let counters: [Counter; 5] = [
        ("pgpilot_transactions_total", "Transactions (and autocommit statements) ended.", |s| s.xacts as f64),
        ("pgpilot_transaction_seconds_total", "Time spent in transactions, from their first statement to the ReadyForQuery that ended them.", |s| s.xact_us as f64 / 1e6),
        ("pgpilot_client_received_bytes_total", "Bytes read from clients.", |s| s.received as f64),
        ("pgpilot_client_sent_bytes_total", "Bytes written to clients.", |s| s.sent as f64),
        ("pgpilot_checkout_wait_seconds_total", "Time clients waited for a backend connection.", |s| s.wait_us as f64 / 1e6),
    ];
    for (name, help, value) in counters {
        t.family(name, "counter", help);
        for (db, s) in &by {
            t.sample(name, &[("database", db)], value(s));
        }
    }
    let name = "pgpilot_query_duration_seconds";
    t.family(name, "histogram", "Time from sending a query (a simple Query, or the messages up to a Sync) to its ReadyForQuery.");
    for (db, s) in &by {
        let mut cumulative = 0;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += s.buckets.get(i).copied().unwrap_or(0);
            let le = secs(*bound).to_string();
            t.sample(
                &format!("{name}_bucket"),
                &[("database", db), ("le", &le)],
                cumulative,
            );
        }
        t.sample(
            &format!("{name}_bucket"),
            &[("database", db), ("le", "+Inf")],
            s.queries,
        );
        t.sample(
            &format!("{name}_sum"),
            &[("database", db)],
            secs(s.query_us),
        );
        t.sample(&format!("{name}_count"), &[("database", db)], s.queries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_as_the_text_format_says() {
        let mut t = Text(String::new());
        t.family("x_bytes", "gauge", "A test.");
        t.sample("x_bytes", &[("a", "q\"b\\n\nz"), ("b", "")], 1.5);
        t.sample("x_bytes", &[], 2);
        assert_eq!(
            t.0,
            "# HELP x_bytes A test.\n# TYPE x_bytes gauge\n\
             x_bytes{a=\"q\\\"b\\\\n\\nz\",b=\"\"} 1.5\nx_bytes 2\n"
        );
    }
}
