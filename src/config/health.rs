//! `[health]`: how often the control plane checks every backend, and when a replica leaves
//! the rotation and comes back.

use std::time::Duration;

use serde::Deserialize;

use super::raw::Problem;
use super::ConfigError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHealth {
    interval_ms: u64,
    timeout_ms: u64,
    failures_to_detach: u32,
    successes_to_attach: u32,
    max_lag_bytes: u64,
    slow_start_ms: u64,
    write_hold_ms: u64,
    user: Option<String>,
    database: String,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            interval_ms: 1000,
            timeout_ms: 2000,
            failures_to_detach: 3,
            successes_to_attach: 3,
            max_lag_bytes: 16 * 1024 * 1024,
            slow_start_ms: 10_000,
            write_hold_ms: 30_000,
            user: None,
            database: "postgres".into(),
        }
    }
}

/// `[health]`, validated.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// One check per backend this often.
    pub interval: Duration,
    /// A check not answered within this is a failure.
    pub timeout: Duration,
    /// Consecutive failures before a replica with `failover = true` is detached.
    pub failures_to_detach: u32,
    /// Consecutive good checks (lag within bounds) before a detached replica is attached.
    pub successes_to_attach: u32,
    /// A replica further behind the primary's WAL takes no reads (0 = no bound).
    pub max_lag_bytes: u64,
    /// A returning replica's share of reads ramps up from 0 over this.
    pub slow_start: Duration,
    /// No usable primary: work that needs it waits up to this.
    pub write_hold: Duration,
    /// The role the checks log in as (a `[[users]]` entry, so its password is known).
    pub user: String,
    /// The database the checks connect to.
    pub database: String,
}

/// Checks `[health]`; `users` are the configured role names in file order (the first is the
/// checks' role unless `user` names another).
pub(super) fn validate(
    h: RawHealth,
    users: &[String],
    err: Problem<'_>,
) -> Result<HealthConfig, ConfigError> {
    for (key, value) in [
        ("health.interval_ms", h.interval_ms),
        ("health.timeout_ms", h.timeout_ms),
        ("health.failures_to_detach", h.failures_to_detach.into()),
        ("health.successes_to_attach", h.successes_to_attach.into()),
        ("health.write_hold_ms", h.write_hold_ms),
    ] {
        if value == 0 {
            return Err(err(key, "must be at least 1".into()));
        }
    }
    let user = match h.user {
        Some(u) if users.contains(&u) => u,
        Some(u) => {
            return Err(err(
                "health.user",
                format!("{u:?} is not one of [[users]] (its password is needed to log in)"),
            ))
        }
        None => users.first().cloned().unwrap_or_else(|| "postgres".into()),
    };
    if h.database.is_empty() || h.database.contains('\0') {
        return Err(err(
            "health.database",
            "must be a non-empty database name".into(),
        ));
    }
    Ok(HealthConfig {
        interval: Duration::from_millis(h.interval_ms),
        timeout: Duration::from_millis(h.timeout_ms),
        failures_to_detach: h.failures_to_detach,
        successes_to_attach: h.successes_to_attach,
        max_lag_bytes: h.max_lag_bytes,
        slow_start: Duration::from_millis(h.slow_start_ms),
        write_hold: Duration::from_millis(h.write_hold_ms),
        user,
        database: h.database,
    })
}
