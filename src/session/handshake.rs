//! A client's startup and authentication as a state machine without I/O.
//!
//! The shell (`startup`) appends what the client sends to [`Handshake::input`] and asks
//! [`Handshake::step`] what to do next; it performs the [`Action`] (write, read more, count the
//! client, forward a cancel, close) and asks again. Every answer PostgreSQL would give a
//! startup packet or an authentication message is decided here, so it is tested without
//! sockets and fuzzed with arbitrary bytes. Nothing here contacts a backend: authentication
//! is finished before the session may attach one.

use std::borrow::Cow;

use bytes::BytesMut;
use pgpilot_protocol::classify::Target;
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frame::split_frame;
use pgpilot_protocol::frontend::{self, FrontendTag, SaslInitialResponse};
use pgpilot_protocol::scram::{self, ScramError, ScramSecret, ScramServer};
use pgpilot_protocol::startup::{self, StartupPacket};
use pgpilot_protocol::ProtocolError;

use super::Gucs;
use crate::config::{AuthMethod, Config, RuleTarget};

/// Auth messages are small; anything bigger is a protocol violation.
const MAX_AUTH_MESSAGE: u32 = 8192;

/// What the shell must do next.
#[derive(Debug)]
pub enum Action {
    /// Write these bytes to the client, then step again.
    Send(BytesMut),
    /// Read more from the client into [`Handshake::input`], then step again; the client
    /// hanging up now ends the handshake silently.
    Read,
    /// Count the client against `max_client_connections`, then call [`Handshake::admitted`].
    Admit,
    /// A CancelRequest: cancel that session's query, then close without a word.
    Cancel { pid: u32, secret: u32 },
    /// Write these bytes (the `S` answering SSLRequest) in plaintext, run the TLS handshake,
    /// call [`Handshake::tls_started`], then step again: from here on everything is encrypted.
    StartTls(BytesMut),
    /// Write these bytes (maybe none) to the client and close.
    Close(BytesMut),
    /// The client is authenticated (AuthenticationOk has been sent): the session begins.
    Done(Startup),
    /// Read this role's SCRAM verifier from the server (`[auth] query`), then call
    /// [`Handshake::looked_up`] and step again.
    LookUp { user: String, database: String },
}

/// What a successful handshake established.
#[derive(Debug)]
pub struct Startup {
    pub user: String,
    pub database: String,
    pub gucs: Gucs,
    /// A `[[routing.rules]]` entry that sends all of the session's statements to one side.
    pub rule: Option<Target>,
    /// A role looked up with `[auth] query`: the keys the client proved, for logging in to
    /// backends on its behalf.
    pub keys: Option<scram::ScramKeys>,
}

/// Where the handshake stands. Each variant holds what only it needs.
enum State<'c> {
    /// Waiting for the startup packet; one SSLRequest and one GSSENCRequest may come first.
    Startup { ssl_asked: bool, gss_asked: bool },
    /// The startup packet is in; waiting for the shell to count the client.
    Admitting(Box<Startup>, bool),
    /// Waiting for the shell to read the role's verifier; `Some` once it has.
    LookingUp(Box<Startup>, Option<Option<ScramSecret>>),
    /// MD5: the salt is sent, the password message is due.
    Md5(Box<Startup>, [u8; 4]),
    /// SCRAM: mechanisms offered, the SASLInitialResponse is due.
    SaslInitial(Box<Startup>, Cow<'c, ScramSecret>),
    /// SCRAM: server-first sent, the client-final is due.
    SaslFinal(Box<Startup>, ScramServer<'c>),
    /// Authenticated; AuthenticationOk is queued.
    Authenticated(Box<Startup>),
    /// Over: `Done`, `Close` or `Cancel` was returned.
    Over,
}

/// One client's handshake.
pub struct Handshake<'c> {
    config: &'c Config,
    /// What the client sent and the handshake has not consumed yet; after `Done` it holds the
    /// first bytes of the session.
    pub input: BytesMut,
    /// What the client is to be sent before the next read.
    out: BytesMut,
    state: State<'c>,
    /// The connection is encrypted (TLS is up).
    encrypted: bool,
    /// What TLS is offered: `None` = SSLRequest is declined.
    tls: Option<crate::tls::ClientMode>,
}

/// Why the handshake ended without a session, as the client is told.
enum Refusal {
    /// An ErrorResponse, then close.
    Fatal(ErrorFields),
    /// Protocol 2's error format (a client that asked for protocol 2 reads only that).
    Protocol2(String),
    /// Close without a word: bytes that are no startup packet (the peer may not speak the
    /// protocol at all), or a hang-up.
    Silent,
}

impl From<ErrorFields> for Refusal {
    fn from(e: ErrorFields) -> Self {
        Refusal::Fatal(e)
    }
}

fn fatal(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal::Fatal(ErrorFields::fatal(code, message))
}

fn violation(e: impl std::fmt::Display) -> Refusal {
    fatal("08P01", e.to_string())
}

/// `Some(step)` to return now, `None` to keep stepping.
type Next = Result<Option<Action>, Refusal>;

impl<'c> Handshake<'c> {
    pub fn new(config: &'c Config) -> Self {
        Self::offering(config, config.client_tls.as_ref().map(|t| t.mode))
    }

    /// A handshake offering TLS in `tls` mode (a reload may have changed the config's).
    pub fn offering(config: &'c Config, tls: Option<crate::tls::ClientMode>) -> Self {
        Handshake {
            config,
            input: BytesMut::new(),
            out: BytesMut::new(),
            state: State::Startup {
                ssl_asked: false,
                gss_asked: false,
            },
            encrypted: false,
            tls: tls.filter(|m| *m != crate::tls::ClientMode::Disable),
        }
    }

    /// The shell's word that the TLS handshake of [`Action::StartTls`] is done.
    pub fn tls_started(&mut self) {
        self.encrypted = true;
    }

    /// The shell's answer to [`Action::Admit`].
    /// The outcome of [`Action::LookUp`]: the role's verifier, `None` when the server has
    /// none pgpilot can use (no such role, no SCRAM verifier, the lookup failed).
    pub fn looked_up(&mut self, secret: Option<ScramSecret>) {
        if let State::LookingUp(_, found) = &mut self.state {
            *found = Some(secret);
        }
    }

    pub fn admitted(&mut self, ok: bool) {
        if let State::Admitting(_, answer) = &mut self.state {
            *answer = ok;
        }
    }

    /// What to do next.
    pub fn step(&mut self) -> Action {
        loop {
            let next = match std::mem::replace(&mut self.state, State::Over) {
                State::Startup {
                    ssl_asked,
                    gss_asked,
                } => self.on_startup(ssl_asked, gss_asked),
                State::Admitting(st, ok) => self.on_admitted(st, ok),
                State::LookingUp(st, None) => {
                    let ask = Action::LookUp {
                        user: st.user.clone(),
                        database: st.database.clone(),
                    };
                    self.state = State::LookingUp(st, None);
                    return ask;
                }
                State::LookingUp(st, Some(found)) => {
                    // No verifier: the whole exchange against a mock one, as for any unknown
                    // role, so a probe cannot tell which roles exist.
                    let secret =
                        found.unwrap_or_else(|| self.config.mock_auth.secret(st.user.as_bytes()));
                    encode::auth_sasl(&mut self.out, &[scram::MECHANISM]);
                    self.state = State::SaslInitial(st, Cow::Owned(secret));
                    Ok(None)
                }
                State::Md5(st, salt) => self.on_md5(st, salt),
                State::SaslInitial(st, secret) => self.on_sasl_initial(st, secret),
                State::SaslFinal(st, server) => self.on_sasl_final(st, server),
                State::Authenticated(st) => {
                    if !self.out.is_empty() {
                        self.state = State::Authenticated(st);
                        return Action::Send(self.out.split());
                    }
                    return Action::Done(*st);
                }
                State::Over => return Action::Close(BytesMut::new()),
            };
            match next {
                Ok(None) => {}
                Ok(Some(Action::Read)) if !self.out.is_empty() => {
                    return Action::Send(self.out.split())
                }
                Ok(Some(action)) => return action,
                Err(refusal) => {
                    // What was queued before (an `N` to an SSLRequest) still goes first.
                    self.state = State::Over;
                    return match refusal {
                        Refusal::Fatal(e) => {
                            log::info!("client refused at startup: {} {}", e.code, e.message);
                            encode::error_response(&mut self.out, &e);
                            Action::Close(self.out.split())
                        }
                        Refusal::Protocol2(text) => {
                            log::info!("client refused at startup: {text}");
                            encode::error_response_v2(&mut self.out, &text);
                            Action::Close(self.out.split())
                        }
                        Refusal::Silent => Action::Close(self.out.split()),
                    };
                }
            }
        }
    }

    fn on_startup(&mut self, mut ssl_asked: bool, mut gss_asked: bool) -> Next {
        let wait = State::Startup {
            ssl_asked,
            gss_asked,
        };
        let len = match startup::peek_len(&self.input) {
            Ok(Some(len)) if self.input.len() >= len => len,
            Ok(_) => {
                self.state = wait;
                return Ok(Some(Action::Read));
            }
            Err(e) => {
                log::info!("client refused at startup: invalid startup packet: {e}");
                return Err(Refusal::Silent);
            }
        };
        let packet = self.input.split_to(len).freeze();
        match startup::parse(&packet) {
            // TLS is accepted when `[tls] client_mode` offers it, GSSAPI never; a repeated
            // request is what PostgreSQL takes it for, a startup packet of an unknown protocol
            // version.
            Ok(StartupPacket::SslRequest) if !ssl_asked && self.tls.is_some() => {
                if !self.input.is_empty() {
                    // Bytes sent before the handshake would pass as if protected
                    // (CVE-2021-23214): PostgreSQL refuses them too.
                    return Err(fatal(
                        "08P01",
                        "received unencrypted data after SSL request",
                    ));
                }
                self.out.extend_from_slice(b"S");
                self.state = State::Startup {
                    ssl_asked: true,
                    gss_asked,
                };
                return Ok(Some(Action::StartTls(self.out.split())));
            }
            Ok(StartupPacket::SslRequest) if !ssl_asked => {
                ssl_asked = true;
                self.out.extend_from_slice(b"N");
            }
            Ok(StartupPacket::GssEncRequest) if !gss_asked => {
                gss_asked = true;
                self.out.extend_from_slice(b"N");
            }
            Ok(StartupPacket::SslRequest) => return Err(unsupported(startup::SSL_REQUEST)),
            Ok(StartupPacket::GssEncRequest) => return Err(unsupported(startup::GSSENC_REQUEST)),
            Ok(StartupPacket::CancelRequest { pid, secret }) => {
                return Ok(Some(Action::Cancel { pid, secret }))
            }
            Ok(StartupPacket::Startup(msg)) => {
                let required = self.tls == Some(crate::tls::ClientMode::Require);
                if required && !self.encrypted {
                    return Err(fatal(
                        "28000",
                        format!(
                            "no pgpilot entry for user \"{}\", database \"{}\", no encryption \
                             (tls.client_mode = \"require\")",
                            msg.param("user").unwrap_or_default(),
                            msg.param("database")
                                .or(msg.param("user"))
                                .unwrap_or_default()
                        ),
                    ));
                }
                let st = self.read_startup(&msg)?;
                self.state = State::Admitting(Box::new(st), false);
                return Ok(Some(Action::Admit));
            }
            Err(ProtocolError::UnsupportedVersion { code }) => return Err(unsupported(code)),
            Err(e) => return Err(violation(e)),
        }
        self.state = State::Startup {
            ssl_asked,
            gss_asked,
        };
        Ok(None)
    }

    /// What the startup packet says, checked as PostgreSQL checks it (before admission: a
    /// client turned away for its packet takes no slot).
    fn read_startup(&mut self, msg: &startup::StartupMessage<'_>) -> Result<Startup, Refusal> {
        let user = msg.param("user").filter(|u| !u.is_empty()).ok_or_else(|| {
            fatal(
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
            return Err(fatal(
                "08P01",
                "pgpilot does not proxy replication connections",
            ));
        }
        let gucs = Gucs::from_startup(&msg.params).map_err(|e| fatal("22023", e))?;
        let unknown: Vec<&str> = msg
            .params
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| n.starts_with("_pq_."))
            .collect();
        if msg.minor > 0 || !unknown.is_empty() {
            encode::negotiate_protocol_version(&mut self.out, 0, &unknown);
        }
        let app = gucs
            .list
            .iter()
            .find(|(n, _)| n == "application_name")
            .map(|(_, v)| v.as_str());
        let rule = self
            .config
            .routing
            .rule_for(user, database, app)
            .map(|t| match t {
                RuleTarget::Primary => Target::Primary,
                RuleTarget::Replica => Target::Replica,
            });
        Ok(Startup {
            user: user.to_owned(),
            database: database.to_owned(),
            gucs,
            rule,
            keys: None,
        })
    }

    /// Counted (or not); then the authentication request the configured method makes.
    fn on_admitted(&mut self, st: Box<Startup>, ok: bool) -> Next {
        if !ok {
            return Err(fatal("53300", "sorry, too many clients already"));
        }
        let known = self.config.user(&st.user);
        match self.config.auth_method {
            AuthMethod::Trust => {
                // Trust has no secret to protect, so (as PostgreSQL does) it says who is unknown.
                if known.is_none() {
                    return Err(fatal(
                        "28000",
                        format!("role \"{}\" is not served by pgpilot", st.user),
                    ));
                }
                self.authenticated(st);
            }
            AuthMethod::Md5 => {
                let salt: [u8; 4] = scram::random_bytes();
                encode::auth_md5(&mut self.out, salt);
                self.state = State::Md5(st, salt);
            }
            AuthMethod::ScramSha256 => {
                // An unknown user gets a mock secret whose salt is stable per name, and fails
                // the same way as a wrong password (PostgreSQL's mock authentication).
                let secret = match known {
                    Some(u) => Cow::Borrowed(&u.scram),
                    None if self.config.auth_query.is_some() => {
                        self.state = State::LookingUp(st, None);
                        return Ok(None);
                    }
                    None => Cow::Owned(self.config.mock_auth.secret(st.user.as_bytes())),
                };
                encode::auth_sasl(&mut self.out, &[scram::MECHANISM]);
                self.state = State::SaslInitial(st, secret);
            }
        }
        Ok(None)
    }

    /// The next password-type message (`p`), `None` until it is all here.
    fn password_frame(&mut self) -> Result<Option<pgpilot_protocol::Frame>, Refusal> {
        match split_frame(&mut self.input, MAX_AUTH_MESSAGE) {
            Ok(Some(f)) if f.tag == FrontendTag::Password as u8 => Ok(Some(f)),
            Ok(Some(f)) if f.tag == FrontendTag::Terminate as u8 => Err(Refusal::Silent),
            Ok(Some(_)) => Err(fatal("08P01", "expected a password response")),
            Ok(None) => Ok(None),
            Err(e) => Err(violation(e)),
        }
    }

    fn on_md5(&mut self, st: Box<Startup>, salt: [u8; 4]) -> Next {
        let Some(frame) = self.password_frame()? else {
            self.state = State::Md5(st, salt);
            return Ok(Some(Action::Read));
        };
        let got = frontend::password(frame.body()).map_err(violation)?;
        // An unknown user's answer is checked too (against no password), so that it takes as
        // long as a known user's.
        let known = self.config.user(&st.user);
        let password = known.map_or("", |u| u.password.as_str());
        let expected = scram::md5_password(st.user.as_bytes(), password.as_bytes(), salt);
        if !(scram::md5_matches(got, &expected) && known.is_some()) {
            return Err(auth_failed(&st.user));
        }
        self.authenticated(st);
        Ok(None)
    }

    fn on_sasl_initial(&mut self, st: Box<Startup>, secret: Cow<'c, ScramSecret>) -> Next {
        let Some(frame) = self.password_frame()? else {
            self.state = State::SaslInitial(st, secret);
            return Ok(Some(Action::Read));
        };
        let init = SaslInitialResponse::parse(frame.body()).map_err(violation)?;
        if init.mechanism != scram::MECHANISM {
            return Err(fatal(
                "08P01",
                "client selected an invalid SASL authentication mechanism",
            ));
        }
        let mut server = ScramServer::new(secret);
        let first = server
            .handle_client_first(init.data.unwrap_or_default())
            .map_err(violation)?;
        encode::auth_sasl_continue(&mut self.out, first.as_bytes());
        self.state = State::SaslFinal(st, server);
        Ok(None)
    }

    fn on_sasl_final(&mut self, st: Box<Startup>, mut server: ScramServer<'c>) -> Next {
        let Some(frame) = self.password_frame()? else {
            self.state = State::SaslFinal(st, server);
            return Ok(Some(Action::Read));
        };
        match server.handle_client_final(frame.body()) {
            Ok(fin) => {
                encode::auth_sasl_final(&mut self.out, fin.as_bytes());
                let mut st = st;
                if self.config.user(&st.user).is_none() {
                    // Looked up: pgpilot logs in to backends with what the client proved.
                    st.keys = server.proven_keys();
                }
                self.authenticated(st);
                Ok(None)
            }
            Err(ScramError::AuthFailed) => Err(auth_failed(&st.user)),
            Err(e) => Err(violation(e)),
        }
    }

    fn authenticated(&mut self, st: Box<Startup>) {
        encode::auth_ok(&mut self.out);
        self.state = State::Authenticated(st);
    }
}

/// The one answer to a wrong password and to an unknown user alike.
fn auth_failed(user: &str) -> Refusal {
    fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

/// PostgreSQL's answer to a protocol version it does not speak.
fn unsupported(code: u32) -> Refusal {
    match startup::unsupported_version(code) {
        (text, true) => Refusal::Protocol2(text),
        (text, false) => fatal("0A000", text),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use pgpilot_protocol::backend::{Authentication, BackendMessage};
    use pgpilot_protocol::scram::ScramClient;

    use super::*;

    fn config(method: &str) -> std::sync::Arc<Config> {
        let text = format!(
            "[auth]\nmethod = \"{method}\"\n\n[[users]]\nname = \"app\"\npassword = \"app\"\n\n\
             [[backends]]\nname = \"p\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n"
        );
        Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode::startup_message(&mut out, params);
        out.to_vec()
    }

    fn p(body: &[u8]) -> Vec<u8> {
        let mut out = vec![b'p'];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    const APP: &[(&str, &str)] = &[("user", "app"), ("database", "app")];

    /// What the handshake asked for, with the bytes it sent decoded to message tags (or the
    /// SQLSTATE of an ErrorResponse).
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Sent(Vec<String>),
        Read,
        Admit,
        Cancel(u32, u32),
        Closed(Vec<String>),
        Done(String, String),
        /// `S` sent, TLS taken as up.
        StartTls,
        /// The verifier of this role asked for (and, for `dyn`, found: password `dyn`).
        LookUp(String),
    }

    fn describe(bytes: &[u8]) -> Vec<String> {
        let mut buf = BytesMut::from(bytes);
        if buf.as_ref() == b"N" {
            return vec!["N".into()];
        }
        let mut out = Vec::new();
        while let Ok(Some(f)) = split_frame(&mut buf, 1 << 20) {
            out.push(match BackendMessage::parse(&f.bytes) {
                Ok(BackendMessage::ErrorResponse(e)) => format!("E{}", e.code()),
                Ok(BackendMessage::Authentication(a)) => format!("R{a:?}")
                    .split([' ', '{', '('])
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                _ => (f.tag as char).to_string(),
            });
        }
        if !buf.is_empty() {
            out.push(format!("raw:{}", String::from_utf8_lossy(&buf)));
        }
        out
    }

    /// Steps until the handshake reads, admits (answered `admit`) or ends.
    fn run(hs: &mut Handshake<'_>, admit: bool) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            let action = hs.step();
            let (s, stop) = match action {
                Action::Send(b) => (Seen::Sent(describe(&b)), false),
                Action::Read => (Seen::Read, true),
                Action::Admit => {
                    hs.admitted(admit);
                    (Seen::Admit, false)
                }
                Action::Cancel { pid, secret } => (Seen::Cancel(pid, secret), true),
                Action::Close(b) => (Seen::Closed(describe(&b)), true),
                Action::Done(st) => (Seen::Done(st.user, st.database), true),
                Action::StartTls(b) => {
                    assert_eq!(b.as_ref(), b"S");
                    hs.tls_started();
                    (Seen::StartTls, false)
                }
                Action::LookUp { user, .. } => {
                    let found =
                        (user == "dyn").then(|| ScramSecret::derive(b"dyn", b"dyn salt", 4096));
                    hs.looked_up(found);
                    (Seen::LookUp(user), false)
                }
            };
            seen.push(s);
            if stop {
                return seen;
            }
        }
    }

    fn feed(hs: &mut Handshake<'_>, bytes: &[u8]) -> Vec<Seen> {
        hs.input.extend_from_slice(bytes);
        run(hs, true)
    }

    fn sent(tags: &[&str]) -> Seen {
        Seen::Sent(tags.iter().map(|t| t.to_string()).collect())
    }

    fn closed(tags: &[&str]) -> Seen {
        Seen::Closed(tags.iter().map(|t| t.to_string()).collect())
    }

    #[test]
    fn startup_waits_for_the_whole_packet_at_every_cut() {
        let config = config("trust");
        let packet = startup_packet(APP);
        for cut in 0..packet.len() {
            let mut hs = Handshake::new(&config);
            assert_eq!(feed(&mut hs, &packet[..cut]), [Seen::Read], "cut at {cut}");
            let rest = feed(&mut hs, &packet[cut..]);
            assert_eq!(
                rest,
                [
                    Seen::Admit,
                    sent(&["ROk"]),
                    Seen::Done("app".into(), "app".into())
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn startup_packets_postgres_refuses() {
        let config = config("trust");
        let mut v2 = BytesMut::new();
        v2.put_u32(9);
        v2.put_u32(2 << 16);
        v2.put_u8(0);
        let mut v4 = BytesMut::new();
        v4.put_u32(9);
        v4.put_u32(4 << 16);
        v4.put_u8(0);
        let cases: Vec<(&str, Vec<u8>, Vec<Seen>)> = vec![
            ("too short", vec![0, 0, 0, 4], vec![closed(&[])]),
            ("too long", vec![0, 0, 0x27, 0x15], vec![closed(&[])]),
            (
                "protocol 2",
                v2.to_vec(),
                vec![closed(&[
                    "raw:EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.0\n\0",
                ])],
            ),
            ("protocol 4", v4.to_vec(), vec![closed(&["E0A000"])]),
            (
                "no user",
                startup_packet(&[("database", "app")]),
                vec![closed(&["E28000"])],
            ),
            (
                "replication",
                startup_packet(&[("user", "app"), ("replication", "true")]),
                vec![closed(&["E08P01"])],
            ),
            (
                "cancel",
                vec![0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7, 0, 0, 0, 9],
                vec![Seen::Cancel(7, 9)],
            ),
            (
                "unknown user with trust",
                startup_packet(&[("user", "nobody")]),
                vec![Seen::Admit, closed(&["E28000"])],
            ),
        ];
        for (what, bytes, want) in cases {
            let mut hs = Handshake::new(&config);
            assert_eq!(feed(&mut hs, &bytes), want, "{what}");
            assert!(
                matches!(hs.step(), Action::Close(b) if b.is_empty()),
                "{what}: over is over"
            );
        }
    }

    #[test]
    fn ssl_and_gss_are_declined_once_each() {
        let config = config("trust");
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        let mut hs = Handshake::new(&config);
        assert_eq!(feed(&mut hs, &ssl), [sent(&["N"]), Seen::Read]);
        assert_eq!(feed(&mut hs, &gss), [sent(&["N"]), Seen::Read]);
        assert_eq!(
            feed(&mut hs, &startup_packet(APP)),
            [
                Seen::Admit,
                sent(&["ROk"]),
                Seen::Done("app".into(), "app".into())
            ]
        );
        for twice in [ssl, gss] {
            let mut hs = Handshake::new(&config);
            feed(&mut hs, &twice);
            assert_eq!(feed(&mut hs, &twice), [closed(&["E0A000"])]);
        }
    }

    #[test]
    fn a_minor_version_above_zero_is_negotiated_down() {
        let config = config("trust");
        let mut packet = startup_packet(&[("user", "app"), ("_pq_.future", "1")]);
        packet[7] = 2; // protocol 3.2
        let mut hs = Handshake::new(&config);
        assert_eq!(
            feed(&mut hs, &packet),
            [
                Seen::Admit,
                sent(&["v", "ROk"]),
                Seen::Done("app".into(), "app".into())
            ]
        );
    }

    #[test]
    fn a_full_house_is_53300() {
        let config = config("scram-sha-256");
        let mut hs = Handshake::new(&config);
        hs.input.extend_from_slice(&startup_packet(APP));
        assert_eq!(run(&mut hs, false), [Seen::Admit, closed(&["E53300"])]);
    }

    #[test]
    fn md5_right_wrong_unknown_and_malformed() {
        let config = config("md5");
        let login = |user: &str, answer: &dyn Fn([u8; 4]) -> Vec<u8>| {
            let mut hs = Handshake::new(&config);
            let first = feed(&mut hs, &startup_packet(&[("user", user)]));
            assert_eq!(first, [Seen::Admit, sent(&["RMd5Password"]), Seen::Read]);
            let State::Md5(_, salt) = &hs.state else {
                panic!("waiting for the password")
            };
            let salt = *salt;
            feed(&mut hs, &answer(salt))
        };
        fn hash(user: &'static str, pw: &'static str) -> impl Fn([u8; 4]) -> Vec<u8> {
            move |salt| {
                let mut body = scram::md5_password(user.as_bytes(), pw.as_bytes(), salt);
                body.push(0);
                p(&body)
            }
        }
        assert_eq!(
            login("app", &hash("app", "app")),
            [sent(&["ROk"]), Seen::Done("app".into(), "app".into())]
        );
        assert_eq!(login("app", &hash("app", "wrong")), [closed(&["E28P01"])]);
        assert_eq!(login("nobody", &hash("nobody", "")), [closed(&["E28P01"])]);
        assert_eq!(login("app", &|_| p(b"no nul")), [closed(&["E08P01"])]);
        assert_eq!(
            login("app", &|_| b"Q\0\0\0\x09SELECT\0".to_vec()),
            [closed(&["E08P01"])]
        );
        assert_eq!(login("app", &|_| b"X\0\0\0\x04".to_vec()), [closed(&[])]);
        assert_eq!(
            login("app", &|_| b"p\x7f\0\0\0".to_vec()),
            [closed(&["E08P01"])],
            "a password message longer than any password"
        );
    }

    fn sasl_initial(mechanism: &str, data: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode::sasl_initial_response(&mut out, mechanism, data);
        out.to_vec()
    }

    /// The server-first message inside the SASLContinue the handshake sent.
    fn server_first(hs: &mut Handshake<'_>, client_first: &[u8]) -> Vec<u8> {
        hs.input
            .extend_from_slice(&sasl_initial(scram::MECHANISM, client_first));
        let Action::Send(bytes) = hs.step() else {
            panic!("a SASLContinue")
        };
        let mut buf = BytesMut::from(&bytes[..]);
        let f = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        match BackendMessage::parse(&f.bytes) {
            Ok(BackendMessage::Authentication(Authentication::SaslContinue { data })) => {
                data.to_vec()
            }
            other => panic!("not a SASLContinue: {other:?}"),
        }
    }

    #[test]
    fn scram_states_from_mechanisms_to_final() {
        let config = config("scram-sha-256");
        let begin = |user: &str| {
            let mut hs = Handshake::new(&config);
            let first = feed(&mut hs, &startup_packet(&[("user", user)]));
            assert_eq!(first, [Seen::Admit, sent(&["RSasl"]), Seen::Read]);
            hs
        };
        // The whole exchange with the right password.
        for password in ["app", "wrong"] {
            let mut hs = begin("app");
            let (mut client, first) = ScramClient::new(password.as_bytes());
            let server = server_first(&mut hs, &first);
            assert_eq!(run(&mut hs, true), [Seen::Read]);
            let fin = client.handle_server_first(&server).unwrap();
            let got = feed(&mut hs, &p(&fin));
            if password == "app" {
                assert_eq!(
                    got,
                    [
                        sent(&["RSaslFinal", "ROk"]),
                        Seen::Done("app".into(), "app".into())
                    ]
                );
            } else {
                assert_eq!(got, [closed(&["E28P01"])]);
            }
        }
        // An unknown user goes through the same states and fails like a wrong password.
        let mut hs = begin("nobody");
        let (mut client, first) = ScramClient::new(b"guess");
        let server = server_first(&mut hs, &first);
        let fin = client.handle_server_first(&server).unwrap();
        assert_eq!(feed(&mut hs, &p(&fin)), [closed(&["E28P01"])]);
        // Malformed messages at each state.
        let mut hs = begin("app");
        assert_eq!(
            feed(&mut hs, &sasl_initial("SCRAM-MD4", b"n,,n=,r=abc")),
            [closed(&["E08P01"])]
        );
        let mut hs = begin("app");
        assert_eq!(
            feed(&mut hs, &sasl_initial(scram::MECHANISM, b"garbage")),
            [closed(&["E08P01"])]
        );
        let mut hs = begin("app");
        assert_eq!(feed(&mut hs, &p(b"\xff")), [closed(&["E08P01"])]);
        let mut hs = begin("app");
        server_first(&mut hs, b"n,,n=,r=abcdef");
        assert_eq!(
            feed(&mut hs, &p(b"c=biws,r=other,p=AAAA")),
            [closed(&["E08P01"])]
        );
    }

    #[test]
    fn roles_not_in_the_config_are_looked_up_and_their_keys_kept() {
        let text = "[auth]\nuser = \"app\"\n\n[[users]]\nname = \"app\"\npassword = \"app\"\n\n\
                    [[backends]]\nname = \"p\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n";
        let config = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        for (user, password, ok) in [
            ("dyn", "dyn", true),
            ("dyn", "nope", false),
            ("ghost", "x", false),
        ] {
            let mut hs = Handshake::new(&config);
            let first = feed(&mut hs, &startup_packet(&[("user", user)]));
            assert_eq!(
                first,
                [
                    Seen::Admit,
                    Seen::LookUp(user.into()),
                    sent(&["RSasl"]),
                    Seen::Read
                ],
                "{user}"
            );
            let (mut client, first) = ScramClient::new(password.as_bytes());
            let server = server_first(&mut hs, &first);
            let fin = client.handle_server_first(&server).unwrap();
            if !ok {
                let got = feed(&mut hs, &p(&fin));
                assert_eq!(got, [closed(&["E28P01"])], "{user}/{password}");
                continue;
            }
            hs.input.extend_from_slice(&p(&fin));
            assert!(matches!(hs.step(), Action::Send(_)), "SASLFinal and Ok");
            let Action::Done(st) = hs.step() else {
                panic!("done")
            };
            let keys = st.keys.expect("the proven keys");
            assert_eq!(keys.secret, ScramSecret::derive(b"dyn", b"dyn salt", 4096));
        }
        // A user in the config is never looked up, and keeps no keys.
        let mut hs = Handshake::new(&config);
        let first = feed(&mut hs, &startup_packet(&[("user", "app")]));
        assert_eq!(first, [Seen::Admit, sent(&["RSasl"]), Seen::Read]);
    }

    #[test]
    fn the_session_keeps_what_came_after_the_handshake() {
        let config = config("trust");
        let mut hs = Handshake::new(&config);
        let mut bytes = startup_packet(APP);
        bytes.extend_from_slice(b"Q\0\0\0\x0dSELECT 1\0");
        assert_eq!(
            feed(&mut hs, &bytes),
            [
                Seen::Admit,
                sent(&["ROk"]),
                Seen::Done("app".into(), "app".into())
            ]
        );
        assert_eq!(&hs.input[..], b"Q\0\0\0\x0dSELECT 1\0");
    }

    #[test]
    fn unknown_user_sees_a_stable_salt_and_the_same_shape_as_a_known_one() {
        let config = config("scram-sha-256");
        let seen = |user: &str| {
            let mut hs = Handshake::new(&config);
            feed(&mut hs, &startup_packet(&[("user", user)]));
            let first = String::from_utf8(server_first(&mut hs, b"n,,n=,r=probe")).unwrap();
            let shape: Vec<(String, usize)> = first
                .split(',')
                .map(|a| (a[..2].to_owned(), a.len()))
                .collect();
            let salt = first.split(',').nth(1).unwrap().to_owned();
            (shape, salt)
        };
        let (known_shape, known_salt) = seen("app");
        let (shape, salt) = seen("nobody");
        assert_eq!(shape, known_shape, "r=, s=, i= of the same lengths");
        assert!(shape.iter().map(|(k, _)| k).eq(["r=", "s=", "i="].iter()));
        assert_eq!(seen("nobody"), (shape.clone(), salt.clone()), "stable salt");
        assert_ne!(salt, known_salt);
        assert_ne!(salt, seen("nobody2").1);
    }

    /// A trust config offering TLS to clients in `mode`, with a certificate made here.
    fn tls_config(mode: &str) -> std::sync::Arc<Config> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("pgpilot-hs-{mode}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let text = format!(
            "[auth]\nmethod = \"trust\"\n\n[[users]]\nname = \"app\"\npassword = \"app\"\n\n\
             [[backends]]\nname = \"p\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n\n\
             [tls]\nclient_mode = \"{mode}\"\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n"
        );
        let config = Config::parse(&text, &dir.join("t.toml")).unwrap();
        let _ = std::fs::remove_dir_all(dir);
        config
    }

    #[test]
    fn tls_is_offered_when_configured_and_plaintext_refused_when_required() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let done = [
            Seen::Admit,
            sent(&["ROk"]),
            Seen::Done("app".into(), "app".into()),
        ];
        for mode in ["allow", "require"] {
            let config = tls_config(mode);
            let mut hs = Handshake::new(&config);
            assert_eq!(feed(&mut hs, &ssl), [Seen::StartTls, Seen::Read], "{mode}");
            assert_eq!(feed(&mut hs, &startup_packet(APP)), done, "{mode}");
            // Bytes pipelined behind the SSLRequest would pass as if protected.
            let mut hs = Handshake::new(&config);
            let mut stuffed = ssl.to_vec();
            stuffed.extend_from_slice(&startup_packet(APP));
            assert_eq!(feed(&mut hs, &stuffed), [closed(&["E08P01"])], "{mode}");
        }
        // allow serves plaintext clients too; require refuses them as PostgreSQL's hostssl does.
        let allow = tls_config("allow");
        assert_eq!(
            feed(&mut Handshake::new(&allow), &startup_packet(APP)),
            done
        );
        let require = tls_config("require");
        assert_eq!(
            feed(&mut Handshake::new(&require), &startup_packet(APP)),
            [closed(&["E28000"])]
        );
        // Not configured: declined as before.
        let plain = config("trust");
        assert_eq!(
            feed(&mut Handshake::new(&plain), &ssl),
            [sent(&["N"]), Seen::Read]
        );
    }
}
