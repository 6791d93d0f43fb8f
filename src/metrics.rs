//! `[metrics] listen`: `GET /metrics` in the Prometheus text format, `/healthz` (the process
//! serves) and `/readyz` (every core accepts clients and a backend is usable), for Prometheus,
//! load balancers and Kubernetes probes.
//!
//! A thread of its own serves it, one request at a time; it never runs on a core. It asks the
//! cores and the control plane for their figures as the admin console does (through their
//! inboxes), so the data path shares nothing with it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

mod text;

pub use text::render;

use crate::admin::{CoreReport, PlaneReport};
use crate::config::Role;
use crate::control::{mailbox, ControlMsg, CoreMsg, CoreSender, Status};

/// How long a scrape waits for the cores and the control plane.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How long a client may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(2);
/// The longest request head read.
const MAX_REQUEST: usize = 8192;
/// How often the accept loop looks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(50);

/// The running metrics server; stopping it joins its thread.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `listen` and serves from a thread named `pgpilot-metrics`.
    pub fn start(
        listen: SocketAddr,
        cores: Vec<CoreSender>,
        control: Sender<ControlMsg>,
    ) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let sources = Sources { cores, control };
        let thread = std::thread::Builder::new()
            .name("pgpilot-metrics".into())
            .spawn(move || serve(&listener, &sources, &stopped))?;
        log::info!("metrics on http://{addr}/metrics (and /healthz, /readyz)");
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens (with the real port when the config said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and waits for the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whom a scrape asks.
struct Sources {
    cores: Vec<CoreSender>,
    control: Sender<ControlMsg>,
}

impl Sources {
    /// Every core's report, or `None` if one did not answer in time.
    fn cores(&self) -> Option<Vec<CoreReport>> {
        let (tx, rx) = mailbox();
        for core in &self.cores {
            core.send(CoreMsg::Report(tx.clone())).ok()?;
        }
        drop(tx);
        let deadline = Instant::now() + ANSWER_WAIT;
        let mut reports = Vec::with_capacity(self.cores.len());
        while reports.len() < self.cores.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            reports.push(rx.recv_blocking(left)?);
        }
        reports.sort_by_key(|r| r.core);
        Some(reports)
    }

    /// The control plane's report, or `None` if it did not answer (it has stopped).
    fn plane(&self) -> Option<PlaneReport> {
        let (tx, rx) = mailbox();
        self.control.send(ControlMsg::Describe(tx)).ok()?;
        rx.recv_blocking(ANSWER_WAIT)
    }
}

#[allow(clippy::disallowed_methods)] // this thread is no core: it may sleep
fn serve(listener: &TcpListener, sources: &Sources, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, sources) {
                    log::debug!("metrics: a request failed: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(STOP_POLL),
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                std::thread::sleep(STOP_POLL);
            }
        }
    }
}

/// Reads one request head and answers it.
fn answer(mut stream: TcpStream, sources: &Sources) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_WAIT))?;
    stream.set_write_timeout(Some(REQUEST_WAIT))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split(' ');
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        );
    }
    let plain = "text/plain; charset=utf-8";
    match path {
        "/metrics" => {
            let (cores, plane) = (sources.cores(), sources.plane());
            match (cores, plane) {
                (Some(cores), Some(plane)) => {
                    let body = render(&cores, &plane, &host_netstat());
                    let kind = "text/plain; version=0.0.4; charset=utf-8";
                    respond(&mut stream, "200 OK", kind, &body)
                }
                _ => respond(
                    &mut stream,
                    "503 Service Unavailable",
                    plain,
                    "not answering\n",
                ),
            }
        }
        "/healthz" => respond(&mut stream, "200 OK", plain, "ok\n"),
        "/readyz" => match ready(sources) {
            Ok(()) => respond(&mut stream, "200 OK", plain, "ready\n"),
            Err(why) => respond(&mut stream, "503 Service Unavailable", plain, &why),
        },
        _ => respond(
            &mut stream,
            "404 Not Found",
            plain,
            "try /metrics, /healthz, /readyz\n",
        ),
    }
}

/// Ready: every core answers and accepts clients, and some backend can serve (the primary, or
/// a replica that takes reads).
fn ready(sources: &Sources) -> Result<(), String> {
    let cores = sources.cores().ok_or("a core does not answer\n")?;
    if cores.iter().any(|c| !c.accepting) {
        return Err("shutting down\n".into());
    }
    let plane = sources
        .plane()
        .ok_or("the control plane does not answer\n")?;
    let usable = plane.backends.iter().any(|b| match b.role {
        Role::Primary => !matches!(b.status, Status::Down | Status::Unavailable),
        Role::Replica => b.status.takes_reads(),
    });
    if !usable {
        return Err("no backend is usable\n".into());
    }
    Ok(())
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

/// `ListenOverflows` and `ListenDrops` of this network namespace (`/proc/net/netstat`).
fn host_netstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let find = |want: &str| {
        names
            .split_ascii_whitespace()
            .zip(values.split_ascii_whitespace())
            .find(|(n, _)| *n == want)
            .and_then(|(_, v)| v.parse().ok())
    };
    Some((find("ListenOverflows")?, find("ListenDrops")?))
}
