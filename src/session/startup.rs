//! Startup of a client session: SSL/GSS refusal, CancelRequest, admission and startup
//! parameters, then `auth` and `login`. Auth failures never reach a backend.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frame::split_frame;
use pgpilot_protocol::frontend::FrontendTag;
use pgpilot_protocol::startup::{self, StartupPacket};
use pgpilot_protocol::{Frame, ProtocolError};

use super::{Admission, Gucs, Session};
use crate::config::RuleTarget;
use crate::core::Core;

/// Auth messages are small; anything bigger is a protocol violation.
const MAX_AUTH_MESSAGE: u32 = 8192;

/// Why startup ended without a session.
pub(super) enum Refusal {
    /// Tell the client this, then close.
    Fatal(ErrorFields),
    /// Tell a client that asked for protocol 2 this, in protocol 2's format, then close.
    Protocol2(String),
    /// Close without a word: hang-up, cancel request handled, or bytes that are no startup
    /// packet (PostgreSQL answers those with silence too: the peer may not speak its protocol).
    Silent,
}

impl From<ErrorFields> for Refusal {
    fn from(e: ErrorFields) -> Self {
        Refusal::Fatal(e)
    }
}

/// The client half during startup.
pub(super) struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn fill(&mut self) -> Result<(), Refusal> {
        let start = self.buf.len();
        // The buffer holds one startup packet (at most MAX_STARTUP_LEN) and what follows it.
        self.buf.resize(start.saturating_add(1024), 0);
        let n = self
            .stream
            .read(self.buf.get_mut(start..).unwrap_or_default())
            .await
            .unwrap_or(0);
        self.buf.truncate(start.saturating_add(n));
        if n == 0 {
            return Err(Refusal::Silent);
        }
        Ok(())
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|_| Refusal::Silent)
    }

    /// The next untagged startup packet.
    async fn startup_packet(&mut self) -> Result<bytes::Bytes, Refusal> {
        loop {
            match startup::peek_len(&self.buf) {
                Ok(Some(len)) if self.buf.len() >= len => {
                    return Ok(self.buf.split_to(len).freeze())
                }
                Ok(_) => self.fill().await?,
                Err(e) => {
                    log::info!("client refused at startup: invalid startup packet: {e}");
                    return Err(Refusal::Silent);
                }
            }
        }
    }

    /// The next tagged message, which must be a `p` (password / SASL).
    pub(super) async fn password_frame(&mut self) -> Result<Frame, Refusal> {
        loop {
            match split_frame(&mut self.buf, MAX_AUTH_MESSAGE) {
                Ok(Some(f)) if f.tag == FrontendTag::Password as u8 => return Ok(f),
                Ok(Some(f)) if f.tag == FrontendTag::Terminate as u8 => {
                    return Err(Refusal::Silent)
                }
                Ok(Some(_)) => {
                    return Err(ErrorFields::fatal("08P01", "expected a password response").into())
                }
                Ok(None) => self.fill().await?,
                Err(e) => return Err(ErrorFields::fatal("08P01", e.to_string()).into()),
            }
        }
    }
}

/// What a successful handshake established.
struct Startup {
    /// The client's place in `max_client_connections`, held from admission on.
    admission: Admission,
    user: Rc<str>,
    database: Rc<str>,
    gucs: Gucs,
    rule: Option<Target>,
}

/// PostgreSQL's answer to a protocol version it does not speak.
fn unsupported(code: u32) -> Refusal {
    match startup::unsupported_version(code) {
        (text, true) => Refusal::Protocol2(text),
        (text, false) => ErrorFields::fatal("0A000", text).into(),
    }
}

/// Runs startup within `startup_timeout_ms`; `None` when the client goes away or is refused.
pub(super) async fn start(core: Rc<Core>, stream: TcpStream) -> Option<Session> {
    let mut conn = Conn {
        stream,
        buf: BytesMut::new(),
    };
    let limit = core.config.server.startup_timeout;
    let handshake = async { Ok(handshake(&core, &mut conn).await) };
    let outcome = match glommio::timer::timeout(limit, handshake).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ErrorFields::fatal(
            "08006",
            "startup did not finish within startup_timeout_ms",
        )
        .into()),
    };
    let st = match outcome {
        Ok(st) => st,
        Err(Refusal::Fatal(e)) => {
            log::info!("client refused at startup: {} {}", e.code, e.message);
            let mut out = BytesMut::new();
            encode::error_response(&mut out, &e);
            let _ = conn.send(&out).await;
            let _ = conn.stream.close().await;
            return None;
        }
        Err(Refusal::Protocol2(text)) => {
            log::info!("client refused at startup: {text}");
            let mut out = BytesMut::new();
            encode::error_response_v2(&mut out, &text);
            let _ = conn.send(&out).await;
            let _ = conn.stream.close().await;
            return None;
        }
        Err(Refusal::Silent) => return None,
    };
    let cancel = Rc::new(Cell::new(None));
    let (pid, secret) = core.register_session(cancel.clone());
    let mut admission = st.admission;
    admission.pid = Some(pid);
    let gucs = Rc::new(st.gucs);
    let mut session = Session {
        core: core.clone(),
        pid,
        client: conn.stream,
        cbuf: conn.buf,
        out: BytesMut::new(),
        mode: core.config.server.pool_mode,
        max_message: core.config.server.max_message_bytes,
        user: st.user,
        database: st.database,
        startup: gucs.clone(),
        overrides: Vec::new(),
        gucs,
        attached: None,
        parked: None,
        held_begin: None,
        statements: HashMap::new(),
        unnamed: Target::Primary,
        rule: st.rule,
        pinned: false,
        last_write: None,
        read_only_default: false,
        blocked: false,
        skip_until_sync: false,
        view: Rc::new(Vec::new()),
        view_version: u64::MAX,
        cancel,
        _admission: admission,
    };
    session.note_gucs();
    match session.login(secret).await {
        Ok(()) => Some(session),
        Err(e) => {
            log::info!(
                "session={} login failed: {} {}",
                session.pid,
                e.code,
                e.message
            );
            session.send_error(&e).await;
            session.finish().await;
            None
        }
    }
}

async fn handshake(core: &Rc<Core>, conn: &mut Conn) -> Result<Startup, Refusal> {
    // One SSLRequest and one GSSENCRequest may come first; both are declined (TLS is not
    // offered yet, GSSAPI never). A repeated request is what PostgreSQL takes it for: a
    // startup packet of an unknown protocol version.
    let (mut ssl_asked, mut gss_asked) = (false, false);
    let packet = loop {
        let packet = conn.startup_packet().await?;
        match startup::parse(&packet) {
            Ok(StartupPacket::SslRequest) if !ssl_asked => {
                ssl_asked = true;
                conn.send(b"N").await?
            }
            Ok(StartupPacket::GssEncRequest) if !gss_asked => {
                gss_asked = true;
                conn.send(b"N").await?
            }
            Ok(StartupPacket::SslRequest) => return Err(unsupported(startup::SSL_REQUEST)),
            Ok(StartupPacket::GssEncRequest) => return Err(unsupported(startup::GSSENC_REQUEST)),
            Ok(StartupPacket::CancelRequest { pid, secret }) => {
                core.cancel(pid, secret);
                return Err(Refusal::Silent);
            }
            Ok(StartupPacket::Startup(_)) => break packet,
            Err(ProtocolError::UnsupportedVersion { code }) => return Err(unsupported(code)),
            Err(e) => return Err(ErrorFields::fatal("08P01", e.to_string()).into()),
        }
    };
    let Ok(StartupPacket::Startup(msg)) = startup::parse(&packet) else {
        return Err(Refusal::Silent);
    };
    if !core.admit_client() {
        return Err(ErrorFields::fatal("53300", "sorry, too many clients already").into());
    }
    // From here on the client is counted; the admission releases it however startup or the
    // session ends.
    let admission = Admission {
        core: core.clone(),
        pid: None,
    };
    let user = msg.param("user").filter(|u| !u.is_empty());
    let user = user.ok_or_else(|| {
        ErrorFields::fatal(
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    let database = msg
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user);
    if msg
        .param("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(
            ErrorFields::fatal("08P01", "pgpilot does not proxy replication connections").into(),
        );
    }
    let gucs = Gucs::from_startup(&msg.params).map_err(|e| ErrorFields::fatal("22023", e))?;
    let unknown: Vec<&str> = msg
        .params
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| n.starts_with("_pq_."))
        .collect();
    if msg.minor > 0 || !unknown.is_empty() {
        let mut out = BytesMut::new();
        encode::negotiate_protocol_version(&mut out, 0, &unknown);
        conn.send(&out).await?;
    }
    super::auth::authenticate(core, conn, user).await?;
    let app = gucs
        .list
        .iter()
        .find(|(n, _)| n == "application_name")
        .map(|(_, v)| v.as_str());
    let rule = core
        .config
        .routing
        .rule_for(user, database, app)
        .map(|t| match t {
            RuleTarget::Primary => Target::Primary,
            RuleTarget::Replica => Target::Replica,
        });
    let st = Startup {
        admission,
        user: user.into(),
        database: database.into(),
        gucs,
        rule,
    };
    Ok(st)
}
