//! What a client sees through pgpilot is what PostgreSQL itself would show it: statements it
//! prepares and closes, its startup parameters after RESET, a backend that dies under it or
//! in the pool, and the backends a session-mode client holds. Where PostgreSQL can be asked
//! directly, the same steps run against the primary and the answers are compared.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use pgpilot_protocol::encode;
use pgpilot_protocol::Frame;

use crate::common::{self, Cluster, Opts};
use crate::health::one;
use crate::raw::{error_of, rows_of, Raw};

type Answer = Result<Vec<String>, (String, String, String)>;

fn primary(c: &Cluster) -> SocketAddr {
    format!("127.0.0.1:{}", c.ports[0]).parse().unwrap()
}

/// A proxy whose replicas take no reads: every statement runs on the primary.
fn primary_only(c: &Cluster, pool_mode: &'static str) -> pgpilot::Proxy {
    common::proxy(
        c,
        &Opts {
            pool_mode,
            workers: 1,
            replica_weights: [0, 0],
            ..Opts::default()
        },
    )
}

/// Ends a server process as an administrator would, and waits until it is gone.
fn terminate(c: &Cluster, pid: &str) {
    let mut admin = common::direct(c, 0);
    admin
        .execute(&format!("SELECT pg_terminate_backend({pid})"), &[])
        .unwrap();
    assert!(
        common::eventually(Duration::from_secs(10), || {
            admin
                .query(
                    &format!("SELECT 1 FROM pg_stat_activity WHERE pid = {pid}"),
                    &[],
                )
                .unwrap()
                .is_empty()
        }),
        "backend {pid} is gone"
    );
}

/// Parse of a named statement and Sync, as PQprepare sends them.
fn prepare(raw: &mut Raw, name: &str, sql: &str) -> Answer {
    let mut out = BytesMut::new();
    encode::parse(&mut out, name.as_bytes(), sql.as_bytes(), &[]);
    encode::sync(&mut out);
    raw.send(&out);
    rows_of(&raw.until_ready())
}

/// Bind with one text parameter, Execute, Sync.
fn execute(raw: &mut Raw, name: &str, param: &str) -> Answer {
    let mut out = BytesMut::new();
    encode::bind(&mut out, b"", name.as_bytes(), &[Some(param.as_bytes())]);
    encode::execute(&mut out, b"", 0);
    encode::sync(&mut out);
    raw.send(&out);
    rows_of(&raw.until_ready())
}

/// Close of a named statement and Sync.
fn close(raw: &mut Raw, name: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode::close(&mut out, b'S', name.as_bytes());
    encode::sync(&mut out);
    raw.send(&out);
    raw.until_ready().iter().map(|f| f.tag).collect()
}

fn code(a: &Answer) -> &str {
    a.as_ref().err().map_or("", |e| e.0.as_str())
}

/// The `(SQLSTATE, severity)` of each ErrorResponse among `frames`.
fn told(frames: &[Frame]) -> Vec<(String, String)> {
    frames
        .iter()
        .filter_map(error_of)
        .map(|(code, severity, _)| (code, severity))
        .collect()
}

/// Every message until the connection closes (at most 50).
fn rest(raw: &mut Raw) -> Vec<Frame> {
    std::iter::from_fn(|| raw.recv()).take(50).collect()
}

#[test]
fn a_failed_parse_is_answered_at_once_and_leaves_no_statement() {
    let Some(c) = common::cluster() else { return };
    for mode in ["transaction", "session"] {
        let proxy = common::proxy(
            c,
            &Opts {
                pool_mode: mode,
                ..Opts::default()
            },
        );
        // Another client holds a primary connection in a transaction: the Parse needs a new
        // one, made in full even though a lone Parse takes only a backend that is free at once.
        let mut blocker = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
        blocker.query("BEGIN").unwrap();
        blocker.query("SELECT txid_current()").unwrap();
        for addr in [primary(c), proxy.addr()] {
            let mut raw = Raw::connect(addr, "app", "app", &[]).unwrap();
            let bad = prepare(&mut raw, "bad", "SELEC 1");
            assert_eq!(code(&bad), "42601", "{mode} {addr}: the Parse's own answer");
            let run = execute(&mut raw, "bad", "1");
            assert_eq!(
                code(&run),
                "26000",
                "{mode} {addr}: the statement does not exist"
            );
            // The name is free: preparing it again works.
            prepare(&mut raw, "bad", "SELECT $1::int + 1").unwrap();
            assert_eq!(execute(&mut raw, "bad", "1").unwrap(), ["2"]);
            // A name in use for another text is refused, and the statement under it stays.
            let again = prepare(&mut raw, "bad", "SELECT $1::int + 2");
            assert_eq!(code(&again), "42P05", "{mode} {addr}");
            assert_eq!(
                execute(&mut raw, "bad", "1").unwrap(),
                ["2"],
                "{mode} {addr}"
            );
        }
    }
}

#[test]
fn a_statement_prepared_again_after_ddl_sees_the_new_types_and_a_closed_one_is_gone() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut setup = common::direct(c, 0);
    setup
        .batch_execute(
            "DROP TYPE IF EXISTS tp_mood; CREATE TYPE tp_mood AS ENUM ('calm', 'busy'); \
             GRANT USAGE ON TYPE tp_mood TO app",
        )
        .unwrap();
    let replicated = |setup: &mut postgres::Client| {
        let oid: String = one(setup, "SELECT 'tp_mood'::regtype::oid::text");
        for i in 1..c.ports.len() {
            let mut r = common::direct(c, i);
            let seen = common::eventually(Duration::from_secs(20), || {
                r.query_one("SELECT to_regtype('tp_mood')::oid::text", &[])
                    .ok()
                    .and_then(|row| row.get::<_, Option<String>>(0))
                    == Some(oid.clone())
            });
            assert!(seen, "replica {i} has the type");
        }
    };
    replicated(&mut setup);
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    prepare(&mut raw, "m", "SELECT $1::tp_mood::text").unwrap();
    // Run it on several backends, so that more than one has it.
    for _ in 0..8 {
        assert_eq!(execute(&mut raw, "m", "busy").unwrap(), ["busy"]);
    }
    setup
        .batch_execute(
            "DROP TYPE tp_mood; CREATE TYPE tp_mood AS ENUM ('calm', 'busy'); \
             GRANT USAGE ON TYPE tp_mood TO app",
        )
        .unwrap();
    replicated(&mut setup);
    // The same text prepared again, under a new name or the closed one, means the new type,
    // on whichever backend runs it (the backends that ran it before had the old plan).
    for name in ["m2", "m"] {
        if name == "m" {
            assert_eq!(close(&mut raw, "m"), b"3Z", "CloseComplete, ReadyForQuery");
            assert_eq!(
                code(&execute(&mut raw, "m", "busy")),
                "26000",
                "closed: gone"
            );
        }
        prepare(&mut raw, name, "SELECT $1::tp_mood::text").unwrap();
        for i in 0..8 {
            let got = execute(&mut raw, name, "calm");
            assert_eq!(got.unwrap(), ["calm"], "{name}, run {i}");
        }
    }
    // DEALLOCATE of a protocol-level statement forgets it too.
    raw.query("DEALLOCATE m").unwrap();
    assert_eq!(code(&execute(&mut raw, "m", "calm")), "26000");
}

#[test]
fn closed_statements_leave_the_session_mode_backend() {
    let Some(c) = common::cluster() else { return };
    let proxy = primary_only(c, "session");
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let count = |raw: &mut Raw| {
        raw.query("SELECT count(*) FROM pg_prepared_statements")
            .unwrap()
    };
    prepare(&mut raw, "a", "SELECT 1").unwrap();
    prepare(&mut raw, "b", "SELECT 2").unwrap();
    assert_eq!(count(&mut raw), ["2"]);
    assert_eq!(close(&mut raw, "a"), b"3Z");
    assert_eq!(count(&mut raw), ["1"], "Close reached the backend");
    raw.query("DEALLOCATE b").unwrap();
    assert_eq!(count(&mut raw), ["0"], "DEALLOCATE reached the backend");
    prepare(&mut raw, "c", "SELECT 3").unwrap();
    raw.query("DEALLOCATE ALL").unwrap();
    assert_eq!(count(&mut raw), ["0"], "DEALLOCATE ALL reached the backend");
}

#[test]
fn session_mode_without_a_replica_holds_one_backend() {
    let Some(c) = common::cluster() else { return };
    let proxy = primary_only(c, "session");
    let name = "transparency-one-backend";
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[("application_name", name)]).unwrap();
    let pid = raw.query("SELECT pg_backend_pid()").unwrap();
    raw.query("CREATE TEMP TABLE tp_w (v int)").unwrap();
    assert_eq!(
        raw.query("SELECT pg_backend_pid()").unwrap(),
        pid,
        "a read after a write"
    );
    // The unnamed statement, parsed in one write and run in the next, stays where it was made.
    let mut parse = BytesMut::new();
    encode::parse(&mut parse, b"", b"SELECT pg_backend_pid()", &[]);
    raw.send(&parse);
    let mut run = BytesMut::new();
    encode::bind(&mut run, b"", b"", &[]);
    encode::execute(&mut run, b"", 0);
    encode::sync(&mut run);
    raw.send(&run);
    assert_eq!(rows_of(&raw.until_ready()).unwrap(), pid);
    let mut admin = common::direct(c, 0);
    let held = one(
        &mut admin,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{name}'"),
    );
    assert_eq!(held, "1", "one backend for the session");
}

#[test]
fn reset_goes_back_to_the_startup_values() {
    let Some(c) = common::cluster() else { return };
    let steps = [
        "SET DateStyle = 'SQL, MDY'",
        "SHOW DateStyle",
        "RESET DateStyle",
        "SHOW DateStyle",
        "SET DateStyle = 'Postgres, YMD'",
        "SET TimeZone = 'Asia/Tokyo'",
        "RESET ALL",
        "SHOW DateStyle",
        "SHOW TimeZone",
        "SET DateStyle = 'SQL, MDY'",
        "DISCARD ALL",
        "SHOW DateStyle",
        // A client pinned (a temporary table) keeps its backend; RESET works there too.
        "CREATE TEMP TABLE tp_pin (v int)",
        "SET DateStyle = 'SQL, MDY'",
        "RESET ALL",
        "SHOW DateStyle",
        "SHOW TimeZone",
    ];
    let startup = [
        ("DateStyle", "German, DMY"),
        ("options", "-c TimeZone=Pacific/Auckland"),
    ];
    let run = |addr: SocketAddr| -> Vec<String> {
        let mut raw = Raw::connect(addr, "app", "app", &startup).unwrap();
        let mut seen: Vec<String> = steps
            .iter()
            .map(|sql| format!("{sql}: {:?}", raw.query(sql)))
            .collect();
        // What the client was last told of DateStyle.
        raw.query("SELECT 1").unwrap();
        seen.push(format!("DateStyle reported: {:?}", raw.param("DateStyle")));
        seen
    };
    let want = run(primary(c));
    assert!(want.iter().any(|s| s.contains("German, DMY")), "{want:#?}");
    for mode in ["transaction", "session"] {
        let proxy = common::proxy(
            c,
            &Opts {
                pool_mode: mode,
                ..Opts::default()
            },
        );
        assert_eq!(run(proxy.addr()), want, "{mode} mode");
    }
}

#[test]
fn a_pooled_connection_that_died_is_never_handed_out() {
    let Some(c) = common::cluster() else { return };
    for mode in ["transaction", "session"] {
        let proxy = primary_only(c, mode);
        let mut first = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
        let pid = first.query("SELECT pg_backend_pid()").unwrap().remove(0);
        drop(first);
        // Session mode: the connection goes back to the pool when its client leaves.
        std::thread::sleep(Duration::from_millis(200));
        terminate(c, &pid);
        let mut next = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
        let now = next.query("SELECT pg_backend_pid()").unwrap().remove(0);
        assert_ne!(now, pid, "{mode}: a new backend serves");
        assert_eq!(next.query("SELECT 1").unwrap(), ["1"], "{mode}");
    }
}

#[test]
fn a_backends_fatal_reaches_its_client_once_and_ends_the_connection() {
    let Some(c) = common::cluster() else { return };
    let fatal = vec![("57P01".to_owned(), "FATAL".to_owned())];
    // Its backend ended under a session-mode client: the server's FATAL, nothing invented.
    let proxy = primary_only(c, "session");
    for addr in [primary(c), proxy.addr()] {
        let mut raw = Raw::connect(addr, "app", "app", &[]).unwrap();
        let pid = raw.query("SELECT pg_backend_pid()").unwrap().remove(0);
        terminate(c, &pid);
        let mut q = BytesMut::new();
        encode::query(&mut q, b"SELECT 1");
        raw.send(&q);
        assert_eq!(told(&rest(&mut raw)), fatal, "session mode, {addr}");
    }
    // A FATAL while running the client's statement, transaction mode: passed on, and the
    // client's connection ends as PostgreSQL's would.
    let proxy = common::proxy(c, &Opts::default());
    for addr in [primary(c), proxy.addr()] {
        let mut raw = Raw::connect(addr, "app", "app", &[]).unwrap();
        raw.query("BEGIN").unwrap();
        let mut q = BytesMut::new();
        encode::query(&mut q, b"SELECT pg_terminate_backend(pg_backend_pid())");
        raw.send(&q);
        assert_eq!(told(&rest(&mut raw)), fatal, "transaction mode, {addr}");
    }
    // A client pinned after SET ROLE whose backend dies never goes on as the login user.
    common::direct(c, 0)
        .batch_execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tp_reader') \
             THEN CREATE ROLE tp_reader NOLOGIN; END IF; END $$; GRANT tp_reader TO app",
        )
        .unwrap();
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    raw.query("SET ROLE tp_reader").unwrap();
    assert_eq!(raw.query("SELECT current_user").unwrap(), ["tp_reader"]);
    let pid = raw.query("SELECT pg_backend_pid()").unwrap().remove(0);
    let mut admin = common::direct(c, 0);
    let on_primary = !admin
        .query(
            &format!("SELECT 1 FROM pg_stat_activity WHERE pid = {pid}"),
            &[],
        )
        .unwrap()
        .is_empty();
    assert!(on_primary, "SET ROLE pinned the client to the primary");
    terminate(c, &pid);
    let mut q = BytesMut::new();
    encode::query(&mut q, b"SELECT current_user");
    raw.send(&q);
    let after = rest(&mut raw);
    assert!(
        rows_of(&after).is_err() && !told(&after).is_empty(),
        "an error, never a row as someone else: {:?}",
        rows_of(&after)
    );
    assert!(raw.recv().is_none(), "and the connection ends");
}

/// The pid of each NotificationResponse among `frames`.
fn notify_pids(frames: &[Frame]) -> Vec<u32> {
    use pgpilot_protocol::backend::BackendMessage;
    frames
        .iter()
        .filter_map(|f| match BackendMessage::parse(&f.bytes) {
            Ok(BackendMessage::NotificationResponse { pid, .. }) => Some(pid),
            _ => None,
        })
        .collect()
}

/// LISTEN, then NOTIFY from the same connection: the pids the notification carries. Each
/// test has its channel: the tests run at once.
fn own_notify(raw: &mut Raw, channel: &str) -> Vec<u32> {
    raw.query(&format!("LISTEN {channel}")).unwrap();
    let mut q = BytesMut::new();
    encode::query(&mut q, format!("NOTIFY {channel}, 'hi'").as_bytes());
    raw.send(&q);
    notify_pids(&raw.until_ready())
}

/// Sends a CancelRequest for `key` to `addr`.
fn cancel(addr: SocketAddr, key: (u32, u32)) {
    use std::io::Write;
    let mut req = BytesMut::new();
    encode::cancel_request(&mut req, key.0, key.1);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(&req).unwrap();
}

#[test]
fn session_mode_clients_get_their_backends_real_pid() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            pool_mode: "session",
            ..Opts::default()
        },
    );
    for addr in [primary(c), proxy.addr()] {
        let mut raw = Raw::connect(addr, "app", "app", &[]).unwrap();
        let pid = raw.key.0;
        // In a block: the primary runs it (a plain read may go to a replica).
        raw.query("BEGIN").unwrap();
        assert_eq!(
            raw.query("SELECT pg_backend_pid()").unwrap(),
            [pid.to_string()],
            "{addr}"
        );
        raw.query("COMMIT").unwrap();
        assert_eq!(
            own_notify(&mut raw, "tp_session"),
            [pid],
            "{addr}: NOTIFY carries the client's pid"
        );
        // A cancel with the key the client was given reaches its query.
        let key = raw.key;
        let sleeper = std::thread::spawn(move || raw.query("SELECT pg_sleep(20)"));
        std::thread::sleep(Duration::from_millis(500));
        cancel(addr, key);
        let (code, _, _) = sleeper.join().unwrap().unwrap_err();
        assert_eq!(code, "57014", "{addr}: cancelled");
    }
    // pg_terminate_backend of the pid a client was given ends that client, as it would with
    // PostgreSQL itself; with replicas, once the client next needs its primary (its reads
    // meanwhile go on on a replica).
    let alone = primary_only(c, "session");
    for (proxy, read_first) in [(&alone, false), (&proxy, true)] {
        let mut victim = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
        if read_first {
            assert_eq!(victim.query("SELECT 1").unwrap(), ["1"]);
        }
        terminate(c, &victim.key.0.to_string());
        let mut q = BytesMut::new();
        encode::query(&mut q, b"CREATE TEMP TABLE tp_victim (v int)");
        victim.send(&q);
        assert_eq!(
            told(&rest(&mut victim)),
            [("57P01".to_owned(), "FATAL".to_owned())],
            "the server's FATAL, once (read first: {read_first})"
        );
    }
}

#[test]
fn transaction_mode_pids_are_no_process_and_notify_carries_them() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(c, &Opts::default());
    let mut raw = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    let pid = raw.key.0;
    // Linux's pid_max is at most 2^22: no process, here or on any server, has this pid.
    assert!(pid > 1 << 22, "{pid}");
    let mut admin = common::direct(c, 0);
    let ended: bool = admin
        .query_one(&format!("SELECT pg_terminate_backend({pid})"), &[])
        .unwrap()
        .get(0);
    assert!(!ended, "pg_terminate_backend of a made-up pid ends nothing");
    // LISTEN pins the client; a notification from its own backend carries the client's pid.
    assert_eq!(own_notify(&mut raw, "tp_transaction"), [pid]);
    // From another client, the backend's real pid, as PostgreSQL sends it.
    let mut other = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    other.query("NOTIFY tp_transaction, 'there'").unwrap();
    let mut q = BytesMut::new();
    encode::query(&mut q, b"SELECT 1");
    raw.send(&q);
    // The notifying backend signalled at commit; the listening one sends it before its next
    // ReadyForQuery at the latest.
    let got = notify_pids(&raw.until_ready());
    assert!(
        got.len() == 1 && got[0] != pid && got[0] < 1 << 22,
        "{got:?}"
    );
}

#[test]
fn roles_not_in_the_config_log_in_with_the_servers_own_password() {
    let Some(c) = common::cluster() else { return };
    common::direct(c, 0)
        .batch_execute(
            "DO $$ BEGIN \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tp_auth') THEN \
                 CREATE ROLE tp_auth SUPERUSER LOGIN PASSWORD 'tp_auth_pw'; END IF; \
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tp_dyn') THEN \
                 CREATE ROLE tp_dyn LOGIN; END IF; \
             END $$; ALTER ROLE tp_dyn PASSWORD 'first'",
        )
        .unwrap();
    // The role's verifier on every server, so that replicas log it in too.
    let replayed = || {
        let verifier = |i: usize| {
            common::direct(c, i)
                .query_one(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = 'tp_dyn'",
                    &[],
                )
                .ok()
                .and_then(|r| r.get::<_, Option<String>>(0))
        };
        let want = verifier(0);
        assert!(want
            .as_deref()
            .is_some_and(|v| v.starts_with("SCRAM-SHA-256$")));
        for i in 1..c.ports.len() {
            let seen = common::eventually(Duration::from_secs(20), || verifier(i) == want);
            assert!(seen, "replica {i} has the new password");
        }
    };
    replayed();
    let text = common::config_text(c, &Opts::default())
        .replace("[auth]\n", "[auth]\nuser = \"tp_auth\"\n")
        + "\n[[users]]\nname = \"tp_auth\"\npassword = \"tp_auth_pw\"\n";
    let config = pgpilot::Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
    let proxy = pgpilot::Proxy::start(config).unwrap();
    let who = |password: &str| -> Result<Vec<String>, String> {
        let mut raw = Raw::connect(proxy.addr(), "tp_dyn", password, &[]).map_err(|e| e.0)?;
        let mut seen = Vec::new();
        // Reads (on replicas) and a block (on the primary): every backend logs in as the role.
        for sql in ["SELECT current_user", "SELECT session_user"] {
            seen.extend(raw.query(sql).unwrap());
        }
        raw.query("BEGIN").unwrap();
        seen.extend(raw.query("SELECT current_user").unwrap());
        raw.query("COMMIT").unwrap();
        Ok(seen)
    };
    for _ in 0..3 {
        assert_eq!(who("first").unwrap(), ["tp_dyn", "tp_dyn", "tp_dyn"]);
    }
    assert_eq!(who("wrong"), Err("28P01".to_owned()), "a wrong password");
    let ghost = Raw::connect(proxy.addr(), "tp_ghost", "x", &[]).err();
    assert_eq!(
        ghost.map(|e| e.0),
        Some("28P01".to_owned()),
        "an unknown role, as PostgreSQL says"
    );
    // ALTER ROLE … PASSWORD takes effect through the proxy at the next login.
    common::direct(c, 0)
        .batch_execute("ALTER ROLE tp_dyn PASSWORD 'second'")
        .unwrap();
    replayed();
    assert_eq!(who("second").unwrap(), ["tp_dyn", "tp_dyn", "tp_dyn"]);
    assert_eq!(
        who("first"),
        Err("28P01".to_owned()),
        "the old password is gone"
    );
}
