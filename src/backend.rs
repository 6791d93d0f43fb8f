//! One PostgreSQL server connection: connect, authenticate, remember its parameters and key,
//! and know whether it is clean enough to go back to a pool.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use pgpilot_protocol::backend::{Authentication, BackendMessage, BackendTag, TransactionStatus};
use pgpilot_protocol::frame::split_frame;
use pgpilot_protocol::scram::{
    end_point_hash, md5_password, Binding, ScramClient, ScramKeys, MECHANISM, MECHANISM_PLUS,
};
use pgpilot_protocol::{encode, Frame};

use crate::config::TcpOptions;
use crate::error::Error;
use crate::permits::Permit;
use crate::tls::{self, BackendTls, SslMode};

mod negotiate;
mod wire;
pub use wire::{client_parsed, Has, Prepared, ServerParams, Wire};

/// Backends are trusted; their messages are bounded only by PostgreSQL's own limit.
pub const MAX_BACKEND_MESSAGE: u32 = 1 << 30;
/// Bytes asked of the kernel per read.
pub const READ_CHUNK: usize = 16 * 1024;

/// Who pgpilot logs in as.
pub struct Login<'a> {
    /// Role name.
    pub user: &'a str,
    /// Password, if the server asks for one.
    pub password: Option<&'a str>,
    /// Without a password: the SCRAM keys a client of this role proved (pass-through).
    pub keys: Option<&'a ScramKeys>,
    /// Database name.
    pub database: &'a str,
    /// `application_name` to log in with (the health checks name themselves; pooled
    /// connections take their clients' parameters later).
    pub application_name: Option<&'a str>,
}

/// An authenticated backend connection: its socket, the pool's bookkeeping, and the protocol
/// state the session core reads and changes. A session's core holds only the state; its I/O
/// shell holds the rest, and the parts are joined again to go back to the pool.
pub struct Backend {
    /// The socket.
    pub stream: TcpStream,
    /// The TLS session over it, when the server speaks TLS.
    pub tls: Option<Box<rustls::ClientConnection>>,
    /// What the pool keeps of it.
    pub conn: Conn,
    /// What pgpilot knows of the backend's protocol state.
    pub state: Wire,
}

/// What the pool keeps of a [`Backend`]'s connection: nothing in it is protocol state.
pub struct Conn {
    /// Backend id in the cluster state.
    pub backend_id: usize,
    /// When the connection was made (for `max_lifetime_ms`).
    pub created: Instant,
    /// When it last went idle (for `idle_timeout_ms`).
    pub idle_since: Instant,
    /// Pool capacity this connection holds while checked out.
    pub permit: Option<Permit>,
}

impl Backend {
    /// Connects (over TLS as `tls` says) and authenticates; returns once the server is ready
    /// for queries.
    pub async fn connect(
        addr: SocketAddr,
        backend_id: usize,
        login: &Login<'_>,
        tcp: &TcpOptions,
        tls: &BackendTls,
    ) -> Result<Backend, Error> {
        let io = |source| Error::Backend { addr, source };
        let stream = TcpStream::connect_addr(addr).await.map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        crate::tcp::apply_to(&stream, tcp).map_err(io)?;
        let now = Instant::now();
        let mut b = Backend {
            stream,
            tls: None,
            conn: Conn {
                backend_id,
                created: now,
                idle_since: now,
                permit: None,
            },
            state: Wire::new(backend_id, addr),
        };
        b.state.local = b.stream.local_addr().ok();
        if tls.mode != SslMode::Disable {
            b.tls = b.negotiate(tls).await?.map(Box::new);
            b.state.encrypted = b.tls.is_some();
        }
        let mut out = BytesMut::new();
        let mut params = vec![("user", login.user), ("database", login.database)];
        if let Some(name) = login.application_name {
            params.push(("application_name", name));
        }
        encode::startup_message(&mut out, &params);
        b.send(out).await?;
        b.authenticate(login).await?;
        loop {
            let frame = b.recv().await?;
            match b.decode(&frame)? {
                BackendMessage::BackendKeyData { pid, secret } => b.state.key = (pid, secret),
                BackendMessage::ParameterStatus { name, value } => b.state.params.set(name, value),
                BackendMessage::ReadyForQuery { .. } => return Ok(b),
                BackendMessage::ErrorResponse(_) => return Err(b.rejected(frame)),
                _ => {}
            }
        }
    }

    async fn authenticate(&mut self, login: &Login<'_>) -> Result<(), Error> {
        let mut scram: Option<ScramClient> = None;
        loop {
            let frame = self.recv().await?;
            let mut out = BytesMut::new();
            match self.decode(&frame)? {
                BackendMessage::Authentication(auth) => match auth {
                    Authentication::Ok => return Ok(()),
                    Authentication::CleartextPassword => {
                        encode::password_message(&mut out, self.password(login)?.as_bytes());
                    }
                    Authentication::Md5Password { salt } => {
                        let hash = md5_password(
                            login.user.as_bytes(),
                            self.password(login)?.as_bytes(),
                            salt,
                        );
                        encode::password_message(&mut out, &hash);
                    }
                    Authentication::Sasl { mechanisms } => {
                        let offers = |name: &str| {
                            Authentication::mechanisms(mechanisms).any(|m| m == name.as_bytes())
                        };
                        // Over TLS, bound to the channel when the server offers it: a
                        // man in the middle holding another certificate cannot relay the login.
                        let bound = match &self.tls {
                            Some(conn) if offers(MECHANISM_PLUS) => conn
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| end_point_hash(cert))
                                .map(Binding::EndPoint),
                            _ => None,
                        };
                        let (mechanism, binding) = match bound {
                            Some(binding) => (MECHANISM_PLUS, binding),
                            None if !offers(MECHANISM) => {
                                return Err(
                                    self.refused("server offers no SASL mechanism pgpilot speaks")
                                )
                            }
                            // A server offering PLUS whose certificate gives no binding data:
                            // `n`, since `y` would read as an offer stripped on the way.
                            None if self.tls.is_some() && !offers(MECHANISM_PLUS) => {
                                (MECHANISM, Binding::Unused)
                            }
                            None => (MECHANISM, Binding::None),
                        };
                        log::debug!("backend {}: SASL with {mechanism}", self.state.addr);
                        let (client, first) = match (login.password, login.keys) {
                            (None, Some(keys)) => ScramClient::with_keys(keys, binding),
                            _ => {
                                ScramClient::with_binding(self.password(login)?.as_bytes(), binding)
                            }
                        };
                        scram = Some(client);
                        encode::sasl_initial_response(&mut out, mechanism, &first);
                    }
                    Authentication::SaslContinue { data } => {
                        let client = scram
                            .as_mut()
                            .ok_or_else(|| self.refused("SASLContinue before SASL"))?;
                        let reply = client
                            .handle_server_first(data)
                            .map_err(|e| self.refused(&e.to_string()))?;
                        encode::sasl_response(&mut out, &reply);
                    }
                    Authentication::SaslFinal { data } => {
                        let client = scram
                            .as_ref()
                            .ok_or_else(|| self.refused("SASLFinal before SASL"))?;
                        client
                            .verify_server_final(data)
                            .map_err(|_| self.refused("server failed to prove the password"))?;
                    }
                    Authentication::Unsupported { code } => {
                        return Err(
                            self.refused(&format!("unsupported authentication request {code}"))
                        );
                    }
                },
                BackendMessage::ErrorResponse(_) => return Err(self.rejected(frame)),
                BackendMessage::NoticeResponse(_) => {}
                _ => return Err(self.refused("unexpected message during authentication")),
            }
            if !out.is_empty() {
                self.send(out).await?;
            }
        }
    }

    fn password<'a>(&self, login: &Login<'a>) -> Result<&'a str, Error> {
        login
            .password
            .ok_or_else(|| self.refused("server asks for a password and the user has none"))
    }

    fn refused(&self, why: &str) -> Error {
        Error::BackendAuth {
            addr: self.state.addr,
            reason: why.to_owned(),
        }
    }

    fn rejected(&self, frame: Frame) -> Error {
        let (code, message) = match BackendMessage::parse(&frame.bytes) {
            Ok(BackendMessage::ErrorResponse(f)) => (f.code().to_owned(), f.message()),
            _ => ("XX000".to_owned(), String::new()),
        };
        Error::BackendRejected {
            addr: self.state.addr,
            code,
            message,
            frame: frame.bytes,
        }
    }

    fn decode<'f>(&self, frame: &'f Frame) -> Result<BackendMessage<'f>, Error> {
        BackendMessage::parse(&frame.bytes).map_err(|source| Error::BackendProtocol {
            addr: self.state.addr,
            source,
        })
    }

    /// Runs SQL with the simple protocol on an idle connection and returns the first column
    /// of every row (NULL as empty); any ErrorResponse, or ending inside a transaction, fails.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<u8>>, Error> {
        let mut q = BytesMut::new();
        encode::query(&mut q, sql.as_bytes());
        self.send(q).await?;
        let mut failed = None;
        let mut rows = Vec::new();
        loop {
            let frame = self.recv().await?;
            match self.decode(&frame)? {
                BackendMessage::ReadyForQuery { status } => {
                    return match failed {
                        None if status == TransactionStatus::Idle => Ok(rows),
                        _ => Err(Error::BackendRejected {
                            addr: self.state.addr,
                            code: failed.unwrap_or_else(|| "25000".to_owned()),
                            message: format!("query {sql:?} failed"),
                            frame: frame.bytes,
                        }),
                    };
                }
                BackendMessage::ParameterStatus { name, value } => {
                    self.state.params.set(name, value)
                }
                BackendMessage::ErrorResponse(f) => failed = Some(f.code().to_owned()),
                BackendMessage::Other {
                    tag: BackendTag::DataRow,
                } => rows.push(first_column(frame.body())),
                _ => {}
            }
        }
    }

    /// Writes all of `bytes` (encrypted over TLS).
    pub async fn send(&mut self, bytes: BytesMut) -> Result<(), Error> {
        let addr = self.state.addr;
        let res = match self.tls.as_mut() {
            None => self.stream.write_all(bytes).await.0,
            Some(conn) => match tls::seal(conn, &bytes) {
                Ok(sealed) => self.stream.write_all(sealed).await.0,
                Err(e) => Err(e),
            },
        };
        res.map(|_| ())
            .map_err(|source| Error::Backend { addr, source })
    }

    /// Reads until one whole message is buffered and returns it.
    pub async fn recv(&mut self) -> Result<Frame, Error> {
        loop {
            if let Some(frame) =
                split_frame(&mut self.state.rbuf, MAX_BACKEND_MESSAGE).map_err(|source| {
                    Error::BackendProtocol {
                        addr: self.state.addr,
                        source,
                    }
                })?
            {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Reads once from the socket into `rbuf` (over TLS: until some plaintext came); EOF is
    /// an error.
    pub async fn fill(&mut self) -> Result<usize, Error> {
        if self.tls.is_some() {
            let before = self.state.rbuf.len();
            loop {
                let cipher = self.read_raw().await?;
                let Some(conn) = self.tls.as_mut() else {
                    return Ok(0);
                };
                let closed =
                    tls::open(conn, &cipher, &mut self.state.rbuf).map_err(|e| self.io(e))?;
                let got = self.state.rbuf.len().saturating_sub(before);
                if got > 0 {
                    return Ok(got);
                }
                if closed {
                    return Err(self.io(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
        }
        // The read fills the buffer's spare room (no zero-fill) and owns it meanwhile.
        self.state.rbuf.reserve(READ_CHUNK);
        let buf = std::mem::take(&mut self.state.rbuf);
        let len = buf.len();
        // monoio reads to the start of a buffer: a slice of its spare room appends.
        let (res, spare) = self.stream.read(buf.slice_mut(len..)).await;
        self.state.rbuf = spare.into_inner();
        let addr = self.state.addr;
        match res {
            Ok(0) => Err(Error::Backend {
                addr,
                source: std::io::ErrorKind::UnexpectedEof.into(),
            }),
            Ok(n) => Ok(n),
            Err(source) => Err(Error::Backend { addr, source }),
        }
    }
}

/// The first column of a DataRow body (NULL and malformed rows as empty).
fn first_column(body: &[u8]) -> Vec<u8> {
    let Some(&[_, _, a, b, c, d]) = body.first_chunk::<6>() else {
        return Vec::new();
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    usize::try_from(len)
        .ok()
        .and_then(|n| body.get(6..6 + n))
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}
