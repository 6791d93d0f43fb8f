//! `[metrics] listen`: `/metrics` through promtool's checker (lint included) and its figures
//! against what the test did; `/healthz` and `/readyz`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};

use crate::common::{self, Opts};

/// Sends one HTTP request; the status code and the body.
fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the metrics port answers");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_owned())
}

/// The value of the sample written exactly as `series` (name and labels).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_pass_promtool_and_say_what_happened() {
    let Some(c) = common::cluster() else { return };
    let proxy = common::proxy(
        c,
        &Opts {
            extra: "\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            ..Opts::default()
        },
    );
    let addr = proxy.metrics_addr().expect("metrics are served");
    let mut apps: Vec<postgres::Client> = (0..6).map(|_| common::client(&proxy)).collect();
    for app in &mut apps {
        app.simple_query("SELECT 1").unwrap();
    }
    let (code, body) = get(addr, "GET", "/metrics");
    assert_eq!(code, 200, "{body}");

    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian: apt-get install prometheus)");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for b in ["b0", "b1", "b2"] {
        let up = format!("pgpilot_backend_up{{backend=\"{b}\"}}");
        assert_eq!(sample(&body, &up), Some(1.0), "{up}\n{body}");
    }
    let primary_up = "pgpilot_backend_state{backend=\"b0\",state=\"up\"}";
    assert_eq!(sample(&body, primary_up), Some(1.0));
    let share = "pgpilot_backend_read_share_ratio{backend=\"b0\"}";
    assert_eq!(sample(&body, share), Some(0.0), "replicas take the reads");
    let sum = |prefix: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        sum("pgpilot_client_connections{core=")
            - sum("pgpilot_client_connections{core=\"0\",state=\"console\"}")
            - sum("pgpilot_client_connections{core=\"1\",state=\"console\"}"),
        6.0,
        "the six clients\n{body}"
    );
    assert!(sum("pgpilot_accepted_connections_total") >= 6.0);
    let idle = sum("pgpilot_pool_server_connections{database=\"app\",user=\"app\"");
    assert!(idle >= 1.0, "the reads left pooled connections\n{body}");
    assert!(body.contains("pgpilot_host_listen_overflows_total "));
    // Six autocommit SELECTs: six transactions, six queries.
    let db = "{database=\"app\"}";
    assert_eq!(
        sample(&body, &format!("pgpilot_transactions_total{db}")),
        Some(6.0)
    );
    assert_eq!(
        sample(&body, &format!("pgpilot_query_duration_seconds_count{db}")),
        Some(6.0)
    );
    let reads = "pgpilot_statements_total{target=\"replica\",reason=\"plain_read\"}";
    assert_eq!(sample(&body, reads), Some(6.0));
    let all = "pgpilot_query_duration_seconds_bucket{database=\"app\",le=\"+Inf\"}";
    assert_eq!(sample(&body, all), Some(6.0));

    assert_eq!(get(addr, "GET", "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(addr, "GET", "/readyz"), (200, "ready\n".into()));
    assert_eq!(get(addr, "GET", "/nope").0, 404);
    assert_eq!(get(addr, "POST", "/metrics").0, 405);
}
