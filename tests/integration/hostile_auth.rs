//! Failed logins never reach a backend, and the password never reaches the log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use pgpilot_protocol::backend::{Authentication, BackendMessage};
use pgpilot_protocol::frame::split_frame;
use pgpilot_protocol::scram::MECHANISM;
use pgpilot_protocol::{encode, Frame};

use crate::common::{self, Cluster, Opts};
use crate::raw::error_of;

/// A role only these tests use, so that counting its backends is not disturbed by other tests.
const ROLE: &str = "probe_target";
const PASSWORD: &str = "probe-Pw-7731-not-in-any-log";
/// Sent by every failing client, so that a backend it caused would show it too.
const APP: &str = "pgpilot-hostile-probe";

/// The log test's own role: its good login must not show up in the other test's count.
const LOG_ROLE: &str = "probe_logger";

/// Creates a login role with [`PASSWORD`] once; the tests that want one may run at once.
fn create_role(c: &Cluster, role: &str) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap();
    common::direct(c, 0)
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN \
             CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'; END IF; END $$"
        ))
        .unwrap();
}

fn users_extra() -> &'static str {
    // A leaked String is fine in a test: Opts wants a &'static str.
    Box::leak(
        format!("\n[[users]]\nname = \"{ROLE}\"\npassword = \"{PASSWORD}\"\n").into_boxed_str(),
    )
}

/// Backends on all servers that belong to the probe role or carry the probes' application_name.
fn probe_backends(servers: &mut [postgres::Client]) -> i64 {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{ROLE}' OR application_name = '{APP}'"
    );
    servers
        .iter_mut()
        .map(|s| s.query_one(sql.as_str(), &[]).unwrap().get::<_, i64>(0))
        .sum()
}

/// A client that has sent its startup packet and read the AuthenticationSASL request.
struct Probe {
    stream: TcpStream,
    buf: BytesMut,
}

impl Probe {
    fn start(addr: SocketAddr, user: &str) -> Probe {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut p = Probe {
            stream,
            buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        let params = [
            ("user", user),
            ("database", "app"),
            ("application_name", APP),
        ];
        encode::startup_message(&mut out, &params);
        p.stream.write_all(&out).unwrap();
        let f = p.recv().expect("an auth request");
        assert!(matches!(
            BackendMessage::parse(&f.bytes),
            Ok(BackendMessage::Authentication(Authentication::Sasl { .. }))
        ));
        p
    }

    fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = split_frame(&mut self.buf, 1 << 20).unwrap() {
                return Some(f);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends `bytes`; the SQLSTATE of the error that must follow.
    fn refused_after(mut self, bytes: &[u8]) -> String {
        let _ = self.stream.write_all(bytes);
        loop {
            let f = self.recv().expect("an ErrorResponse before the close");
            if let Some((code, _, _)) = error_of(&f) {
                return code;
            }
        }
    }
}

/// Every way of failing SCRAM without the password that the proxy must answer on its own.
fn malformed_scram(addr: SocketAddr) {
    let initial = |mechanism: &str, data: &[u8]| {
        let mut out = BytesMut::new();
        encode::sasl_initial_response(&mut out, mechanism, data);
        out
    };
    for (what, bytes, code) in [
        (
            "garbage client-first",
            initial(MECHANISM, b"garbage"),
            "08P01",
        ),
        (
            "channel binding",
            initial(MECHANISM, b"p=tls-server-end-point,,n=,r=x"),
            "08P01",
        ),
        ("empty nonce", initial(MECHANISM, b"n,,n=,r="), "08P01"),
        (
            "unknown mechanism",
            initial("SCRAM-SHA-1", b"n,,n=,r=abc"),
            "08P01",
        ),
        (
            "not a password message",
            BytesMut::from(&b"Q\0\0\0\x09oops\0"[..]),
            "08P01",
        ),
    ] {
        assert_eq!(
            Probe::start(addr, ROLE).refused_after(&bytes),
            code,
            "{what}"
        );
    }
    // A well-formed first message, then a final message with a forged proof or a wrong nonce.
    for fin in [
        &b"c=biws,r=abcWRONG,p=AAAA"[..],
        b"c=biws,r=abc,p=AAAA",
        b"junk",
    ] {
        let mut p = Probe::start(addr, ROLE);
        p.stream
            .write_all(&initial(MECHANISM, b"n,,n=,r=abc"))
            .unwrap();
        let f = p.recv().unwrap();
        let Ok(BackendMessage::Authentication(Authentication::SaslContinue { data })) =
            BackendMessage::parse(&f.bytes)
        else {
            panic!("expected SASLContinue")
        };
        let nonce = std::str::from_utf8(data)
            .unwrap()
            .split(',')
            .next()
            .unwrap()[2..]
            .to_owned();
        let fin = String::from_utf8_lossy(fin).replace("r=abc,", &format!("r={nonce},"));
        let mut out = BytesMut::new();
        encode::sasl_response(&mut out, fin.as_bytes());
        let code = p.refused_after(&out);
        assert!(code == "28P01" || code == "08P01", "{fin}: {code}");
    }
    // Hanging up in the middle of the exchange.
    let mut p = Probe::start(addr, ROLE);
    p.stream
        .write_all(&initial(MECHANISM, b"n,,n=,r=abc"))
        .unwrap();
    drop(p);
}

#[test]
fn failed_logins_never_open_a_backend() {
    let Some(c) = common::cluster() else { return };
    create_role(c, ROLE);
    let mut servers: Vec<postgres::Client> =
        (0..c.ports.len()).map(|i| common::direct(c, i)).collect();
    assert_eq!(
        probe_backends(&mut servers),
        0,
        "no probe backends before the test"
    );
    let proxies: Vec<_> = ["scram-sha-256", "md5"]
        .into_iter()
        .map(|auth| {
            common::proxy(
                c,
                &Opts {
                    auth,
                    extra: users_extra(),
                    ..Opts::default()
                },
            )
        })
        .collect();
    // Sample the servers while the probes run, in case a backend comes and goes between checks.
    let done = AtomicBool::new(false);
    let most = AtomicI64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut servers: Vec<postgres::Client> =
                (0..c.ports.len()).map(|i| common::direct(c, i)).collect();
            while !done.load(Ordering::Acquire) {
                most.fetch_max(probe_backends(&mut servers), Ordering::AcqRel);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        // Stops the sampler however the probes end: a failed assertion must not leave the
        // scope waiting for it forever.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _stop = Stop(&done);
        for proxy in &proxies {
            let port = proxy.addr().port();
            for _ in 0..10 {
                for (user, password) in [(ROLE, "wrong"), ("nobody", "x"), (ROLE, "")] {
                    let dsn = format!(
                        "{} application_name={APP}",
                        common::dsn(port, user, password)
                    );
                    let e = postgres::Client::connect(&dsn, postgres::NoTls)
                        .err()
                        .unwrap();
                    assert_eq!(common::sqlstate(&e), "28P01", "{user}/{password:?}");
                }
            }
        }
        malformed_scram(proxies[0].addr());
    });
    assert_eq!(
        most.load(Ordering::Acquire),
        0,
        "a failed login opened a backend"
    );
    assert_eq!(probe_backends(&mut servers), 0);
    // The count does see the proxy's backends: a good login opens one (and the pool keeps it).
    let dsn = common::dsn(proxies[0].addr().port(), ROLE, PASSWORD);
    let mut ok = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    ok.batch_execute("BEGIN; SELECT 1; COMMIT").unwrap();
    assert!(common::eventually(
        Duration::from_secs(10),
        || probe_backends(&mut servers) >= 1
    ));
}

#[test]
fn the_password_never_reaches_the_log() {
    let Some(c) = common::cluster() else { return };
    create_role(c, LOG_ROLE);
    let dir = std::env::temp_dir().join(format!("pgpilot-logtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = pgpilot::cluster::free_port().unwrap();
    // The password comes from the proxy's environment, so it is in no file the log could quote.
    let text = common::config_text_on(c, &Opts::default(), port)
        + &format!("\n[[users]]\nname = \"{LOG_ROLE}\"\npassword = \"${{PROBE_SECRET}}\"\n");
    let config = dir.join("pgpilot.toml");
    std::fs::write(&config, text).unwrap();
    let pgpilot = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgpilot"));
        cmd.env("RUST_LOG", "trace").env("PROBE_SECRET", PASSWORD);
        cmd
    };
    let checked = pgpilot().arg("check-config").arg(&config).output().unwrap();
    assert!(checked.status.success(), "{checked:?}");
    let printed = String::from_utf8_lossy(&checked.stdout);
    assert!(
        printed.contains(LOG_ROLE) && !printed.contains(PASSWORD),
        "{printed}"
    );

    let log = dir.join("pgpilot.log");
    let _proxy = common::Child(
        pgpilot()
            .arg("--config")
            .arg(&config)
            .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        common::eventually(Duration::from_secs(30), || TcpStream::connect(addr).is_ok()),
        "the proxy did not start"
    );
    let mut ok =
        postgres::Client::connect(&common::dsn(port, LOG_ROLE, PASSWORD), postgres::NoTls).unwrap();
    ok.batch_execute("SELECT 1; BEGIN; SELECT 2; COMMIT")
        .unwrap();
    drop(ok);
    let e = postgres::Client::connect(&common::dsn(port, LOG_ROLE, "wrong"), postgres::NoTls);
    assert_eq!(common::sqlstate(&e.err().unwrap()), "28P01");
    Probe::start(addr, LOG_ROLE).refused_after(b"garbage that is no message");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("listening on") && text.contains("TRACE"),
        "trace logging was on:\n{text}"
    );
    assert!(
        !text.contains(PASSWORD),
        "the password is in the log:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
