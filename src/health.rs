//! What the health checks decide, as a pure state machine per backend: busy is not dead (only
//! consecutive failures detach, and only a replica with `failover = true`), a detached replica
//! comes back by itself after consecutive good checks, and a returning replica's share of
//! reads ramps up. The checks themselves run in [`checker`].

pub mod checker;

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::HealthConfig;
use crate::control::Status;

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The backend answered.
    Answered(Report),
    /// No connection, no login, an error, or no answer within `timeout_ms`.
    Failed(String),
}

/// A backend's answer to the check query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// The primary's WAL insert position (past every commit acknowledged so far, even with
    /// `synchronous_commit = off`, where the write position may still be behind it), or a
    /// replica's replayed position (`None`: not known yet).
    pub lsn: Option<u64>,
    /// A replica's received position (`None` on the primary, or not known yet).
    pub received: Option<u64>,
    /// How long a replica's replay has been behind what it received, in milliseconds: 0 when it
    /// has replayed everything it received (`None` on the primary, or not known yet).
    pub replay_delay_ms: Option<u64>,
    /// How long the check took to answer (set by the checker, not by the query).
    pub took: Duration,
}

/// The text of the check query: one round trip, one text column: `p <insert position>` on a
/// primary, `r <replayed> <received> <replay delay in ms>` on a replica (`-` for what it does
/// not know yet).
pub const CHECK_SQL: &str = "SELECT CASE WHEN pg_is_in_recovery() \
     THEN 'r ' || coalesce(pg_last_wal_replay_lsn()::text, '-') \
     || ' ' || coalesce(pg_last_wal_receive_lsn()::text, '-') \
     || ' ' || coalesce(CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
     ELSE floor(extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint \
     END::text, '-') \
     ELSE 'p ' || pg_current_wal_insert_lsn()::text END";

impl Report {
    /// Reads the check query's answer (`"p 0/3000148"` or `"r 0/3000060 0/3000148 12"`).
    pub fn parse(text: &[u8]) -> Option<Report> {
        let text = std::str::from_utf8(text).ok()?;
        let mut words = text.split(' ');
        let in_recovery = match words.next()? {
            "p" => false,
            "r" => true,
            _ => return None,
        };
        let lsn = field(words.next()?, parse_lsn)?;
        let (received, replay_delay_ms) = if in_recovery {
            let received = field(words.next()?, parse_lsn)?;
            // A replay timestamp ahead of the replica's clock reads as no delay.
            let delay = field(words.next()?, |d| {
                d.parse::<i64>().ok().map(|d| d.max(0) as u64)
            })?;
            (received, delay)
        } else {
            (None, None)
        };
        if words.next().is_some() {
            return None;
        }
        Some(Report {
            in_recovery,
            lsn,
            received,
            replay_delay_ms,
            took: Duration::ZERO,
        })
    }
}

/// One word of the check's answer: `-` is not known (`Some(None)`), anything else must parse.
fn field<T>(word: &str, parse: impl Fn(&str) -> Option<T>) -> Option<Option<T>> {
    if word == "-" {
        Some(None)
    } else {
        parse(word).map(Some)
    }
}

/// A WAL position as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// What the rules need to know of one backend besides its checks.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub failures_to_detach: u32,
    pub successes_to_attach: u32,
    /// 0 = no bound.
    pub max_lag_bytes: u64,
    pub slow_start: Duration,
    /// `timeout_ms`: answers slower than a quarter of it make a backend slow.
    pub timeout: Duration,
    /// Whether the proxy may detach it (`failover`).
    pub failover: bool,
    /// A replica (lag applies to replicas only).
    pub replica: bool,
}

impl Rules {
    /// The rules for one backend under `[health]`.
    pub fn new(health: &HealthConfig, failover: bool, replica: bool) -> Rules {
        Rules {
            failures_to_detach: health.failures_to_detach,
            successes_to_attach: health.successes_to_attach,
            max_lag_bytes: health.max_lag_bytes,
            slow_start: health.slow_start,
            timeout: health.timeout,
            failover,
            replica,
        }
    }
}

/// A change of a backend's status, with its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub from: Status,
    pub to: Status,
    pub cause: String,
}

impl Change {
    /// The event's name, as logs and hooks show it.
    pub fn event(&self) -> &'static str {
        match (self.from, self.to) {
            (_, Status::Down) => "detached",
            (Status::Down, Status::Up) => "attached",
            (_, Status::Unavailable) => "unavailable",
            (Status::Unavailable, Status::Up) => "available",
            (_, Status::Lagging) => "lag_excluded",
            (Status::Lagging, Status::Up) => "lag_back",
            (_, Status::Slow) => "slow",
            (Status::Slow, Status::Up) => "slow_back",
            _ => "changed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Up => "up",
            Status::Down => "down",
            Status::Unavailable => "unavailable",
            Status::Lagging => "lagging",
            Status::Slow => "slow",
        })
    }
}

/// One backend's health as the control plane tracks it.
#[derive(Debug, Clone)]
pub struct Tracker {
    status: Status,
    failures: u32,
    successes: u32,
    /// When it was last attached again (the start of its slow start).
    since: Option<Instant>,
    /// How far behind the primary it was at the last check, in bytes (replicas).
    pub lag: Option<u64>,
    /// Its answer time, smoothed over the latest checks (each weighs half).
    pub answer: Option<Duration>,
    /// The latest answer.
    pub last: Option<Report>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            status: Status::Up,
            failures: 0,
            successes: 0,
            since: None,
            lag: None,
            answer: None,
            last: None,
        }
    }
}

impl Tracker {
    /// In or out of the rotation, and why.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Consecutive failed checks.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Takes one check into account; `primary_lsn` is the primary's position at its latest
    /// check. Returns the change of status, if any.
    pub fn observe(
        &mut self,
        check: &Check,
        primary_lsn: Option<u64>,
        rules: &Rules,
        now: Instant,
    ) -> Option<Change> {
        let from = self.status;
        let fenced;
        let check = match check {
            // A primary that answers from recovery is no primary: as good as a failure.
            Check::Answered(r) if !rules.replica && r.in_recovery => {
                fenced = Check::Failed("the server is in recovery, not a primary".into());
                &fenced
            }
            other => other,
        };
        let (to, cause) = match check {
            Check::Failed(why) => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                let n = self.failures;
                let cause = || format!("{n} consecutive failure(s): {why}");
                match from {
                    Status::Down | Status::Unavailable => (from, String::new()),
                    _ if n < rules.failures_to_detach => (from, String::new()),
                    _ if rules.failover => (Status::Down, cause()),
                    _ => (Status::Unavailable, cause()),
                }
            }
            Check::Answered(report) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                self.lag = match (rules.replica, primary_lsn, report.lsn) {
                    (true, Some(p), Some(r)) => Some(p.saturating_sub(r)),
                    _ => None,
                };
                let answer = match self.answer {
                    Some(before) => (before + report.took) / 2,
                    None => report.took,
                };
                self.answer = Some(answer);
                self.last = Some(report.clone());
                // Hysteresis: slow past a quarter of the timeout, fast again below an eighth.
                let slow = answer > rules.timeout / 4;
                let fast = answer < rules.timeout / 8;
                let slow_text = || {
                    format!(
                        "answers take {} ms (smoothed; timeout_ms = {})",
                        answer.as_millis(),
                        rules.timeout.as_millis()
                    )
                };
                let over = |lag: u64| rules.max_lag_bytes > 0 && lag > rules.max_lag_bytes;
                let lagging = self.lag.is_some_and(over);
                let lag_text = || {
                    format!(
                        "{} bytes behind the primary (max_lag_bytes = {})",
                        self.lag.unwrap_or(0),
                        rules.max_lag_bytes
                    )
                };
                if from == Status::Down && lagging {
                    // Only checks with the lag within bounds count towards coming back.
                    self.successes = 0;
                }
                match from {
                    Status::Down if self.successes < rules.successes_to_attach || lagging => {
                        (from, String::new())
                    }
                    Status::Down => (
                        Status::Up,
                        format!("{} consecutive good check(s)", self.successes),
                    ),
                    Status::Unavailable => (Status::Up, "answering again".into()),
                    Status::Up | Status::Slow if lagging => (Status::Lagging, lag_text()),
                    Status::Lagging if !lagging => (Status::Up, lag_text()),
                    Status::Up if slow => (Status::Slow, slow_text()),
                    Status::Slow if fast => (Status::Up, slow_text()),
                    _ => (from, String::new()),
                }
            }
        };
        if to == from {
            return None;
        }
        self.status = to;
        if from == Status::Down && to == Status::Up {
            self.since = Some(now);
        }
        Some(Change { from, to, cause })
    }

    /// The share of reads it takes now, out of `weight * 1000`: all of it, except while a
    /// returning replica ramps up over `slow_start`.
    /// A replica behind the primary takes less in proportion: half its share at half of
    /// `max_lag_bytes`, none past it (it is `lagging` then); a slow one takes less too.
    pub fn share(&self, weight: u32, rules: &Rules, now: Instant) -> u32 {
        let full = f64::from(weight.saturating_mul(1000));
        let ramp = match self.since {
            Some(since) if !rules.slow_start.is_zero() => {
                (now.saturating_duration_since(since).as_secs_f64()
                    / rules.slow_start.as_secs_f64())
                .min(1.0)
            }
            _ => 1.0,
        };
        let behind = match self.lag {
            Some(lag) if rules.max_lag_bytes > 0 => {
                (lag as f64 / rules.max_lag_bytes as f64).min(1.0)
            }
            _ => 0.0,
        };
        // A slow replica takes less as its answers near the timeout: all of its share up to a
        // quarter of it, a tenth at the timeout (past it, a check is a failure).
        let speed = match self.answer {
            Some(answer) if !rules.timeout.is_zero() => {
                let over = answer.saturating_sub(rules.timeout / 4).as_secs_f64()
                    / (rules.timeout.as_secs_f64() * 0.75);
                (1.0 - over).max(0.1)
            }
            _ => 1.0,
        };
        let share = full * ramp * (1.0 - behind) * speed;
        if share >= full {
            return full as u32;
        }
        // Never quite 0 while it is in the rotation: a replica coming back, or one a little
        // behind, still takes a trickle.
        (share as u32).max(u32::from(weight > 0))
    }

    /// Its share ramps up again from now, as after an attach (an operator's ATTACH).
    pub fn ramp_from(&mut self, now: Instant) {
        self.since = Some(now);
    }

    /// Whether its share is still ramping up.
    pub fn ramping(&self, rules: &Rules, now: Instant) -> bool {
        self.since
            .is_some_and(|s| now.saturating_duration_since(s) < rules.slow_start)
    }
}

#[cfg(test)]
mod tests;
