//! Health checks against servers that really fail, on a cluster of this test's own (it stops
//! and freezes servers, which the shared cluster's other tests must not see): a replica frozen
//! for 2 s is not detached and no read fails; a crashed replica is detached within the bound
//! and attached again by itself once it runs again, and no read fails either: those in flight
//! on it are sent elsewhere; a session reads its own writes while replay is paused, and a
//! lagging replica takes no reads. The helpers here serve `primary` too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgpilot::cluster::LocalCluster;
use pgpilot::control::Status;
use pgpilot::{Config, Proxy};

use crate::common::{self, config_text, dsn, eventually, Cluster, Opts};

/// A cluster of one primary and one replica, removed when the test ends. The test holds the
/// memory-measuring tests' lock meanwhile: a second cluster, proxies and their clients must
/// not run beside them.
pub struct Own {
    cluster: Option<LocalCluster>,
    dir: std::path::PathBuf,
    _heavy: std::sync::MutexGuard<'static, ()>,
}

impl Own {
    pub fn servers(&self) -> &LocalCluster {
        self.cluster.as_ref().unwrap()
    }

    /// The harness's view of it, for configs.
    pub fn view(&self) -> Cluster {
        Cluster {
            ports: self.servers().ports.clone(),
        }
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `None` only where the shared cluster's tests are skipped too (see `common::cluster`).
pub fn own_cluster(name: &str) -> Option<Own> {
    own_cluster_with(name, |dir| LocalCluster::create(dir, 1))
}

/// [`own_cluster`], made by `make`.
pub fn own_cluster_with(
    name: &str,
    make: impl FnOnce(&std::path::Path) -> Result<LocalCluster, pgpilot::cluster::ClusterError>,
) -> Option<Own> {
    let heavy = crate::hostile::heavy();
    common::cluster()?;
    let dir = std::env::temp_dir().join(format!("pgpilot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = make(&dir).expect("a primary and a replica of this test's own");
    Some(Own {
        cluster: Some(cluster),
        dir,
        _heavy: heavy,
    })
}

pub fn start(c: &Cluster, health: &str) -> Proxy {
    start_with(c, health, |text| text)
}

/// [`start`] with the config text changed by `edit` first.
pub fn start_with(c: &Cluster, health: &str, edit: impl FnOnce(String) -> String) -> Proxy {
    let _ = env_logger::builder().is_test(true).try_init();
    let extra: &'static str = Box::leak(format!("\n[health]\n{health}\n").into_boxed_str());
    let o = Opts {
        replica_weights: [1, 0],
        extra,
        ..Opts::default()
    };
    let config = Config::parse(
        &edit(config_text(c, &o)),
        std::path::Path::new("health.toml"),
    )
    .expect("test config is valid");
    Proxy::start(config).expect("proxy starts")
}

pub fn status(p: &Proxy, id: usize) -> Status {
    p.cluster_state().backends[id].status
}

/// Clients reading through the proxy until stopped: reads done, reads failed (with the last
/// error), and the port of the server that answered the latest read.
pub struct Readers {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_error: Arc<Mutex<String>>,
    last_port: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Readers {
    pub fn start(port: u16, n: usize) -> Readers {
        let r = Readers {
            stop: Arc::default(),
            done: Arc::default(),
            failed: Arc::default(),
            last_error: Arc::default(),
            last_port: Arc::default(),
            threads: Vec::new(),
        };
        let threads = (0..n)
            .map(|_| {
                let (stop, done, failed, last_error, last_port) = (
                    r.stop.clone(),
                    r.done.clone(),
                    r.failed.clone(),
                    r.last_error.clone(),
                    r.last_port.clone(),
                );
                std::thread::spawn(move || {
                    let mut conn = None;
                    while !stop.load(Ordering::Relaxed) {
                        if conn.is_none() {
                            conn = postgres::Client::connect(
                                &dsn(port, "app", "app"),
                                postgres::NoTls,
                            )
                            .ok();
                        }
                        let Some(c) = conn.as_mut() else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        };
                        match c.simple_query("SELECT inet_server_port()") {
                            Ok(messages) => {
                                let port = first_value(&messages).parse().unwrap_or(0);
                                last_port.store(port, Ordering::Relaxed);
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                *last_error.lock().unwrap() =
                                    format!("{}: {e:?}", common::sqlstate(&e));
                                conn = None;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Readers { threads, ..r }
    }

    pub fn counts(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops the readers: reads done, reads failed, the last failure's error.
    pub fn finish(mut self) -> (u64, u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        join_within(std::mem::take(&mut self.threads), "a reader");
        let (done, failed) = self.counts();
        (done, failed, self.last_error.lock().unwrap().clone())
    }
}

/// Joins client threads that were told to stop; one still busy after 30 s is waiting for an
/// answer that never comes, and the test fails instead of hanging.
pub fn join_within(threads: Vec<std::thread::JoinHandle<()>>, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in threads {
        while !t.is_finished() {
            assert!(
                Instant::now() < deadline,
                "{who}'s statement never got an answer (the proxy hung)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.join().unwrap();
    }
}

/// Every process of server `i` (the postmaster and its children), by pid.
fn server_pids(c: &LocalCluster, i: usize) -> Vec<u32> {
    let pm = c.postmaster_pid(i).expect("the server runs");
    let mut pids = vec![pm];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid ...": the comm may hold spaces, so read after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pm) {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pids: &[u32], sig: &str) {
    let mut cmd = std::process::Command::new("kill");
    cmd.arg(format!("-{sig}"));
    cmd.args(pids.iter().map(u32::to_string));
    assert!(cmd.status().unwrap().success(), "kill -{sig} {pids:?}");
}

#[test]
fn a_frozen_replica_stays_and_a_crashed_one_leaves_and_comes_back_by_itself() {
    let Some(own) = own_cluster("health") else {
        return;
    };
    let (lc, c) = (own.servers(), own.view());
    let replica_port = u64::from(c.ports[1]);

    // 1. Busy is not dead: frozen for 2 s under the default check settings.
    let patient = start(&c, "");
    let readers = Readers::start(patient.addr().port(), 4);
    assert!(
        eventually(Duration::from_secs(10), || readers.counts().0 > 50),
        "reads flow through the proxy"
    );
    let pids = server_pids(lc, 1);
    signal(&pids, "STOP");
    let frozen = Instant::now();
    let (mut left, mut slow) = (false, false);
    let mut watch = || {
        let now = status(&patient, 1);
        left |= !now.takes_reads();
        slow |= now == Status::Slow;
        std::thread::sleep(Duration::from_millis(20));
    };
    while frozen.elapsed() < Duration::from_secs(2) {
        watch();
    }
    signal(&pids, "CONT");
    // The checks that were waiting on the frozen server complete or time out now.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(3) {
        watch();
    }
    let (done, failed, error) = readers.finish();
    assert!(
        !left,
        "a replica frozen for 2 s was taken out of the rotation"
    );
    assert_eq!(
        failed, 0,
        "reads failed while the replica was frozen: {error}"
    );
    eprintln!("frozen 2 s: {done} reads, {failed} failed, never detached; marked slow: {slow}");
    drop(patient);

    // 2. Dead is dead: crashed, detached, restarted, attached by itself.
    let quick = start(
        &c,
        "interval_ms = 200\ntimeout_ms = 500\nfailures_to_detach = 3\nsuccesses_to_attach = 2\nslow_start_ms = 1000",
    );
    // And one under the default settings, for the timeline the README gives.
    let defaults = start(&c, "");
    let readers = Readers::start(quick.addr().port(), 4);
    assert!(
        eventually(Duration::from_secs(10), || readers
            .last_port
            .load(Ordering::Relaxed)
            == replica_port),
        "reads go to the replica"
    );
    lc.crash(1).unwrap();
    let crashed = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || status(&quick, 1) == Status::Down),
        "the crashed replica was never detached"
    );
    let detach = crashed.elapsed();
    // 3 failures 200 ms apart, each refused at once: well under 2 s.
    assert!(detach < Duration::from_secs(2), "detached after {detach:?}");
    let (before, _) = readers.counts();
    assert!(
        eventually(Duration::from_secs(5), || readers.counts().0 > before + 50),
        "reads go on from the primary"
    );
    assert_ne!(readers.last_port.load(Ordering::Relaxed), replica_port);
    assert!(
        eventually(Duration::from_secs(6), || status(&defaults, 1)
            == Status::Down),
        "the defaults never detached the crashed replica"
    );
    let default_detach = crashed.elapsed();
    // 3 failures 1 s apart, the first within 1 s of the crash.
    assert!(
        default_detach < Duration::from_secs(4),
        "detached after {default_detach:?} under the defaults"
    );

    lc.restart(1).unwrap();
    let restarted = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || status(&quick, 1) == Status::Up),
        "the replica never came back"
    );
    let attach = restarted.elapsed();
    assert!(
        eventually(Duration::from_secs(10), || readers
            .last_port
            .load(Ordering::Relaxed)
            == replica_port),
        "reads never went back to the replica"
    );
    let back = restarted.elapsed();
    assert!(
        eventually(Duration::from_secs(6), || status(&defaults, 1)
            == Status::Up),
        "the defaults never attached the replica again"
    );
    let default_attach = restarted.elapsed();
    assert!(
        default_attach < Duration::from_secs(4),
        "attached after {default_attach:?} under the defaults"
    );
    let (done, failed, error) = readers.finish();
    assert_eq!(failed, 0, "reads failed around the crash: {error}");
    eprintln!(
        "crash: detached after {detach:?}; restart: attached after {attach:?}, reads on it \
         after {back:?}; {done} reads, {failed} failed (last: {error:?}); under the defaults: \
         detached after {default_detach:?}, attached after {default_attach:?}"
    );
}

/// The first column of a simple query's first row.
pub fn one(c: &mut postgres::Client, sql: &str) -> String {
    first_value(&c.simple_query(sql).unwrap())
}

/// The first column of the first row in a simple query's answer ("" if none).
pub fn first_value(messages: &[postgres::SimpleQueryMessage]) -> String {
    messages
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn a_session_reads_its_writes_while_replay_is_paused_and_a_lagging_replica_takes_no_reads() {
    let Some(own) = own_cluster("lsn") else {
        return;
    };
    let c = own.view();
    let (primary_port, replica_port) = (c.ports[0].to_string(), c.ports[1].to_string());
    let proxy = start(&c, "interval_ms = 200");
    let through = |p: &Proxy| {
        postgres::Client::connect(&dsn(p.addr().port(), "app", "app"), postgres::NoTls).unwrap()
    };
    let (mut writer, mut other) = (through(&proxy), through(&proxy));
    let mut replica = common::direct(&c, 1);
    one(&mut writer, "CREATE TABLE ryw (v int)");
    assert!(
        eventually(Duration::from_secs(10), || one(
            &mut replica,
            "SELECT count(*) FROM pg_class WHERE relname = 'ryw'"
        ) == "1"),
        "the table reached the replica"
    );
    // Let the session's own write of the table be seen everywhere first.
    assert!(eventually(Duration::from_secs(10), || one(
        &mut writer,
        "SELECT inet_server_port()"
    ) == replica_port));

    one(&mut replica, "SELECT pg_wal_replay_pause()");
    for i in 0..10 {
        one(&mut writer, &format!("INSERT INTO ryw VALUES ({i})"));
        assert_eq!(
            one(
                &mut writer,
                &format!("SELECT count(*) FROM ryw WHERE v = {i}")
            ),
            "1",
            "the session reads its own write"
        );
        assert_eq!(one(&mut writer, "SELECT inet_server_port()"), primary_port);
        // Another session has not written: it reads from the (stale) replica.
        assert_eq!(one(&mut other, "SELECT inet_server_port()"), replica_port);
        assert_eq!(
            one(
                &mut other,
                &format!("SELECT count(*) FROM ryw WHERE v = {i}")
            ),
            "0",
            "replay is paused"
        );
    }
    one(&mut replica, "SELECT pg_wal_replay_resume()");
    let resumed = Instant::now();
    // Every read on the way back sees all ten rows, wherever it runs.
    assert!(
        eventually(Duration::from_secs(10), || {
            let seen = one(
                &mut writer,
                "SELECT inet_server_port() || ' ' || count(*) FROM ryw",
            );
            let (port, rows) = seen.split_once(' ').unwrap();
            assert_eq!(
                rows, "10",
                "a read on port {port} missed the session's writes"
            );
            port == replica_port
        }),
        "the session's reads never went back to the replica"
    );
    let back = resumed.elapsed();
    drop((writer, other, proxy));

    // A replica further behind than max_lag_bytes takes no reads at all, then comes back.
    let strict = start(&c, "interval_ms = 200\nmax_lag_bytes = 1024");
    let mut reader = through(&strict);
    assert!(eventually(Duration::from_secs(10), || one(
        &mut reader,
        "SELECT inet_server_port()"
    ) == replica_port));
    one(&mut replica, "SELECT pg_wal_replay_pause()");
    let mut direct = common::direct(&c, 0);
    one(
        &mut direct,
        "INSERT INTO ryw SELECT generate_series(100, 1100)",
    );
    let paused = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || status(&strict, 1)
            == Status::Lagging),
        "the replica was never excluded for lag"
    );
    let excluded = paused.elapsed();
    assert_eq!(one(&mut reader, "SELECT inet_server_port()"), primary_port);
    one(&mut replica, "SELECT pg_wal_replay_resume()");
    let resumed_lag = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || status(&strict, 1) == Status::Up),
        "the replica never came back from lag"
    );
    let lag_back = resumed_lag.elapsed();
    assert!(eventually(Duration::from_secs(10), || one(
        &mut reader,
        "SELECT inet_server_port()"
    ) == replica_port));
    eprintln!(
        "read-your-writes: 10 of 10 writes read back while replay was paused; reads back on the \
         replica {back:?} after resume; lag: excluded {excluded:?} after the write, back \
         {lag_back:?} after resume"
    );
}
