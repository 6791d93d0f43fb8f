//! Shutdown (what SIGTERM asks for): no new clients; a transaction under way may finish within
//! `shutdown_timeout_ms`; idle sessions, and then the rest, get FATAL 57P01. The console's SHUTDOWN
//! does the same.

use std::sync::Arc;
use std::time::Duration;

use pgpilot::control::ControlMsg;
use pgpilot::{Config, Proxy};

use crate::admin::{console, ADMIN};
use crate::common::{self, Opts};
use crate::health::join_within;
use crate::raw::{error_of, Raw};

fn proxy_with_timeout(c: &common::Cluster, ms: u64) -> Proxy {
    let opts = Opts {
        extra: ADMIN,
        ..Opts::default()
    };
    let text = common::config_text(c, &opts).replace(
        "startup_timeout_ms = 5000\n",
        &format!("startup_timeout_ms = 5000\nshutdown_timeout_ms = {ms}\n"),
    );
    let config: Arc<Config> = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
    Proxy::start(config).unwrap()
}

/// The FATAL the proxy sends a session it ends: `(SQLSTATE, severity)`.
fn told(raw: &mut Raw) -> Option<(String, String)> {
    let frame = raw.recv()?;
    error_of(&frame).map(|(code, severity, _)| (code, severity))
}

#[test]
fn a_transaction_under_way_commits_and_everyone_is_told_57p01() {
    let Some(c) = common::cluster() else { return };
    let mut setup = common::direct(c, 0);
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS shutdown_commit; CREATE TABLE shutdown_commit (n int); \
             GRANT ALL ON shutdown_commit TO app",
        )
        .unwrap();
    let proxy = proxy_with_timeout(c, 20_000);
    let addr = proxy.addr();
    let mut writer = Raw::connect(addr, "app", "app", &[]).unwrap();
    writer.query("BEGIN").unwrap();
    writer
        .query("INSERT INTO shutdown_commit VALUES (1)")
        .unwrap();
    let mut idle = Raw::connect(addr, "app", "app", &[]).unwrap();
    idle.query("SELECT 1").unwrap();

    let _ = proxy.control().send(ControlMsg::Shutdown);
    // The idle session is told at once; the writer is not: its transaction goes on.
    assert_eq!(told(&mut idle), Some(("57P01".into(), "FATAL".into())));
    assert!(idle.recv().is_none(), "closed after the FATAL");
    let refused = common::eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_err()
    });
    assert!(refused, "new clients are refused once shutdown began");
    writer.query("SELECT 2").expect("the transaction goes on");
    writer.query("COMMIT").expect("and commits");
    assert_eq!(told(&mut writer), Some(("57P01".into(), "FATAL".into())));
    let rows = setup
        .query("SELECT count(*) FROM shutdown_commit", &[])
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1, "the transaction was committed");
    join_within(
        vec![std::thread::spawn(move || proxy.wait())],
        "the proxy's shutdown",
    );
}

#[test]
fn after_shutdown_timeout_ms_a_session_in_a_transaction_is_ended_too() {
    let Some(c) = common::cluster() else { return };
    let proxy = proxy_with_timeout(c, 300);
    let mut stuck = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    stuck.query("BEGIN").unwrap();
    stuck.query("SELECT 1").unwrap();
    // The console's SHUTDOWN through a client library, as SIGTERM. The console session is
    // ended with the rest right after its answer; when the FATAL comes in the same read as the
    // answer, the client library reports the FATAL instead.
    match console(&proxy, "pgbouncer").simple_query("SHUTDOWN") {
        Ok(_) => {}
        Err(e) => assert_eq!(
            e.code(),
            Some(&postgres::error::SqlState::ADMIN_SHUTDOWN),
            "SHUTDOWN: {e}"
        ),
    }
    // It does nothing more; the grace runs out and it is told.
    assert_eq!(told(&mut stuck), Some(("57P01".into(), "FATAL".into())));
    assert!(stuck.recv().is_none(), "closed after the FATAL");
    join_within(
        vec![std::thread::spawn(move || proxy.wait())],
        "the proxy's shutdown",
    );
}
