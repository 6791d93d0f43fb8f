//! The bundled load generator against the proxy: every workload completes transactions with no
//! errors, and the idle workload sees the proxy's memory grow by a bounded amount per client.
//! (Speed is measured by loadtest/compare.sh, not here.)

use std::time::Duration;

use pgpilot_loadtest::client::{Conn, Target};
use pgpilot_loadtest::report;
use pgpilot_loadtest::run::run;
use pgpilot_loadtest::workload::{Settings, Workload};

use crate::common::{self, Opts};
use crate::pgbench::pgbench_data;

fn settings(workload: Workload, clients: usize) -> Settings {
    Settings {
        workload,
        clients,
        threads: 2,
        // Long enough that the clients have logged in (SCRAM in a debug build, on a machine
        // the other tests load too) before the window opens; this checks errors, not speed.
        duration: Duration::from_millis(1000),
        warmup: Duration::from_millis(1500),
        ..Settings::default()
    }
}

/// The load generator's target: the proxy, as `app`, in plaintext.
pub fn target(proxy: &pgpilot::Proxy) -> Target {
    Target {
        name: "pgpilot".into(),
        addr: proxy.addr(),
        user: "app".into(),
        password: "app".into(),
        database: "app".into(),
        tls: None,
    }
}

#[test]
fn every_workload_runs_through_the_proxy_without_errors() {
    let Some(c) = common::cluster() else { return };
    pgbench_data(c);
    let proxy = common::proxy(c, &Opts::default());
    let target = target(&proxy);
    for w in [
        Workload::Select,
        Workload::SelectExtended,
        Workload::Prepared,
        Workload::Tpcb,
        Workload::Mixed,
        Workload::Churn,
    ] {
        let (r, _) = run(&target, &settings(w, 8), &|| None);
        assert!(r.errors.is_empty(), "{w:?}: errors {:?}", r.errors);
        assert!(r.transactions > 0, "{w:?}: no transaction completed");
        assert_eq!(
            r.latency.len(),
            r.transactions,
            "{w:?}: one latency per transaction"
        );
    }
    // Open loop: 200 transactions per second over 4 clients stays near the asked rate.
    let mut open = settings(Workload::Select, 4);
    open.rate = Some(200.0);
    open.duration = Duration::from_secs(1);
    let (r, _) = run(&target, &open, &|| None);
    assert!(r.errors.is_empty(), "open loop: {:?}", r.errors);
    assert!(
        (120..=260).contains(&r.transactions),
        "open loop at 200/s ran {} transactions in 1 s",
        r.transactions
    );
}

#[test]
fn idle_clients_are_held_and_measured() {
    let Some(c) = common::cluster() else { return };
    // Trust: 200 SCRAM exchanges of a debug build would outlast the warm-up.
    let proxy = common::proxy(
        c,
        &Opts {
            auth: "trust",
            ..Opts::default()
        },
    );
    let target = target(&proxy);
    let me = [("pgpilot".to_owned(), std::process::id())];
    let before = report::rss_bytes(&me, "pgpilot").expect("our own RSS is readable");
    let mut s = settings(Workload::Idle, 200);
    s.warmup = Duration::from_secs(2);
    let sample = || report::rss_bytes(&me, "pgpilot");
    let (r, during) = run(&target, &s, &sample);
    assert!(r.errors.is_empty(), "idle: {:?}", r.errors);
    // Every client naps 100 ms at a time: 200 clients complete about 1,200 naps in the 0.7 s
    // window (a nap counts when it starts and ends inside it).
    assert!(r.transactions >= 800, "only {} naps", r.transactions);
    // The proxy and the load generator share this process (and the system allocator, not the
    // daemon's), so this bounds the two together: a read buffer kept per idle session, or a
    // leak per login, breaks it.
    let (rss, open) = during.expect("sampled");
    assert_eq!(open, 200, "every client logged in before the sample");
    let per_client = rss.saturating_sub(before) / 200;
    assert!(per_client < 64 * 1024, "{per_client} bytes per idle client");
}

#[test]
fn the_tls_client_goes_no_further_when_tls_is_refused() {
    let Some(c) = common::cluster() else { return };
    // client_mode is disable by default: the SSLRequest is answered N.
    let proxy = common::proxy(c, &Opts::default());
    let mut t = target(&proxy);
    t.tls = Some(pgpilot_loadtest::tls::Tls {
        config: pgpilot_loadtest::tls::client_config(None).unwrap(),
        name: rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    });
    let outcome = pgpilot_loadtest::on_thread("tls-refused".into(), move || async move {
        Conn::connect(&t).await.err().map(|e| e.to_string())
    })
    .unwrap()
    .join()
    .unwrap();
    let said = outcome.expect("no plaintext login after an N");
    assert!(said.contains("refused TLS"), "{said}");
}
