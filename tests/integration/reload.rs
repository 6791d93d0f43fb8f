//! Reload (SIGHUP) under load: a replica added, a weight changed, the pool resized, a user
//! added, a replica removed, with no failed transaction; backends keep their ids by name.

use std::path::Path;
use std::time::Duration;

use pgpilot::control::{ControlMsg, Status};
use pgpilot::{Config, Proxy};
use pgpilot_loadtest::workload::{Settings, Workload};

use crate::admin::{cell, console, show, ADMIN};
use crate::common::{self, Opts};
use crate::pgbench::pgbench_data;

/// The `app_md5` role's entry: left out of the first file, added by a reload.
const MD5_USER: &str = "\n[[users]]\nname = \"app_md5\"\npassword = \"app_md5\"\n";

/// The test cluster's config (without `app_md5`) with replicas `replicas` (of b1, b2) at these weights.
fn text(c: &common::Cluster, replicas: &[(usize, u32)], extra: &str) -> String {
    let base = common::config_text(c, &Opts::default());
    // Everything before the backends, then the ones asked for.
    let head = base
        .split("\n[[backends]]")
        .next()
        .unwrap()
        .replace(MD5_USER, "");
    let mut t = head + ADMIN + extra;
    t.push_str(&format!(
        "\n[[backends]]\nname = \"b0\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"primary\"\n",
        c.ports[0]
    ));
    for (i, weight) in replicas {
        t.push_str(&format!(
            "\n[[backends]]\nname = \"b{i}\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"replica\"\nweight = {weight}\n",
            c.ports[*i]
        ));
    }
    t
}

fn reload(proxy: &Proxy, path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    proxy.control().send(ControlMsg::Reload).unwrap();
}

fn read_port(app: &mut postgres::Client) -> u16 {
    let row = app.query_one("SELECT inet_server_port()", &[]).unwrap();
    row.get::<_, i32>(0) as u16
}

#[test]
fn a_reload_under_load_changes_backends_users_and_pools_and_fails_nothing() {
    let Some(c) = common::cluster() else { return };
    pgbench_data(c);
    let dir = std::env::temp_dir().join(format!("pgpilot-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pgpilot.toml");
    std::fs::write(&path, text(c, &[(1, 1)], "")).unwrap();
    let proxy = Proxy::start(Config::load(&path).unwrap()).unwrap();
    let target = crate::loadtest::target(&proxy);
    let load = std::thread::spawn(move || {
        let settings = Settings {
            workload: Workload::Mixed,
            clients: 8,
            duration: Duration::from_secs(8),
            warmup: Duration::from_secs(1),
            ..Settings::default()
        };
        pgpilot_loadtest::run::run(&target, &settings, &|| None).0
    });
    std::thread::sleep(Duration::from_millis(1500));
    let mut app = common::client(&proxy);
    let state = |proxy: &Proxy| proxy.cluster_state();

    // b2 joins; b1's weight drops to 0: reads go to b2 alone.
    reload(&proxy, &path, &text(c, &[(1, 0), (2, 1)], ""));
    let joined = common::eventually(Duration::from_secs(10), || {
        let s = state(&proxy);
        s.backends.len() == 3 && s.backends[2].name == "b2" && s.backends[2].addr.is_some()
    });
    assert!(joined, "b2 joined: {:?}", state(&proxy));
    let only_b2 = common::eventually(Duration::from_secs(10), || {
        (0..20).all(|_| read_port(&mut app) == c.ports[2])
    });
    assert!(only_b2, "reads went to b2 alone once b1's weight was 0");

    // A user the file did not name logs in after it names it; the pools grow.
    let md5 = common::dsn(proxy.addr().port(), "app_md5", "app_md5");
    assert!(postgres::Client::connect(&md5, postgres::NoTls).is_err());
    let users = MD5_USER;
    let bigger = |t: String| t.replacen("[pool]\nsize = 10\n", "[pool]\nsize = 30\n", 1);
    reload(&proxy, &path, &bigger(text(c, &[(1, 0), (2, 1)], users)));
    let in_now = common::eventually(Duration::from_secs(10), || {
        postgres::Client::connect(&md5, postgres::NoTls).is_ok()
    });
    assert!(in_now, "app_md5 logs in after the reload");

    // b1 leaves; b2 keeps its id, b1's place stays, out of the rotation.
    reload(&proxy, &path, &bigger(text(c, &[(2, 1)], users)));
    let gone = common::eventually(Duration::from_secs(10), || {
        let s = state(&proxy);
        s.backends[1].status == Status::Down && s.backends[1].addr.is_none()
    });
    assert!(gone, "b1 is out: {:?}", state(&proxy));
    assert_eq!(state(&proxy).backends[2].name, "b2", "b2 kept its id");
    assert!((0..20).all(|_| read_port(&mut app) == c.ports[2]));

    // A bad file changes nothing, and says why.
    reload(&proxy, &path, "[server]\nlisten = 5\n");
    let result = load.join().unwrap();
    eprintln!(
        "reload: {} transactions (mixed, 8 clients) through 4 reloads, errors {:?}",
        result.transactions, result.errors
    );
    assert!(
        result.errors.is_empty(),
        "failed transactions: {:?}",
        result.errors
    );
    assert!(
        result.transactions > 100,
        "{} transactions",
        result.transactions
    );
    assert!((0..5).all(|_| read_port(&mut app) == c.ports[2]));

    let mut console = console(&proxy, "pgpilot");
    let events = show(&mut console, "SHOW EVENTS");
    let reloads: Vec<(&str, &str)> = (events.1.iter())
        .map(|r| (cell(&events, r, "event"), cell(&events, r, "cause")))
        .filter(|(e, _)| e.starts_with("reload"))
        .collect();
    assert_eq!(reloads.len(), 4, "{reloads:?}");
    assert!(reloads[0].1.contains("backends added: b2"), "{reloads:?}");
    assert!(reloads[2].1.contains("backends removed: b1"), "{reloads:?}");
    assert_eq!(reloads[3].0, "reload_failed");
    assert!(reloads[3].1.contains("server.listen"), "{reloads:?}");
    let backends = show(&mut console, "SHOW BACKENDS");
    let names: Vec<&str> = (backends.1.iter())
        .map(|r| cell(&backends, r, "name"))
        .collect();
    assert_eq!(names, ["b0", "b2"]);
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
