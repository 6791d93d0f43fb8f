//! The primary going away, on clusters of the tests' own: writes wait out a restart and no
//! acknowledged write is lost; a "primary" that is in recovery is fenced and work for it waits,
//! then gets 57P03; an RDS-style switch (the primary stops, a standby is promoted and the
//! primary's name moves to it) loses no acknowledged write either.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgpilot::cluster::{LocalCluster, TWIN_HOST};
use pgpilot::control::Status;

use crate::common::{self, dsn, eventually, Cluster};
use crate::health::{
    first_value, one, own_cluster, own_cluster_with, start, start_with, status, Readers,
};

/// Clients inserting `(writer, n)` rows through the proxy until stopped, each keeping what was
/// acknowledged and every error it got (a closed connection is opened again).
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(i32, i32)>>>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Writers {
    fn start(port: u16, n: i32) -> Writers {
        let connect = move || postgres::Client::connect(&dsn(port, "app", "app"), postgres::NoTls);
        one(&mut connect().unwrap(), "CREATE TABLE acked (w int, n int)");
        let (stop, acked, errors) = (Arc::default(), Arc::default(), Arc::default());
        let threads = (0..n)
            .map(|w| {
                let (stop, acked, errors): (
                    Arc<AtomicBool>,
                    Arc<Mutex<Vec<_>>>,
                    Arc<Mutex<Vec<_>>>,
                ) = (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&errors));
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
                                // A FATAL ends the connection, as PostgreSQL's own does; the
                                // client library may not have seen the close yet.
                                let fatal =
                                    e.as_db_error().is_some_and(|d| d.severity() == "FATAL");
                                if fatal || conn.is_closed() {
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
        Writers {
            stop,
            acked,
            errors,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the writers: what was acknowledged, and the errors they got.
    fn finish(mut self) -> (Vec<(i32, i32)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        crate::health::join_within(std::mem::take(&mut self.threads), "a writer");
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        let errors = std::mem::take(&mut *self.errors.lock().unwrap());
        (acked, errors)
    }
}

/// The acknowledged writes missing from `server`'s table; each missing one is printed with
/// every writer's last acknowledged write.
fn lost_writes(server: &mut postgres::Client, acked: &[(i32, i32)]) -> usize {
    let present: HashSet<(i32, i32)> = server
        .query("SELECT w, n FROM acked", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<&(i32, i32)> = acked.iter().filter(|a| !present.contains(a)).collect();
    if !missing.is_empty() {
        let writers: HashSet<i32> = acked.iter().map(|a| a.0).collect();
        let last: Vec<(i32, i32)> = writers
            .into_iter()
            .map(|w| {
                let n = acked.iter().filter(|a| a.0 == w).map(|a| a.1).max();
                (w, n.unwrap_or(-1))
            })
            .collect();
        eprintln!("missing {missing:?}; each writer's last acknowledged: {last:?}");
    }
    missing.len()
}

#[test]
fn writes_wait_out_a_primary_restart_and_no_acknowledged_write_is_lost() {
    let Some(own) = own_cluster("restart") else {
        return;
    };
    let (lc, c) = (own.servers(), own.view());
    let proxy = start(&c, "interval_ms = 200\nwrite_hold_ms = 20000");
    let writers = Writers::start(proxy.addr().port(), 3);
    assert!(eventually(Duration::from_secs(10), || writers.count() > 100));
    // A second proxy that holds writes for 300 ms only, and a session on it.
    let impatient = start(&c, "interval_ms = 200\nwrite_hold_ms = 300");
    let mut short =
        postgres::Client::connect(&dsn(impatient.addr().port(), "app", "app"), postgres::NoTls)
            .unwrap();
    one(&mut short, "INSERT INTO acked VALUES (9, 0)");

    lc.stop_server(0).unwrap();
    let stopped = Instant::now();
    let at_stop = writers.count();
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
    // A client never seen before (its own parameters: no login to copy) logs in and reads
    // meanwhile, on the replica.
    let asked = Instant::now();
    let fresh = format!(
        "{} application_name=newcomer",
        dsn(proxy.addr().port(), "app", "app")
    );
    let mut newcomer = postgres::Client::connect(&fresh, postgres::NoTls)
        .expect("a new client logs in while the primary is down");
    let answered = first_value(&newcomer.simple_query("SELECT inet_server_port()").unwrap());
    let newcomer_took = asked.elapsed();
    assert_eq!(answered, c.ports[1].to_string(), "the replica served it");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed()));
    let while_down = writers.count() - at_stop;
    lc.restart(0).unwrap();
    let restarted = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || writers.count()
            > at_stop + while_down + 100),
        "writes were not served again after the restart"
    );
    let served = restarted.elapsed();
    let (acked, errors) = writers.finish();
    let held = stopped.elapsed();
    let lost = lost_writes(&mut common::direct(&c, 0), &acked);
    eprintln!(
        "primary restart: {} writes acknowledged, {lost} of them lost; {while_down} acknowledged \
         while it was down; served again {served:?} after the restart ({held:?} after the \
         stop); client errors: {errors:?}; with write_hold_ms = 300: 57P03 after \
         {gave_up:?}; a new client logged in and read in {newcomer_took:?}",
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
fn a_primary_that_is_in_recovery_is_fenced_and_writes_wait_then_get_57p03_while_reads_flow() {
    let Some(shared) = common::cluster() else {
        return;
    };
    // The name "primary" points at a standby, as a stale DNS answer after a failover would.
    let c = Cluster {
        ports: vec![shared.ports[1], shared.ports[2]],
    };
    let proxy = start(&c, "interval_ms = 200\nwrite_hold_ms = 300");
    // Transaction mode logs in on the replica (reads flow); a write waits, then gets 57P03.
    let mut client =
        postgres::Client::connect(&dsn(proxy.addr().port(), "app", "app"), postgres::NoTls)
            .expect("a login while the primary is away goes to a replica");
    let read = first_value(&client.simple_query("SELECT inet_server_port()").unwrap());
    assert_eq!(read, c.ports[1].to_string());
    let asked = Instant::now();
    let refused = client
        .simple_query("CREATE TEMP TABLE never ()")
        .expect_err("no primary");
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
    // Session mode: a session's backend must be able to write; its login waits, then 57P03.
    let session = start_with(&c, "interval_ms = 200\nwrite_hold_ms = 300", |text| {
        text.replacen("pool_mode = \"transaction\"", "pool_mode = \"session\"", 1)
    });
    let asked = Instant::now();
    let Err(login) =
        postgres::Client::connect(&dsn(session.addr().port(), "app", "app"), postgres::NoTls)
    else {
        panic!("a session-mode login with no primary");
    };
    let login_waited = asked.elapsed();
    assert_eq!(common::sqlstate(&login), "57P03", "{login:?}");
    assert!(
        login_waited >= Duration::from_millis(300),
        "{login_waited:?}"
    );
    eprintln!(
        "fenced: a write got 57P03 after {waited:?} ({refused}); a session-mode login after \
         {login_waited:?}"
    );
}

/// A name in /etc/hosts for as long as the guard lives; on drop (a failed test's too) the file
/// is as it was. Lines a killed run left behind carry a mark and are removed first.
struct HostsName {
    name: &'static str,
    original: String,
}

const HOSTS: &str = "/etc/hosts";
const MARK: &str = "# pgpilot test";

impl HostsName {
    fn new(name: &'static str, ip: &str) -> HostsName {
        let text = std::fs::read_to_string(HOSTS).expect("/etc/hosts is readable");
        let original: String = text
            .lines()
            .filter(|l| !l.ends_with(MARK))
            .map(|l| format!("{l}\n"))
            .collect();
        let guard = HostsName { name, original };
        guard.point(ip);
        guard
    }

    /// Moves the name to `ip`, as a DNS change would. The file is written in place: it may be
    /// a mount point, which a rename cannot replace.
    fn point(&self, ip: &str) {
        let text = format!("{}{ip} {} {MARK}\n", self.original, self.name);
        std::fs::write(HOSTS, text).expect("/etc/hosts is writable (the tests run as root)");
        let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(self.name, 1))
            .ok()
            .and_then(|mut a| a.next())
            .map(|a| a.ip().to_string());
        assert_eq!(
            resolved.as_deref(),
            Some(ip),
            "the resolver follows /etc/hosts"
        );
    }
}

impl Drop for HostsName {
    fn drop(&mut self) {
        let _ = std::fs::write(HOSTS, &self.original);
    }
}

#[test]
fn an_rds_style_switch_loses_no_acknowledged_write_and_writes_follow_the_name() {
    const NAME: &str = "pgpilot-primary.test";
    let Some(own) = own_cluster_with("switch", |dir| LocalCluster::create_twinned(dir, 1)) else {
        return;
    };
    let (lc, c) = (own.servers(), own.view());
    let port = c.ports[0];
    let hosts = HostsName::new(NAME, "127.0.0.1");
    // The primary by name; the twin replica, which will be promoted, at 127.0.0.2.
    let proxy = start_with(&c, "interval_ms = 200\nwrite_hold_ms = 20000", |text| {
        text.replacen(
            "name = \"b0\"\nhost = \"127.0.0.1\"",
            &format!("name = \"b0\"\nhost = \"{NAME}\""),
            1,
        )
        .replacen(
            "name = \"b1\"\nhost = \"127.0.0.1\"",
            &format!("name = \"b1\"\nhost = \"{TWIN_HOST}\""),
            1,
        )
    });
    let writers = Writers::start(proxy.addr().port(), 3);
    let readers = Readers::start(proxy.addr().port(), 2);
    assert!(eventually(Duration::from_secs(10), || writers.count()
        > 100
        && readers.counts().0 > 100));

    // The platform's failover: the old primary goes, the name moves to the standby (still
    // in recovery for a moment: work for the primary must not run there), which is promoted.
    lc.stop_server(0).unwrap();
    let stopped = Instant::now();
    let at_stop = writers.count();
    hosts.point(TWIN_HOST);
    let moved = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || status(&proxy, 0)
            == Status::Unavailable),
        "the checks never marked the primary unavailable"
    );
    std::thread::sleep(Duration::from_secs(1));
    let before_promotion = writers.count();
    lc.promote(1).unwrap();
    let promoted = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || writers.count()
            > before_promotion + 100),
        "writes were not served again after the switch"
    );
    let served = promoted.elapsed();
    let (acked, errors) = writers.finish();
    let (reads, failed_reads, read_error) = readers.finish();
    let held = stopped.elapsed();
    let dsn = format!("host={TWIN_HOST} port={port} user=postgres dbname=app");
    let mut new_primary = postgres::Client::connect(&dsn, postgres::NoTls).unwrap();
    let lost = lost_writes(&mut new_primary, &acked);
    let state = proxy.cluster_state();
    eprintln!(
        "switch: {} writes acknowledged, {lost} lost, {} acknowledged between the stop and the \
         promotion; served again {served:?} after the promotion ({:?} after the name moved, \
         {held:?} after the stop); {reads} reads, {failed_reads} failed {read_error}; client \
         errors: {errors:?}; primary now {:?} {:?}",
        acked.len(),
        before_promotion - at_stop,
        moved.elapsed(),
        state.backends[0].addr,
        state.backends[0].status,
    );
    assert_eq!(lost, 0, "acknowledged writes are missing");
    assert_eq!(
        before_promotion, at_stop,
        "a write was acknowledged while no primary ran (by a node in recovery?)"
    );
    assert!(
        errors.len() <= 3,
        "only the statements in flight at the stop may fail (one per writer): {errors:?}"
    );
    assert_eq!(
        failed_reads, 0,
        "reads failed during the switch: {read_error}"
    );
    assert_eq!(
        state.backends[0]
            .addr
            .map(|a| a.ip().to_string())
            .as_deref(),
        Some(TWIN_HOST),
        "the primary's address follows the name"
    );
}
