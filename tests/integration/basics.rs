//! Queries through the proxy: simple and extended protocol, pipelines, COPY, cancel,
//! startup parameters and the ParameterStatus set.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::BytesMut;
use pgpilot_protocol::encode;

use crate::common::{self, Opts};
use crate::raw::{error_of, rows_of, Raw};

#[test]
fn simple_queries_like_psql() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let psql = std::process::Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.addr().port().to_string(),
            "-U",
            "app",
            "-d",
            "app",
        ])
        .args([
            "-c",
            "SELECT 40 + 2",
            "-c",
            "SELECT string_agg(x::text, ',') FROM generate_series(1, 3) x",
        ])
        .env("PGPASSWORD", "app")
        .output()
        .expect("psql runs");
    assert!(
        psql.status.success(),
        "{}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout), "42\n1,2,3\n");

    let mut client = common::client(&proxy);
    let rows = client.simple_query("SELECT 1; SELECT 'two'").unwrap();
    let values: Vec<&str> = rows
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "two"]);
    let e = client.simple_query("SELEC 1").unwrap_err();
    assert_eq!(common::sqlstate(&e), "42601");
    // The session goes on after an error.
    assert_eq!(
        client.query_one("SELECT 7", &[]).unwrap().get::<_, i32>(0),
        7
    );
}

#[test]
fn extended_protocol_through_a_client_library() {
    let Some(c) = common::cluster() else { return };
    for mode in ["transaction", "session"] {
        let proxy = common::proxy(
            c,
            &Opts {
                pool_mode: mode,
                ..Opts::default()
            },
        );
        let mut client = common::client(&proxy);
        let row = client
            .query_one("SELECT $1::int + $2::int, $3::text", &[&40i32, &2i32, &"x"])
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42, "{mode}");
        assert_eq!(row.get::<_, &str>(1), "x");
        let stmt = client.prepare("SELECT $1::text || '!'").unwrap();
        for word in ["a", "b"] {
            let row = client.query_one(&stmt, &[&word]).unwrap();
            assert_eq!(row.get::<_, String>(0), format!("{word}!"));
        }
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS ext_t (id int primary key, v text)")
            .unwrap();
        let mut tx = client.transaction().unwrap();
        tx.execute(
            "INSERT INTO ext_t VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
            &[&1i32, &mode],
        )
        .unwrap();
        let v: String = tx
            .query_one("SELECT v FROM ext_t WHERE id = $1", &[&1i32])
            .unwrap()
            .get(0);
        assert_eq!(v, mode);
        tx.commit().unwrap();
    }
}

#[test]
fn pipelined_extended_queries_and_errors_inside_a_pipeline() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let mut out = BytesMut::new();
    for i in 0..50 {
        encode::parse(&mut out, b"", b"SELECT $1::int * 2", &[23]);
        encode::bind(&mut out, b"", b"", &[Some(i.to_string().as_bytes())]);
        encode::execute(&mut out, b"", 0);
        encode::sync(&mut out);
    }
    // An error in the middle: PostgreSQL skips to the Sync, the next unit runs.
    encode::parse(&mut out, b"", b"SELECT 1/0", &[]);
    encode::bind(&mut out, b"", b"", &[]);
    encode::execute(&mut out, b"", 0);
    encode::parse(&mut out, b"", b"SELECT 'skipped'", &[]);
    encode::bind(&mut out, b"", b"", &[]);
    encode::execute(&mut out, b"", 0);
    encode::sync(&mut out);
    encode::parse(&mut out, b"", b"SELECT 'after'", &[]);
    encode::bind(&mut out, b"", b"", &[]);
    encode::execute(&mut out, b"", 0);
    encode::flush(&mut out);
    raw.send(&out);
    for i in 0..50 {
        assert_eq!(rows_of(&raw.until_ready()).unwrap(), [(i * 2).to_string()]);
    }
    let err = rows_of(&raw.until_ready()).unwrap_err();
    assert_eq!(err.0, "22012");
    // Flush without Sync: results arrive, the unit stays open until Sync.
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(raw.recv().unwrap().tag);
    }
    assert_eq!(got, b"12DC");
    out.clear();
    encode::sync(&mut out);
    raw.send(&out);
    let rest = raw.until_ready();
    assert_eq!(rest.last().unwrap().body(), b"I");
}

#[test]
fn copy_in_and_out() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut client = common::client(&proxy);
    client
        .batch_execute("DROP TABLE IF EXISTS copy_t; CREATE TABLE copy_t (a int, b text)")
        .unwrap();
    let mut w = client.copy_in("COPY copy_t FROM STDIN").unwrap();
    for i in 0..1000 {
        writeln!(w, "{i}\trow {i}").unwrap();
    }
    assert_eq!(w.finish().unwrap(), 1000);
    let mut text = String::new();
    client
        .copy_out("COPY (SELECT * FROM copy_t ORDER BY a) TO STDOUT")
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text.lines().count(), 1000);
    assert_eq!(text.lines().nth(999), Some("999\trow 999"));
    // A failed COPY leaves the session usable.
    let e = client
        .batch_execute("COPY copy_t FROM STDIN WITH (FORMAT nonsense)")
        .unwrap_err();
    assert_eq!(common::sqlstate(&e), "22023");
    let mut tx = client.transaction().unwrap();
    assert_eq!(
        tx.query_one("SELECT count(*) FROM copy_t", &[])
            .unwrap()
            .get::<_, i64>(0),
        1000
    );
    tx.commit().unwrap();
}

#[test]
fn cancel_reaches_the_right_backend_from_any_core() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            workers: 2,
            ..Opts::default()
        },
    );
    for _ in 0..4 {
        let mut client = common::client(&proxy);
        let token = client.cancel_token();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            token.cancel_query(postgres::NoTls)
        });
        let started = std::time::Instant::now();
        let e = client.simple_query("SELECT pg_sleep(20)").unwrap_err();
        canceller.join().unwrap().unwrap();
        assert_eq!(common::sqlstate(&e), "57014");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(
            client.query_one("SELECT 1", &[]).unwrap().get::<_, i32>(0),
            1
        );
    }
}

#[test]
fn startup_parameters_are_honoured_on_every_backend() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let params = [
        ("application_name", "param-test"),
        (
            "options",
            "-c search_path=custom,public -c statement_timeout=150",
        ),
        ("DateStyle", "SQL, DMY"),
        ("TimeZone", "Asia/Tokyo"),
        ("extra_float_digits", "1"),
        ("client_encoding", "UTF8"),
    ];
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &params).unwrap();
    for name in [
        "server_version",
        "client_encoding",
        "DateStyle",
        "TimeZone",
        "integer_datetimes",
        "standard_conforming_strings",
    ] {
        assert!(
            raw.param(name).is_some(),
            "missing ParameterStatus {name}: {:?}",
            raw.params
        );
    }
    assert_eq!(raw.param("application_name"), Some("param-test"));
    assert_eq!(raw.param("DateStyle"), Some("SQL, DMY"));
    assert_eq!(raw.param("TimeZone"), Some("Asia/Tokyo"));
    // Reads (replicas) and writes (primary) both see the settings, many times over.
    for _ in 0..10 {
        assert_eq!(raw.query("SHOW search_path").unwrap(), ["custom,public"]);
        assert_eq!(
            raw.query("SELECT current_setting('application_name')")
                .unwrap(),
            ["param-test"]
        );
        assert_eq!(
            raw.query("BEGIN; SELECT current_setting('TimeZone'); COMMIT")
                .unwrap(),
            ["Asia/Tokyo"]
        );
        assert_eq!(raw.query("SHOW extra_float_digits").unwrap(), ["1"]);
    }
    let e = raw.query("SELECT pg_sleep(1)").unwrap_err();
    assert_eq!(e.0, "57014", "statement_timeout from options applies");
    // Another client without parameters gets server defaults on the same pooled backends.
    let mut plain = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    for _ in 0..10 {
        assert_eq!(
            plain.query("SHOW search_path").unwrap(),
            ["\"$user\", public"]
        );
        assert_eq!(plain.query("SHOW statement_timeout").unwrap(), ["0"]);
    }
    // An invalid parameter is refused at login, as PostgreSQL itself does.
    let e = Raw::connect(proxy.addr(), "app", "app", &[("statement_timeout", "soon")])
        .err()
        .unwrap();
    assert_eq!((e.0.as_str(), e.1.as_str()), ("22023", "FATAL"));
    // Errors inside the proxy's own frames never leak: a bad query still answers properly.
    let frames = {
        let mut out = BytesMut::new();
        encode::query(&mut out, b"SELECT nope");
        raw.send(&out);
        raw.until_ready()
    };
    assert_eq!(error_of(&frames[0]).unwrap().0, "42703");
}

#[test]
fn notices_and_notifications_reach_the_client() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_mode: "session",
            ..Opts::default()
        },
    );
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let mut out = BytesMut::new();
    encode::query(
        &mut out,
        b"DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$",
    );
    raw.send(&out);
    let frames = raw.until_ready();
    assert!(
        frames
            .iter()
            .any(|f| f.tag == b'N'
                && String::from_utf8_lossy(f.body()).contains("hello from plpgsql"))
    );
    raw.query("LISTEN pgpilot_chan").unwrap();
    let mut other = common::client(&proxy);
    other
        .batch_execute("NOTIFY pgpilot_chan, 'payload-1'")
        .unwrap();
    let mut seen = false;
    for _ in 0..10 {
        let frames = {
            out.clear();
            encode::query(&mut out, b"SELECT 1");
            raw.send(&out);
            raw.until_ready()
        };
        if frames
            .iter()
            .any(|f| f.tag == b'A' && String::from_utf8_lossy(f.body()).contains("payload-1"))
        {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen, "NotificationResponse passed through");
}
