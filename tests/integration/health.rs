//! Health checks against servers that really fail, on a cluster of this test's own (it stops
//! and freezes servers, which the shared cluster's other tests must not see): a replica frozen
//! for 2 s is not detached and no read fails; a crashed replica is detached within the bound
//! and attached again by itself once it runs again, and no read fails either: those in flight
//! on it are sent elsewhere.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgpilot::cluster::LocalCluster;
use pgpilot::control::Status;
use pgpilot::{Config, Proxy};

use crate::common::{self, config_text, dsn, eventually, Cluster, Opts};

/// A cluster of one primary and one replica, removed when the test ends.
struct Own {
    cluster: Option<LocalCluster>,
    dir: std::path::PathBuf,
}

impl Drop for Own {
    fn drop(&mut self) {
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn own_cluster(name: &str) -> Own {
    let dir = std::env::temp_dir().join(format!("pgpilot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster =
        LocalCluster::create(&dir, 1).expect("a primary and a replica of this test's own");
    Own {
        cluster: Some(cluster),
        dir,
    }
}

fn start(c: &Cluster, health: &str) -> Proxy {
    let _ = env_logger::builder().is_test(true).try_init();
    let extra: &'static str = Box::leak(format!("\n[health]\n{health}\n").into_boxed_str());
    let o = Opts {
        replica_weights: [1, 0],
        extra,
        ..Opts::default()
    };
    let config = Config::parse(&config_text(c, &o), std::path::Path::new("health.toml"))
        .expect("test config is valid");
    Proxy::start(config).expect("proxy starts")
}

fn status(p: &Proxy, id: usize) -> Status {
    p.cluster_state().backends[id].status
}

/// Clients reading through the proxy until stopped: reads done, reads failed (with the last
/// error), and the port of the server that answered the latest read.
struct Readers {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    last_error: Arc<Mutex<String>>,
    last_port: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Readers {
    fn start(port: u16, n: usize) -> Readers {
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
                                let port = messages.iter().find_map(|m| match m {
                                    postgres::SimpleQueryMessage::Row(r) => {
                                        r.get(0).and_then(|p| p.parse::<u64>().ok())
                                    }
                                    _ => None,
                                });
                                last_port.store(port.unwrap_or(0), Ordering::Relaxed);
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

    fn counts(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Stops the readers: reads done, reads failed, the last failure's error.
    fn finish(mut self) -> (u64, u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let (done, failed) = self.counts();
        (done, failed, self.last_error.lock().unwrap().clone())
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
    // A second cluster, two proxies and their clients: not beside the tests that measure this
    // process's memory.
    let _heavy = crate::hostile::heavy();
    if common::cluster().is_none() {
        return;
    }
    let own = own_cluster("health");
    let lc = own.cluster.as_ref().unwrap();
    let c = Cluster {
        ports: lc.ports.clone(),
    };
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
    let mut left = false;
    while frozen.elapsed() < Duration::from_secs(2) {
        left |= status(&patient, 1) != Status::Up;
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&pids, "CONT");
    // The checks that were waiting on the frozen server complete or time out now.
    let after = Instant::now();
    while after.elapsed() < Duration::from_secs(3) {
        left |= status(&patient, 1) != Status::Up;
        std::thread::sleep(Duration::from_millis(20));
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
    eprintln!("frozen 2 s: {done} reads, {failed} failed, never detached");
    drop(patient);

    // 2. Dead is dead: crashed, detached, restarted, attached by itself.
    let quick = start(
        &c,
        "interval_ms = 200\ntimeout_ms = 500\nfailures_to_detach = 3\nsuccesses_to_attach = 2\nslow_start_ms = 1000",
    );
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
    let (done, failed, error) = readers.finish();
    assert_eq!(failed, 0, "reads failed around the crash: {error}");
    eprintln!(
        "crash: detached after {detach:?}; restart: attached after {attach:?}, reads on it \
         after {back:?}; {done} reads, {failed} failed (last: {error:?})"
    );
}

/// The first column of a simple query's first row.
fn one(c: &mut postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .unwrap()
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn a_session_reads_its_writes_while_replay_is_paused_and_a_lagging_replica_takes_no_reads() {
    let _heavy = crate::hostile::heavy();
    if common::cluster().is_none() {
        return;
    }
    let own = own_cluster("lsn");
    let lc = own.cluster.as_ref().unwrap();
    let c = Cluster {
        ports: lc.ports.clone(),
    };
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

#[test]
fn writes_wait_out_a_primary_restart_and_no_acknowledged_write_is_lost() {
    let _heavy = crate::hostile::heavy();
    if common::cluster().is_none() {
        return;
    }
    let own = own_cluster("restart");
    let lc = own.cluster.as_ref().unwrap();
    let c = Cluster {
        ports: lc.ports.clone(),
    };
    let proxy = start(&c, "interval_ms = 200\nwrite_hold_ms = 20000");
    let port = proxy.addr().port();
    let connect = move || postgres::Client::connect(&dsn(port, "app", "app"), postgres::NoTls);
    one(&mut connect().unwrap(), "CREATE TABLE acked (w int, n int)");

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<(i32, i32)>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut conn = connect().unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    match conn.simple_query(&format!("INSERT INTO acked VALUES ({w}, {n})")) {
                        Ok(_) => acked.lock().unwrap().push((w, n)),
                        Err(e) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("({w},{n}) {}: {e}", common::sqlstate(&e)));
                            if conn.is_closed() {
                                conn = connect().unwrap();
                            }
                        }
                    }
                    n += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    let count = || acked.lock().unwrap().len();
    assert!(eventually(Duration::from_secs(10), || count() > 100));
    // A second proxy that holds writes for 300 ms only, and a session on it.
    let impatient = start(&c, "interval_ms = 200\nwrite_hold_ms = 300");
    let mut short =
        postgres::Client::connect(&dsn(impatient.addr().port(), "app", "app"), postgres::NoTls)
            .unwrap();
    one(&mut short, "INSERT INTO acked VALUES (9, 0)");

    lc.stop_server(0).unwrap();
    let stopped = Instant::now();
    let at_stop = count();
    let asked = Instant::now();
    let refused = short
        .simple_query("INSERT INTO acked VALUES (9, 1)")
        .expect_err("no primary for 300 ms");
    let gave_up = asked.elapsed();
    assert_eq!(common::sqlstate(&refused), "57P03", "{refused:?}");
    assert!(
        gave_up >= Duration::from_millis(300) && gave_up < Duration::from_secs(2),
        "gave up after {gave_up:?}"
    );
    std::thread::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed()));
    let while_down = count() - at_stop;
    lc.restart(0).unwrap();
    let restarted = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || count()
            > at_stop + while_down + 100),
        "writes were not served again after the restart"
    );
    let served = restarted.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let held = stopped.elapsed();

    let mut primary = common::direct(&c, 0);
    let present: std::collections::HashSet<(i32, i32)> = primary
        .query("SELECT w, n FROM acked", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let acked = acked.lock().unwrap();
    let missing: Vec<&(i32, i32)> = acked.iter().filter(|a| !present.contains(a)).collect();
    let lost = missing.len();
    if lost > 0 {
        let last: Vec<(i32, i32)> = (0..3)
            .map(|w| {
                (
                    w,
                    acked
                        .iter()
                        .filter(|a| a.0 == w)
                        .map(|a| a.1)
                        .max()
                        .unwrap_or(-1),
                )
            })
            .collect();
        eprintln!("missing {missing:?}; each writer's last acknowledged: {last:?}");
    }
    let errors = errors.lock().unwrap();
    eprintln!(
        "primary restart: {} writes acknowledged, {lost} of them lost; {while_down} acknowledged \
         while it was down; served again {served:?} after the restart ({held:?} after the \
         stop); client errors: {errors:?}; with write_hold_ms = 300: 57P03 after {gave_up:?}",
        acked.len()
    );
    assert_eq!(lost, 0, "acknowledged writes are missing");
    assert_eq!(
        while_down, 0,
        "a write was acknowledged while the primary was down"
    );
    assert!(
        errors.len() <= 3,
        "only the statements in flight at the stop may fail (one per writer): {errors:?}"
    );
}

#[test]
fn a_primary_that_is_in_recovery_is_fenced_and_work_for_it_waits_then_gets_57p03() {
    let Some(shared) = common::cluster() else {
        return;
    };
    // The name "primary" points at a standby, as a stale DNS answer after a failover would.
    let c = Cluster {
        ports: vec![shared.ports[1], shared.ports[2]],
    };
    let proxy = start(&c, "interval_ms = 200\nwrite_hold_ms = 300");
    // Logging in needs the primary (it vouches for the database and the parameters).
    let asked = Instant::now();
    let Err(refused) =
        postgres::Client::connect(&dsn(proxy.addr().port(), "app", "app"), postgres::NoTls)
    else {
        panic!("logged in with no primary");
    };
    let waited = asked.elapsed();
    assert_eq!(common::sqlstate(&refused), "57P03", "{refused:?}");
    let text = format!("{refused:?}");
    assert!(text.contains("recovery"), "the error says why: {text}");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(
        eventually(Duration::from_secs(5), || status(&proxy, 0)
            == Status::Unavailable),
        "the checks never marked it unavailable"
    );
    eprintln!("fenced: a login got 57P03 after {waited:?}: {}", refused);
}
