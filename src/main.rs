//! The `pgpilot` binary: parses the command line, loads the config, starts the proxy and
//! turns signals into control messages. The architecture is described in the library docs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use pgpilot::control::ControlMsg;
use pgpilot::{Config, Proxy};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        ["demo", rest @ ..] => match pgpilot::demo::parse_args(rest) {
            Ok(opts) => pgpilot::demo::run(&opts, serve_until_signal),
            Err(e) => {
                eprintln!("demo: {e}\n{USAGE}");
                ExitCode::from(EXIT_USAGE)
            }
        },
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
pub fn serve_until_signal(proxy: Proxy) -> ExitCode {
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
                    log::info!("SIGHUP: reloading the configuration");
                    let _ = control.send(ControlMsg::Reload);
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
