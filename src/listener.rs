//! Binds one SO_REUSEPORT listener per core (socket2, so the backlog is ours to set) and runs
//! each core's accept loop, spawning a session per client.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;

use futures_lite::future;
use socket2::{Domain, Protocol, Socket, Type};

use crate::core::Core;
use crate::session;
use crate::tcp;

/// Binds `count` listeners on `addr`. With port 0 the first picks the port and the others
/// join it, so all cores serve one address.
pub fn bind(
    addr: SocketAddr,
    backlog: u32,
    count: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    warn_if_backlog_capped(backlog);
    let mut listeners = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nodelay(true)?;
        socket.bind(&addr.into())?;
        socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
        socket.set_nonblocking(true)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

fn warn_if_backlog_capped(backlog: u32) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") else {
        return;
    };
    if let Ok(max) = text.trim().parse::<u32>() {
        if max < backlog {
            log::warn!(
                "listen_backlog = {backlog} is capped by the kernel at net.core.somaxconn = {max}; \
                 raise it with: sysctl -w net.core.somaxconn={backlog}"
            );
        }
    }
}

/// Accepts clients on this core until shutdown begins.
pub async fn serve(core: Rc<Core>, listener: std::net::TcpListener) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("core {}: cannot use its listener: {e}", core.id);
            return;
        }
    };
    let wake_key = crate::core::FAKE_PIDS;
    loop {
        let shutdown = poll_fn(|cx| {
            if core.shutting_down() {
                return Poll::Ready(None);
            }
            core.on_shutdown(wake_key, cx.waker());
            Poll::Pending
        });
        let accepted = future::or(async { Some(listener.accept().await) }, shutdown).await;
        match accepted {
            None => return,
            Some(Ok((stream, _))) => {
                core.accepted.set(core.accepted.get().wrapping_add(1));
                if let Err(e) = tcp::apply_to(&stream, &core.config().server.tcp) {
                    log::warn!("core {}: cannot set TCP options on a client: {e}", core.id);
                }
                monoio::spawn(session::run(core.clone(), stream));
            }
            Some(Err(e)) => {
                log::warn!("accept failed on core {}: {e}", core.id);
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
