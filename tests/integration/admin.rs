//! The admin console through the postgres crate, psql (libpq) and the raw client: PgBouncer's
//! commands answer with PgBouncer 1.18's columns, figures gathered from both cores, pgpilot's
//! own commands, and only `[admin] users` get in.

use postgres::{Client, NoTls, SimpleQueryMessage};

use crate::common::{self, Opts};
use crate::raw::Raw;

pub const ADMIN: &str = "\n[[users]]\nname = \"admin\"\npassword = \"secret\"\n\n\
                     [admin]\nusers = [\"admin\"]\n";

/// The columns PgBouncer 1.18 answers each command with, in order (from its console).
const POOLS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
];
const CLIENTS: &[&str] = &[
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
];
const DATABASES: &[&str] = &[
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "pool_mode",
    "max_connections",
    "current_connections",
    "paused",
    "disabled",
];

/// A console command's column names and rows (text values).
pub type Answer = (Vec<String>, Vec<Vec<Option<String>>>);

pub fn show(console: &mut Client, command: &str) -> Answer {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for m in console
        .simple_query(command)
        .unwrap_or_else(|e| panic!("{command}: {e}"))
    {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    (columns, rows)
}

/// The value of `column` in `row` of an answer.
pub fn cell<'a>(answer: &'a Answer, row: &'a [Option<String>], column: &str) -> &'a str {
    let i = answer
        .0
        .iter()
        .position(|c| c == column)
        .unwrap_or_else(|| panic!("no column {column} in {:?}", answer.0));
    row.get(i).and_then(|v| v.as_deref()).unwrap_or("")
}

/// A proxy in front of the test cluster with an admin user.
fn admin_proxy(c: &common::Cluster) -> pgpilot::Proxy {
    common::proxy(
        c,
        &Opts {
            extra: ADMIN,
            ..Opts::default()
        },
    )
}

pub fn console(proxy: &pgpilot::Proxy, database: &str) -> Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user=admin password=secret dbname={database} connect_timeout=10",
        proxy.addr().port()
    );
    Client::connect(&dsn, NoTls).expect("the console lets admin in")
}

fn starts_with(columns: &[String], expected: &[&str]) -> bool {
    columns.len() >= expected.len() && columns.iter().zip(expected).all(|(a, b)| a == b)
}

#[test]
fn the_console_answers_pgbouncers_commands_with_figures_from_every_core() {
    let Some(c) = common::cluster() else { return };
    let proxy = admin_proxy(c);
    // 16 clients, spread over both cores by SO_REUSEPORT; one holds a transaction open.
    let mut apps: Vec<Client> = (0..16).map(|_| common::client(&proxy)).collect();
    for app in &mut apps {
        app.simple_query("SELECT 1").unwrap();
    }
    // The port of the backend connection it holds, as the server sees it; one query, as the
    // statistics below count.
    let held_port = (apps[0]
        .simple_query("BEGIN; SELECT inet_client_port()")
        .unwrap())
    .into_iter()
    .find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
    .expect("the backend connection's port");
    let mut console = console(&proxy, "pgbouncer");

    let pools = show(&mut console, "SHOW POOLS");
    assert_eq!(pools.0, POOLS, "SHOW POOLS columns");
    let app = pools
        .1
        .iter()
        .find(|r| cell(&pools, r, "database") == "app" && cell(&pools, r, "user") == "app")
        .expect("a pool for app/app");
    assert_eq!(cell(&pools, app, "cl_active"), "16");
    assert_eq!(cell(&pools, app, "cl_waiting"), "0");
    let active: u32 = cell(&pools, app, "sv_active").parse().unwrap();
    assert!(active >= 1, "the open transaction holds a backend");
    assert_eq!(cell(&pools, app, "pool_mode"), "transaction");

    let clients = show(&mut console, "SHOW CLIENTS");
    assert!(starts_with(&clients.0, CLIENTS), "{:?}", clients.0);
    let mine: Vec<_> = (clients.1.iter())
        .filter(|r| cell(&clients, r, "database") == "app")
        .collect();
    assert_eq!(mine.len(), 16, "every app client, from both cores");
    let cores: std::collections::BTreeSet<&str> =
        mine.iter().map(|r| cell(&clients, r, "core")).collect();
    assert_eq!(cores.len(), 2, "clients on both cores: {cores:?}");
    let linked = mine
        .iter()
        .filter(|r| !cell(&clients, r, "link").is_empty());
    assert_eq!(linked.count(), 1, "one client holds a backend");
    let admin = (clients.1.iter())
        .find(|r| cell(&clients, r, "user") == "admin")
        .expect("the console itself");
    assert_eq!(cell(&clients, admin, "addr"), "127.0.0.1");

    // The connection serving the open transaction, linked both ways; idle ones in the pools.
    let servers = show(&mut console, "SHOW SERVERS");
    assert!(starts_with(&servers.0, CLIENTS), "{:?}", servers.0);
    let active: Vec<_> = (servers.1.iter())
        .filter(|r| cell(&servers, r, "state") == "active")
        .collect();
    assert_eq!(active.len(), 1, "{:?}", servers.1);
    let (server_ptr, client_ptr) = (
        cell(&servers, active[0], "ptr"),
        cell(&servers, active[0], "link"),
    );
    let holder = (clients.1.iter())
        .find(|r| cell(&clients, r, "ptr") == client_ptr)
        .expect("the client it serves");
    assert_eq!(cell(&clients, holder, "link"), server_ptr);
    assert_eq!(cell(&servers, active[0], "type"), "S");
    assert_eq!(
        (
            cell(&servers, active[0], "local_addr"),
            cell(&servers, active[0], "local_port")
        ),
        ("127.0.0.1", held_port.as_str()),
        "the active connection's own end"
    );
    let idle = servers
        .1
        .iter()
        .filter(|r| cell(&servers, r, "state") == "idle")
        .count();
    assert!(idle >= 1, "the reads left idle connections");

    let databases = show(&mut console, "SHOW DATABASES");
    assert_eq!(databases.0, DATABASES);
    let names: Vec<&str> = (databases.1.iter())
        .map(|r| cell(&databases, r, "name"))
        .collect();
    assert_eq!(names, ["app", "pgpilot"]);

    let lists = show(&mut console, "SHOW LISTS");
    assert_eq!(lists.0, ["list", "items"]);
    let used = (lists.1.iter())
        .find(|r| cell(&lists, r, "list") == "used_clients")
        .map(|r| cell(&lists, r, "items"));
    assert_eq!(used, Some("17"), "16 apps and the console");

    let users = show(&mut console, "SHOW USERS");
    assert_eq!(users.0, ["name", "pool_mode"]);
    let names: Vec<&str> = users.1.iter().map(|r| cell(&users, r, "name")).collect();
    assert!(
        names.contains(&"admin") && names.contains(&"app"),
        "{names:?}"
    );

    let config = show(&mut console, "SHOW CONFIG");
    assert_eq!(config.0, ["key", "value", "default", "changeable"]);
    let size = (config.1.iter())
        .find(|r| cell(&config, r, "key") == "pool.size")
        .expect("pool.size");
    assert_eq!(
        (cell(&config, size, "value"), cell(&config, size, "default")),
        ("10", "20")
    );

    // 16 autocommit SELECTs, and a BEGIN; SELECT 1 (one query, its transaction still open).
    let stats = show(&mut console, "SHOW STATS");
    assert_eq!(
        stats.0,
        [
            "database",
            "total_xact_count",
            "total_query_count",
            "total_received",
            "total_sent",
            "total_xact_time",
            "total_query_time",
            "total_wait_time",
            "avg_xact_count",
            "avg_query_count",
            "avg_recv",
            "avg_sent",
            "avg_xact_time",
            "avg_query_time",
            "avg_wait_time"
        ]
    );
    let app = (stats.1.iter())
        .find(|r| cell(&stats, r, "database") == "app")
        .expect("stats for app");
    let n = |c: &str| cell(&stats, app, c).parse::<u64>().unwrap();
    assert_eq!((n("total_xact_count"), n("total_query_count")), (16, 17));
    assert!(n("total_received") > 0 && n("total_sent") > 0);
    assert!(n("total_query_time") > 0 && n("total_xact_time") > 0);
    for command in ["SHOW STATS_TOTALS", "SHOW STATS_AVERAGES"] {
        let t = show(&mut console, command);
        assert_eq!(
            t.0,
            [
                "database",
                "xact_count",
                "query_count",
                "bytes_received",
                "bytes_sent",
                "xact_time",
                "query_time",
                "wait_time"
            ],
            "{command}"
        );
    }

    let routes = show(&mut console, "SHOW ROUTES");
    assert_eq!(routes.0, ["target", "reason", "statements"]);
    // One count per Query (or Parse): "BEGIN; SELECT 1" opens a read-write transaction.
    let counted: Vec<(&str, &str, &str)> = (routes.1.iter())
        .map(|r| {
            let of = |c| cell(&routes, r, c);
            (of("target"), of("reason"), of("statements"))
        })
        .collect();
    assert_eq!(
        counted,
        [("replica", "plain_read", "16"), ("primary", "write", "1")]
    );

    // LISTEN pins a client to its backend: SHOW PINS says who and why.
    apps[1].simple_query("LISTEN console_test").unwrap();
    let pins = show(&mut console, "SHOW PINS");
    assert_eq!(
        pins.0,
        ["pid", "user", "database", "since", "cause", "backend", "core"]
    );
    let causes: Vec<&str> = pins.1.iter().map(|r| cell(&pins, r, "cause")).collect();
    assert_eq!(causes, ["LISTEN console_test"]);

    let version = show(&mut console, "SHOW VERSION");
    assert_eq!(version.0, ["version"]);
    assert!(cell(&version, &version.1[0], "version").starts_with("pgpilot "));

    let backends = show(&mut console, "SHOW BACKENDS");
    let rows: Vec<(&str, &str, &str)> = (backends.1.iter())
        .map(|r| {
            let name = cell(&backends, r, "name");
            (
                name,
                cell(&backends, r, "role"),
                cell(&backends, r, "state"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("b0", "primary", "up"),
            ("b1", "replica", "up"),
            ("b2", "replica", "up")
        ]
    );
    let shares: Vec<&str> = (backends.1.iter())
        .map(|r| cell(&backends, r, "share"))
        .collect();
    assert_eq!(
        shares[0], "0.000",
        "the primary takes no reads while replicas do"
    );

    // RELOAD reads the config file again: this proxy's was never written (it was given as
    // text), so the reload fails, says so as an event, and changes nothing.
    console.simple_query("RELOAD").unwrap();
    let failed = common::eventually(std::time::Duration::from_secs(5), || {
        let events = show(&mut console, "SHOW EVENTS");
        events.1.iter().any(|r| {
            cell(&events, r, "event") == "reload_failed"
                && cell(&events, r, "cause").contains("test.toml")
        })
    });
    assert!(failed, "the failed reload is an event");

    // What drivers send at connect is accepted; anything else is refused, and the extended
    // protocol is refused without losing the session.
    console.simple_query("SET extra_float_digits = 3").unwrap();
    let e = console.simple_query("SELECT 1").unwrap_err();
    assert_eq!(common::sqlstate(&e), "42601");
    let e = console.query("SHOW POOLS", &[]).unwrap_err();
    assert_eq!(common::sqlstate(&e), "0A000");
    assert_eq!(show(&mut console, "SHOW VERSION").1.len(), 1);
    apps[0].simple_query("COMMIT").unwrap();
}

#[test]
fn only_admin_users_get_in_and_drivers_see_the_parameters_they_look_for() {
    let Some(c) = common::cluster() else { return };
    let proxy = admin_proxy(c);
    let raw = Raw::connect(proxy.addr(), "admin", "secret", &[("database", "pgpilot")])
        .expect("admin logs in");
    let version = raw.param("server_version").unwrap_or_default();
    assert!(version.ends_with("/pgpilot"), "{version}");
    for (name, value) in [
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        assert_eq!(raw.param(name), Some(value), "{name}");
    }
    // A user who is not an admin authenticates, then is refused as PostgreSQL refuses a role
    // without CONNECT on a database.
    let (code, severity, message) =
        Raw::connect(proxy.addr(), "app", "app", &[("database", "pgbouncer")])
            .err()
            .expect("app is no admin");
    assert_eq!((code.as_str(), severity.as_str()), ("42501", "FATAL"));
    assert!(message.contains("[admin] users"), "{message}");
    let (code, _, _) = Raw::connect(proxy.addr(), "admin", "wrong", &[("database", "pgpilot")])
        .err()
        .expect("a wrong password");
    assert_eq!(code, "28P01");

    // psql, as operators use it: every command.
    for command in [
        "SHOW POOLS",
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW STATS",
        "SHOW STATS_TOTALS",
        "SHOW STATS_AVERAGES",
        "SHOW DATABASES",
        "SHOW LISTS",
        "SHOW USERS",
        "SHOW CONFIG",
        "SHOW VERSION",
        "SHOW BACKENDS",
        "SHOW EVENTS",
        "SHOW ROUTES",
        "SHOW PINS",
        "SET application_name = 'x'",
        "PAUSE app",
        "RESUME app",
        "RECONNECT app",
        "KILL nothing_here",
        "DETACH b2",
        "ATTACH b2",
        "RELOAD",
    ] {
        let out = std::process::Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &proxy.addr().port().to_string(),
            ])
            .args(["-U", "admin", "-d", "pgpilot", "-c", command])
            .env("PGPASSWORD", "secret")
            .output()
            .expect("psql runs");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.is_empty(),
            "psql {command}: {said}"
        );
    }
    // psql, as operators use it.
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.addr().port().to_string(),
            "-U",
            "admin",
            "-d",
            "pgpilot",
            "-c",
            "SHOW POOLS",
            "-c",
            "SHOW BACKENDS",
        ])
        .env("PGPASSWORD", "secret")
        .output()
        .expect("psql runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("cl_active") && text.contains("sv_idle"),
        "{text}"
    );
    assert!(
        text.contains("lag_bytes") && text.contains(" b1 "),
        "{text}"
    );
}

/// The port of the server that answers a read through the proxy.
fn read_port(app: &mut Client) -> u16 {
    let rows = app.simple_query("SELECT inet_server_port()").unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|p| p.parse().ok()),
            _ => None,
        })
        .expect("a port")
}

#[test]
fn detach_takes_a_replica_out_until_attach_whatever_the_checks_say() {
    let Some(c) = common::cluster() else { return };
    let extra = format!("{ADMIN}\n[health]\ninterval_ms = 200\nslow_start_ms = 0\n");
    let proxy = common::proxy(
        c,
        &Opts {
            extra: Box::leak(extra.into_boxed_str()),
            ..Opts::default()
        },
    );
    let mut console = console(&proxy, "pgpilot");
    let mut app = common::client(&proxy);
    let (b1, b2) = (c.ports[1], c.ports[2]);
    let state = |console: &mut Client, name: &str| {
        let backends = show(console, "SHOW BACKENDS");
        let row = (backends.1.iter())
            .find(|r| cell(&backends, r, "name") == name)
            .cloned()
            .expect("the backend");
        (
            cell(&backends, &row, "state").to_owned(),
            cell(&backends, &row, "cause").to_owned(),
        )
    };

    console.simple_query("DETACH b1").unwrap();
    let (status, cause) = state(&mut console, "b1");
    assert_eq!(status, "down");
    assert!(cause.contains("DETACH"), "{cause}");
    // Its checks go on succeeding, and it stays out: every read goes to b2.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        state(&mut console, "b1").0,
        "down",
        "the checks respect DETACH"
    );
    let ports: Vec<u16> = (0..30).map(|_| read_port(&mut app)).collect();
    assert!(
        ports.iter().all(|p| *p == b2),
        "reads went to {ports:?}, not only {b2}"
    );

    // The primary is never detached; an unknown name says which names there are.
    let e = console.simple_query("DETACH b0").unwrap_err();
    assert_eq!(common::sqlstate(&e), "55000");
    let e = console.simple_query("DETACH nope").unwrap_err();
    assert_eq!(common::sqlstate(&e), "42704");
    let message = e.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message.as_deref().is_some_and(|m| m.contains("b1, b2")),
        "{message:?}"
    );

    console.simple_query("ATTACH b1").unwrap();
    assert_eq!(state(&mut console, "b1").0, "up");
    let back = common::eventually(std::time::Duration::from_secs(10), || {
        read_port(&mut app) == b1
    });
    assert!(back, "reads reach b1 again after ATTACH");
    let events = show(&mut console, "SHOW EVENTS");
    let seen: Vec<(&str, &str)> = (events.1.iter())
        .filter(|r| cell(&events, r, "backend") == "b1")
        .map(|r| (cell(&events, r, "event"), cell(&events, r, "cause")))
        .collect();
    assert_eq!(
        seen,
        [
            ("detached", "DETACH from the admin console"),
            ("attached", "ATTACH from the admin console")
        ]
    );
}

#[test]
fn pause_waits_for_transactions_holds_new_work_until_resume_and_kill_and_reconnect_end_things() {
    let Some(c) = common::cluster() else { return };
    let proxy = admin_proxy(c);
    let mut busy = common::client(&proxy);
    busy.simple_query("BEGIN; SELECT 1").unwrap();
    let paused = {
        let mut console = console(&proxy, "pgpilot");
        std::thread::spawn(move || {
            console.simple_query("PAUSE").unwrap();
            console
        })
    };
    // PAUSE cannot be done while the transaction holds its backend.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        !paused.is_finished(),
        "PAUSE answered before the transaction ended"
    );
    busy.simple_query("COMMIT").unwrap();
    let waiting = std::time::Instant::now();
    while !paused.is_finished() {
        assert!(waiting.elapsed().as_secs() < 30, "PAUSE never answered");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut console = paused.join().unwrap();

    // New work waits, shown as waiting, until RESUME.
    let held = std::thread::spawn(move || {
        let rows = busy.simple_query("SELECT 41 + 1").unwrap();
        matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("42"))
    });
    let shown = common::eventually(std::time::Duration::from_secs(10), || {
        let pools = show(&mut console, "SHOW POOLS");
        (pools.1.iter())
            .any(|r| cell(&pools, r, "database") == "app" && cell(&pools, r, "cl_waiting") == "1")
    });
    assert!(shown, "the held client is shown waiting");
    let databases = show(&mut console, "SHOW DATABASES");
    let app = (databases.1.iter())
        .find(|r| cell(&databases, r, "name") == "app")
        .unwrap();
    assert_eq!(cell(&databases, app, "paused"), "1");
    assert!(!held.is_finished(), "work went on during the pause");
    console.simple_query("RESUME").unwrap();
    assert!(held.join().unwrap(), "the held query ran after RESUME");

    // RECONNECT: the connections served before are not served after.
    let mut app = common::client(&proxy);
    let pid = |app: &mut Client| -> String {
        let rows = app.simple_query("SELECT pg_backend_pid()").unwrap();
        match &rows[1] {
            SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
            _ => panic!("no row"),
        }
    };
    let before: std::collections::HashSet<String> = (0..10).map(|_| pid(&mut app)).collect();
    console.simple_query("RECONNECT").unwrap();
    let after: std::collections::HashSet<String> = (0..10).map(|_| pid(&mut app)).collect();
    assert!(before.is_disjoint(&after), "{before:?} then {after:?}");

    // KILL: the database's clients are ended at once.
    let mut victim = crate::raw::Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    victim.query("SELECT 1").unwrap();
    console.simple_query("KILL app").unwrap();
    let frame = victim.recv().expect("told why");
    let said = crate::raw::error_of(&frame).map(|(code, severity, _)| (code, severity));
    assert_eq!(said, Some(("57P01".into(), "FATAL".into())));
    assert!(victim.recv().is_none(), "closed after the FATAL");

    let events = show(&mut console, "SHOW EVENTS");
    let seen: Vec<(&str, &str)> = (events.1.iter())
        .map(|r| (cell(&events, r, "event"), cell(&events, r, "cause")))
        .collect();
    assert_eq!(
        seen,
        [
            ("paused", "PAUSE from the admin console"),
            ("resumed", "RESUME from the admin console"),
            ("reconnect", "RECONNECT from the admin console"),
            ("killed", "KILL app from the admin console")
        ]
    );
}
