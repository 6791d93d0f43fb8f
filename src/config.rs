//! The TOML configuration: `Config::load` parses, validates and derives (SCRAM secrets),
//! producing an immutable `Config` that every core shares through an `Arc`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgpilot_protocol::classify::Functions;
use pgpilot_protocol::scram::{MockAuth, ScramSecret};
use serde::Deserialize;

mod admin;
pub use admin::{
    AdminConfig, EventsConfig, MetricsConfig, PeersConfig, CONSOLE_DATABASES, MAX_PEERS,
};
mod health;
pub use health::HealthConfig;
mod raw;
mod secret;
mod tcp;
mod tls;

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
    /// After SIGTERM, sessions in a transaction have this long to finish; then they get 57P01.
    pub shutdown_timeout: Duration,
    /// Keepalive and TCP_USER_TIMEOUT for every client and backend socket.
    pub tcp: TcpOptions,
}

/// `[server] tcp_*`: socket options that let the kernel find a peer that vanished without a
/// word (a failed-over RDS primary, a dead host), which would otherwise hold a socket for hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    /// Idle time before the first keepalive probe; `None` = no keepalive.
    pub keepalive_idle: Option<Duration>,
    /// Time between probes; `None` = the kernel's default.
    pub keepalive_interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped; `None` = the kernel's default.
    pub keepalive_count: Option<u32>,
    /// Longest sent data (or a probe) may go unacknowledged before the connection is dropped;
    /// `None` = the kernel's retransmission limit (about 15 minutes).
    pub user_timeout: Option<Duration>,
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

/// How roles not in `[[users]]` are authenticated: their SCRAM verifier is read from the
/// server, and pgpilot logs in to backends with the keys the client proved.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthQuery {
    /// The `[[users]]` entry the query runs as.
    pub user: String,
    /// SQL whose first column is the verifier; `$1` is the user name.
    pub query: String,
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

/// Where a routing rule sends a session's statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleTarget {
    /// Everything to the primary (a migration job).
    Primary,
    /// Everything to replicas, which refuse writes themselves (a reporting application).
    Replica,
}

/// One `[[routing.rules]]` entry: every matcher given must equal the session's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Role name to match.
    pub user: Option<String>,
    /// Database to match.
    pub database: Option<String>,
    /// `application_name` from the client's startup parameters to match.
    pub application_name: Option<String>,
    /// Where the matching sessions' statements go.
    pub target: RuleTarget,
}

/// `routing.read_your_writes`: how a session that wrote is made to read its own writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    /// Its reads go only to a replica whose replayed WAL position has reached the primary's
    /// position seen after the write was acknowledged; until one has, to the primary.
    #[default]
    Lsn,
    /// Its reads go to the primary for `read_your_writes_ms` after the write.
    Time,
    /// Nothing: a replica may serve a read that does not see the session's write yet.
    Off,
}

/// `[routing]`: what the classifier knows beyond SQL, and per-session rules.
#[derive(Debug, Clone, Default)]
pub struct RoutingConfig {
    /// Built-in writing functions plus `write_functions`, minus `read_only_functions`.
    pub functions: Functions,
    /// Checked in order; the first match decides.
    pub rules: Vec<Rule>,
    /// How a session is made to read its own writes.
    pub read_your_writes: ReadYourWrites,
    /// `"time"`: after a session writes, its reads go to the primary for this long (0 = never).
    pub read_your_writes_window: Duration,
    /// Most shared prepared statements one backend keeps; the least recently used is closed.
    pub max_prepared_statements: usize,
    /// Most named prepared statements one client may hold: the proxy keeps each one's text, so
    /// without a bound a client could grow the proxy's memory by preparing forever.
    pub max_client_statements: usize,
}

impl RoutingConfig {
    /// The rule for a session, if any matches.
    pub fn rule_for(
        &self,
        user: &str,
        database: &str,
        application_name: Option<&str>,
    ) -> Option<RuleTarget> {
        let matches = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        self.rules
            .iter()
            .find(|r| {
                matches(&r.user, Some(user))
                    && matches(&r.database, Some(database))
                    && matches(&r.application_name, application_name)
            })
            .map(|r| r.target)
    }
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
    /// How its connections use TLS (`sslmode`, or `[tls] backend_mode`).
    pub tls: crate::tls::BackendTls,
    /// Gone from the file at a reload: its place (its id) is kept so that no other backend is
    /// renumbered, but it serves nothing and is not checked.
    pub removed: bool,
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
    /// `[auth] user` and `query`: roles not in `[[users]]` are looked up in the server.
    pub auth_query: Option<AuthQuery>,
    /// `[[users]]` by name.
    pub users: HashMap<String, User>,
    /// Secrets for names not in `users`, so that unknown users go through the same exchange.
    pub mock_auth: MockAuth,
    /// `[pool]`.
    pub pool: PoolConfig,
    /// `[[backends]]` in file order; the index is the backend id.
    pub backends: Vec<BackendConfig>,
    /// `[routing]`.
    pub routing: RoutingConfig,
    /// `[health]`.
    pub health: HealthConfig,
    /// `[tls] client_mode` with its certificate: `None` = no TLS towards clients.
    pub client_tls: Option<crate::tls::ClientTls>,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[events]`.
    pub events: EventsConfig,
    /// `[peers]`.
    pub peers: PeersConfig,
}

impl Config {
    /// This config with the backends of a reloaded file put in the places of `old`'s: a backend
    /// keeps its id by name, a new one is added after the others, and one no longer in the file
    /// stays as a removed place. Returns the names added and removed.
    pub fn in_places_of(mut self, old: &Config) -> (Config, Vec<String>, Vec<String>) {
        let mut placed: Vec<BackendConfig> = Vec::with_capacity(old.backends.len());
        let mut fresh = std::mem::take(&mut self.backends);
        let mut removed = Vec::new();
        for was in &old.backends {
            match fresh.iter().position(|b| b.name == was.name) {
                Some(i) => placed.push(fresh.remove(i)),
                None => {
                    if !was.removed {
                        removed.push(was.name.clone());
                    }
                    placed.push(BackendConfig {
                        role: Role::Replica,
                        weight: 0,
                        removed: true,
                        ..was.clone()
                    });
                }
            }
        }
        let added: Vec<String> = fresh.iter().map(|b| b.name.clone()).collect();
        placed.extend(fresh);
        self.backends = placed;
        (self, added, removed)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Arc<Config>, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            key: "(file)".into(),
            problem: e.to_string(),
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and is where relative
    /// `password_file`s start. `${NAME}` takes the process environment.
    pub fn parse(text: &str, path: &Path) -> Result<Arc<Config>, ConfigError> {
        parse_env(text, path, &|name| std::env::var_os(name))
    }

    /// The user entry for a name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }
}

/// [`Config::parse`] with the environment given, so tests need not change the process's.
fn parse_env(text: &str, path: &Path, env: secret::Env<'_>) -> Result<Arc<Config>, ConfigError> {
    let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError {
        path: path.to_owned(),
        key: e
            .span()
            .map(|s| key_at(text, s.start))
            .unwrap_or_else(|| "(file)".into()),
        problem: e.message().trim().replace('\n', "; "),
    })?;
    raw::validate(raw, path, env).map(Arc::new)
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
    fn tls_keys_are_checked_with_the_file_and_key_named() {
        let bad = |tls: &str| {
            parse(&format!("{MINIMAL}\n[tls]\n{tls}\n"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = bad("client_mode = \"require\"");
        assert!(e.contains("tls.cert_file") && e.contains("require"), "{e}");
        let e = bad(
            "client_mode = \"allow\"\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"k.pem\"",
        );
        assert!(
            e.contains("tls.cert_file") && e.contains("/nonexistent/c.pem"),
            "{e}"
        );
        let e = bad("client_mode = \"sometimes\"");
        assert!(e.contains("client_mode") || e.contains("sometimes"), "{e}");
        let e = bad("backend_mode = \"verify-full\"\nbackend_ca_file = \"/nonexistent/ca.pem\"");
        assert!(
            e.contains("tls.backend_ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let e = bad("backend_mode = \"verify\"");
        assert!(e.contains("verify-full"), "the choices are listed: {e}");
        assert!(parse(&format!("{MINIMAL}\n[tls]\nbackend_mode = \"require\"\n")).is_ok());
    }

    #[test]
    fn peers_name_this_instance_in_a_list_of_addresses() {
        let peers = |body: &str| parse(&format!("{MINIMAL}\n[peers]\n{body}\n"));
        let ok = peers("id = 2\ninstances = [\"10.0.0.1:6432\", \"10.0.0.2:6432\"]").unwrap();
        assert_eq!((ok.peers.id, ok.peers.instances.len()), (2, 2));
        for (body, key) in [
            (
                "id = 3\ninstances = [\"10.0.0.1:6432\", \"10.0.0.2:6432\"]",
                "peers.id",
            ),
            ("id = 0\ninstances = [\"10.0.0.1:6432\"]", "peers.id"),
            ("id = 1\ninstances = [\"pgpilot-0\"]", "peers.instances[0]"),
        ] {
            let e = peers(body).unwrap_err();
            assert_eq!(e.key, key, "{body}: {e}");
        }
        assert_eq!(parse(MINIMAL).unwrap().peers.id, 0, "no peering by default");
    }

    #[test]
    fn a_reloaded_file_keeps_every_backend_in_its_place_by_name() {
        let backends = |names: &[&str]| {
            let mut t =
                String::from("[[backends]]\nname = \"p\"\nhost = \"h\"\nrole = \"primary\"\n");
            for n in names {
                t.push_str(&format!(
                    "\n[[backends]]\nname = \"{n}\"\nhost = \"h\"\nrole = \"replica\"\nweight = 1\n"
                ));
            }
            Arc::try_unwrap(parse(&t).unwrap()).unwrap()
        };
        let names = |c: &Config| -> Vec<(String, bool)> {
            c.backends
                .iter()
                .map(|b| (b.name.clone(), b.removed))
                .collect()
        };
        let old = backends(&["r1", "r2"]);
        let (next, added, removed) = backends(&["r3", "r2"]).in_places_of(&old);
        let expected = [("p", false), ("r1", true), ("r2", false), ("r3", false)];
        let expected: Vec<(String, bool)> =
            expected.iter().map(|(n, r)| (n.to_string(), *r)).collect();
        assert_eq!(names(&next), expected);
        assert_eq!((added, removed), (vec!["r3".into()], vec!["r1".into()]));
        let gone = &next.backends[1];
        assert_eq!(
            (gone.role, gone.weight),
            (Role::Replica, 0),
            "a removed place serves nothing"
        );
        // Another reload: the removed place stays, and is not reported again; r1 may return.
        let (again, added, removed) = backends(&["r2", "r3"]).in_places_of(&next);
        assert_eq!(names(&again), expected);
        assert!(added.is_empty() && removed.is_empty());
        let (back, added, _) = backends(&["r1", "r2", "r3"]).in_places_of(&again);
        assert!(
            !back.backends[1].removed && added.is_empty(),
            "r1 is back in its place"
        );
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
            // The RDS example names AWS's bundle where the README says to put it: a CA of
            // this test's own stands in for it.
            let bundle =
                std::env::temp_dir().join(format!("pgpilot-bundle-{}.pem", std::process::id()));
            let key = rcgen::KeyPair::generate().unwrap();
            let ca = rcgen::CertificateParams::new(Vec::<String>::new())
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(&bundle, ca.pem()).unwrap();
            let text = text.replace(
                "/etc/pgpilot/rds-global-bundle.pem",
                &bundle.display().to_string(),
            );
            // The admin's password comes from the environment, as the example says.
            let env = |n: &str| (n == "PGPILOT_ADMIN_PASSWORD").then(|| "s3cret".into());
            parse_env(&text, Path::new(name), &env).unwrap_or_else(|e| panic!("{name}: {e}"));
            let _ = std::fs::remove_file(bundle);
        }
    }

    #[test]
    fn routing_rules_and_functions() {
        let text = format!(
            "{MINIMAL}\n[routing]\nwrite_functions = [\"audit\"]\nread_only_functions = [\"nextval\"]\n\n\
             [[routing.rules]]\napplication_name = \"reports\"\ntarget = \"replica\"\n\n\
             [[routing.rules]]\nuser = \"migrator\"\ntarget = \"primary\"\n"
        );
        let c = parse(&text).unwrap();
        assert!(c.routing.functions.is_write(b"audit"));
        assert!(!c.routing.functions.is_write(b"nextval"));
        assert_eq!(
            c.routing.rule_for("app", "app", Some("reports")),
            Some(RuleTarget::Replica)
        );
        assert_eq!(
            c.routing.rule_for("migrator", "app", None),
            Some(RuleTarget::Primary)
        );
        assert_eq!(c.routing.rule_for("app", "app", Some("web")), None);
        let e = parse(&format!(
            "{MINIMAL}\n[[routing.rules]]\ntarget = \"primary\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "routing.rules[0]");
        let e = parse(&format!(
            "{MINIMAL}\n[routing]\nwrite_functions = [\"a.b\"]\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "routing.write_functions");
    }

    #[test]
    fn auth_query_needs_a_configured_user_scram_and_a_placeholder() {
        let with = |auth: &str| parse(&format!("[auth]\n{auth}\n{MINIMAL}"));
        let c = with("user = \"app\"").unwrap();
        let aq = c.auth_query.as_ref().expect("looked up");
        assert_eq!(aq.user, "app");
        assert!(aq.query.contains("$1"));
        assert!(parse(MINIMAL).unwrap().auth_query.is_none());
        let e = with("user = \"nobody\"").unwrap_err();
        assert_eq!(e.key, "auth.user");
        let e = with("method = \"md5\"\nuser = \"app\"").unwrap_err();
        assert_eq!(e.key, "auth.user");
        let e = with("user = \"app\"\nquery = \"SELECT 1\"").unwrap_err();
        assert_eq!(e.key, "auth.query");
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
