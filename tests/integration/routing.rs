//! The basic read/write split: reads to replicas, writes and transactions to the primary.

use crate::common::{self, Opts};
use crate::raw::Raw;

/// Routing tests that check where each statement lands right after writes turn the
/// read-your-writes window off; `reads_follow_the_sessions_own_writes` tests it.
const NO_READ_YOUR_WRITES: &str = "\n[routing]\nread_your_writes = \"off\"\n";

fn in_recovery(client: &mut postgres::Client, sql: &str) -> bool {
    client.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn autocommit_reads_land_on_replicas_and_writes_on_the_primary() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            extra: NO_READ_YOUR_WRITES,
            ..Opts::default()
        },
    );
    let mut client = common::client(&proxy);
    for _ in 0..20 {
        assert!(
            in_recovery(&mut client, "SELECT pg_is_in_recovery()"),
            "a plain read goes to a replica"
        );
    }
    // Locking reads and writing functions are writes.
    assert!(!in_recovery(
        &mut client,
        "SELECT pg_is_in_recovery() FROM (SELECT 1) s FOR UPDATE"
    ));
    client
        .batch_execute("CREATE SEQUENCE IF NOT EXISTS route_seq")
        .unwrap();
    let row = client
        .query_one("SELECT nextval('route_seq') > 0, pg_is_in_recovery()", &[])
        .unwrap();
    assert!(!row.get::<_, bool>(1), "nextval runs on the primary");
    // Both replicas take reads (weights 1:1).
    let mut ports = std::collections::HashSet::new();
    for _ in 0..60 {
        ports.insert(
            client
                .query_one("SELECT inet_server_port()", &[])
                .unwrap()
                .get::<_, i32>(0),
        );
    }
    let replicas: std::collections::HashSet<i32> =
        c.ports[1..].iter().map(|p| i32::from(*p)).collect();
    assert_eq!(ports, replicas);
}

#[test]
fn transactions_go_to_the_primary_unless_read_only() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            extra: NO_READ_YOUR_WRITES,
            ..Opts::default()
        },
    );
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    raw.query("CREATE TABLE IF NOT EXISTS route_t (v int)")
        .unwrap();
    raw.query("BEGIN").unwrap();
    assert_eq!(raw.query("SELECT pg_is_in_recovery()").unwrap(), ["f"]);
    raw.query("INSERT INTO route_t VALUES (1)").unwrap();
    assert_eq!(raw.query("SELECT pg_is_in_recovery()").unwrap(), ["f"]);
    raw.query("COMMIT").unwrap();

    raw.query("BEGIN READ ONLY").unwrap();
    assert_eq!(raw.query("SELECT pg_is_in_recovery()").unwrap(), ["t"]);
    let e = raw.query("CREATE TABLE route_ro (v int)").unwrap_err();
    assert_eq!(
        e.0, "25006",
        "a write in a read-only block fails as PostgreSQL says"
    );
    raw.query("ROLLBACK").unwrap();

    raw.query("START TRANSACTION READ ONLY").unwrap();
    assert_eq!(raw.query("SELECT pg_is_in_recovery()").unwrap(), ["t"]);
    raw.query("COMMIT").unwrap();

    // Extended protocol: a statement's route is decided by its Parse.
    let mut client = common::client(&proxy);
    let read = client.prepare("SELECT pg_is_in_recovery()").unwrap();
    let write = client
        .prepare("INSERT INTO route_t VALUES ($1) RETURNING pg_is_in_recovery()")
        .unwrap();
    for i in 0..5 {
        assert!(client.query_one(&read, &[]).unwrap().get::<_, bool>(0));
        assert!(!client.query_one(&write, &[&i]).unwrap().get::<_, bool>(0));
    }
}

#[test]
fn reads_fall_back_to_the_primary_without_replicas() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            replica_weights: [0, 0],
            ..Opts::default()
        },
    );
    let mut client = common::client(&proxy);
    assert!(!in_recovery(&mut client, "SELECT pg_is_in_recovery()"));
}

#[test]
fn an_unreachable_replica_is_skipped() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            dead_replica_weight: Some(100),
            ..Opts::default()
        },
    );
    let mut client = common::client(&proxy);
    for _ in 0..20 {
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .unwrap()
            .get(0);
        assert!(
            c.ports.iter().any(|p| i32::from(*p) == port),
            "served by a live server"
        );
    }
}

const RULES: &str = r#"
[routing]
write_functions = ["touch_row"]

[[routing.rules]]
application_name = "reports"
target = "replica"

[[routing.rules]]
application_name = "migrator"
target = "primary"
"#;

#[test]
fn hints_rules_and_configured_write_functions() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            extra: RULES,
            ..Opts::default()
        },
    );
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    assert_eq!(
        raw.query("/* pgpilot:primary */ SELECT pg_is_in_recovery()")
            .unwrap(),
        ["f"]
    );
    assert_eq!(
        raw.query("/* pgpilot:replica */ SELECT pg_is_in_recovery()")
            .unwrap(),
        ["t"]
    );
    let e = raw
        .query("/* pgpilot:replica */ CREATE TABLE hinted (a int)")
        .unwrap_err();
    assert_eq!(e.0, "25006", "a replica hint on a write is refused");
    assert_eq!(raw.query("SELECT 1").unwrap(), ["1"], "the session goes on");
    raw.query("CREATE OR REPLACE FUNCTION touch_row() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        .unwrap();
    assert_eq!(
        raw.query("SELECT pg_is_in_recovery() FROM touch_row()")
            .unwrap(),
        ["f"]
    );

    let mut reports = Raw::connect(
        proxy.addr(),
        "app",
        "app",
        &[("application_name", "reports")],
    )
    .unwrap();
    assert_eq!(
        reports
            .query("BEGIN; SELECT pg_is_in_recovery(); COMMIT")
            .unwrap(),
        ["t"]
    );
    assert_eq!(
        reports
            .query("CREATE TABLE reports_cannot (a int)")
            .unwrap_err()
            .0,
        "25006"
    );
    let mut migrator = Raw::connect(
        proxy.addr(),
        "app",
        "app",
        &[("application_name", "migrator")],
    )
    .unwrap();
    assert_eq!(migrator.query("SELECT pg_is_in_recovery()").unwrap(), ["f"]);
}

#[test]
fn reads_follow_the_sessions_own_writes() {
    let Some(c) = common::cluster() else { return };
    let extra = "\n[routing]\nread_your_writes = \"time\"\nread_your_writes_ms = 400\n";
    let proxy = common::proxy(
        c,
        &Opts {
            extra,
            ..Opts::default()
        },
    );
    let mut a = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let mut b = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    a.query("CREATE TABLE IF NOT EXISTS ryw (v int)").unwrap();
    for i in 0..20 {
        a.query(&format!("INSERT INTO ryw VALUES ({i})")).unwrap();
        // Right after its own write a session reads from the primary and sees the row...
        assert_eq!(
            a.query(&format!(
                "SELECT pg_is_in_recovery() FROM ryw WHERE v = {i}"
            ))
            .unwrap(),
            ["f"]
        );
        // ...while another session's reads stay on the replicas.
        assert_eq!(b.query("SELECT pg_is_in_recovery()").unwrap(), ["t"]);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        a.query("SELECT pg_is_in_recovery()").unwrap(),
        ["t"],
        "back to replicas after the window"
    );
}

#[test]
fn volatile_functions_from_the_catalog_are_writes() {
    let Some(c) = common::cluster() else { return };
    let mut direct = common::direct(c, 0);
    direct
        .batch_execute(
            "CREATE OR REPLACE FUNCTION public.cat_volatile() RETURNS int LANGUAGE sql VOLATILE AS 'SELECT 1';
             CREATE OR REPLACE FUNCTION public.cat_stable() RETURNS int LANGUAGE sql STABLE AS 'SELECT 2';",
        )
        .unwrap();
    // The replicas must have replayed the functions before a read can use them there.
    for i in 1..c.ports.len() {
        let mut replica = common::direct(c, i);
        assert!(common::eventually(
            std::time::Duration::from_secs(20),
            || { replica.query_one("SELECT public.cat_stable()", &[]).is_ok() }
        ));
    }
    let proxy = common::proxy(
        c,
        &Opts {
            extra: NO_READ_YOUR_WRITES,
            ..Opts::default()
        },
    );
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    // The catalog is read in the background on first use.
    assert!(common::eventually(
        std::time::Duration::from_secs(10),
        || {
            raw.query("SELECT pg_is_in_recovery() FROM cat_volatile()")
                .unwrap()
                == ["f"]
        }
    ));
    for _ in 0..10 {
        assert_eq!(
            raw.query("SELECT pg_is_in_recovery() FROM cat_volatile()")
                .unwrap(),
            ["f"]
        );
        assert_eq!(
            raw.query("SELECT pg_is_in_recovery() FROM cat_stable()")
                .unwrap(),
            ["t"]
        );
    }
}

#[test]
fn a_read_only_session_runs_its_blocks_on_replicas() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            extra: NO_READ_YOUR_WRITES,
            ..Opts::default()
        },
    );
    let params = [("options", "-c default_transaction_read_only=on")];
    let mut ro = Raw::connect(proxy.addr(), "app", "app", &params).unwrap();
    assert_eq!(
        ro.query("BEGIN; SELECT pg_is_in_recovery(); COMMIT")
            .unwrap(),
        ["f"],
        "a multi-statement text stays on the primary"
    );
    ro.query("BEGIN").unwrap();
    assert_eq!(ro.query("SELECT pg_is_in_recovery()").unwrap(), ["t"]);
    ro.query("COMMIT").unwrap();
    let mut ro2 = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    ro2.query("SET default_transaction_read_only = on").unwrap();
    ro2.query("START TRANSACTION").unwrap();
    assert_eq!(ro2.query("SELECT pg_is_in_recovery()").unwrap(), ["t"]);
    ro2.query("COMMIT").unwrap();
    ro2.query("SET default_transaction_read_only = off")
        .unwrap();
    ro2.query("BEGIN").unwrap();
    assert_eq!(ro2.query("SELECT pg_is_in_recovery()").unwrap(), ["f"]);
    ro2.query("COMMIT").unwrap();
}

#[test]
fn session_mode_reads_from_a_replica_and_keeps_the_session_on_both() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_mode: "session",
            extra: NO_READ_YOUR_WRITES,
            ..Opts::default()
        },
    );
    let mut a = Raw::connect(
        proxy.addr(),
        "app",
        "app",
        &[("application_name", "sess-route")],
    )
    .unwrap();
    assert_eq!(a.query("SELECT pg_is_in_recovery()").unwrap(), ["t"]);
    a.query("SET search_path TO sess_schema, public").unwrap();
    for _ in 0..3 {
        assert_eq!(
            a.query("SELECT pg_is_in_recovery(), current_setting('search_path')")
                .unwrap(),
            ["t"]
        );
        assert_eq!(
            a.query("SHOW search_path").unwrap(),
            ["sess_schema, public"]
        );
        assert_eq!(
            a.query("BEGIN; SELECT current_setting('search_path'); COMMIT")
                .unwrap(),
            ["sess_schema, public"]
        );
        assert_eq!(
            a.query("BEGIN; SELECT pg_is_in_recovery(); COMMIT")
                .unwrap(),
            ["f"]
        );
    }
    // A prepared read runs on the replica, a prepared write on the primary, alternately.
    let mut client = postgres::Client::connect(
        &common::dsn(proxy.addr().port(), "app", "app"),
        postgres::NoTls,
    )
    .unwrap();
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS sess_t (v int)")
        .unwrap();
    let read = client.prepare("SELECT pg_is_in_recovery()").unwrap();
    let write = client
        .prepare("INSERT INTO sess_t VALUES ($1) RETURNING pg_is_in_recovery()")
        .unwrap();
    for i in 0..5 {
        assert!(client.query_one(&read, &[]).unwrap().get::<_, bool>(0));
        assert!(!client.query_one(&write, &[&i]).unwrap().get::<_, bool>(0));
    }
    // LISTEN keeps the session on the primary from then on.
    a.query("LISTEN sess_chan").unwrap();
    assert_eq!(a.query("SELECT pg_is_in_recovery()").unwrap(), ["f"]);
}

#[test]
fn a_plain_begin_waits_for_its_first_statement() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            extra: NO_READ_YOUR_WRITES,
            ..Opts::default()
        },
    );
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    // SET TRANSACTION READ ONLY first: the whole block may run on a replica.
    raw.query("BEGIN").unwrap();
    raw.query("SET TRANSACTION READ ONLY").unwrap();
    assert_eq!(raw.query("SELECT pg_is_in_recovery()").unwrap(), ["t"]);
    assert_eq!(
        raw.query("CREATE TABLE held_ro (a int)").unwrap_err().0,
        "25006"
    );
    raw.query("ROLLBACK").unwrap();
    // Anything else first: a read-write block on the primary.
    raw.query("START TRANSACTION").unwrap();
    assert_eq!(raw.query("SELECT pg_is_in_recovery()").unwrap(), ["f"]);
    raw.query("COMMIT").unwrap();
    // An empty block never needs a backend.
    let mut out = bytes::BytesMut::new();
    pgpilot_protocol::encode::query(&mut out, b"BEGIN");
    pgpilot_protocol::encode::query(&mut out, b"COMMIT");
    raw.send(&out);
    let first = raw.until_ready();
    assert_eq!(first.last().unwrap().body(), b"T");
    let second = raw.until_ready();
    assert_eq!(second.last().unwrap().body(), b"I");
    assert_eq!(raw.query("SELECT 1").unwrap(), ["1"]);
}
