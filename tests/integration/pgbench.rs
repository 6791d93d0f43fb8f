//! pgbench through the proxy: select-only and TPC-B-like, in both pool modes and with the
//! simple, extended and prepared protocols. Every run must finish with 0 failed transactions.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::common::{self, Cluster, Opts};

/// Loads pgbench tables once (scale 1) and waits until both replicas have them.
pub fn pgbench_data(c: &Cluster) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = Command::new("pgbench")
            .args([
                "-i",
                "-q",
                "-s",
                "1",
                "-h",
                "127.0.0.1",
                "-p",
                &c.ports[0].to_string(),
                "-U",
                "app",
                "app",
            ])
            .env("PGPASSWORD", "app")
            .output()
            .expect("pgbench runs");
        assert!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 1..c.ports.len() {
            let mut replica = common::direct(c, i);
            assert!(common::eventually(Duration::from_secs(30), || {
                replica
                    .query_one("SELECT count(*) FROM pgbench_accounts", &[])
                    .map(|r| r.get::<_, i64>(0) == 100_000)
                    .unwrap_or(false)
            }));
        }
    });
}

pub fn run_pgbench(port: u16, args: &[&str]) -> String {
    let out = Command::new("pgbench")
        .args([
            "-n",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "-c",
            "8",
            "-j",
            "2",
            "-t",
            "150",
        ])
        .args(args)
        .arg("app")
        .env("PGPASSWORD", "app")
        .output()
        .expect("pgbench runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    assert!(
        text.contains("number of failed transactions: 0 "),
        "pgbench {args:?}:\n{text}"
    );
    assert!(
        text.contains("number of transactions actually processed: 1200/1200"),
        "pgbench {args:?}:\n{text}"
    );
    text
}

#[test]
fn pgbench_in_transaction_mode() {
    let Some(c) = common::cluster() else { return };
    pgbench_data(c);
    // 8 clients share 4 backend connections.
    let proxy = common::proxy(
        c,
        &Opts {
            pool_size: 4,
            ..Opts::default()
        },
    );
    for protocol in ["simple", "extended"] {
        run_pgbench(proxy.addr().port(), &["-S", "-M", protocol]);
        run_pgbench(proxy.addr().port(), &["-M", protocol]);
    }
    // pgbench -M prepared prepares each statement with a blocking PQprepare while other
    // clients of the same thread hold backends: a named Parse + Sync takes a backend only if
    // one is free at once, and is answered by the proxy otherwise, so 8 clients on 4 backends
    // get through.
    run_pgbench(proxy.addr().port(), &["-S", "-M", "prepared"]);
    run_pgbench(proxy.addr().port(), &["-M", "prepared"]);
}

#[test]
fn pgbench_in_session_mode() {
    let Some(c) = common::cluster() else { return };
    pgbench_data(c);
    let proxy = common::proxy(
        c,
        &Opts {
            pool_mode: "session",
            pool_size: 20,
            ..Opts::default()
        },
    );
    for protocol in ["simple", "extended", "prepared"] {
        run_pgbench(proxy.addr().port(), &["-S", "-M", protocol]);
        run_pgbench(proxy.addr().port(), &["-M", protocol]);
    }
}
