//! The primary going away, on clusters of the tests' own: writes wait out a restart and no
//! acknowledged write is lost; a "primary" that is in recovery is fenced and work for it waits,
//! then gets 57P03.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgpilot::control::Status;

use crate::common::{self, dsn, eventually, Cluster};
use crate::health::{one, own_cluster, start, status};

#[test]
fn writes_wait_out_a_primary_restart_and_no_acknowledged_write_is_lost() {
    let Some(own) = own_cluster("restart") else {
        return;
    };
    let (lc, c) = (own.servers(), own.view());
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
