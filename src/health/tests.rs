use std::time::{Duration, Instant};

use super::*;

fn rules(failover: bool) -> Rules {
    Rules {
        failures_to_detach: 3,
        successes_to_attach: 3,
        max_lag_bytes: 1000,
        slow_start: Duration::from_secs(10),
        timeout: Duration::from_millis(2000),
        failover,
        replica: true,
    }
}

fn report(in_recovery: bool, lsn: Option<u64>) -> Report {
    Report {
        in_recovery,
        lsn,
        received: None,
        replay_delay_ms: None,
        took: Duration::ZERO,
    }
}

fn ok(lsn: u64) -> Check {
    Check::Answered(report(true, Some(lsn)))
}

/// A good answer that took `ms`.
fn ok_in(ms: u64) -> Check {
    Check::Answered(Report {
        took: Duration::from_millis(ms),
        ..report(true, Some(0))
    })
}

fn failed() -> Check {
    Check::Failed("connection refused".into())
}

#[test]
fn the_check_answer_and_wal_positions_parse() {
    assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
    assert_eq!(parse_lsn("0/0"), Some(0));
    assert_eq!(parse_lsn("0/"), None);
    assert_eq!(parse_lsn("G/1"), None);
    assert_eq!(parse_lsn("1/100000000"), None, "the low half is 32 bits");
    assert_eq!(
        Report::parse(b"p 0/3000148"),
        Some(report(false, Some(0x300_0148)))
    );
    assert_eq!(Report::parse(b"r - - -"), Some(report(true, None)));
    assert_eq!(
        Report::parse(b"r 0/3000060 0/3000148 1250"),
        Some(Report {
            received: Some(0x300_0148),
            replay_delay_ms: Some(1250),
            ..report(true, Some(0x300_0060))
        })
    );
    assert_eq!(
        Report::parse(b"r 0/1 0/1 -5").and_then(|r| r.replay_delay_ms),
        Some(0),
        "a replay stamped ahead of the replica's clock is no delay"
    );
    assert_eq!(
        Report::parse(b"r 0/1"),
        None,
        "a replica answers three fields"
    );
    assert_eq!(Report::parse(b"p 0/1 0/1"), None, "a primary answers one");
    assert_eq!(Report::parse(b"r 0/1 0/1 soon"), None);
    assert_eq!(Report::parse(b"x 0/1"), None);
    assert_eq!(Report::parse(b""), None);
    assert_eq!(Report::parse(&[0xff, b' ']), None);
}

#[test]
fn failures_detach_only_when_consecutive_and_only_a_replica_that_may_fail_over() {
    let now = Instant::now();
    let r = rules(true);
    let mut t = Tracker::default();
    // Two failures, then an answer: busy, not dead.
    assert_eq!(t.observe(&failed(), Some(0), &r, now), None);
    assert_eq!(t.observe(&failed(), Some(0), &r, now), None);
    assert_eq!(t.observe(&ok(0), Some(0), &r, now), None);
    assert_eq!(t.status(), Status::Up);
    assert_eq!(t.failures(), 0, "an answer resets the count");
    assert_eq!(t.observe(&failed(), Some(0), &r, now), None);
    assert_eq!(t.observe(&failed(), Some(0), &r, now), None);
    let change = t.observe(&failed(), Some(0), &r, now).expect("detached");
    assert_eq!((change.from, change.to), (Status::Up, Status::Down));
    assert_eq!(change.event(), "detached");
    assert!(change.cause.contains("3 consecutive"), "{}", change.cause);
    assert!(
        change.cause.contains("connection refused"),
        "{}",
        change.cause
    );
    assert_eq!(t.observe(&failed(), Some(0), &r, now), None, "one event");

    // failover = false: marked unavailable, and back at the first answer.
    let r = rules(false);
    let mut t = Tracker::default();
    for _ in 0..2 {
        assert_eq!(t.observe(&failed(), Some(0), &r, now), None);
    }
    let change = t.observe(&failed(), Some(0), &r, now).expect("unavailable");
    assert_eq!(change.to, Status::Unavailable);
    let change = t.observe(&ok(0), Some(0), &r, now).expect("available");
    assert_eq!((change.from, change.to), (Status::Unavailable, Status::Up));
}

#[test]
fn a_detached_replica_comes_back_after_good_checks_within_the_lag_bound_and_ramps_up() {
    let start = Instant::now();
    let r = rules(true);
    let mut t = Tracker::default();
    for _ in 0..3 {
        t.observe(&failed(), Some(0), &r, start);
    }
    assert_eq!(t.status(), Status::Down);
    // Answering, but 5000 bytes behind: those checks do not count.
    assert_eq!(t.observe(&ok(4500), Some(5000), &r, start), None);
    assert_eq!(t.observe(&ok(3000), Some(5000), &r, start), None);
    assert_eq!(t.observe(&ok(3500), Some(5000), &r, start), None);
    assert_eq!(t.status(), Status::Down, "lagging checks are not good ones");
    assert_eq!(t.lag, Some(1500));
    assert_eq!(t.observe(&ok(4500), Some(5000), &r, start), None);
    assert_eq!(t.observe(&ok(4600), Some(5000), &r, start), None);
    assert_eq!(t.lag, Some(400));
    let change = t
        .observe(&ok(4800), Some(5000), &r, start)
        .expect("attached");
    assert_eq!((change.from, change.to), (Status::Down, Status::Up));
    assert_eq!(change.event(), "attached");

    // Slow start (once caught up, so that lag costs nothing): a trickle at once, half-way at
    // 5 s, all of it from 10 s on.
    assert_eq!(t.observe(&ok(5000), Some(5000), &r, start), None);
    assert_eq!(t.share(2, &r, start), 1);
    assert_eq!(t.share(2, &r, start + Duration::from_secs(5)), 1000);
    assert!(t.ramping(&r, start + Duration::from_secs(5)));
    assert_eq!(t.share(2, &r, start + Duration::from_secs(10)), 2000);
    assert!(!t.ramping(&r, start + Duration::from_secs(10)));
    // A backend that was never detached takes its whole share.
    assert_eq!(Tracker::default().share(2, &r, start), 2000);
    // No weight, no share, ramping or not.
    assert_eq!(t.share(0, &r, start), 0);
}

#[test]
fn a_replica_takes_less_the_further_behind_it_is() {
    let now = Instant::now();
    let r = rules(true); // max_lag_bytes = 1000
    let mut t = Tracker::default();
    t.observe(&ok(1000), Some(1000), &r, now);
    assert_eq!(t.share(1, &r, now), 1000, "caught up: all of it");
    t.observe(&ok(750), Some(1000), &r, now);
    assert_eq!(t.share(1, &r, now), 750, "a quarter of the bound behind");
    t.observe(&ok(500), Some(1000), &r, now);
    assert_eq!(t.share(1, &r, now), 500, "half of the bound behind");
    t.observe(&ok(1), Some(1000), &r, now);
    assert_eq!(t.share(1, &r, now), 1, "just within the bound: a trickle");
    let unbounded = Rules {
        max_lag_bytes: 0,
        ..r
    };
    assert_eq!(
        t.share(1, &unbounded, now),
        1000,
        "no bound: lag costs nothing"
    );
}

#[test]
fn a_primary_answering_from_recovery_is_unavailable_until_it_is_a_primary_again() {
    let now = Instant::now();
    let r = Rules {
        failover: false,
        replica: false,
        ..rules(false)
    };
    let standby = Check::Answered(report(true, Some(0)));
    let mut t = Tracker::default();
    assert_eq!(t.observe(&standby, None, &r, now), None);
    assert_eq!(t.observe(&standby, None, &r, now), None);
    let change = t.observe(&standby, None, &r, now).expect("unavailable");
    assert_eq!(change.to, Status::Unavailable);
    assert!(change.cause.contains("in recovery"), "{}", change.cause);
    let primary = Check::Answered(report(false, Some(0)));
    let change = t.observe(&primary, None, &r, now).expect("available");
    assert_eq!(change.to, Status::Up);
}

#[test]
fn lag_excludes_a_replica_and_lets_it_back_once_it_catches_up() {
    let now = Instant::now();
    let r = rules(true);
    let mut t = Tracker::default();
    let change = t.observe(&ok(0), Some(2000), &r, now).expect("excluded");
    assert_eq!(
        (change.to, change.event()),
        (Status::Lagging, "lag_excluded")
    );
    assert!(
        change.cause.contains("2000 bytes behind"),
        "{}",
        change.cause
    );
    assert_eq!(
        t.observe(&ok(500), Some(2000), &r, now),
        None,
        "still behind"
    );
    let change = t.observe(&ok(1500), Some(2000), &r, now).expect("back");
    assert_eq!((change.to, change.event()), (Status::Up, "lag_back"));
    // A lagging replica that stops answering is detached like any other.
    t.observe(&ok(0), Some(5000), &r, now);
    for _ in 0..3 {
        t.observe(&failed(), Some(5000), &r, now);
    }
    assert_eq!(t.status(), Status::Down);
    // No bound, or no primary position known yet: never excluded for lag.
    let mut unbounded = Tracker::default();
    let r0 = Rules {
        max_lag_bytes: 0,
        ..rules(true)
    };
    assert_eq!(unbounded.observe(&ok(0), Some(1 << 40), &r0, now), None);
    let mut unknown = Tracker::default();
    assert_eq!(unknown.observe(&ok(0), None, &r, now), None);
    assert_eq!(unknown.lag, None);
}

#[test]
fn slow_answers_lower_a_replicas_share_and_never_detach_it() {
    let now = Instant::now();
    let r = rules(true);
    let mut t = Tracker::default();
    assert_eq!(t.observe(&ok_in(20), Some(0), &r, now), None);
    assert_eq!(t.share(1, &r, now), 1000, "fast: all of its share");
    // Answers near the 2 s timeout, many of them: slow, in the rotation, a smaller share.
    let change = t.observe(&ok_in(1900), Some(0), &r, now).expect("slow");
    assert_eq!((change.to, change.event()), (Status::Slow, "slow"));
    assert!(
        change.cause.contains("960 ms"),
        "smoothed: {}",
        change.cause
    );
    for _ in 0..10 {
        assert_eq!(t.observe(&ok_in(1900), Some(0), &r, now), None);
    }
    assert!(t.status().takes_reads());
    let slow_share = t.share(1, &r, now);
    assert!(
        (100..=200).contains(&slow_share),
        "answers at 95% of the timeout leave a little: {slow_share}"
    );
    // Between an eighth and a quarter of the timeout: still slow (no flapping), full share.
    for _ in 0..10 {
        t.observe(&ok_in(400), Some(0), &r, now);
    }
    assert_eq!(t.status(), Status::Slow);
    assert_eq!(t.share(1, &r, now), 1000);
    let change = (0..10)
        .find_map(|_| t.observe(&ok_in(10), Some(0), &r, now))
        .expect("fast again");
    assert_eq!((change.from, change.to), (Status::Slow, Status::Up));
    assert_eq!(change.event(), "slow_back");
    // Lag wins over slowness, and failures still detach a slow replica.
    let mut t = Tracker::default();
    t.observe(&ok_in(1900), Some(0), &r, now);
    assert_eq!(t.status(), Status::Slow);
    let change = t
        .observe(&ok_in(1900), Some(5000), &r, now)
        .expect("lagging");
    assert_eq!(change.to, Status::Lagging);
    let mut t = Tracker::default();
    t.observe(&ok_in(1900), Some(0), &r, now);
    for _ in 0..3 {
        t.observe(&failed(), Some(0), &r, now);
    }
    assert_eq!(t.status(), Status::Down);
}
