//! The `pgpilot` binary: parses the command line, loads the config, starts the proxy and
//! turns signals into control messages. The architecture is described in the library docs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pgpilot::cluster::LocalCluster;
use pgpilot::control::ControlMsg;
use pgpilot::{Config, Proxy};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

const USAGE: &str = "usage:
  pgpilot [--config PATH]                 run the proxy
  pgpilot check-config PATH               validate a config and print the resolved settings
  pgpilot demo [--dir DIR] [--port PORT]  local primary + 2 replicas behind the proxy
  pgpilot --version";

/// Bad config or arguments.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--version" | "-V"] => {
            println!(
                "pgpilot {} ({})",
                env!("CARGO_PKG_VERSION"),
                option_env!("PGPILOT_COMMIT").unwrap_or("unknown commit")
            );
            ExitCode::SUCCESS
        }
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        ["check-config", path] => check_config(Path::new(path)),
        ["demo", rest @ ..] => demo(rest),
        [] => run(&default_config_path()),
        ["--config", path] => run(Path::new(path)),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn default_config_path() -> PathBuf {
    let local = PathBuf::from("config/pgpilot.toml");
    if local.exists() {
        local
    } else {
        PathBuf::from("/etc/pgpilot/pgpilot.toml")
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{path}: ok\n{config:#?}", path = path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match Proxy::start(config) {
        Ok(proxy) => serve_until_signal(proxy),
        Err(e) => {
            eprintln!("pgpilot: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down cleanly.
fn serve_until_signal(proxy: Proxy) -> ExitCode {
    let control = proxy.control();
    let mut signals = match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pgpilot: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = signals.handle();
    let watcher = std::thread::spawn(move || {
        for signal in signals.forever() {
            match signal {
                SIGHUP => {
                    log::warn!("SIGHUP: configuration reload is not implemented yet; ignoring")
                }
                _ => {
                    log::info!("signal {signal}: shutting down");
                    let _ = control.send(ControlMsg::Shutdown);
                    return;
                }
            }
        }
    });
    proxy.wait();
    handle.close();
    let _ = watcher.join();
    ExitCode::SUCCESS
}

fn demo(args: &[&str]) -> ExitCode {
    let mut dir = std::env::temp_dir().join("pgpilot-demo");
    let mut port = 6432u16;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (*arg, it.next()) {
            ("--dir", Some(d)) => dir = PathBuf::from(d),
            ("--port", Some(p)) => match p.parse() {
                Ok(p) => port = p,
                Err(_) => {
                    eprintln!("demo: --port: {p:?} is not a port number");
                    return ExitCode::from(EXIT_USAGE);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    if dir.join("primary").exists() {
        if !dir.join("pgpilot.toml").exists() {
            eprintln!(
                "demo: {} holds something that is not a pgpilot demo; pick another --dir",
                dir.display()
            );
            return ExitCode::from(EXIT_USAGE);
        }
        stop_leftovers(&dir);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            eprintln!("demo: cannot clear {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    }
    println!(
        "pgpilot demo: creating a primary and 2 streaming replicas in {}",
        dir.display()
    );
    let cluster = match LocalCluster::create(&dir, 2) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config_path = dir.join("pgpilot.toml");
    let text = demo_config(&cluster, port);
    let config = std::fs::write(&config_path, &text)
        .map_err(|e| e.to_string())
        .and_then(|()| Config::load(&config_path).map_err(|e| e.to_string()));
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let proxy = match Proxy::start(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "primary on 127.0.0.1:{}, replicas on 127.0.0.1:{} and :{}",
        cluster.ports[0], cluster.ports[1], cluster.ports[2]
    );
    println!("config: {}", config_path.display());
    println!("connect: psql postgres://app:app@127.0.0.1:{port}/app   (or: PGPASSWORD=app psql -h 127.0.0.1 -p {port} -U app)");
    println!("Ctrl-C stops the proxy and the servers.");
    let code = serve_until_signal(proxy);
    drop(cluster);
    println!("pgpilot demo: stopped");
    code
}

/// Stops servers a previous demo in `dir` left running (after a kill -9, say).
fn stop_leftovers(dir: &Path) {
    let Ok(bindir) = pgpilot::cluster::find_bindir() else {
        return;
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().join("postmaster.pid").exists() {
            let _ = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bindir.join("pg_ctl"))
                .args([
                    "-D",
                    &entry.path().to_string_lossy(),
                    "-m",
                    "immediate",
                    "stop",
                ])
                .output();
        }
    }
}

fn demo_config(cluster: &LocalCluster, port: u16) -> String {
    let mut text = format!(
        "# Written by `pgpilot demo`.\n[server]\nlisten = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\n\n\
         [auth]\nmethod = \"scram-sha-256\"\n\n[[users]]\nname = \"app\"\npassword = \"app\"\n\n[pool]\nsize = 20\n"
    );
    for (i, p) in cluster.ports.iter().enumerate() {
        let (name, role, weight) = if i == 0 {
            ("primary".to_owned(), "primary", 0)
        } else {
            (format!("replica{i}"), "replica", 1)
        };
        text.push_str(&format!("\n[[backends]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {p}\nrole = \"{role}\"\nweight = {weight}\n"));
    }
    text
}
