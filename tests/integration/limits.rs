//! Limits and failures: too many clients, pool exhaustion, oversized messages, clients that
//! die inside a transaction, shutdown.

use std::time::Duration;

use bytes::{BufMut, BytesMut};

use crate::common::{self, Opts};
use crate::raw::{error_of, Raw};

#[test]
fn max_client_connections_exceeded_gets_53300() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            max_clients: 2,
            ..Opts::default()
        },
    );
    let a = common::client(&proxy);
    let b = common::client(&proxy);
    let e = postgres::Client::connect(
        &common::dsn(proxy.addr().port(), "app", "app"),
        postgres::NoTls,
    )
    .err()
    .unwrap();
    assert_eq!(common::sqlstate(&e), "53300");
    drop(a);
    // The slot is given back when a client leaves.
    assert!(common::eventually(Duration::from_secs(5), || {
        postgres::Client::connect(
            &common::dsn(proxy.addr().port(), "app", "app"),
            postgres::NoTls,
        )
        .is_ok()
    }));
    drop(b);
}

#[test]
fn pool_of_one_serves_two_clients_in_transaction_mode() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_size: 1,
            workers: 1,
            ..Opts::default()
        },
    );
    let port = proxy.addr().port();
    let workers: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let dsn = format!(
                    "{} application_name=pool-of-one",
                    common::dsn(port, "app", "app")
                );
                let mut client = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
                for n in 0..50 {
                    let mut tx = client.transaction().unwrap();
                    let v: i32 = tx
                        .query_one("SELECT $1::int", &[&(i * 1000 + n)])
                        .unwrap()
                        .get(0);
                    assert_eq!(v, i * 1000 + n);
                    tx.commit().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    // Only one backend connection served them.
    let mut direct = common::direct(c, 0);
    let n: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool-of-one'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "primary connections for a pool of 1");
}

#[test]
fn checkout_timeout_gives_53300_and_keeps_the_session() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_size: 1,
            workers: 1,
            checkout_timeout_ms: 300,
            ..Opts::default()
        },
    );
    let mut holder = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    // A lone BEGIN is answered by the proxy; the block takes its backend with its first statement.
    holder.query("BEGIN").unwrap();
    holder.query("SELECT 1").unwrap();
    let mut waiter = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let e = waiter.query("BEGIN; SELECT 1").unwrap_err();
    assert_eq!(e.0, "53300");
    holder.query("COMMIT").unwrap();
    assert_eq!(waiter.query("BEGIN; SELECT 2; COMMIT").unwrap(), ["2"]);
}

#[test]
fn oversized_message_gets_08p01_and_the_session_closes() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            max_message_bytes: 4096,
            ..Opts::default()
        },
    );
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let mut out = BytesMut::new();
    out.put_u8(b'Q');
    out.put_u32(1 << 30);
    out.put_slice(b"SELECT ");
    raw.send(&out);
    let frame = raw.recv().expect("an ErrorResponse before the close");
    assert_eq!(error_of(&frame).unwrap().0, "08P01");
    assert!(raw.recv().is_none(), "the session is closed");
    // A message just under the limit still works.
    let mut ok = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let sql = format!("SELECT length('{}')", "x".repeat(3000));
    assert_eq!(ok.query(&sql).unwrap(), ["3000"]);
}

#[test]
fn a_client_killed_inside_a_transaction_leaves_nothing_open() {
    let Some(c) = common::cluster() else { return };
    for mode in ["transaction", "session"] {
        let proxy = common::proxy(
            c,
            &Opts {
                pool_mode: mode,
                ..Opts::default()
            },
        );
        let tag = format!("killed-{mode}");
        let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
        raw.query("BEGIN").unwrap();
        raw.query(&format!("SELECT '{tag}'")).unwrap();
        let mut direct = common::direct(c, 0);
        let open = |d: &mut postgres::Client| -> i64 {
            d.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND query LIKE $1",
                &[&format!("%{tag}%")],
            )
            .unwrap()
            .get(0)
        };
        assert_eq!(
            open(&mut direct),
            1,
            "{mode}: the transaction is open on the primary"
        );
        raw.stream.shutdown(std::net::Shutdown::Both).unwrap();
        drop(raw);
        assert!(
            common::eventually(Duration::from_secs(10), || open(&mut direct) == 0),
            "{mode}: transaction left open"
        );
    }
}

#[test]
fn shutdown_tells_idle_clients_57p01() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let stopper = std::thread::spawn(move || proxy.shutdown());
    let frame = raw.recv().expect("a FATAL before the close");
    let (code, severity, _) = error_of(&frame).unwrap();
    assert_eq!((code.as_str(), severity.as_str()), ("57P01", "FATAL"));
    assert!(
        raw.recv().is_none(),
        "the connection is closed after the FATAL"
    );
    stopper.join().unwrap();
}

#[test]
fn idle_backends_are_closed_after_idle_timeout() {
    let Some(c) = common::cluster() else { return };
    let text = common::config_text(c, &Opts::default())
        .replace("[pool]\n", "[pool]\nidle_timeout_ms = 300\n");
    let config = pgpilot::Config::parse(&text, std::path::Path::new("idle.toml")).unwrap();
    let proxy = pgpilot::Proxy::start(config).unwrap();
    let dsn = format!(
        "{} application_name=idle-reaper",
        common::dsn(proxy.addr().port(), "app", "app")
    );
    let mut client = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    client.batch_execute("BEGIN; SELECT 1; COMMIT").unwrap();
    let mut direct = common::direct(c, 0);
    let count = |d: &mut postgres::Client| -> i64 {
        d.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'idle-reaper'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert!(
        count(&mut direct) >= 1,
        "the backend is pooled after the transaction"
    );
    assert!(
        common::eventually(Duration::from_secs(5), || count(&mut direct) == 0),
        "idle backend closed"
    );
    // The client still works: a fresh backend is made.
    client.batch_execute("BEGIN; SELECT 1; COMMIT").unwrap();
}
