//! `pgpilot demo`: a local primary and two streaming replicas made with the installed
//! PostgreSQL binaries, served through the proxy until Ctrl-C, then all stopped.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cluster::LocalCluster;
use crate::{Config, Proxy};

/// What `pgpilot demo` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOpts {
    /// Where the servers' data directories and the config go.
    pub dir: PathBuf,
    /// Where the proxy listens.
    pub port: u16,
}

/// Parses `[--dir DIR] [--port PORT]`.
pub fn parse_args(args: &[&str]) -> Result<DemoOpts, String> {
    let mut opts = DemoOpts {
        dir: std::env::temp_dir().join("pgpilot-demo"),
        port: 6432,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match (*arg, it.next()) {
            ("--dir", Some(d)) => opts.dir = PathBuf::from(d),
            ("--port", Some(p)) => {
                opts.port = p
                    .parse()
                    .map_err(|_| format!("--port: {p:?} is not a port number"))?
            }
            (other, _) => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(opts)
}

/// Runs the demo; `serve` runs the proxy until a signal and returns the exit code.
pub fn run(opts: &DemoOpts, serve: fn(Proxy) -> ExitCode) -> ExitCode {
    match start(opts) {
        Ok((cluster, proxy)) => {
            let code = serve(proxy);
            drop(cluster);
            println!("pgpilot demo: stopped");
            code
        }
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn start(opts: &DemoOpts) -> Result<(LocalCluster, Proxy), String> {
    let dir = &opts.dir;
    if dir.join("primary").exists() {
        if !dir.join("pgpilot.toml").exists() {
            return Err(format!(
                "{} holds something that is not a pgpilot demo; pick another --dir",
                dir.display()
            ));
        }
        stop_leftovers(dir);
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    println!(
        "pgpilot demo: creating a primary and 2 streaming replicas in {}",
        dir.display()
    );
    let cluster = LocalCluster::create(dir, 2).map_err(|e| e.to_string())?;
    let config_path = dir.join("pgpilot.toml");
    std::fs::write(&config_path, config_text(&cluster, opts.port)).map_err(|e| e.to_string())?;
    let config = Config::load(&config_path).map_err(|e| e.to_string())?;
    let proxy = Proxy::start(config).map_err(|e| e.to_string())?;
    let p = &cluster.ports;
    println!(
        "primary on 127.0.0.1:{}, replicas on 127.0.0.1:{} and :{}",
        p[0], p[1], p[2]
    );
    println!("config: {}", config_path.display());
    println!(
        "connect: psql postgres://app:app@127.0.0.1:{port}/app   (or: PGPASSWORD=app psql -h 127.0.0.1 -p {port} -U app)",
        port = opts.port
    );
    println!(
        "admin console: PGPASSWORD=admin psql -h 127.0.0.1 -p {} -U admin pgpilot -c 'SHOW BACKENDS'",
        opts.port
    );
    println!("Ctrl-C stops the proxy and the servers.");
    Ok((cluster, proxy))
}

/// Stops servers a previous demo in `dir` left running (after a kill -9, say).
/// Runs on the main thread before any runtime exists, so it may sleep.
#[allow(clippy::disallowed_methods)]
fn stop_leftovers(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let pidfile = entry.path().join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pidfile) else {
            continue;
        };
        if let Some(pid) = text.lines().next().map(str::trim) {
            // SIGQUIT: immediate shutdown of that postmaster and its children.
            let _ = std::process::Command::new("kill")
                .args(["-QUIT", pid])
                .output();
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
}

/// The demo's config: transaction pooling, user app/app, the primary and both replicas.
fn config_text(cluster: &LocalCluster, port: u16) -> String {
    let mut text = format!(
        "# Written by `pgpilot demo`.\n[server]\nlisten = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\n\n\
         [auth]\nmethod = \"scram-sha-256\"\n\n[[users]]\nname = \"app\"\npassword = \"app\"\n\n\
         # The admin console (psql -d pgpilot -U admin): a user of pgpilot's only.\n\
         [[users]]\nname = \"admin\"\npassword = \"admin\"\n\n[admin]\nusers = [\"admin\"]\n\n[pool]\nsize = 20\n"
    );
    for (i, p) in cluster.ports.iter().enumerate() {
        let (name, role, weight) = if i == 0 {
            ("primary".to_owned(), "primary", 0)
        } else {
            (format!("replica{i}"), "replica", 1)
        };
        text.push_str(&format!(
            "\n[[backends]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {p}\nrole = \"{role}\"\nweight = {weight}\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        assert_eq!(parse_args(&["--port", "7000"]).unwrap().port, 7000);
        assert_eq!(
            parse_args(&["--dir", "/x"]).unwrap().dir,
            PathBuf::from("/x")
        );
        assert!(parse_args(&["--port", "x"]).is_err());
        assert!(parse_args(&["--bogus"]).is_err());
    }
}
