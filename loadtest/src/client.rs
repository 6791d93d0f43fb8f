//! A small asynchronous PostgreSQL client on the protocol crate and monoio's TCP streams:
//! startup with SCRAM-SHA-256, MD5 or trust, over plaintext or TLS, simple and extended
//! queries. Many of them share one load-generating thread.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncReadRentExt, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::{ClientTlsStream, TlsConnector};
use pgpilot_protocol::backend::{Authentication, BackendMessage};
use pgpilot_protocol::frame::split_frame;
use pgpilot_protocol::scram::{md5_password, ScramClient, MECHANISM};
use pgpilot_protocol::{encode, Frame};

use crate::tls::Tls;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read may wait for the server.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// Label in reports.
    pub name: String,
    /// Address.
    pub addr: SocketAddr,
    /// Role.
    pub user: String,
    /// Password (SCRAM or MD5, as the server asks).
    pub password: String,
    /// Database.
    pub database: String,
    /// TLS (`--tls`): SSLRequest first, and nothing in plaintext if the server refuses it.
    pub tls: Option<Tls>,
}

/// What went wrong: an I/O failure or an ErrorResponse with its SQLSTATE.
#[derive(Debug)]
pub enum ClientError {
    Io(io::Error),
    Server { code: String, message: String },
    Protocol(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "I/O: {e}"),
            ClientError::Server { code, message } => write!(f, "{code}: {message}"),
            ClientError::Protocol(m) => write!(f, "protocol: {m}"),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// SQLSTATE for counting errors; I/O and protocol failures get their own labels.
    pub fn code(&self) -> String {
        match self {
            ClientError::Io(_) => "io".into(),
            ClientError::Server { code, .. } => code.clone(),
            ClientError::Protocol(_) => "protocol".into(),
        }
    }
}

/// A connection's socket, plain or inside a TLS session.
enum Stream {
    Plain(TcpStream),
    Tls(Box<ClientTlsStream<TcpStream>>),
}

impl Stream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => s.write_all(buf).await,
        }
    }
}

/// Asks for TLS (SSLRequest) and runs the handshake; a server that answers `N` is refused.
async fn start_tls(mut tcp: TcpStream, tls: &Tls) -> Result<Stream, ClientError> {
    let mut request = BytesMut::new();
    encode::ssl_request(&mut request);
    let (res, _) = tcp.write_all(request).await;
    res?;
    let (res, answer) = tcp.read_exact(vec![0u8; 1]).await;
    res?;
    if answer.first() != Some(&b'S') {
        return Err(ClientError::Protocol(
            "the server refused TLS (answered the SSLRequest with N)".into(),
        ));
    }
    let tls = TlsConnector::from(tls.config.clone())
        .connect(tls.name.clone(), tcp)
        .await
        .map_err(|e| ClientError::Protocol(format!("TLS: {e}")))?;
    Ok(Stream::Tls(Box::new(tls)))
}

/// One connection.
pub struct Conn {
    stream: Stream,
    buf: BytesMut,
    out: BytesMut,
    /// A run's count of open connections, which this one is part of until dropped.
    open: Option<Arc<AtomicUsize>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Conn {
    /// Connects and authenticates.
    pub async fn connect(t: &Target) -> Result<Conn, ClientError> {
        let timed_out = || ClientError::Io(io::ErrorKind::TimedOut.into());
        let tcp = monoio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect_addr(t.addr))
            .await
            .map_err(|_| timed_out())??;
        tcp.set_nodelay(true)?;
        let stream = match &t.tls {
            Some(tls) => monoio::time::timeout(CONNECT_TIMEOUT, start_tls(tcp, tls))
                .await
                .map_err(|_| timed_out())??,
            None => Stream::Plain(tcp),
        };
        let mut c = Conn {
            stream,
            buf: BytesMut::with_capacity(8192),
            out: BytesMut::with_capacity(1024),
            open: None,
        };
        encode::startup_message(
            &mut c.out,
            &[
                ("user", &t.user),
                ("database", &t.database),
                ("application_name", "pgpilot-loadtest"),
            ],
        );
        c.flush().await?;
        let mut scram = None;
        loop {
            let frame = c.recv().await?;
            match BackendMessage::parse(&frame.bytes)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                BackendMessage::Authentication(a) => match a {
                    Authentication::Ok => {}
                    Authentication::CleartextPassword => {
                        encode::password_message(&mut c.out, t.password.as_bytes())
                    }
                    Authentication::Md5Password { salt } => encode::password_message(
                        &mut c.out,
                        &md5_password(t.user.as_bytes(), t.password.as_bytes(), salt),
                    ),
                    Authentication::Sasl { .. } => {
                        let (client, first) = ScramClient::new(t.password.as_bytes());
                        scram = Some(client);
                        encode::sasl_initial_response(&mut c.out, MECHANISM, &first);
                    }
                    Authentication::SaslContinue { data } => {
                        let client = scram
                            .as_mut()
                            .ok_or_else(|| ClientError::Protocol("SASLContinue first".into()))?;
                        let reply = client
                            .handle_server_first(data)
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                        encode::sasl_response(&mut c.out, &reply);
                    }
                    Authentication::SaslFinal { data } => {
                        let client = scram
                            .as_ref()
                            .ok_or_else(|| ClientError::Protocol("SASLFinal first".into()))?;
                        client
                            .verify_server_final(data)
                            .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    }
                    Authentication::Unsupported { code } => {
                        return Err(ClientError::Protocol(format!("auth method {code}")))
                    }
                },
                BackendMessage::ErrorResponse(f) => {
                    return Err(ClientError::Server {
                        code: f.code().into(),
                        message: f.message(),
                    })
                }
                BackendMessage::ReadyForQuery { .. } => return Ok(c),
                _ => {}
            }
            if !c.out.is_empty() {
                c.flush().await?;
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        let out = std::mem::take(&mut self.out);
        let (res, mut out) = self.stream.write_all(out).await;
        out.clear();
        self.out = out;
        res.map(|_| ())
    }

    /// Reads what the socket has onto the end of `buf`; 0 at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.reserve(8192);
        let len = buf.len();
        let read = self.stream.read(buf.slice_mut(len..));
        let (res, spare) = match monoio::time::timeout(READ_TIMEOUT, read).await {
            Ok(done) => done,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        };
        self.buf = spare.into_inner();
        res
    }

    async fn recv(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(f) = split_frame(&mut self.buf, 1 << 30)
                .map_err(|e| ClientError::Protocol(e.to_string()))?
            {
                return Ok(f);
            }
            if self.fill().await? == 0 {
                return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads up to ReadyForQuery; returns the first error, if any, after draining.
    async fn until_ready(&mut self) -> Result<usize, ClientError> {
        let mut error = None;
        let mut rows = 0;
        loop {
            let f = self.recv().await?;
            match f.tag {
                b'D' => rows += 1,
                b'E' => {
                    if let Ok(BackendMessage::ErrorResponse(fields)) =
                        BackendMessage::parse(&f.bytes)
                    {
                        error.get_or_insert(ClientError::Server {
                            code: fields.code().into(),
                            message: fields.message(),
                        });
                    }
                }
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Runs SQL with the simple protocol; returns the number of rows.
    pub async fn simple(&mut self, sql: &str) -> Result<usize, ClientError> {
        encode::query(&mut self.out, sql.as_bytes());
        self.flush().await?;
        self.until_ready().await
    }

    /// Runs SQL with the extended protocol (unnamed statement, text parameters).
    pub async fn extended(&mut self, sql: &str, params: &[&[u8]]) -> Result<usize, ClientError> {
        encode::parse(&mut self.out, b"", sql.as_bytes(), &[]);
        self.bind_execute(b"", params).await
    }

    /// Prepares a named statement.
    pub async fn prepare(&mut self, name: &str, sql: &str) -> Result<(), ClientError> {
        encode::parse(&mut self.out, name.as_bytes(), sql.as_bytes(), &[]);
        encode::sync(&mut self.out);
        self.flush().await?;
        self.until_ready().await.map(|_| ())
    }

    /// Runs a statement prepared with [`Conn::prepare`].
    pub async fn execute_prepared(
        &mut self,
        name: &str,
        params: &[&[u8]],
    ) -> Result<usize, ClientError> {
        self.bind_execute(name.as_bytes(), params).await
    }

    async fn bind_execute(
        &mut self,
        statement: &[u8],
        params: &[&[u8]],
    ) -> Result<usize, ClientError> {
        let params: Vec<Option<&[u8]>> = params.iter().map(|p| Some(*p)).collect();
        encode::bind(&mut self.out, b"", statement, &params);
        encode::execute(&mut self.out, b"", 0);
        encode::sync(&mut self.out);
        self.flush().await?;
        self.until_ready().await
    }

    /// Counts this connection in `open` until it is dropped.
    pub fn count_in(&mut self, open: &Arc<AtomicUsize>) {
        open.fetch_add(1, Ordering::Relaxed);
        self.open = Some(open.clone());
    }

    /// Says goodbye and waits for the server to close its end, so that the server, not this
    /// client, holds the TIME_WAIT (a churn run opens tens of thousands of connections).
    pub async fn close(mut self) {
        encode::terminate(&mut self.out);
        if self.flush().await.is_ok() {
            while matches!(self.fill().await, Ok(n) if n > 0) {
                self.buf.clear();
            }
        }
    }
}
