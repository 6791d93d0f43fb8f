//! TCP keepalive and TCP_USER_TIMEOUT on the sockets the proxy really uses: the client socket
//! it accepted and the backend socket it connected. The proxy runs in this process, so its
//! sockets are found through /proc and read back with socket2.

use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use pgpilot::config::TcpOptions;
use pgpilot::{Config, Proxy};
use socket2::SockRef;

use crate::common::{self, Opts};
use crate::raw::Raw;

/// Values no default or kernel setting has, so that seeing them proves they were set.
const SERVER_KEYS: &str = "tcp_keepalive_idle_ms = 37000\ntcp_keepalive_interval_ms = 3000\n\
                           tcp_keepalive_count = 4\ntcp_user_timeout_ms = 4321\n";

fn expected() -> TcpOptions {
    TcpOptions {
        keepalive_idle: Some(Duration::from_secs(37)),
        keepalive_interval: Some(Duration::from_secs(3)),
        keepalive_count: Some(4),
        user_timeout: Some(Duration::from_millis(4321)),
    }
}

/// The inode of the IPv4 loopback socket with this local and remote port, from /proc/net/tcp.
/// Entries without one (inode 0: TIME_WAIT leftovers of an earlier connection between the same
/// ports, which loopback's port reuse makes likely) are not it.
fn inode_of(local_port: u16, remote_port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let ours = port(f[1]) == Some(local_port) && port(f[2]) == Some(remote_port);
        (ours && f[9] != "0").then(|| f[9].to_owned())
    })
}

/// The options of this process's socket with this local and remote port.
fn options_of(local_port: u16, remote_port: u16) -> TcpOptions {
    let inode = inode_of(local_port, remote_port)
        .unwrap_or_else(|| panic!("no socket {local_port} -> {remote_port}"));
    let link = format!("socket:[{inode}]");
    let fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == link.as_str()))
        .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("socket {local_port} -> {remote_port} is not this process's"));
    #[allow(unsafe_code)]
    // SAFETY: the fd is open and stays open while it is read: the proxy holds it for a client
    // that is still connected, or for a backend connection idle in its pool.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    pgpilot::tcp::read_back(SockRef::from(&fd)).unwrap()
}

#[test]
fn client_and_backend_sockets_get_keepalive_and_user_timeout() {
    let Some(c) = common::cluster() else { return };
    let text = common::config_text(c, &Opts::default()).replace(
        "startup_timeout_ms = 5000\n",
        &format!("startup_timeout_ms = 5000\n{SERVER_KEYS}"),
    );
    let config: Arc<Config> = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
    let proxy = Proxy::start(config).unwrap();
    let mut client = Raw::connect(proxy.addr(), "app", "app", &[]).unwrap();
    // The port the backend sees its client (the proxy) on is the proxy's end of that socket.
    // Both ends come from the server itself: another test's proxy in this process may hold a
    // socket from the same local port to a different server, so guessing the server is wrong.
    let ends = client
        .query("SELECT inet_client_port() || ' ' || inet_server_port()")
        .unwrap();
    let (local, remote) = ends[0].split_once(' ').unwrap();
    let (backend_local, server): (u16, u16) = (local.parse().unwrap(), remote.parse().unwrap());
    assert!(
        c.ports.contains(&server),
        "the backend is one of the cluster's servers"
    );
    let client_port = client.stream.local_addr().unwrap().port();
    assert_eq!(
        options_of(proxy.addr().port(), client_port),
        expected(),
        "the client socket the proxy accepted"
    );
    assert_eq!(
        options_of(backend_local, server),
        expected(),
        "the backend socket the proxy connected"
    );
    // Our own end of the client connection is untouched: the test reads the right socket.
    assert_eq!(
        options_of(client_port, proxy.addr().port()).keepalive_idle,
        None
    );
}
