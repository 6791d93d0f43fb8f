//! A backend connection's TLS: SSLRequest, the server's one-byte answer, and the handshake.

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use pgpilot_protocol::encode;

use super::{Backend, READ_CHUNK};
use crate::error::Error;
use crate::tls::{self, BackendTls};

impl Backend {
    /// SSLRequest, and the TLS handshake if the server says yes. `None`: it said no, and the
    /// mode allows plaintext.
    pub(super) async fn negotiate(
        &mut self,
        tls: &BackendTls,
    ) -> Result<Option<rustls::ClientConnection>, Error> {
        let addr = self.state.addr;
        let failed = |reason: String| Error::BackendTls {
            addr,
            reason: format!("{} (sslmode = {}): {reason}", tls.host, tls.mode),
        };
        let mut request = BytesMut::new();
        encode::ssl_request(&mut request);
        self.send(request).await?;
        // One byte, no more: anything the server sent after it before the handshake would
        // not be protected (CVE-2021-23222).
        let (res, answer) = self.stream.read(Vec::with_capacity(1)).await;
        match res {
            Ok(0) => return Err(self.io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) => return Err(self.io(e)),
        }
        match answer.first() {
            Some(b'S') => {}
            Some(b'N') if tls.mode.allows_plaintext() => return Ok(None),
            Some(b'N') => {
                return Err(failed(format!(
                    "the server does not accept TLS, and sslmode = {} needs it",
                    tls.mode
                )))
            }
            _ => return Err(failed("unexpected answer to SSLRequest".into())),
        }
        let mut conn = match tls.start() {
            Ok(Some(conn)) => conn,
            Ok(None) => return Ok(None),
            Err(e) => return Err(failed(e.to_string())),
        };
        let refused = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::InvalidData => failed(format!("TLS handshake: {e}")),
            _ => Error::Backend { addr, source: e },
        };
        loop {
            let out = tls::pending(&mut conn).map_err(refused)?;
            if !out.is_empty() {
                let (res, _) = self.stream.write_all(out).await;
                res.map_err(|e| self.io(e))?;
            }
            if !conn.is_handshaking() {
                return Ok(Some(conn));
            }
            let cipher = self.read_raw().await?;
            let closed = tls::open(&mut conn, &cipher, &mut self.state.rbuf).map_err(refused)?;
            if closed {
                return Err(failed(
                    "the server closed the TLS session in the handshake".into(),
                ));
            }
        }
    }

    pub(super) fn io(&self, source: std::io::Error) -> Error {
        Error::Backend {
            addr: self.state.addr,
            source,
        }
    }

    /// One read of whatever the socket has (EOF is an error).
    pub(super) async fn read_raw(&mut self) -> Result<BytesMut, Error> {
        let (res, buf) = self.stream.read(BytesMut::with_capacity(READ_CHUNK)).await;
        match res {
            Ok(0) => Err(self.io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => Ok(buf),
            Err(e) => Err(self.io(e)),
        }
    }
}
