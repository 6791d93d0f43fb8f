//! A raw PostgreSQL protocol client for edge cases the postgres crate cannot express:
//! pipelines, oversized messages, dying mid-transaction, startup parameters as sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use pgpilot_protocol::backend::{Authentication, BackendMessage};
use pgpilot_protocol::frame::split_frame;
use pgpilot_protocol::scram::{md5_password, ScramClient, MECHANISM};
use pgpilot_protocol::{encode, Frame};

pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    /// ParameterStatus received at login.
    pub params: Vec<(String, String)>,
    /// BackendKeyData received at login.
    pub key: (u32, u32),
}

/// An ErrorResponse as `(SQLSTATE, severity, message)`.
pub fn error_of(frame: &Frame) -> Option<(String, String, String)> {
    match BackendMessage::parse(&frame.bytes) {
        Ok(BackendMessage::ErrorResponse(f)) => Some((
            f.code().to_owned(),
            String::from_utf8_lossy(f.get(b'S').unwrap_or_default()).into_owned(),
            f.message(),
        )),
        _ => None,
    }
}

impl Raw {
    /// Connects and logs in; `Err` holds the ErrorResponse the server sent instead.
    pub fn connect(
        addr: SocketAddr,
        user: &str,
        password: &str,
        params: &[(&str, &str)],
    ) -> Result<Raw, (String, String, String)> {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
            params: Vec::new(),
            key: (0, 0),
        };
        let mut startup = vec![("user", user)];
        if !params.iter().any(|(n, _)| *n == "database") {
            startup.push(("database", "app"));
        }
        startup.extend_from_slice(params);
        let mut out = BytesMut::new();
        encode::startup_message(&mut out, &startup);
        raw.send(&out);
        let mut scram = None;
        loop {
            let frame = raw.recv().expect("server closed during login");
            if let Some(e) = error_of(&frame) {
                return Err(e);
            }
            let mut out = BytesMut::new();
            match BackendMessage::parse(&frame.bytes).unwrap() {
                BackendMessage::Authentication(a) => match a {
                    Authentication::Sasl { .. } => {
                        let (c, first) = ScramClient::new(password.as_bytes());
                        scram = Some(c);
                        encode::sasl_initial_response(&mut out, MECHANISM, &first);
                    }
                    Authentication::SaslContinue { data } => {
                        let reply = scram.as_mut().unwrap().handle_server_first(data).unwrap();
                        encode::sasl_response(&mut out, &reply);
                    }
                    Authentication::SaslFinal { data } => {
                        scram.as_ref().unwrap().verify_server_final(data).unwrap()
                    }
                    Authentication::Md5Password { salt } => {
                        encode::password_message(
                            &mut out,
                            &md5_password(user.as_bytes(), password.as_bytes(), salt),
                        );
                    }
                    Authentication::CleartextPassword => {
                        encode::password_message(&mut out, password.as_bytes())
                    }
                    Authentication::Ok => {}
                    other => panic!("unexpected auth request {other:?}"),
                },
                BackendMessage::ParameterStatus { name, value } => {
                    raw.params.push((name.into(), value.into()))
                }
                BackendMessage::BackendKeyData { pid, secret } => raw.key = (pid, secret),
                BackendMessage::ReadyForQuery { .. } => return Ok(raw),
                _ => {}
            }
            if !out.is_empty() {
                raw.send(&out);
            }
        }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to proxy");
    }

    /// The next message; `None` when the connection is closed.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = split_frame(&mut self.buf, 1 << 30).expect("valid frames") {
                return Some(f);
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Messages up to and including the next ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let f = self.recv().expect("connection closed before ReadyForQuery");
            let done = f.tag == b'Z';
            frames.push(f);
            if done {
                return frames;
            }
        }
    }

    /// Binds and executes a named statement with no parameters; first-column values.
    pub fn run_prepared(&mut self, name: &[u8]) -> Result<Vec<String>, (String, String, String)> {
        let mut out = BytesMut::new();
        encode::bind(&mut out, b"", name, &[]);
        encode::execute(&mut out, b"", 0);
        encode::sync(&mut out);
        self.send(&out);
        rows_of(&self.until_ready())
    }

    /// Runs a simple query and returns the first column of each row as text.
    pub fn query(&mut self, sql: &str) -> Result<Vec<String>, (String, String, String)> {
        let mut out = BytesMut::new();
        encode::query(&mut out, sql.as_bytes());
        self.send(&out);
        rows_of(&self.until_ready())
    }
}

/// First-column values of the DataRows, or the first ErrorResponse.
pub fn rows_of(frames: &[Frame]) -> Result<Vec<String>, (String, String, String)> {
    let mut rows = Vec::new();
    for f in frames {
        if let Some(e) = error_of(f) {
            return Err(e);
        }
        if f.tag == b'D' {
            let body = f.body();
            let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
            rows.push(if len < 0 {
                "NULL".into()
            } else {
                String::from_utf8_lossy(&body[6..6 + len as usize]).into_owned()
            });
        }
    }
    Ok(rows)
}
