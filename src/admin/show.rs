//! The result sets of `SHOW`: PgBouncer's columns in PgBouncer's order (as PgBouncer 1.18
//! answers), pgpilot's own after them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{ClientFigures, CoreReport, PoolFigures, Table, INT4, TEXT};
use crate::config::{AuthMethod, Config, PoolMode, ReadYourWrites, Role, CONSOLE_DATABASES};

mod connections;
mod own;
mod stats;

pub use connections::{clients_table, pins, servers};
pub use own::{backends, events, routes};
pub use stats::{stats, StatsKind};

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
