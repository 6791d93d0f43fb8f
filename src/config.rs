//! The TOML configuration: `Config::load` parses, validates and derives (SCRAM secrets),
//! producing an immutable `Config` that every core shares through an `Arc`.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgpilot_protocol::scram::{random_bytes, ScramSecret, DEFAULT_ITERATIONS};
use serde::Deserialize;

/// A config that cannot be used: `PATH: key: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, or `<inline>` for a config given as text.
    pub path: PathBuf,
    /// Dotted key the problem is about (`server.listen`, `backends[1].port`).
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path.display(), self.key, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// How backends are shared between clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A backend serves one client for the client's whole life.
    Session,
    /// A backend serves a client for one transaction, then returns to the pool.
    Transaction,
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    #[serde(rename = "trust")]
    Trust,
}

/// A backend's place in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    pool: RawPool,
    #[serde(default)]
    backends: Vec<RawBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    workers: usize,
    listen_backlog: u32,
    pool_mode: PoolMode,
    max_client_connections: usize,
    max_message_bytes: u32,
    startup_timeout_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: "127.0.0.1:6432".into(),
            workers: 0,
            listen_backlog: 4096,
            pool_mode: PoolMode::Transaction,
            max_client_connections: 10_000,
            max_message_bytes: 64 << 20,
            startup_timeout_ms: 10_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    method: AuthMethod,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            method: AuthMethod::ScramSha256,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPool {
    size: usize,
    checkout_timeout_ms: u64,
    idle_timeout_ms: u64,
    max_lifetime_ms: u64,
    reset_query: String,
}

impl Default for RawPool {
    fn default() -> Self {
        RawPool {
            size: 20,
            checkout_timeout_ms: 5_000,
            idle_timeout_ms: 600_000,
            max_lifetime_ms: 3_600_000,
            reset_query: "DISCARD ALL".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: String,
    host: String,
    #[serde(default = "default_port")]
    port: u16,
    role: Role,
    #[serde(default)]
    weight: u32,
    #[serde(default)]
    failover: Option<bool>,
}

fn default_port() -> u16 {
    5432
}

/// `[server]`: the listening side.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address every worker's SO_REUSEPORT listener binds.
    pub listen: SocketAddr,
    /// Worker cores; 0 = one per CPU this process may use.
    pub workers: usize,
    /// Listen backlog (the kernel caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Session or transaction pooling.
    pub pool_mode: PoolMode,
    /// Clients beyond this get 53300.
    pub max_client_connections: usize,
    /// Larger client messages get 08P01 and the session is closed.
    pub max_message_bytes: u32,
    /// Startup and authentication must finish within this.
    pub startup_timeout: Duration,
}

/// A user clients log in as, and pgpilot logs in to backends as.
pub struct User {
    /// Role name.
    pub name: String,
    /// Plain password: used for backend logins and MD5 client checks. Never logged.
    pub password: String,
    /// SCRAM secret derived once at load, so logins do not pay PBKDF2.
    pub scram: ScramSecret,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "User {{ name: {:?}, password: \"***\" }}", self.name)
    }
}

/// `[pool]`: backend connection pools.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Max backend connections per (backend, user, database), summed over all workers.
    pub size: usize,
    /// Longest a client waits for a backend connection.
    pub checkout_timeout: Duration,
    /// Idle backend connections older than this are closed.
    pub idle_timeout: Duration,
    /// Backend connections older than this are closed when next idle.
    pub max_lifetime: Duration,
    /// Run in session mode before a backend serves another client; empty = none.
    pub reset_query: String,
}

/// One `[[backends]]` entry.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Name shown in logs and the admin console.
    pub name: String,
    /// Host name or address; names are re-resolved by the control plane.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Primary or replica.
    pub role: Role,
    /// Share of reads.
    pub weight: u32,
    /// Whether the proxy may detach this backend when it is unhealthy.
    pub failover: bool,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Where it came from, for messages.
    pub path: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[auth] method`.
    pub auth_method: AuthMethod,
    /// `[[users]]` by name.
    pub users: HashMap<String, User>,
    /// `[pool]`.
    pub pool: PoolConfig,
    /// `[[backends]]` in file order; the index is the backend id.
    pub backends: Vec<BackendConfig>,
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Arc<Config>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            key: "(file)".into(),
            problem: e.to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Arc<Config>, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_owned(),
            key: e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "(file)".into()),
            problem: e.message().trim().replace('\n', "; "),
        })?;
        validate(raw, path).map(Arc::new)
    }

    /// The user entry for a name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }
}

/// The dotted key whose line holds byte `offset`: `section.key`, with `[i]` for array tables.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or_default();
    let key = line.split_once('=').map(|(k, _)| k.trim().to_owned());
    let mut section = String::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for l in text[..line_start].lines().map(str::trim) {
        if let Some(name) = l.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let n = counts.entry(name.trim().to_owned()).or_insert(0);
            section = format!("{}[{}]", name.trim(), *n);
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
        }
    }
    match (section.is_empty(), key) {
        (_, Some(k)) if k.starts_with('[') => "(file)".into(),
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{section}.{k}"),
        (false, None) => section,
        (true, None) => line.trim().to_owned(),
    }
}

fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
    let err = |key: &str, problem: String| ConfigError {
        path: path.to_owned(),
        key: key.into(),
        problem,
    };
    let s = raw.server;
    let listen = s
        .listen
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            err(
                "server.listen",
                format!("{:?} is not a host:port address", s.listen),
            )
        })?;
    if s.workers > 1024 {
        return Err(err(
            "server.workers",
            format!("{} is more than 1024", s.workers),
        ));
    }
    if s.listen_backlog == 0 {
        return Err(err("server.listen_backlog", "must be at least 1".into()));
    }
    if s.max_client_connections == 0 {
        return Err(err(
            "server.max_client_connections",
            "must be at least 1".into(),
        ));
    }
    if !(1024..=1 << 30).contains(&s.max_message_bytes) {
        return Err(err(
            "server.max_message_bytes",
            "must be between 1024 and 1073741824".into(),
        ));
    }
    if s.startup_timeout_ms == 0 {
        return Err(err(
            "server.startup_timeout_ms",
            "must be at least 1".into(),
        ));
    }
    let mut users = HashMap::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        if u.name.is_empty() || u.name.contains('\0') {
            return Err(err(
                &format!("users[{i}].name"),
                "must be a non-empty role name".into(),
            ));
        }
        let scram = ScramSecret::derive(
            u.password.as_bytes(),
            &random_bytes::<16>(),
            DEFAULT_ITERATIONS,
        );
        let name = u.name.clone();
        if users
            .insert(
                name.clone(),
                User {
                    name: u.name,
                    password: u.password,
                    scram,
                },
            )
            .is_some()
        {
            return Err(err(
                &format!("users[{i}].name"),
                format!("user {name:?} is listed twice"),
            ));
        }
    }
    let p = raw.pool;
    if p.size == 0 {
        return Err(err("pool.size", "must be at least 1".into()));
    }
    for (key, v) in [
        ("pool.checkout_timeout_ms", p.checkout_timeout_ms),
        ("pool.idle_timeout_ms", p.idle_timeout_ms),
        ("pool.max_lifetime_ms", p.max_lifetime_ms),
    ] {
        if v == 0 {
            return Err(err(key, "must be at least 1".into()));
        }
    }
    let backends = validate_backends(raw.backends, &err)?;
    Ok(Config {
        path: path.to_owned(),
        server: ServerConfig {
            listen,
            workers: s.workers,
            listen_backlog: s.listen_backlog,
            pool_mode: s.pool_mode,
            max_client_connections: s.max_client_connections,
            max_message_bytes: s.max_message_bytes,
            startup_timeout: Duration::from_millis(s.startup_timeout_ms),
        },
        auth_method: raw.auth.method,
        users,
        pool: PoolConfig {
            size: p.size,
            checkout_timeout: Duration::from_millis(p.checkout_timeout_ms),
            idle_timeout: Duration::from_millis(p.idle_timeout_ms),
            max_lifetime: Duration::from_millis(p.max_lifetime_ms),
            reset_query: p.reset_query,
        },
        backends,
    })
}

fn validate_backends(
    raw: Vec<RawBackend>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Vec<BackendConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(err(
            "backends",
            "at least one [[backends]] entry is needed".into(),
        ));
    }
    let primaries = raw.iter().filter(|b| b.role == Role::Primary).count();
    if primaries != 1 {
        return Err(err(
            "backends",
            format!("exactly one backend must have role = \"primary\", found {primaries}"),
        ));
    }
    let mut out: Vec<BackendConfig> = Vec::with_capacity(raw.len());
    for (i, b) in raw.into_iter().enumerate() {
        if b.name.is_empty() || out.iter().any(|o| o.name == b.name) {
            return Err(err(
                &format!("backends[{i}].name"),
                format!("{:?} is empty or not unique", b.name),
            ));
        }
        if b.host.is_empty() {
            return Err(err(
                &format!("backends[{i}].host"),
                "must not be empty".into(),
            ));
        }
        if b.port == 0 {
            return Err(err(
                &format!("backends[{i}].port"),
                "must be between 1 and 65535".into(),
            ));
        }
        let failover = b.failover.unwrap_or(b.role == Role::Replica);
        out.push(BackendConfig {
            name: b.name,
            host: b.host,
            port: b.port,
            role: b.role,
            weight: b.weight,
            failover,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[users]]
name = "app"
password = "app"

[[backends]]
name = "primary"
host = "127.0.0.1"
port = 5432
role = "primary"
"#;

    fn parse(text: &str) -> Result<Arc<Config>, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn defaults_fill_what_is_missing() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:6432".parse().unwrap());
        assert_eq!(c.server.pool_mode, PoolMode::Transaction);
        assert_eq!(c.pool.size, 20);
        assert_eq!(c.auth_method, AuthMethod::ScramSha256);
        assert!(!c.backends[0].failover);
        assert!(!format!("{:?}", c.users["app"]).contains("\"app\", password: \"app\""));
    }

    #[test]
    fn shipped_examples_are_valid() {
        for (name, text) in [
            ("pgpilot.toml", include_str!("../config/pgpilot.toml")),
            (
                "rds-example.toml",
                include_str!("../config/rds-example.toml"),
            ),
        ] {
            parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = parse(&format!("[server]\nbogus = 1\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key, "server.bogus");
        assert!(
            e.to_string()
                .starts_with("t.toml: server.bogus: unknown field"),
            "{e}"
        );
        let e = parse(&format!("[server]\npool_mode = \"statement\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key, "server.pool_mode");
        let e = parse(&MINIMAL.replace("port = 5432", "port = 0")).unwrap_err();
        assert_eq!(e.key, "backends[0].port");
        let e = parse(&MINIMAL.replace("port = 5432", "port = \"x\"")).unwrap_err();
        assert_eq!(e.key, "backends[0].port");
        let e = parse(&MINIMAL.replace("\"primary\"\n", "\"replica\"\n")).unwrap_err();
        assert_eq!(e.key, "backends");
        let e = parse(&format!("[pool]\nsize = 0\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.to_string(), "t.toml: pool.size: must be at least 1");
        let e = parse(&format!("[server]\nlisten = \"nowhere\"\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.key, "server.listen");
    }
}
