//! Socket options every client and backend connection gets: keepalive and TCP_USER_TIMEOUT, so
//! that a peer that vanished without a word (a failed-over RDS primary, a dead host, a NAT that
//! forgot the flow) is noticed by the kernel instead of holding the socket for hours.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::{SockRef, TcpKeepalive};

use crate::config::TcpOptions;

/// Sets `opts` on a socket; options that are `None` keep the kernel's default.
pub fn apply(socket: SockRef<'_>, opts: &TcpOptions) -> io::Result<()> {
    if let Some(idle) = opts.keepalive_idle {
        let mut keepalive = TcpKeepalive::new().with_time(idle);
        if let Some(interval) = opts.keepalive_interval {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(count) = opts.keepalive_count {
            keepalive = keepalive.with_retries(count);
        }
        // Also turns SO_KEEPALIVE on.
        socket.set_tcp_keepalive(&keepalive)?;
    }
    if let Some(timeout) = opts.user_timeout {
        socket.set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}

/// [`apply`] for a monoio stream, which offers its fd only as `AsRawFd`, not `AsFd`.
pub fn apply_to(stream: &impl AsRawFd, opts: &TcpOptions) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: the fd is owned by `stream`, which stays borrowed (so open) while `fd` is used.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    apply(SockRef::from(&fd), opts)
}

/// Whether an idle pooled connection may be handed out: nothing waits to be read on it. A
/// server that ended the connection while it idled (a restart, `pg_terminate_backend`, a
/// crash) has left its FATAL or its close there. One non-blocking look at the socket, no round
/// trip.
pub fn quiet(stream: &impl AsRawFd) -> bool {
    #[allow(unsafe_code)]
    // SAFETY: as in `apply_to`: the fd stays open while `stream` is borrowed.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // MSG_DONTWAIT: the socket may be in blocking mode (io_uring does not need O_NONBLOCK),
    // and a worker must never block here.
    match SockRef::from(&fd).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        // Ok(0): closed; Ok(_): bytes nobody asked for.
        Ok(_) => false,
    }
}

/// What the kernel reports for a socket, in the shape of [`TcpOptions`] (keepalive timings
/// are the kernel's defaults when keepalive is off).
pub fn read_back(socket: SockRef<'_>) -> io::Result<TcpOptions> {
    Ok(TcpOptions {
        keepalive_idle: if socket.keepalive()? {
            Some(socket.keepalive_time()?)
        } else {
            None
        },
        keepalive_interval: Some(socket.keepalive_interval()?),
        keepalive_count: Some(socket.keepalive_retries()?),
        user_timeout: socket.tcp_user_timeout()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (client, accepted)
    }

    fn options(s: &TcpStream) -> TcpOptions {
        read_back(SockRef::from(s)).unwrap()
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread, not a core: it may sleep
    fn a_quiet_connection_is_told_from_one_with_bytes_or_a_close_without_blocking() {
        use std::io::Write;
        // Blocking sockets: the look must not wait for bytes.
        let (client, mut accepted) = pair();
        assert!(quiet(&client), "nothing sent: quiet");
        accepted.write_all(b"E").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!quiet(&client), "bytes wait to be read");
        let (client, accepted) = pair();
        drop(accepted);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!quiet(&client), "the peer closed");
    }

    #[test]
    fn options_are_set_on_both_ends_of_a_connection() {
        let opts = TcpOptions {
            keepalive_idle: Some(Duration::from_secs(37)),
            keepalive_interval: Some(Duration::from_secs(3)),
            keepalive_count: Some(4),
            user_timeout: Some(Duration::from_millis(4321)),
        };
        let (client, accepted) = pair();
        for s in [&client, &accepted] {
            apply_to(s, &opts).unwrap();
            assert_eq!(options(s), opts);
        }
    }

    #[test]
    fn none_leaves_the_kernel_default() {
        let (client, _accepted) = pair();
        let before = options(&client);
        apply_to(&client, &TcpOptions::default()).unwrap();
        assert_eq!(options(&client), before);
        assert_eq!((before.keepalive_idle, before.user_timeout), (None, None));
    }
}
