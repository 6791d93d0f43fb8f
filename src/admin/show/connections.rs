//! `SHOW CLIENTS`, `SHOW SERVERS` and `SHOW PINS`: one row per connection on every core.

use std::net::SocketAddr;

use super::{num, text, utc, CONSOLE};
use crate::admin::{CoreReport, Table, INT4, INT8, TEXT};
use crate::control::ClusterState;

fn addr_port(a: Option<SocketAddr>) -> [Option<String>; 2] {
    match a {
        Some(a) => [text(a.ip().to_string()), num(a.port())],
        None => [None, None],
    }
}

/// The name of the backend a client's connection goes to.
fn serving(state: &ClusterState, backend: Option<(SocketAddr, u32)>) -> Option<String> {
    let (addr, _) = backend?;
    let b = state.backends.iter().find(|b| b.addr == Some(addr))?;
    Some(b.name.clone())
}

pub fn clients_table(state: &ClusterState, reports: &[CoreReport]) -> Table {
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
                serving(state, cl.backend),
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
            let backend = serving(state, cl.backend);
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
