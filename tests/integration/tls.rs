//! TLS towards backends against PostgreSQL servers that speak it (a cluster of this test's
//! own, with a CA and a certificate for `localhost` made here), in each `sslmode`, and against
//! the shared plaintext cluster.

use std::time::Duration;

use pgpilot_loadtest::client::Target;
use pgpilot_loadtest::workload::{Settings, Workload};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::common::{self, dsn};
use crate::health::{first_value, one, own_cluster, start, start_with};

/// A CA (PEM) and a server certificate and key it issued for `localhost` only.
fn localhost_pki() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "pgpilot test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn connect(port: u16) -> Result<postgres::Client, postgres::Error> {
    postgres::Client::connect(&dsn(port, "app", "app"), postgres::NoTls)
}

/// Whether the backend serving this read reached it over TLS, by the server's own account.
fn over_tls(client: &mut postgres::Client) -> String {
    one(
        client,
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
}

#[test]
fn backends_are_reached_over_tls_as_each_sslmode_says() {
    let Some(own) = own_cluster("tls") else {
        return;
    };
    let (lc, c) = (own.servers(), own.view());
    let (ca, cert, key) = localhost_pki();
    for i in 0..c.ports.len() {
        lc.enable_tls(i, &cert, &key).unwrap();
        lc.refuse_plaintext(i).unwrap();
    }
    // The servers refuse plaintext now (as RDS does): a plaintext login says so.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (ok, out) = psql(
        &format!(
            "host=127.0.0.1 port={} user=app dbname=app sslmode=disable",
            c.ports[0]
        ),
        "SELECT 1",
    );
    assert!(!ok && out.contains("no encryption"), "{out}");
    let plaintext_refusals = |lc: &pgpilot::cluster::LocalCluster| {
        (0..c.ports.len())
            .map(|i| lc.log(i).matches("no encryption").count())
            .sum::<usize>()
    };
    let before = plaintext_refusals(lc);
    assert!(before >= 1, "the servers log a plaintext login they refuse");
    let ca_file = lc.dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    let with_tls = |mode: &'static str, by_name: bool, pool_mode: &'static str| {
        let section = format!(
            "\n[tls]\nbackend_mode = \"{mode}\"\nbackend_ca_file = \"{}\"\n",
            ca_file.display()
        );
        start_with(&c, "", move |text| {
            let text = text.replacen(
                "pool_mode = \"transaction\"",
                &format!("pool_mode = \"{pool_mode}\""),
                1,
            );
            let text = if by_name {
                text.replace("host = \"127.0.0.1\"", "host = \"localhost\"")
            } else {
                text
            };
            text + &section
        })
    };

    // verify-full, the hosts named as the certificate names them: both pool modes, reads and
    // writes, all over TLS.
    for pool_mode in ["transaction", "session"] {
        let proxy = with_tls("verify-full", true, pool_mode);
        let mut client = connect(proxy.addr().port()).expect("logged in over verify-full");
        assert_eq!(over_tls(&mut client), "true", "{pool_mode}: the read");
        client
            .simple_query("CREATE TABLE IF NOT EXISTS over_tls (n int)")
            .unwrap();
        let mut tx = client.transaction().unwrap();
        tx.simple_query("INSERT INTO over_tls VALUES (1)").unwrap();
        let on_primary = first_value(
            &tx.simple_query("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .unwrap(),
        );
        tx.commit().unwrap();
        assert_eq!(on_primary, "true", "{pool_mode}: the write transaction");
        // Many statements, and an answer of several records.
        for _ in 0..200 {
            one(&mut client, "SELECT 1");
        }
        let long = one(&mut client, "SELECT repeat('x', 100000)");
        assert_eq!(long.len(), 100_000);
    }

    // verify-full by address: the certificate names localhost only. Refused, never plaintext.
    let by_address = with_tls("verify-full", false, "transaction");
    let refused = connect(by_address.addr().port())
        .err()
        .expect("a certificate that does not name the host is refused");
    let text = format!("{refused:?}");
    assert!(text.contains("TLS") && text.contains("name"), "{text}");
    // An unrelated CA: refused too.
    let (unrelated, _, _) = localhost_pki();
    let unrelated_file = lc.dir.join("unrelated.pem");
    std::fs::write(&unrelated_file, unrelated).unwrap();
    let section = format!(
        "\n[tls]\nbackend_mode = \"verify-full\"\nbackend_ca_file = \"{}\"\n",
        unrelated_file.display()
    );
    let strangers = start_with(&c, "", move |text| {
        text.replace("host = \"127.0.0.1\"", "host = \"localhost\"") + &section
    });
    let stranger = connect(strangers.addr().port())
        .err()
        .expect("a certificate of an unrelated CA is refused");
    assert!(
        // Same name as the real CA, another key: the signature does not verify.
        format!("{stranger:?}").contains("invalid peer certificate"),
        "{stranger:?}"
    );
    drop(strangers);
    drop(by_address);
    // Neither refusal tried plaintext: the servers logged no plaintext login.
    assert_eq!(
        plaintext_refusals(lc),
        before,
        "a plaintext attempt reached a server"
    );
    // verify-ca checks the chain, not the name.
    let chain_only = with_tls("verify-ca", false, "transaction");
    let mut client = connect(chain_only.addr().port()).expect("verify-ca by address");
    assert_eq!(over_tls(&mut client), "true");
    // prefer (the default) uses TLS where it is offered.
    let preferred = with_tls("prefer", false, "transaction");
    let mut client = connect(preferred.addr().port()).unwrap();
    assert_eq!(over_tls(&mut client), "true");
    let said = refused
        .as_db_error()
        .map(|d| (d.code().code().to_owned(), d.message().to_owned()));
    eprintln!("tls: verify-full by address refused: {said:?}");

    // Both sides at once: clients must speak TLS to pgpilot (shown the same certificate), and
    // pgpilot speaks verify-full TLS to the servers; both pool modes.
    let (cert_file, key_file) = (lc.dir.join("proxy.crt"), lc.dir.join("proxy.key"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    for pool_mode in ["transaction", "session"] {
        let section = format!(
            "\n[tls]\nclient_mode = \"require\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             backend_mode = \"verify-full\"\nbackend_ca_file = \"{}\"\n",
            cert_file.display(),
            key_file.display(),
            ca_file.display()
        );
        let proxy = start_with(&c, "", move |text| {
            text.replacen(
                "pool_mode = \"transaction\"",
                &format!("pool_mode = \"{pool_mode}\""),
                1,
            )
            .replace("host = \"127.0.0.1\"", "host = \"localhost\"")
                + &section
        });
        let port = proxy.addr().port();
        let verified = format!(
            "host=localhost port={port} user=app dbname=app sslmode=verify-full sslrootcert={}",
            ca_file.display()
        );
        let script = format!(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid(); \
             CREATE TABLE both_sides_{pool_mode} (n int); \
             INSERT INTO both_sides_{pool_mode} VALUES (1); \
             SELECT count(*) > 0 FROM both_sides_{pool_mode}; \
             SELECT length(repeat('y', 200000))"
        );
        let (ok, out) = psql(&verified, &script);
        assert!(ok, "{pool_mode}: psql over verify-full: {out}");
        let lines: Vec<&str> = out.lines().collect();
        let want = ["t", "CREATE TABLE", "INSERT 0 1", "t", "200000"];
        assert_eq!(lines, want, "{pool_mode}: {out}");
        // Many transactions on one TLS connection, each autocommit statement a unit of its own.
        let many: String = (0..300).map(|n| format!("SELECT {n};")).collect();
        let (ok, out) = psql(&verified, &many);
        assert!(ok, "{pool_mode}: {out}");
        let expected: Vec<String> = (0..300).map(|n| n.to_string()).collect();
        assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{pool_mode}");
        // A plaintext client is refused, as PostgreSQL's hostssl-only rules refuse it.
        let plaintext = format!("host=localhost port={port} user=app dbname=app sslmode=disable");
        let (ok, out) = psql(&plaintext, "SELECT 1");
        assert!(!ok, "{pool_mode}: a plaintext client was served");
        assert!(
            out.contains("no encryption") && out.contains("tls.client_mode"),
            "{out}"
        );
        eprintln!(
            "tls: {pool_mode}: both sides encrypted; plaintext refused: {}",
            out.trim()
        );
        // The load generator's --tls (verified against the CA): queries and TLS logins, on
        // its tables once the replicas have replayed them.
        let target = loadtest_target(proxy.addr(), &ca_file);
        if pool_mode == "transaction" {
            pgpilot_loadtest::workload::init(&target, 1).expect("pgbench tables over TLS");
            let replayed = common::eventually(Duration::from_secs(20), || {
                (0..4).all(|_| psql(&verified, "SELECT count(*) FROM pgbench_branches").0)
            });
            assert!(replayed, "the replicas never showed the pgbench tables");
        }
        for workload in [Workload::Select, Workload::Churn] {
            let settings = Settings {
                workload,
                clients: 4,
                duration: Duration::from_millis(1000),
                warmup: Duration::from_millis(1500),
                ..Settings::default()
            };
            let (r, _) = pgpilot_loadtest::run::run(&target, &settings, &|| None);
            assert!(
                r.errors.is_empty(),
                "{pool_mode} {workload:?}: {:?}",
                r.errors
            );
            assert!(r.transactions > 0, "{pool_mode} {workload:?}: none done");
        }
    }
}

/// A load generator's target that connects to `addr` over TLS as `localhost`, verified.
fn loadtest_target(addr: std::net::SocketAddr, ca_file: &std::path::Path) -> Target {
    let config = pgpilot_loadtest::tls::client_config(Some(ca_file)).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    Target {
        name: "pgpilot".into(),
        addr,
        user: "app".into(),
        password: "app".into(),
        database: "app".into(),
        tls: Some(pgpilot_loadtest::tls::Tls { config, name }),
    }
}

/// Runs psql (libpq) with `conninfo` and the password `app`; whether it succeeded, and what it
/// printed (unaligned rows, then its errors).
fn psql(conninfo: &str, sql: &str) -> (bool, String) {
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ])
        .env("PGPASSWORD", "app")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn a_plaintext_server_is_refused_under_require_and_used_under_prefer() {
    let Some(c) = common::cluster() else {
        return;
    };
    let required = start_with(c, "", |text| text + "\n[tls]\nbackend_mode = \"require\"\n");
    let refused = connect(required.addr().port())
        .err()
        .expect("no plaintext fallback under require");
    let text = format!("{refused:?}");
    assert!(text.contains("does not accept TLS"), "{text}");
    let preferred = start(c, "");
    let mut client = connect(preferred.addr().port()).unwrap();
    assert_eq!(over_tls(&mut client), "false");
}

#[test]
fn the_certificate_shown_to_clients_is_read_again_on_reload_and_a_bad_one_changes_nothing() {
    let Some(c) = common::cluster() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("pgpilot-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca1, cert1, key1) = localhost_pki();
    let (ca2, cert2, key2) = localhost_pki();
    let (ca1_file, ca2_file) = (dir.join("ca1.pem"), dir.join("ca2.pem"));
    std::fs::write(&ca1_file, ca1).unwrap();
    std::fs::write(&ca2_file, ca2).unwrap();
    let install = |cert: &str, key: &str| {
        std::fs::write(dir.join("server.crt"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
    };
    install(&cert1, &key1);
    let text = common::config_text(c, &common::Opts::default())
        + "\n[tls]\nclient_mode = \"allow\"\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n";
    let path = dir.join("pgpilot.toml");
    std::fs::write(&path, text).unwrap();
    let proxy = pgpilot::Proxy::start(pgpilot::Config::load(&path).unwrap()).unwrap();
    let port = proxy.addr().port();
    let trusting = |ca: &std::path::Path| {
        format!(
            "host=localhost port={port} user=app dbname=app sslmode=verify-full sslrootcert={}",
            ca.display()
        )
    };
    let (ok, out) = psql(&trusting(&ca1_file), "SELECT 1");
    assert!(ok, "the first certificate: {out}");

    // What SIGHUP does: the control plane reads the file again and tells every core.
    install(&cert2, &key2);
    proxy
        .control()
        .send(pgpilot::control::ControlMsg::Reload)
        .unwrap();
    assert!(
        common::eventually(std::time::Duration::from_secs(5), || psql(
            &trusting(&ca2_file),
            "SELECT 1"
        )
        .0),
        "the new certificate is never shown"
    );
    let (ok, out) = psql(&trusting(&ca1_file), "SELECT 1");
    assert!(!ok, "the old certificate is still shown: {out}");

    // A key that does not load: the reload fails and the running certificate stays.
    std::fs::write(dir.join("server.key"), "not a key\n").unwrap();
    proxy
        .control()
        .send(pgpilot::control::ControlMsg::Reload)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (ok, out) = psql(&trusting(&ca2_file), "SELECT 1");
    assert!(ok, "a failed reload changed the certificate: {out}");
    drop(proxy);
    let _ = std::fs::remove_dir_all(dir);
}
