//! The daemon's one error type: variants say who is at fault and what the session does next.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use pgpilot_protocol::ProtocolError;

/// What failed, grouped by what the session must do next.
#[derive(Debug)]
pub enum Error {
    /// The client broke the protocol: tell it (08P01) and close the session.
    Client(ProtocolError),
    /// The client's socket failed or closed: close the session quietly.
    ClientIo(io::Error),
    /// A backend connection failed: drop it; the request may retry on another backend.
    Backend { addr: SocketAddr, source: io::Error },
    /// A backend sent something that is not PostgreSQL protocol: drop it.
    BackendProtocol {
        addr: SocketAddr,
        source: ProtocolError,
    },
    /// Logging in to a backend failed on our side (no password, unsupported method, bad proof).
    BackendAuth { addr: SocketAddr, reason: String },
    /// TLS towards a backend failed as its `sslmode` requires (no TLS offered, a certificate
    /// that does not verify): the backend is not used, and never in plaintext instead.
    BackendTls { addr: SocketAddr, reason: String },
    /// A backend refused us with an ErrorResponse (bad database, auth, too many connections):
    /// the frame is forwarded to the client as it came.
    BackendRejected {
        addr: SocketAddr,
        code: String,
        message: String,
        frame: Bytes,
    },
    /// Nothing free within `checkout_timeout_ms`: tell the client (53300), keep the session.
    PoolTimeout,
    /// No backend can serve the request (none resolved, all refused).
    NoBackend,
    /// Work that needs the primary waited `health.write_hold_ms` and no primary answered:
    /// tell the client (57P03), keep the session.
    NoPrimary { waited_ms: u128, last: String },
}

impl Error {
    /// SQLSTATE for the ErrorResponse we send the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::Client(_) => "08P01",
            Error::ClientIo(_) => "08006",
            Error::Backend { .. } | Error::BackendProtocol { .. } | Error::NoBackend => "08006",
            Error::BackendRejected { .. } | Error::BackendAuth { .. } => "08006",
            Error::BackendTls { .. } => "08006",
            Error::PoolTimeout => "53300",
            Error::NoPrimary { .. } => "57P03",
        }
    }

    /// A backend refused what the client asked of it (a value of class 22, data exception, or
    /// 42, syntax or access): any other backend would refuse it too.
    pub fn is_clients_fault(&self) -> bool {
        matches!(self, Error::BackendRejected { code, .. } if code.starts_with("22") || code.starts_with("42"))
    }

    /// Whether another backend might succeed where this one failed: the connection broke, or
    /// the server refused it because it is shutting down, crashing or starting up (class 57:
    /// `57P01`, `57P02`, `57P03`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Backend { .. } | Error::BackendProtocol { .. } => true,
            Error::BackendRejected { code, .. } => code.starts_with("57"),
            _ => false,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Client(e) => write!(f, "client protocol error: {e}"),
            Error::ClientIo(e) => write!(f, "client connection: {e}"),
            Error::Backend { addr, source } => write!(f, "backend {addr}: {source}"),
            Error::BackendProtocol { addr, source } => write!(f, "backend {addr}: {source}"),
            Error::BackendAuth { addr, reason } => {
                write!(f, "cannot log in to backend {addr}: {reason}")
            }
            Error::BackendTls { addr, reason } => write!(f, "backend {addr}: TLS: {reason}"),
            Error::BackendRejected {
                addr,
                code,
                message,
                ..
            } => {
                write!(f, "backend {addr} refused the connection: {code} {message}")
            }
            Error::PoolTimeout => {
                f.write_str("no backend connection available within checkout_timeout_ms")
            }
            Error::NoBackend => f.write_str("no backend is available"),
            Error::NoPrimary { waited_ms, last } => write!(
                f,
                "no usable primary: waited {waited_ms} ms (health.write_hold_ms) for one to answer; last: {last}"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Client(e) | Error::BackendProtocol { source: e, .. } => Some(e),
            Error::ClientIo(e) | Error::Backend { source: e, .. } => Some(e),
            _ => None,
        }
    }
}
