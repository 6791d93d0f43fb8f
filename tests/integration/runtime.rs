//! The two I/O drivers of the runtime: io_uring where the kernel allows it, epoll where it does
//! not (and when `PGPILOT_IO=epoll` asks for it). The proxy binary runs on each, says which in
//! its log, and serves pgbench in both pool modes without a failed transaction.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::common::{self, Child, Opts};
use crate::pgbench::{pgbench_data, run_pgbench};

/// Starts the pgpilot binary on `port` with `env` set, logging to `log`.
pub fn start(config: &Path, log: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgpilot"));
    cmd.env("RUST_LOG", "info")
        .env_remove(pgpilot::worker::DRIVER_ENV);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = Child(
        cmd.arg("--config")
            .arg(config)
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The listeners are bound before the workers start; the log line comes once they run.
    let up = || {
        TcpStream::connect(addr).is_ok()
            && std::fs::read_to_string(log).is_ok_and(|l| l.contains("listening on"))
    };
    assert!(
        common::eventually(Duration::from_secs(30), up),
        "the proxy did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    child
}

#[test]
fn both_io_drivers_serve_pgbench_in_both_pool_modes() {
    let Some(c) = common::cluster() else { return };
    pgbench_data(c);
    let dir = std::env::temp_dir().join(format!("pgpilot-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (forced, mode) in [
        (None, "transaction"),
        (Some("epoll"), "transaction"),
        (Some("epoll"), "session"),
    ] {
        let port = pgpilot::cluster::free_port().unwrap();
        // Session mode: each of pgbench's 8 clients holds a backend, and either worker may get
        // all of them; transaction mode: 8 clients share 4.
        let opts = Opts {
            pool_mode: mode,
            pool_size: if mode == "session" { 16 } else { 4 },
            ..Opts::default()
        };
        let text = common::config_text_on(c, &opts, port);
        let config = dir.join(format!("{mode}-{}.toml", forced.unwrap_or("default")));
        std::fs::write(&config, text).unwrap();
        let log = config.with_extension("log");
        let env: Vec<(&str, &str)> = forced
            .map(|d| (pgpilot::worker::DRIVER_ENV, d))
            .into_iter()
            .collect();
        let proxy = start(&config, &log, port, &env);
        let said = std::fs::read_to_string(&log).unwrap();
        let driver = ["io_uring", "epoll"]
            .into_iter()
            .find(|d| said.contains(&format!("worker(s) on {d},")))
            .unwrap_or_else(|| panic!("the log names no driver:\n{said}"));
        if let Some(forced) = forced {
            assert_eq!(driver, forced, "{said}");
        }
        eprintln!("{mode} pooling on {driver}");
        run_pgbench(port, &["-S", "-M", "extended"]);
        run_pgbench(port, &["-M", "simple"]);
        run_pgbench(port, &["-S", "-M", "prepared"]);
        drop(proxy);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
