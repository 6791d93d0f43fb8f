//! The config file as written (serde model with defaults) and its validation into [`Config`].

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::path::Path;
use std::time::Duration;

use pgpilot_protocol::scram::{random_bytes, MockAuth, ScramSecret, DEFAULT_ITERATIONS, SALT_LEN};
use serde::Deserialize;

use pgpilot_protocol::classify::Functions;

use super::secret::{resolve_password, Env, PasswordSource};
use super::tcp;
use super::{
    AuthMethod, BackendConfig, Config, ConfigError, PoolConfig, PoolMode, ReadYourWrites, Role,
    RoutingConfig, Rule, RuleTarget, ServerConfig, User,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    health: super::health::RawHealth,
    #[serde(default)]
    tls: super::tls::RawTls,
    #[serde(default)]
    admin: super::admin::RawAdmin,
    #[serde(default)]
    metrics: super::admin::RawMetrics,
    #[serde(default)]
    events: super::admin::RawEvents,
    #[serde(default)]
    peers: super::admin::RawPeers,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRouting {
    write_functions: Vec<String>,
    read_only_functions: Vec<String>,
    read_your_writes: ReadYourWrites,
    read_your_writes_ms: u64,
    max_prepared_statements: usize,
    max_client_statements: usize,
    rules: Vec<RawRule>,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            write_functions: Vec::new(),
            read_only_functions: Vec::new(),
            read_your_writes: ReadYourWrites::Lsn,
            read_your_writes_ms: 1000,
            max_prepared_statements: 1000,
            max_client_statements: 10_000,
            rules: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    user: Option<String>,
    database: Option<String>,
    application_name: Option<String>,
    target: RuleTarget,
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
    shutdown_timeout_ms: u64,
    tcp_keepalive_idle_ms: u64,
    tcp_keepalive_interval_ms: u64,
    tcp_keepalive_count: u32,
    tcp_user_timeout_ms: u64,
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
            shutdown_timeout_ms: 10_000,
            // An idle peer that vanished is found after 60 s + 6 × 10 s; sent data that is not
            // acknowledged for as long fails the socket (instead of ~15 min of retransmits).
            tcp_keepalive_idle_ms: 60_000,
            tcp_keepalive_interval_ms: 10_000,
            tcp_keepalive_count: 6,
            tcp_user_timeout_ms: 120_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    method: AuthMethod,
    /// A `[[users]]` entry that looks up the verifiers of roles not in `[[users]]`.
    user: Option<String>,
    query: String,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            method: AuthMethod::ScramSha256,
            user: None,
            query: DEFAULT_AUTH_QUERY.into(),
        }
    }
}

/// `[auth] query` unless set: the role's verifier, from the catalog only a superuser reads.
pub const DEFAULT_AUTH_QUERY: &str =
    "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin";

/// Checks `[auth] user` and `query`: the user is one of `[[users]]`, clients use SCRAM (the
/// only method whose verifier lets pgpilot log in for them), and the query takes the name.
fn validate_auth_query(
    auth: &RawAuth,
    names: &[String],
    err: Problem<'_>,
) -> Result<Option<super::AuthQuery>, ConfigError> {
    let Some(user) = &auth.user else {
        return Ok(None);
    };
    if !names.contains(user) {
        return Err(err(
            "auth.user",
            format!("\"{user}\" is not one of [[users]], whose password it logs in with"),
        ));
    }
    if auth.method != AuthMethod::ScramSha256 {
        return Err(err(
            "auth.user",
            "looking up users needs auth.method = \"scram-sha-256\": the server's SCRAM \
             verifier is all pgpilot learns of a password"
                .into(),
        ));
    }
    if !auth.query.contains("$1") {
        return Err(err(
            "auth.query",
            "must contain $1, where the user name goes".into(),
        ));
    }
    Ok(Some(super::AuthQuery {
        user: user.clone(),
        query: auth.query.clone(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: Option<String>,
    password_file: Option<String>,
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
    #[serde(default)]
    sslmode: Option<crate::tls::SslMode>,
}

fn default_port() -> u16 {
    5432
}

/// Builds a [`ConfigError`] for a key.
pub(super) type Problem<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// Checks every key and builds the immutable [`Config`].
pub(super) fn validate(raw: RawConfig, path: &Path, env: Env<'_>) -> Result<Config, ConfigError> {
    let err = |key: &str, problem: String| ConfigError {
        path: path.to_owned(),
        key: key.into(),
        problem,
    };
    let names: Vec<String> = raw.users.iter().map(|u| u.name.clone()).collect();
    let sslmodes: Vec<_> = raw.backends.iter().map(|b| b.sslmode).collect();
    let mut backends = validate_backends(raw.backends, &err)?;
    let client_tls = super::tls::apply(raw.tls, path, &mut backends, &sslmodes, &err)?;
    Ok(Config {
        path: path.to_owned(),
        server: validate_server(raw.server, &err)?,
        auth_method: raw.auth.method,
        auth_query: validate_auth_query(&raw.auth, &names, &err)?,
        health: super::health::validate(raw.health, &names, &err)?,
        admin: super::admin::validate(raw.admin, &names, &err)?,
        metrics: super::admin::validate_metrics(raw.metrics, &err)?,
        events: raw.events.into(),
        peers: super::admin::validate_peers(raw.peers, &err)?,
        users: validate_users(raw.users, path, env, &err)?,
        mock_auth: MockAuth::random(),
        pool: validate_pool(raw.pool, &err)?,
        backends,
        client_tls,
        routing: validate_routing(raw.routing, &err)?,
    })
}

fn validate_routing(r: RawRouting, err: Problem<'_>) -> Result<RoutingConfig, ConfigError> {
    for (key, names) in [
        ("routing.write_functions", &r.write_functions),
        ("routing.read_only_functions", &r.read_only_functions),
    ] {
        if let Some(bad) = names
            .iter()
            .find(|n| n.is_empty() || n.contains('.') || n.contains('('))
        {
            return Err(err(
                key,
                format!("{bad:?} is not an unqualified function name"),
            ));
        }
    }
    let functions = Functions::new(
        r.write_functions.iter().map(String::as_str),
        r.read_only_functions.iter().map(String::as_str),
    );
    let mut rules = Vec::with_capacity(r.rules.len());
    for (i, rule) in r.rules.into_iter().enumerate() {
        if rule.user.is_none() && rule.database.is_none() && rule.application_name.is_none() {
            return Err(err(
                &format!("routing.rules[{i}]"),
                "needs at least one of user, database, application_name".into(),
            ));
        }
        rules.push(Rule {
            user: rule.user,
            database: rule.database,
            application_name: rule.application_name,
            target: rule.target,
        });
    }
    let read_your_writes_window = Duration::from_millis(r.read_your_writes_ms);
    // A unit may use this many statements at once; fewer could evict one it is about to bind.
    if r.max_prepared_statements < 16 {
        return Err(err(
            "routing.max_prepared_statements",
            "must be at least 16".into(),
        ));
    }
    at_least_one(
        "routing.max_client_statements",
        r.max_client_statements as u64,
        err,
    )?;
    Ok(RoutingConfig {
        max_prepared_statements: r.max_prepared_statements,
        max_client_statements: r.max_client_statements,
        functions,
        rules,
        read_your_writes: r.read_your_writes,
        read_your_writes_window,
    })
}

fn at_least_one(key: &str, value: u64, err: Problem<'_>) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(err(key, "must be at least 1".into()));
    }
    Ok(())
}

fn validate_server(s: RawServer, err: Problem<'_>) -> Result<ServerConfig, ConfigError> {
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
    // The worker number lives in the top bits of every BackendKeyData pid (7 bits).
    if s.workers > 128 {
        return Err(err(
            "server.workers",
            format!("{} is more than 128", s.workers),
        ));
    }
    at_least_one("server.listen_backlog", s.listen_backlog.into(), err)?;
    at_least_one(
        "server.max_client_connections",
        s.max_client_connections as u64,
        err,
    )?;
    at_least_one("server.startup_timeout_ms", s.startup_timeout_ms, err)?;
    if !(1024..=1 << 30).contains(&s.max_message_bytes) {
        return Err(err(
            "server.max_message_bytes",
            "must be between 1024 and 1073741824".into(),
        ));
    }
    Ok(ServerConfig {
        listen,
        workers: s.workers,
        listen_backlog: s.listen_backlog,
        pool_mode: s.pool_mode,
        max_client_connections: s.max_client_connections,
        max_message_bytes: s.max_message_bytes,
        startup_timeout: Duration::from_millis(s.startup_timeout_ms),
        shutdown_timeout: Duration::from_millis(s.shutdown_timeout_ms),
        tcp: tcp::validate(
            [
                s.tcp_keepalive_idle_ms,
                s.tcp_keepalive_interval_ms,
                s.tcp_keepalive_count.into(),
                s.tcp_user_timeout_ms,
            ],
            err,
        )?,
    })
}

/// Users by name, each with its SCRAM secret derived once here.
fn validate_users(
    raw: Vec<RawUser>,
    path: &Path,
    env: Env<'_>,
    err: Problem<'_>,
) -> Result<HashMap<String, User>, ConfigError> {
    let mut users = HashMap::new();
    for (i, u) in raw.into_iter().enumerate() {
        let key = format!("users[{i}].name");
        if u.name.is_empty() || u.name.contains('\0') {
            return Err(err(&key, "must be a non-empty role name".into()));
        }
        if users.contains_key(&u.name) {
            return Err(err(&key, format!("user {:?} is listed twice", u.name)));
        }
        let source = PasswordSource {
            password: u.password.as_deref(),
            password_file: u.password_file.as_deref(),
        };
        let password = resolve_password(i, &source, path, env).map_err(|(k, p)| err(&k, p))?;
        let scram = ScramSecret::derive(
            password.as_bytes(),
            &random_bytes::<SALT_LEN>(),
            DEFAULT_ITERATIONS,
        );
        users.insert(
            u.name.clone(),
            User {
                name: u.name,
                password,
                scram,
            },
        );
    }
    Ok(users)
}

fn validate_pool(p: RawPool, err: Problem<'_>) -> Result<PoolConfig, ConfigError> {
    at_least_one("pool.size", p.size as u64, err)?;
    at_least_one("pool.checkout_timeout_ms", p.checkout_timeout_ms, err)?;
    at_least_one("pool.idle_timeout_ms", p.idle_timeout_ms, err)?;
    at_least_one("pool.max_lifetime_ms", p.max_lifetime_ms, err)?;
    Ok(PoolConfig {
        size: p.size,
        checkout_timeout: Duration::from_millis(p.checkout_timeout_ms),
        idle_timeout: Duration::from_millis(p.idle_timeout_ms),
        max_lifetime: Duration::from_millis(p.max_lifetime_ms),
        reset_query: p.reset_query,
    })
}

fn validate_backends(
    raw: Vec<RawBackend>,
    err: Problem<'_>,
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
            removed: false,
            name: b.name,
            host: b.host,
            port: b.port,
            role: b.role,
            weight: b.weight,
            failover,
            tls: crate::tls::BackendTls::disabled(),
        });
    }
    Ok(out)
}
