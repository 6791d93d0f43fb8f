//! The result sets of `SHOW`: PgBouncer's columns in PgBouncer's order (as PgBouncer 1.18
//! answers), pgpilot's own after them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    BackendFigures, ClientFigures, CoreReport, EventRecord, PlaneReport, PoolFigures, Table,
    Totals, INT4, INT8, NUMERIC, TEXT,
};
use pgpilot_protocol::classify::Reason;

use crate::config::{AuthMethod, Config, PoolMode, ReadYourWrites, Role, CONSOLE_DATABASES};
use crate::control::ClusterState;

/// The console's own database and user, as PgBouncer lists its own.
const CONSOLE: &str = "pgpilot";

fn text(s: impl Into<String>) -> Option<String> {
    Some(s.into())
}

fn num(n: impl ToString) -> Option<String> {
    Some(n.to_string())
}

/// `2026-12-01 18:06:53 UTC`, as PgBouncer writes times.
pub fn utc(t: SystemTime) -> String {
    utc_seconds(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// [`utc`] of seconds since the epoch.
pub fn utc_seconds(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Gregorian calendar, proleptic).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn mode_name(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "primary",
        Role::Replica => "replica",
    }
}

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

pub fn version() -> Table {
    Table {
        columns: vec![("version", TEXT)],
        rows: vec![vec![text(format!("pgpilot {}", env!("CARGO_PKG_VERSION")))]],
    }
}

/// The settings as `(key, value)`, in the config file's terms.
fn settings(c: &Config) -> Vec<(&'static str, String)> {
    let s = &c.server;
    let h = &c.health;
    let method = match c.auth_method {
        AuthMethod::ScramSha256 => "scram-sha-256",
        AuthMethod::Md5 => "md5",
        AuthMethod::Trust => "trust",
    };
    let ryw = match c.routing.read_your_writes {
        ReadYourWrites::Lsn => "lsn",
        ReadYourWrites::Time => "time",
        ReadYourWrites::Off => "off",
    };
    vec![
        ("server.listen", s.listen.to_string()),
        ("server.workers", s.workers.to_string()),
        ("server.listen_backlog", s.listen_backlog.to_string()),
        ("server.pool_mode", mode_name(s.pool_mode).into()),
        (
            "server.max_client_connections",
            s.max_client_connections.to_string(),
        ),
        ("server.max_message_bytes", s.max_message_bytes.to_string()),
        ("server.startup_timeout_ms", ms(s.startup_timeout)),
        ("auth.method", method.into()),
        ("pool.size", c.pool.size.to_string()),
        ("pool.checkout_timeout_ms", ms(c.pool.checkout_timeout)),
        ("pool.idle_timeout_ms", ms(c.pool.idle_timeout)),
        ("pool.max_lifetime_ms", ms(c.pool.max_lifetime)),
        ("pool.reset_query", c.pool.reset_query.clone()),
        ("routing.read_your_writes", ryw.into()),
        (
            "routing.read_your_writes_ms",
            ms(c.routing.read_your_writes_window),
        ),
        (
            "routing.max_prepared_statements",
            c.routing.max_prepared_statements.to_string(),
        ),
        (
            "routing.max_client_statements",
            c.routing.max_client_statements.to_string(),
        ),
        ("health.interval_ms", ms(h.interval)),
        ("health.timeout_ms", ms(h.timeout)),
        (
            "health.failures_to_detach",
            h.failures_to_detach.to_string(),
        ),
        (
            "health.successes_to_attach",
            h.successes_to_attach.to_string(),
        ),
        ("health.max_lag_bytes", h.max_lag_bytes.to_string()),
        ("health.slow_start_ms", ms(h.slow_start)),
        ("health.write_hold_ms", ms(h.write_hold)),
        ("health.database", h.database.clone()),
        (
            "tls.client_mode",
            c.client_tls
                .as_ref()
                .map_or("disable", |t| t.mode.as_str())
                .into(),
        ),
        ("admin.users", c.admin.users.join(",")),
    ]
}

/// `SHOW CONFIG`: key, value, default, changeable (whether RELOAD applies it).
pub fn config(c: &Config) -> Table {
    // The defaults are what a config that sets nothing gets.
    let bare =
        "[[backends]]\nname = \"p\"\nhost = \"127.0.0.1\"\nport = 5432\nrole = \"primary\"\n";
    let defaults: BTreeMap<&str, String> = Config::parse(bare, std::path::Path::new("<defaults>"))
        .map(|d| settings(&d).into_iter().collect())
        .unwrap_or_default();
    let rows = settings(c)
        .into_iter()
        .map(|(key, value)| {
            // What a running process cannot change (see control::plane::reload).
            let fixed = [
                "server.listen",
                "server.workers",
                "server.listen_backlog",
                "server.pool_mode",
            ];
            let changeable = if fixed.contains(&key) { "no" } else { "yes" };
            vec![
                text(key),
                text(value),
                defaults.get(key).cloned(),
                text(changeable),
            ]
        })
        .collect();
    Table {
        columns: vec![
            ("key", TEXT),
            ("value", TEXT),
            ("default", TEXT),
            ("changeable", TEXT),
        ],
        rows,
    }
}

pub fn users(c: &Config) -> Table {
    let mut names: Vec<&String> = c.users.keys().collect();
    names.sort();
    Table {
        columns: vec![("name", TEXT), ("pool_mode", TEXT)],
        rows: names.into_iter().map(|n| vec![text(n), None]).collect(),
    }
}

/// Pools summed over cores and backends, by (database, user): what PgBouncer calls a pool.
fn pools_by_key(reports: &[CoreReport]) -> BTreeMap<(String, String), Vec<&PoolFigures>> {
    let mut by: BTreeMap<(String, String), Vec<&PoolFigures>> = BTreeMap::new();
    for p in reports.iter().flat_map(|r| &r.pools) {
        by.entry((p.database.clone(), p.user.clone()))
            .or_default()
            .push(p);
    }
    by
}

fn clients(reports: &[CoreReport]) -> impl Iterator<Item = &ClientFigures> {
    reports.iter().flat_map(|r| &r.clients)
}

pub fn databases(c: &Config, reports: &[CoreReport]) -> Table {
    let primary = c.backends.iter().find(|b| b.role == Role::Primary);
    let mut current: BTreeMap<String, usize> = BTreeMap::new();
    for p in reports.iter().flat_map(|r| &r.pools) {
        *current.entry(p.database.clone()).or_default() += p.active + p.idle;
    }
    for cl in clients(reports).filter(|cl| !cl.console) {
        current.entry(cl.database.clone()).or_default();
    }
    // Paused on every core (a PAUSE reaches them all).
    let paused = |db: &str| {
        !reports.is_empty()
            && (reports.iter()).all(|r| r.paused.0 || r.paused.1.iter().any(|p| p == db))
    };
    let mut rows: Vec<Vec<Option<String>>> = current
        .into_iter()
        .map(|(db, n)| {
            let held = paused(&db);
            vec![
                text(db.clone()),
                primary.map(|p| p.host.clone()),
                primary.map(|p| p.port.to_string()),
                text(db),
                None,
                num(c.pool.size),
                num(0),
                num(0),
                text(mode_name(c.server.pool_mode)),
                num(0),
                num(n),
                num(u8::from(held)),
                num(0),
            ]
        })
        .collect();
    rows.push(vec![
        text(CONSOLE),
        None,
        num(c.server.listen.port()),
        text(CONSOLE),
        text(CONSOLE),
        num(0),
        num(0),
        num(0),
        text("statement"),
        num(0),
        num(0),
        num(0),
        num(0),
    ]);
    Table {
        columns: vec![
            ("name", TEXT),
            ("host", TEXT),
            ("port", INT4),
            ("database", TEXT),
            ("force_user", TEXT),
            ("pool_size", INT4),
            ("min_pool_size", INT4),
            ("reserve_pool", INT4),
            ("pool_mode", TEXT),
            ("max_connections", INT4),
            ("current_connections", INT4),
            ("paused", INT4),
            ("disabled", INT4),
        ],
        rows,
    }
}

pub fn pools(c: &Config, reports: &[CoreReport]) -> Table {
    let mut by = pools_by_key(reports);
    // Clients logged in whose pool holds nothing yet (or holds nothing any more) count too.
    for cl in clients(reports).filter(|cl| !cl.console) {
        by.entry((cl.database.clone(), cl.user.clone()))
            .or_default();
    }
    let mut rows = Vec::new();
    for ((database, user), pools) in &by {
        let mine = clients(reports)
            .filter(|cl| !cl.console && cl.database == *database && cl.user == *user);
        let (mut active, mut waiting) = (0, 0);
        for cl in mine {
            if cl.waiting.is_some() {
                waiting += 1;
            } else {
                active += 1;
            }
        }
        let sum = |f: fn(&PoolFigures) -> usize| pools.iter().map(|p| f(p)).sum::<usize>();
        let max_wait = pools.iter().map(|p| p.max_wait).max().unwrap_or_default();
        rows.push(pool_row(
            database,
            user,
            [active, waiting, sum(|p| p.active), sum(|p| p.idle)],
            max_wait,
            mode_name(c.server.pool_mode),
        ));
    }
    let consoles = clients(reports).filter(|cl| cl.console).count();
    rows.push(pool_row(
        CONSOLE,
        CONSOLE,
        [consoles, 0, 0, 0],
        Duration::ZERO,
        "statement",
    ));
    Table {
        columns: vec![
            ("database", TEXT),
            ("user", TEXT),
            ("cl_active", INT4),
            ("cl_waiting", INT4),
            ("cl_active_cancel_req", INT4),
            ("cl_waiting_cancel_req", INT4),
            ("sv_active", INT4),
            ("sv_active_cancel", INT4),
            ("sv_being_canceled", INT4),
            ("sv_idle", INT4),
            ("sv_used", INT4),
            ("sv_tested", INT4),
            ("sv_login", INT4),
            ("maxwait", INT4),
            ("maxwait_us", INT4),
            ("pool_mode", TEXT),
        ],
        rows,
    }
}

/// One `SHOW POOLS` row; `counts` are clients active and waiting, servers active and idle.
fn pool_row(
    database: &str,
    user: &str,
    counts: [usize; 4],
    max_wait: Duration,
    mode: &str,
) -> Vec<Option<String>> {
    let [cl_active, cl_waiting, sv_active, sv_idle] = counts;
    vec![
        text(database),
        text(user),
        num(cl_active),
        num(cl_waiting),
        num(0),
        num(0),
        num(sv_active),
        num(0),
        num(0),
        num(sv_idle),
        num(0),
        num(0),
        num(0),
        num(max_wait.as_secs()),
        num(max_wait.subsec_micros()),
        text(mode),
    ]
}

fn addr_port(a: Option<SocketAddr>) -> [Option<String>; 2] {
    match a {
        Some(a) => [text(a.ip().to_string()), num(a.port())],
        None => [None, None],
    }
}

pub fn clients_table(state: &ClusterState, reports: &[CoreReport]) -> Table {
    let name_of = |addr: SocketAddr| {
        state
            .backends
            .iter()
            .find(|b| b.addr == Some(addr))
            .map(|b| b.name.clone())
    };
    let mut rows = Vec::new();
    for r in reports {
        for cl in &r.clients {
            let wait = cl.waiting.unwrap_or_default();
            let [addr, port] = addr_port(cl.peer);
            let [local_addr, local_port] = addr_port(cl.local);
            let (state_name, database, user) = match (cl.console, cl.waiting) {
                (true, _) => ("active", CONSOLE.to_owned(), cl.user.clone()),
                (false, Some(_)) => ("waiting", cl.database.clone(), cl.user.clone()),
                (false, None) => ("active", cl.database.clone(), cl.user.clone()),
            };
            rows.push(vec![
                text("C"),
                text(user),
                text(database),
                text(state_name),
                addr,
                port,
                local_addr,
                local_port,
                text(utc(cl.connected)),
                text(utc(cl.request.unwrap_or(cl.connected))),
                num(wait.as_secs()),
                num(wait.subsec_micros()),
                num(0),
                text(format!("0x{:08x}", cl.pid)),
                // The ptr of the server connection serving it (SHOW SERVERS).
                cl.backend.map(|(_, pid)| format!("0x{pid:08x}")),
                num(0),
                cl.tls.clone(),
                text(cl.application_name.clone()),
                num(cl.pid),
                num(r.core),
                cl.backend.and_then(|(addr, _)| name_of(addr)),
            ]);
        }
    }
    Table {
        columns: clients_columns(),
        rows,
    }
}

/// How many of `SHOW CLIENTS`' columns are PgBouncer's (pgpilot's follow).
const CLIENTS_PGBOUNCER: usize = 18;

/// `SHOW CLIENTS`' columns: PgBouncer's, then `pid`, `core`, `backend`.
fn clients_columns() -> Vec<(&'static str, u32)> {
    vec![
        ("type", TEXT),
        ("user", TEXT),
        ("database", TEXT),
        ("state", TEXT),
        ("addr", TEXT),
        ("port", INT4),
        ("local_addr", TEXT),
        ("local_port", INT4),
        ("connect_time", TEXT),
        ("request_time", TEXT),
        ("wait", INT4),
        ("wait_us", INT4),
        ("close_needed", INT4),
        ("ptr", TEXT),
        ("link", TEXT),
        ("remote_pid", INT4),
        ("tls", TEXT),
        ("application_name", TEXT),
        ("pid", INT8),
        ("core", INT4),
        ("backend", TEXT),
    ]
}

/// `SHOW SERVERS`: `SHOW CLIENTS`' columns for every backend connection (type `S`): those
/// serving a client (`active`, `link` the client's `ptr`) and those idle in a pool.
pub fn servers(state: &ClusterState, reports: &[CoreReport]) -> Table {
    let mut rows = Vec::new();
    for r in reports {
        for s in &r.servers {
            let [addr, port] = addr_port(Some(s.addr));
            let [local_addr, local_port] = addr_port(s.local);
            let backend = state.backends.get(s.backend_id).map(|b| b.name.clone());
            rows.push(vec![
                text("S"),
                text(s.user.clone()),
                text(s.database.clone()),
                text(if s.client.is_some() { "active" } else { "idle" }),
                addr,
                port,
                local_addr,
                local_port,
                text(utc(s.connected)),
                text(utc(s.request.unwrap_or(s.connected))),
                num(0),
                num(0),
                num(0),
                text(format!("0x{:08x}", s.remote_pid)),
                s.client.map(|pid| format!("0x{pid:08x}")),
                num(s.remote_pid),
                s.encrypted.then(|| "TLS".to_owned()),
                text(""),
                backend,
                num(r.core),
            ]);
        }
    }
    let mut columns = clients_columns();
    columns.truncate(CLIENTS_PGBOUNCER);
    columns.extend([("backend", TEXT), ("core", INT4)]);
    Table { columns, rows }
}

/// `SHOW PINS`: the sessions pinned to their backend connection (in transaction pooling it
/// serves them alone from then on), since when and by what statement.
pub fn pins(state: &ClusterState, reports: &[CoreReport]) -> Table {
    let mut rows = Vec::new();
    for r in reports {
        for cl in &r.clients {
            let Some((since, cause)) = &cl.pinned else {
                continue;
            };
            let backend = (cl.backend)
                .and_then(|(addr, _)| state.backends.iter().find(|b| b.addr == Some(addr)))
                .map(|b| b.name.clone());
            rows.push(vec![
                num(cl.pid),
                text(cl.user.clone()),
                text(cl.database.clone()),
                text(utc(*since)),
                text(cause.clone()),
                backend,
                num(r.core),
            ]);
        }
    }
    Table {
        columns: vec![
            ("pid", INT8),
            ("user", TEXT),
            ("database", TEXT),
            ("since", TEXT),
            ("cause", TEXT),
            ("backend", TEXT),
            ("core", INT4),
        ],
        rows,
    }
}

pub fn lists(c: &Config, reports: &[CoreReport]) -> Table {
    let pools = pools_by_key(reports).len();
    let mut databases: Vec<&str> = reports
        .iter()
        .flat_map(|r| &r.pools)
        .map(|p| p.database.as_str())
        .collect();
    databases.sort_unstable();
    databases.dedup();
    let used_clients = clients(reports).count();
    let used_servers: usize = reports
        .iter()
        .flat_map(|r| &r.pools)
        .map(|p| p.active + p.idle)
        .sum();
    let items = [
        ("databases", databases.len() + 1),
        ("users", c.users.len()),
        ("pools", pools + 1),
        ("free_clients", 0),
        ("used_clients", used_clients),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", used_servers),
        ("dns_names", c.backends.len()),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    Table {
        columns: vec![("list", TEXT), ("items", INT4)],
        rows: items
            .iter()
            .map(|(name, n)| vec![text(*name), num(n)])
            .collect(),
    }
}

pub fn backends(p: &PlaneReport) -> Table {
    // The share of reads each takes now: its weight as lowered by slowness or a slow start,
    // over the sum of those that take reads; with none, the primary takes them all.
    let total: u64 = (p.backends.iter())
        .filter(|b| b.status.takes_reads())
        .map(|b| u64::from(b.share))
        .sum();
    let share = |b: &BackendFigures| match total {
        0 => f64::from(u8::from(b.role == Role::Primary)),
        _ if !b.status.takes_reads() => 0.0,
        _ => b.share as f64 / total as f64,
    };
    let rows = p
        .backends
        .iter()
        .filter(|b| !b.removed)
        .map(|b| {
            vec![
                text(b.name.clone()),
                text(format!("{}:{}", b.host, b.port)),
                b.addr.map(|a| a.to_string()),
                text(role_name(b.role)),
                text(b.status.to_string()),
                num(b.weight),
                text(format!("{:.3}", share(b))),
                b.lag_bytes.map(|l| l.to_string()),
                b.replay_delay_ms
                    .map(|d| format!("{:.3}", d as f64 / 1000.0)),
                b.answer.map(|a| format!("{:.3}", a.as_secs_f64() * 1000.0)),
                b.last_check.map(utc),
                num(b.failures),
                text(match (b.detached_by_hand, b.cause.as_str()) {
                    (false, cause) => cause.to_owned(),
                    (true, "") => "DETACH from the admin console (ATTACH undoes it)".to_owned(),
                    (true, cause) => {
                        format!("DETACH from the admin console (ATTACH undoes it); {cause}")
                    }
                }),
                num(p.epoch),
            ]
        })
        .collect();
    Table {
        columns: vec![
            ("name", TEXT),
            ("host", TEXT),
            ("address", TEXT),
            ("role", TEXT),
            ("state", TEXT),
            ("weight", INT4),
            ("share", NUMERIC),
            ("lag_bytes", INT8),
            ("lag_seconds", NUMERIC),
            ("check_ms", NUMERIC),
            ("last_check", TEXT),
            ("failures", INT4),
            ("cause", TEXT),
            ("epoch", INT8),
        ],
        rows,
    }
}

pub fn events(p: &PlaneReport) -> Table {
    let row = |e: &EventRecord| {
        vec![
            text(utc(e.at)),
            text(e.event.clone()),
            text(e.backend.clone()),
            text(e.from.clone()),
            text(e.to.clone()),
            text(e.cause.clone()),
        ]
    };
    Table {
        columns: vec![
            ("time", TEXT),
            ("event", TEXT),
            ("backend", TEXT),
            ("from", TEXT),
            ("to", TEXT),
            ("cause", TEXT),
        ],
        rows: p.events.iter().map(row).collect(),
    }
}

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

/// `SHOW ROUTES`: statements sent since start (each simple Query or Parse counts once, as the
/// classifier routes it whole), summed over the cores, by the classifier's target and the rule
/// that decided it (read-your-writes, a rule or a pin may still have sent a replica's statement
/// to the primary).
pub fn routes(reports: &[CoreReport]) -> Table {
    let mut rows = Vec::new();
    for reason in Reason::ALL {
        for (side, target) in ["primary", "replica"].iter().enumerate() {
            let n: u64 = (reports.iter())
                .filter_map(|r| r.routes.get(reason.index())?.get(side))
                .sum();
            if n > 0 {
                rows.push(vec![text(*target), text(reason.as_str()), num(n)]);
            }
        }
    }
    Table {
        columns: vec![("target", TEXT), ("reason", TEXT), ("statements", INT8)],
        rows,
    }
}

/// Whether a startup packet's database is the console's.
pub fn is_console(database: &str) -> bool {
    CONSOLE_DATABASES.contains(&database)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_in_utc_as_pgbouncer_writes_them() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_148_413);
        assert_eq!(utc(t), "2026-12-01 18:06:53 UTC");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(t), "2000-02-29 00:00:00 UTC");
    }
}
