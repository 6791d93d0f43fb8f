//! The test harness: one real primary + 2 streaming replicas per test binary (started on first
//! use, stopped at exit), proxies on ephemeral ports, and clients to talk through them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pgpilot::cluster::LocalCluster;
use pgpilot::{Config, Proxy};

/// What the tests need to know of the running cluster.
pub struct Cluster {
    /// Primary first, then the replicas.
    pub ports: Vec<u16>,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static RUNNING: Mutex<Option<LocalCluster>> = Mutex::new(None);

extern "C" fn stop_cluster() {
    let cluster = match RUNNING.lock() {
        Ok(mut g) => g.take(),
        Err(p) => p.into_inner().take(),
    };
    if let Some(mut c) = cluster {
        c.stop();
        let _ = std::fs::remove_dir_all(&c.dir);
    }
}

/// Set to `1` to skip (not fail) the tests that need PostgreSQL when it cannot start here.
pub const SKIP_VAR: &str = "PGPILOT_SKIP_PG_TESTS";

/// The shared cluster. A PostgreSQL that cannot start fails every test that needs it, so that
/// a broken setup never looks like a pass; `None` (the test returns early) only when
/// `PGPILOT_SKIP_PG_TESTS=1` asks for it, and never with `CI=true`.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| {
            remove_stale_clusters();
            let dir = std::env::temp_dir().join(format!("pgpilot-test-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            match LocalCluster::create(&dir, 2) {
                Ok(c) => {
                    let info = Cluster {
                        ports: c.ports.clone(),
                    };
                    *RUNNING.lock().unwrap() = Some(c);
                    register_atexit();
                    Some(info)
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    let ci = std::env::var("CI").as_deref() == Ok("true");
                    if std::env::var(SKIP_VAR).as_deref() == Ok("1") && !ci {
                        eprintln!("skipping ({SKIP_VAR}=1): cannot start PostgreSQL: {e}");
                        return None;
                    }
                    panic!(
                        "cannot start PostgreSQL for the integration tests: {e}\n\
                         install it (Debian: apt-get install postgresql postgresql-contrib), \
                         or set {SKIP_VAR}=1 to skip these tests (ignored with CI=true)"
                    )
                }
            }
        })
        .as_ref()
}

#[allow(unsafe_code)]
fn register_atexit() {
    extern "C" {
        fn atexit(f: extern "C" fn()) -> i32;
    }
    // SAFETY: registering a plain `extern "C" fn()` with libc's atexit; the handler only takes
    // a Mutex and runs pg_ctl, and runs once when the test binary exits.
    unsafe {
        atexit(stop_cluster);
    }
}

/// Stops clusters left by test binaries that died without running their exit handler.
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("pgpilot-test-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        for sub in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            if sub.path().join("postmaster.pid").exists() {
                let pidfile =
                    std::fs::read_to_string(sub.path().join("postmaster.pid")).unwrap_or_default();
                if let Some(pm) = pidfile.lines().next() {
                    let _ = std::process::Command::new("kill")
                        .args(["-QUIT", pm.trim()])
                        .output();
                }
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// Knobs of a test proxy.
#[derive(Clone)]
pub struct Opts {
    pub pool_mode: &'static str,
    pub workers: usize,
    pub pool_size: usize,
    pub max_clients: usize,
    pub max_message_bytes: u32,
    pub auth: &'static str,
    pub checkout_timeout_ms: u64,
    pub replica_weights: [u32; 2],
    /// Adds a replica on a port nobody listens on, with this weight.
    pub dead_replica_weight: Option<u32>,
    /// Appended to the config as it is (e.g. a `[routing]` section).
    pub extra: &'static str,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            pool_mode: "transaction",
            workers: 2,
            pool_size: 10,
            max_clients: 1000,
            max_message_bytes: 1 << 20,
            auth: "scram-sha-256",
            checkout_timeout_ms: 5000,
            replica_weights: [1, 1],
            dead_replica_weight: None,
            extra: "",
        }
    }
}

/// The config text for a proxy in front of the test cluster.
pub fn config_text(c: &Cluster, o: &Opts) -> String {
    let mut t = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {}\npool_mode = \"{}\"\nmax_client_connections = {}\n\
         max_message_bytes = {}\nstartup_timeout_ms = 5000\n\n[auth]\nmethod = \"{}\"\n\n\
         [pool]\nsize = {}\ncheckout_timeout_ms = {}\n",
        o.workers, o.pool_mode, o.max_clients, o.max_message_bytes, o.auth, o.pool_size, o.checkout_timeout_ms
    );
    for (name, password, _, _) in pgpilot::cluster::ROLES {
        t.push_str(&format!(
            "\n[[users]]\nname = \"{name}\"\npassword = \"{password}\"\n"
        ));
    }
    for (i, port) in c.ports.iter().enumerate() {
        let (role, weight) = if i == 0 {
            ("primary", 0)
        } else {
            ("replica", o.replica_weights[i - 1])
        };
        t.push_str(&format!("\n[[backends]]\nname = \"b{i}\"\nhost = \"127.0.0.1\"\nport = {port}\nrole = \"{role}\"\nweight = {weight}\n"));
    }
    t.push_str(o.extra);
    if let Some(weight) = o.dead_replica_weight {
        let port = pgpilot::cluster::free_port().expect("a free port");
        t.push_str(&format!("\n[[backends]]\nname = \"dead\"\nhost = \"127.0.0.1\"\nport = {port}\nrole = \"replica\"\nweight = {weight}\n"));
    }
    t
}

/// [`config_text`] listening on `port`, for a proxy run as its own process.
pub fn config_text_on(c: &Cluster, o: &Opts, port: u16) -> String {
    config_text(c, o).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    )
}

/// A proxy process, killed when the test ends, passed or not.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A proxy in front of the test cluster.
pub fn proxy(c: &Cluster, o: &Opts) -> Proxy {
    let _ = env_logger::builder().is_test(true).try_init();
    let config: Arc<Config> = Config::parse(&config_text(c, o), std::path::Path::new("test.toml"))
        .expect("test config is valid");
    Proxy::start(config).expect("proxy starts")
}

/// A connection string for the postgres crate.
pub fn dsn(port: u16, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname=app connect_timeout=10"
    )
}

/// A client through the proxy as `app`.
pub fn client(proxy: &Proxy) -> postgres::Client {
    postgres::Client::connect(&dsn(proxy.addr().port(), "app", "app"), postgres::NoTls)
        .expect("connect through the proxy")
}

/// A superuser client straight to server `i` (0 = primary).
pub fn direct(c: &Cluster, i: usize) -> postgres::Client {
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        c.ports[i]
    );
    postgres::Client::connect(&dsn, postgres::NoTls).expect("connect to the server")
}

/// Retries `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The SQLSTATE of a postgres crate error.
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}
