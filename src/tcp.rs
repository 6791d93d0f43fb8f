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
