//! A local PostgreSQL primary with streaming replicas, made with the installed server
//! binaries (initdb, pg_ctl, pg_basebackup). Used by `pgpilot demo` and the integration tests.
//! As root, the servers run as the unprivileged `postgres` user, in directories it owns.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Roles the cluster creates, one per backend authentication method pgpilot must speak.
/// `(name, password, pg_hba method, password_encryption)`.
pub const ROLES: &[(&str, &str, &str, &str)] = &[
    ("app", "app", "scram-sha-256", "scram-sha-256"),
    ("app_md5", "app_md5", "md5", "md5"),
    ("app_plain", "app_plain", "password", "scram-sha-256"),
    ("app_trust", "app_trust", "trust", "scram-sha-256"),
];

/// Where a twin replica listens (see [`LocalCluster::create_twinned`]).
pub const TWIN_HOST: &str = "127.0.0.2";

/// Why the cluster could not be made.
#[derive(Debug)]
pub struct ClusterError(pub String);

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

impl From<io::Error> for ClusterError {
    fn from(e: io::Error) -> Self {
        ClusterError(e.to_string())
    }
}

/// A running primary (`ports[0]`) and replicas (`ports[1..]`); stopped on drop.
pub struct LocalCluster {
    /// Holds one data directory per server and their logs.
    pub dir: PathBuf,
    /// Where initdb, pg_ctl and pg_basebackup live.
    pub bindir: PathBuf,
    /// Primary first, then each replica.
    pub ports: Vec<u16>,
    /// The address each one listens on, same order: 127.0.0.1, except a twin's.
    pub hosts: Vec<&'static str>,
    run_as: Option<(u32, u32)>,
    stopped: bool,
}

impl LocalCluster {
    /// Makes and starts a primary and `replicas` streaming replicas under `dir` (created,
    /// must not hold a cluster already), then creates the roles of [`ROLES`] and database `app`.
    pub fn create(dir: &Path, replicas: usize) -> Result<LocalCluster, ClusterError> {
        LocalCluster::make(dir, replicas, false)
    }

    /// [`LocalCluster::create`], with replica 1 a twin of the primary: it listens on
    /// 127.0.0.2 at the primary's port, so that a name moved from the primary to it after
    /// its promotion (as RDS moves its endpoint) needs no change of port.
    pub fn create_twinned(dir: &Path, replicas: usize) -> Result<LocalCluster, ClusterError> {
        LocalCluster::make(dir, replicas.max(1), true)
    }

    fn make(dir: &Path, replicas: usize, twin: bool) -> Result<LocalCluster, ClusterError> {
        let bindir = find_bindir()?;
        let run_as = if is_root() {
            Some(postgres_ids()?)
        } else {
            None
        };
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        give_to(&dir, run_as)?;
        let mut ports = (0..=replicas)
            .map(|_| free_port())
            .collect::<io::Result<Vec<_>>>()?;
        let mut hosts = vec!["127.0.0.1"; ports.len()];
        if twin {
            ports[1] = ports[0];
            hosts[1] = TWIN_HOST;
        }
        let cluster = LocalCluster {
            dir,
            bindir,
            ports,
            hosts,
            run_as,
            stopped: false,
        };
        cluster.init_primary()?;
        cluster.start(0)?;
        cluster.create_roles()?;
        for i in 1..=replicas {
            cluster.init_replica(i)?;
            cluster.start(i)?;
        }
        Ok(cluster)
    }

    fn data(&self, i: usize) -> PathBuf {
        self.dir.join(if i == 0 {
            "primary".to_owned()
        } else {
            format!("replica{i}")
        })
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<Output, ClusterError> {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.args(args)
            .current_dir(&self.dir)
            .env("HOME", &self.dir)
            .env("PGHOST", "127.0.0.1")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .output()
            .map_err(|e| ClusterError(format!("cannot run {program}: {e}")))?;
        if !out.status.success() {
            return Err(ClusterError(format!(
                "{program} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(out)
    }

    fn init_primary(&self) -> Result<(), ClusterError> {
        let data = self.data(0);
        let d = data.to_string_lossy();
        self.run(
            "initdb",
            &[
                "-D",
                &d,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let conf = format!(
            "\n# written by pgpilot\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 10\nhot_standby = on\nmax_connections = 300\n\
             fsync = off\nfull_page_writes = off\nsynchronous_commit = off\nshared_buffers = 32MB\n",
            self.ports[0],
            self.dir.display()
        );
        append(&data.join("postgresql.conf"), &conf)?;
        // All of 127/8: a twin listens on 127.0.0.2.
        let mut hba = String::from("local all all trust\nhost replication postgres 127.0.0.0/8 trust\nhost all postgres 127.0.0.0/8 trust\n");
        for (name, _, method, _) in ROLES {
            hba.push_str(&format!("host all {name} 127.0.0.0/8 {method}\n"));
        }
        hba.push_str("host all all 127.0.0.0/8 scram-sha-256\n");
        fs::write(data.join("pg_hba.conf"), hba)?;
        Ok(())
    }

    fn start(&self, i: usize) -> Result<(), ClusterError> {
        let data = self.data(i);
        let log = self.dir.join(format!(
            "{}.log",
            data.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        ));
        self.run(
            "pg_ctl",
            &[
                "-D",
                &data.to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )?;
        Ok(())
    }

    /// Runs each statement with psql as the superuser, one `-c` each (so that CREATE DATABASE
    /// is not inside a transaction block).
    fn psql(&self, database: &str, statements: &[String]) -> Result<(), ClusterError> {
        let port = self.ports[0].to_string();
        let mut args = vec![
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            database,
        ];
        for s in statements {
            args.push("-c");
            args.push(s);
        }
        self.run("psql", &args).map(|_| ())
    }

    fn create_roles(&self) -> Result<(), ClusterError> {
        let mut sql: Vec<String> = ROLES
            .iter()
            .map(|(name, password, _, encryption)| {
                format!("SET password_encryption = '{encryption}'; CREATE ROLE {name} LOGIN PASSWORD '{password}'")
            })
            .collect();
        sql.push("CREATE DATABASE app OWNER app".into());
        sql.push("GRANT ALL ON DATABASE app TO PUBLIC".into());
        self.psql("postgres", &sql)?;
        self.psql("app", &["GRANT ALL ON SCHEMA public TO PUBLIC".into()])
    }

    fn init_replica(&self, i: usize) -> Result<(), ClusterError> {
        let data = self.data(i);
        let port = self.ports[0].to_string();
        let d = data.to_string_lossy();
        self.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &d,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        )?;
        let mut conf = format!("\nport = {}\n", self.ports[i]);
        if self.hosts[i] != "127.0.0.1" {
            // Its own socket directory too: the twin shares the primary's port number.
            let sockets = self.dir.join(format!("sockets{i}"));
            fs::create_dir_all(&sockets)?;
            give_to(&sockets, self.run_as)?;
            conf.push_str(&format!(
                "listen_addresses = '{}'\nunix_socket_directories = '{}'\n",
                self.hosts[i],
                sockets.display()
            ));
        }
        append(&data.join("postgresql.conf"), &conf)?;
        Ok(())
    }

    /// Turns TLS on for server `i` with this certificate chain and key (PEM), and waits until
    /// it has reloaded its configuration.
    #[allow(clippy::disallowed_methods)] // the caller's own thread (tests, demo), never a core
    pub fn enable_tls(&self, i: usize, cert_pem: &str, key_pem: &str) -> Result<(), ClusterError> {
        let data = self.data(i);
        for (file, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(file);
            fs::write(&path, text)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        append(
            &data.join("postgresql.conf"),
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )?;
        self.pg_ctl(i, &["reload"])?;
        // The reload is asynchronous: wait for the server to offer TLS.
        for _ in 0..100 {
            if offers_tls(self.hosts[i], self.ports[i]) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(ClusterError(format!(
            "server {i} does not offer TLS after its reload"
        )))
    }

    /// Makes server `i` refuse every connection without TLS but the superuser's and
    /// replication's (a `hostnossl … reject` rule, as RDS's `rds.force_ssl` does), and reloads.
    pub fn refuse_plaintext(&self, i: usize) -> Result<(), ClusterError> {
        let hba = self.data(i).join("pg_hba.conf");
        let text = fs::read_to_string(&hba)?;
        let mut out = String::new();
        let mut added = false;
        for line in text.lines() {
            let theirs = line.starts_with("host all postgres") || line.contains("replication");
            if !added && line.starts_with("host ") && !theirs {
                out.push_str("hostnossl all all 127.0.0.0/8 reject\n");
                added = true;
            }
            out.push_str(line);
            out.push('\n');
        }
        fs::write(&hba, out)?;
        self.pg_ctl(i, &["reload"])
    }

    /// The server log of server `i` so far.
    pub fn log(&self, i: usize) -> String {
        let name = if i == 0 {
            "primary".to_owned()
        } else {
            format!("replica{i}")
        };
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Runs `pg_ctl -D <server i's data directory>` with `args`.
    fn pg_ctl(&self, i: usize, args: &[&str]) -> Result<(), ClusterError> {
        let data = self.data(i).to_string_lossy().into_owned();
        let mut all = vec!["-D", data.as_str()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all).map(|_| ())
    }

    /// Promotes replica `i` to a primary (`pg_ctl promote`, waiting until it accepts writes).
    pub fn promote(&self, i: usize) -> Result<(), ClusterError> {
        self.pg_ctl(i, &["-w", "-t", "60", "promote"])
    }

    /// Stops server `i` the way a crash would (`pg_ctl stop -m immediate`).
    pub fn crash(&self, i: usize) -> Result<(), ClusterError> {
        self.pg_ctl(i, &["-m", "immediate", "-w", "stop"])
    }

    /// Stops server `i` cleanly (`pg_ctl stop -m fast`: sessions are ended, every commit
    /// is flushed).
    pub fn stop_server(&self, i: usize) -> Result<(), ClusterError> {
        self.pg_ctl(i, &["-m", "fast", "-w", "stop"])
    }

    /// Starts server `i` again after [`LocalCluster::crash`] or [`LocalCluster::stop_server`].
    pub fn restart(&self, i: usize) -> Result<(), ClusterError> {
        self.start(i)
    }

    /// The process id of server `i`'s postmaster, while it runs.
    pub fn postmaster_pid(&self, i: usize) -> Option<u32> {
        let pidfile = fs::read_to_string(self.data(i).join("postmaster.pid")).ok()?;
        pidfile.lines().next()?.trim().parse().ok()
    }

    /// Stops every server (fast shutdown) and keeps the directory.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for i in (0..self.ports.len()).rev() {
            let data = self.data(i);
            if data.join("postmaster.pid").exists() {
                let _ = self.run(
                    "pg_ctl",
                    &["-D", &data.to_string_lossy(), "-m", "fast", "-w", "stop"],
                );
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    use io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// The server binaries: `$PGPILOT_PG_BINDIR`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    if let Some(dir) = std::env::var_os("PGPILOT_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        ClusterError(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: \
             install them with `apt-get install -y postgresql` or set PGPILOT_PG_BINDIR"
                .into(),
        )
    })
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// uid and gid of the `postgres` user from /etc/passwd.
fn postgres_ids() -> Result<(u32, u32), ClusterError> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&"postgres"))
                .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
        })
        .ok_or_else(|| {
            ClusterError(
                "running as root, but there is no `postgres` user to run PostgreSQL as".into(),
            )
        })
}

fn give_to(dir: &Path, ids: Option<(u32, u32)>) -> io::Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        // The postgres user must be able to reach the directory through its parents.
        let mut parent = dir.parent();
        while let Some(p) = parent {
            let mode = fs::metadata(p)?.permissions().mode();
            if mode & 0o001 == 0 {
                fs::set_permissions(p, fs::Permissions::from_mode(mode | 0o001))?;
            }
            parent = p.parent();
        }
    }
    Ok(())
}

/// Whether the server answers SSLRequest with `S`.
fn offers_tls(host: &str, port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect((host, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let mut request = bytes::BytesMut::new();
    pgpilot_protocol::encode::ssl_request(&mut request);
    let mut answer = [0u8; 1];
    s.write_all(&request).is_ok() && s.read_exact(&mut answer).is_ok() && answer == *b"S"
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
