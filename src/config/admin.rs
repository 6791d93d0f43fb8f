//! `[admin]`: who may open the admin console (database `pgpilot`, or `pgbouncer` for
//! PgBouncer's tools, on the proxy's own port); `[metrics]`: where Prometheus scrapes;
//! `[events]`: the command run for every event.

use serde::Deserialize;

use super::raw::Problem;
use super::ConfigError;

/// The databases a client names to reach the console instead of a backend.
pub const CONSOLE_DATABASES: [&str; 2] = ["pgpilot", "pgbouncer"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    users: Option<Vec<String>>,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Users of `[[users]]` who may open the console.
    pub users: Vec<String>,
}

/// Checks `[admin]`: a user listed must be one of `[[users]]` (the console authenticates as
/// every session does). Unset, the list is `["admin"]`, which serves only if that user exists.
pub(super) fn validate(
    a: RawAdmin,
    users: &[String],
    err: Problem<'_>,
) -> Result<AdminConfig, ConfigError> {
    let Some(list) = a.users else {
        return Ok(AdminConfig {
            users: vec!["admin".to_owned()],
        });
    };
    if let Some(unknown) = list.iter().find(|u| !users.contains(u)) {
        return Err(err(
            "admin.users",
            format!("{unknown:?} is not one of [[users]]"),
        ));
    }
    Ok(AdminConfig { users: list })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEvents {
    command: String,
}

/// `[events]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventsConfig {
    /// Run with `sh -c` for every event; empty = none.
    pub command: String,
}

impl From<RawEvents> for EventsConfig {
    fn from(e: RawEvents) -> Self {
        EventsConfig { command: e.command }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    listen: String,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Where `GET /metrics`, `/healthz` and `/readyz` are served; `None` = nowhere.
    pub listen: Option<std::net::SocketAddr>,
}

/// Checks `[metrics]`: `listen` is empty (off) or an address.
pub(super) fn validate_metrics(
    m: RawMetrics,
    err: Problem<'_>,
) -> Result<MetricsConfig, ConfigError> {
    if m.listen.is_empty() {
        return Ok(MetricsConfig { listen: None });
    }
    let addr = m.listen.parse().map_err(|_| {
        err(
            "metrics.listen",
            format!(
                "{:?} is not an address with a port (e.g. \"127.0.0.1:9930\")",
                m.listen
            ),
        )
    })?;
    Ok(MetricsConfig { listen: Some(addr) })
}

/// The most instances `[peers]` can tell apart (their id is 5 bits of every cancel key).
pub const MAX_PEERS: usize = 31;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPeers {
    id: usize,
    instances: Vec<String>,
}

/// `[peers]`: several instances behind one address, forwarding each other's CancelRequests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeersConfig {
    /// This instance's id, 1-based into `instances`; 0 = no peering.
    pub id: usize,
    /// Every instance's address (this one's included), the same list on each.
    pub instances: Vec<std::net::SocketAddr>,
}

/// Checks `[peers]`: `id` names one of `instances` (at most [`MAX_PEERS`]), each an address.
pub(super) fn validate_peers(p: RawPeers, err: Problem<'_>) -> Result<PeersConfig, ConfigError> {
    if p.instances.len() > MAX_PEERS {
        return Err(err(
            "peers.instances",
            format!("at most {MAX_PEERS} instances (the id is 5 bits of each cancel key)"),
        ));
    }
    let mut instances = Vec::with_capacity(p.instances.len());
    for (i, a) in p.instances.iter().enumerate() {
        let addr = a.parse().map_err(|_| {
            err(
                &format!("peers.instances[{i}]"),
                format!("{a:?} is not an address with a port (e.g. \"10.0.0.12:6432\")"),
            )
        })?;
        instances.push(addr);
    }
    if p.id > instances.len() || (p.id == 0 && !instances.is_empty()) {
        return Err(err(
            "peers.id",
            format!(
                "must be this instance's place in peers.instances (1 to {})",
                instances.len()
            ),
        ));
    }
    Ok(PeersConfig {
        id: p.id,
        instances,
    })
}
