//! What transaction pooling keeps for a client across backends: its SETs, its prepared
//! statements, and the state that pins it to one backend; and what it never lets reach
//! another client.

use bytes::BytesMut;
use pgpilot_protocol::encode;

use crate::common::{self, Opts};
use crate::raw::Raw;

#[test]
fn a_clients_set_never_reaches_another_client_in_transaction_mode() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_size: 1,
            workers: 1,
            replica_weights: [0, 0],
            ..Opts::default()
        },
    );
    let mut a = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let mut b = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    a.query("SET search_path TO leaked_schema").unwrap();
    a.query("SET statement_timeout = 1").unwrap();
    // One backend in the pool: b gets the one a just used.
    assert_eq!(b.query("SHOW search_path").unwrap(), ["\"$user\", public"]);
    assert_eq!(b.query("SHOW statement_timeout").unwrap(), ["0"]);
    // DISCARD ALL drops the backend's prepared statements; shared ones are made again.
    let mut client = common::client(&proxy);
    let stmt = client.prepare("SELECT 41 + 1").unwrap();
    a.query("DISCARD ALL").unwrap();
    assert_eq!(client.query_one(&stmt, &[]).unwrap().get::<_, i32>(0), 42);
}

#[test]
fn temp_tables_listen_and_locks_pin_the_client_in_transaction_mode() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_size: 4,
            workers: 1,
            replica_weights: [0, 0],
            ..Opts::default()
        },
    );
    let mut a = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    a.query("CREATE TEMP TABLE scratch (v int)").unwrap();
    a.query("INSERT INTO scratch VALUES (7)").unwrap();
    // Other clients keep the pool busy; a stays on its backend.
    let mut others: Vec<Raw> = (0..3)
        .map(|_| Raw::connect(proxy.addr(), "app", "app", &[]).unwrap())
        .collect();
    for o in &mut others {
        o.query("SELECT 1").unwrap();
    }
    assert_eq!(a.query("SELECT v FROM scratch").unwrap(), ["7"]);
    a.query("LISTEN pinned_chan").unwrap();
    others[0].query("NOTIFY pinned_chan, 'hello'").unwrap();
    let mut out = bytes::BytesMut::new();
    pgpilot_protocol::encode::query(&mut out, b"SELECT 1");
    let notified = common::eventually(std::time::Duration::from_secs(5), || {
        a.send(&out);
        a.until_ready().iter().any(|f| f.tag == b'A')
    });
    assert!(notified, "the pinned client gets its notification");
    assert_eq!(a.query("SELECT pg_try_advisory_lock(4242)").unwrap(), ["t"]);
    // Held across a's transactions: nobody else gets it while a is connected.
    for o in &mut others {
        assert_eq!(o.query("SELECT pg_try_advisory_lock(4242)").unwrap(), ["f"]);
    }
    assert_eq!(
        a.query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        .unwrap(),
        ["1"]
    );
    drop(a);
    // Its backend is cleaned before anyone else gets it: no temp table, no lock left.
    let mut b = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    assert!(common::eventually(
        std::time::Duration::from_secs(5),
        || { b.query("SELECT pg_try_advisory_lock(4242)").unwrap() == ["t"] }
    ));
    for _ in 0..8 {
        assert_eq!(
            b.query("SELECT count(*) FROM pg_tables WHERE tablename = 'scratch'")
                .unwrap(),
            ["0"]
        );
    }
}

#[test]
fn a_clients_own_set_follows_it_to_every_backend_in_transaction_mode() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_size: 4,
            workers: 1,
            ..Opts::default()
        },
    );
    let mut a = Raw::connect(
        proxy.addr(),
        "app",
        "app",
        &[("application_name", "set-follower")],
    )
    .unwrap();
    let mut b = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    a.query("SET search_path TO custom_a, public").unwrap();
    a.query("SET statement_timeout = 300").unwrap();
    for _ in 0..6 {
        // Reads on either replica, and a block on the primary.
        assert_eq!(a.query("SHOW search_path").unwrap(), ["custom_a, public"]);
        assert_eq!(
            a.query("BEGIN; SELECT current_setting('search_path'); COMMIT")
                .unwrap(),
            ["custom_a, public"]
        );
        assert_eq!(b.query("SHOW search_path").unwrap(), ["\"$user\", public"]);
    }
    assert_eq!(a.query("SELECT pg_sleep(1)").unwrap_err().0, "57014");
    // A failed SET changes nothing.
    assert_eq!(
        a.query("SET statement_timeout = 'soon'").unwrap_err().0,
        "22023"
    );
    assert_eq!(a.query("SHOW statement_timeout").unwrap(), ["300ms"]);
    a.query("RESET statement_timeout").unwrap();
    assert_eq!(a.query("SHOW statement_timeout").unwrap(), ["0"]);
    assert_eq!(a.query("SHOW application_name").unwrap(), ["set-follower"]);
    a.query("RESET ALL").unwrap();
    assert_eq!(a.query("SHOW search_path").unwrap(), ["\"$user\", public"]);
    assert_eq!(
        a.query("SHOW application_name").unwrap(),
        ["set-follower"],
        "RESET returns to the startup value"
    );
    // A SET inside a transaction block may roll back: the client stays on its backend.
    a.query("BEGIN").unwrap();
    a.query("SET work_mem = '1MB'").unwrap();
    a.query("COMMIT").unwrap();
    for _ in 0..4 {
        assert_eq!(a.query("SHOW work_mem").unwrap(), ["1MB"]);
    }
}

#[test]
fn deallocate_of_protocol_statements_in_transaction_mode() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    for name in [&b"a1"[..], b"a2"] {
        let mut out = BytesMut::new();
        encode::parse(&mut out, name, b"SELECT 5", &[]);
        encode::sync(&mut out);
        raw.send(&out);
        raw.until_ready();
        assert_eq!(raw.run_prepared(name).unwrap(), ["5"]);
    }
    // As ActiveRecord evicts its statement cache.
    let frames = {
        let mut out = BytesMut::new();
        encode::query(&mut out, b"DEALLOCATE a1");
        raw.send(&out);
        raw.until_ready()
    };
    assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"CZ");
    assert_eq!(raw.run_prepared(b"a1").unwrap_err().0, "26000");
    assert_eq!(raw.run_prepared(b"a2").unwrap(), ["5"]);
    assert_eq!(raw.query("DEALLOCATE nosuch").unwrap_err().0, "26000");
    raw.query("DEALLOCATE ALL").unwrap();
    assert_eq!(raw.run_prepared(b"a2").unwrap_err().0, "26000");
}

#[test]
fn backends_keep_at_most_max_prepared_statements() {
    let Some(c) = common::cluster() else { return };
    let extra = "\n[routing]\nmax_prepared_statements = 16\n";
    let proxy = common::proxy(
        c,
        &Opts {
            extra,
            pool_size: 1,
            workers: 1,
            replica_weights: [0, 0],
            ..Opts::default()
        },
    );
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    for i in 0..40 {
        let mut out = BytesMut::new();
        encode::parse(
            &mut out,
            format!("q{i}").as_bytes(),
            format!("SELECT {i} AS n").as_bytes(),
            &[],
        );
        encode::sync(&mut out);
        raw.send(&out);
        raw.until_ready();
        assert_eq!(
            raw.run_prepared(format!("q{i}").as_bytes()).unwrap(),
            [i.to_string()]
        );
    }
    // The first ones were closed on the backend; they are prepared again when used.
    for i in 0..40 {
        assert_eq!(
            raw.run_prepared(format!("q{i}").as_bytes()).unwrap(),
            [i.to_string()]
        );
    }
    let kept: i64 = raw
        .query("SELECT count(*) FROM pg_prepared_statements")
        .unwrap()[0]
        .parse()
        .unwrap();
    assert!(kept <= 16, "{kept} statements on the backend");
}

#[test]
fn discard_all_mid_session_in_transaction_mode() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let mut out = BytesMut::new();
    encode::parse(&mut out, b"d1", b"SELECT 9", &[]);
    encode::sync(&mut out);
    raw.send(&out);
    raw.until_ready();
    assert_eq!(raw.run_prepared(b"d1").unwrap(), ["9"]);
    raw.query("SET search_path TO discarded, public").unwrap();
    raw.query("DISCARD ALL").unwrap();
    assert_eq!(
        raw.run_prepared(b"d1").unwrap_err().0,
        "26000",
        "the statement is gone"
    );
    for _ in 0..4 {
        assert_eq!(
            raw.query("SHOW search_path").unwrap(),
            ["\"$user\", public"]
        );
    }
}
