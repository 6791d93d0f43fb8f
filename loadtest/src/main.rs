//! pgpilot-loadtest: drives PostgreSQL (or a proxy in front of it) with a fixed workload and
//! reports throughput and latency. Several `--target`s run in turn, round after round, so that
//! their ratios hold on a noisy machine.
//!
//! Clients are tasks on a few load threads (`--threads`, one monoio runtime each), so tens of
//! thousands of connections need no more threads than cores.

// The workspace bans blocking calls because they stall a core's runtime; only the main thread
// here sleeps (between progress lines) and joins the load threads.
#![allow(clippy::disallowed_methods)]

use pgpilot_loadtest::{client, report, run, tls, workload};

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use client::Target;
use workload::{Settings, Workload, SLOW};

const USAGE: &str = "usage: pgpilot-loadtest --target NAME=HOST:PORT [--target ...]
  [--user app] [--password app] [--database app]
  [--workload select|select-extended|prepared|tpcb|mixed|churn|idle] [--write-share 0.1]
  [--clients 32] [--threads 2] [--duration 10] [--warmup 2] [--rounds 3] [--rate TPS] [--scale 1]
  [--init SCALE] [--pid NAME=PID] [--tls] [--tls-ca FILE] [--json]
--tls: every connection asks for TLS and refuses to go on without it; the server's certificate
is not checked unless --tls-ca names the CA bundle it must chain to (and then it must also name
the target's host, as libpq's sslmode=verify-full).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args) {
        Ok(run) => match run.execute() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pgpilot-loadtest: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("pgpilot-loadtest: {e}\n{USAGE}");
            ExitCode::from(64)
        }
    }
}

/// Everything the command line asked for.
struct Run {
    targets: Vec<Target>,
    settings: Settings,
    rounds: usize,
    init_scale: Option<u32>,
    pids: Vec<(String, u32)>,
    json: bool,
}

fn parse(args: &[String]) -> Result<Run, String> {
    let (mut user, mut password, mut database) =
        ("app".to_owned(), "app".to_owned(), "app".to_owned());
    let mut targets: Vec<(String, String)> = Vec::new();
    let mut s = Settings::default();
    let (mut rounds, mut init_scale, mut pids, mut json) = (3usize, None, Vec::new(), false);
    let (mut tls, mut tls_ca) = (false, None::<PathBuf>);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let switch = match flag.as_str() {
            "--json" => Some(&mut json),
            "--tls" => Some(&mut tls),
            _ => None,
        };
        if let Some(on) = switch {
            *on = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--target" => {
                let (name, addr) = value
                    .split_once('=')
                    .ok_or("--target takes NAME=HOST:PORT")?;
                targets.push((name.to_owned(), addr.to_owned()));
            }
            "--user" => user = value.clone(),
            "--password" => password = value.clone(),
            "--database" => database = value.clone(),
            "--workload" => {
                s.workload =
                    Workload::parse(value).ok_or_else(|| format!("unknown workload {value:?}"))?
            }
            "--write-share" => s.write_share = num(value)?,
            "--clients" => s.clients = num(value)? as usize,
            "--threads" => s.threads = num(value)? as usize,
            "--duration" => s.duration = Duration::from_secs_f64(num(value)?),
            "--warmup" => s.warmup = Duration::from_secs_f64(num(value)?),
            "--rounds" => rounds = num(value)? as usize,
            "--rate" => s.rate = Some(num(value)?),
            "--scale" => s.scale = num(value)? as u32,
            "--init" => init_scale = Some(num(value)? as u32),
            "--tls-ca" => {
                tls = true;
                tls_ca = Some(PathBuf::from(value));
            }
            "--pid" => {
                let (name, pid) = value.split_once('=').ok_or("--pid takes NAME=PID")?;
                pids.push((
                    name.to_owned(),
                    pid.parse().map_err(|_| format!("--pid: bad pid {pid:?}"))?,
                ));
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if targets.is_empty() {
        return Err("at least one --target is needed".into());
    }
    if s.clients == 0 || rounds == 0 || s.threads == 0 {
        return Err("--clients, --threads and --rounds must be at least 1".into());
    }
    let tls_config = match tls {
        true => Some(tls::client_config(tls_ca.as_deref()).map_err(|e| format!("--tls-ca: {e}"))?),
        false => None,
    };
    let targets = targets
        .into_iter()
        .map(|(name, addr)| {
            let tls = match &tls_config {
                Some(config) => {
                    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                        .map_err(|e| format!("--target {addr}: {e}"))?;
                    Some(tls::Tls {
                        config: config.clone(),
                        name,
                    })
                }
                None => None,
            };
            let addr = addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| format!("cannot resolve {addr}"))?;
            Ok(Target {
                name,
                addr,
                user: user.clone(),
                password: password.clone(),
                database: database.clone(),
                tls,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Run {
        targets,
        settings: s,
        rounds,
        init_scale,
        pids,
        json,
    })
}

impl Run {
    fn execute(&self) -> Result<(), String> {
        if let Some(scale) = self.init_scale {
            workload::init(&self.targets[0], scale).map_err(|e| format!("--init: {e}"))?;
            eprintln!(
                "initialized pgbench tables at scale {scale} through {}",
                self.targets[0].name
            );
        }
        let mut results = Vec::new();
        for round in 0..self.rounds {
            for target in &self.targets {
                let cpu_before = report::cpu_ticks(&self.pids, &target.name);
                let rss_before = report::rss_bytes(&self.pids, &target.name);
                let sample = || report::rss_bytes(&self.pids, &target.name);
                let (result, rss_during) = run::run(target, &self.settings, &sample);
                // Per connection open when sampled: a slow login path (SCRAM keys derived per
                // login) may leave some of the asked-for clients still connecting.
                let rss_per_client = rss_during
                    .zip(rss_before)
                    .filter(|((_, open), _)| *open > 0)
                    .map(|((d, open), b)| d.saturating_sub(b) as f64 / open as f64)
                    .filter(|_| self.settings.workload == Workload::Idle);
                let cpu = report::cpu_ticks(&self.pids, &target.name)
                    .zip(cpu_before)
                    .map(|(a, b)| a.saturating_sub(b));
                eprintln!(
                    "round {} {}: {:.0} tps, max {:.1} ms, {} errors",
                    round + 1,
                    target.name,
                    result.tps(),
                    result.max().as_secs_f64() * 1000.0,
                    result.errors.values().sum::<u64>()
                );
                if !result.slow.is_empty() {
                    let mut slow = result.slow.clone();
                    slow.sort_by_key(|s| s.start);
                    let list: Vec<String> = slow
                        .iter()
                        .map(|s| {
                            format!(
                                "c{}@{:.3}s+{:.0}ms",
                                s.client,
                                s.start.as_secs_f64(),
                                s.latency.as_secs_f64() * 1000.0
                            )
                        })
                        .collect();
                    eprintln!("  slow (>= {} ms): {}", SLOW.as_millis(), list.join(" "));
                }
                if let (Some(per), Some((_, open))) = (rss_per_client, rss_during) {
                    eprintln!(
                        "round {} {}: {:.0} bytes of RSS per open connection ({open} open)",
                        round + 1,
                        target.name,
                        per
                    );
                }
                results.push(report::Sample {
                    rss_per_client,
                    round,
                    target: target.name.clone(),
                    result,
                    cpu_ticks: cpu,
                });
            }
        }
        let names: Vec<String> = self.targets.iter().map(|t| t.name.clone()).collect();
        let text = report::render(&names, &results, &self.settings, self.json);
        println!("{text}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn command_line_is_parsed_and_checked() {
        let run = parse(&args("--target direct=127.0.0.1:5432 --target proxy=127.0.0.1:6432 --clients 8 --workload prepared --json")).unwrap();
        assert_eq!(run.targets.len(), 2);
        assert_eq!(run.settings.clients, 8);
        assert_eq!(run.settings.workload, Workload::Prepared);
        assert!(run.json);
        assert!(parse(&args("--clients 8")).is_err());
        assert!(parse(&args("--target x=127.0.0.1:1 --workload nope")).is_err());
        assert!(parse(&args("--target x=127.0.0.1:1 --clients")).is_err());
        let tls = parse(&args("--target x=localhost:1 --tls")).unwrap();
        assert!(tls.targets[0].tls.is_some());
        assert!(run.targets[0].tls.is_none());
        let missing = parse(&args("--target x=127.0.0.1:1 --tls-ca /nonexistent/ca.pem"));
        assert!(missing.is_err_and(|e| e.contains("/nonexistent/ca.pem")));
    }
}
