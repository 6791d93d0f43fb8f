//! The I/O shell of a client's startup: it runs the [`Handshake`] state machine over the
//! socket within `startup_timeout_ms`, then builds the session and logs it in. Every decision
//! is the handshake's; auth failures never reach a backend.

use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use pgpilot_protocol::encode::{self, ErrorFields};
use rustls::ServerConnection;

use super::handshake::{Action, Handshake, Startup};
use super::shell::{Admission, Client};
use super::{Session, Start};
use crate::admin::ClientCard;
use crate::core::Core;

/// How many bytes a startup read asks for at most.
const STARTUP_READ: usize = 1024;

/// Runs startup within `startup_timeout_ms`; `None` when the client goes away or is refused.
pub(super) async fn start(core: Rc<Core>, stream: TcpStream) -> Option<Client> {
    let config = core.config();
    // The TLS offered now, for the whole of this handshake.
    let tls = core.client_tls();
    let mut hs = Handshake::offering(&config, tls.as_ref().map(|t| t.mode));
    let mut admission = None;
    let limit = config.server.startup_timeout;
    let mut link = Link { stream, tls: None };
    let shake = drive(&core, &mut hs, &mut link, tls, &mut admission);
    let st = match monoio::time::timeout(limit, shake).await {
        Ok(Some(st)) => st,
        Ok(None) => return None,
        Err(_) => {
            log::info!("client refused at startup: not done within startup_timeout_ms");
            let mut out = BytesMut::new();
            let e = ErrorFields::fatal("08006", "startup did not finish within startup_timeout_ms");
            encode::error_response(&mut out, &e);
            let _ = link.send(out).await;
            return None;
        }
    };
    let admission = admission?;
    let cbuf = std::mem::take(&mut hs.input);
    drop(hs);
    session(core, link, cbuf, st, admission).await
}

/// The client's socket during startup, and its TLS session once the client asked for one.
pub(super) struct Link {
    stream: TcpStream,
    tls: Option<ServerConnection>,
}

impl Link {
    /// Writes all of `bytes` (sealed over TLS); `None` if the client is gone.
    pub(super) async fn send(&mut self, bytes: BytesMut) -> Option<()> {
        match self.tls.as_mut() {
            None => self.stream.write_all(bytes).await.0.ok()?,
            Some(conn) => {
                let sealed = crate::tls::seal(conn, &bytes).ok()?;
                self.stream.write_all(sealed).await.0.ok()?
            }
        };
        Some(())
    }

    /// Reads once, appending to `input` (over TLS: until some plaintext came); `None` when the
    /// client hung up or broke TLS.
    pub(super) async fn recv(&mut self, input: &mut BytesMut) -> Option<()> {
        loop {
            // The read fills the spare room of a buffer it owns meanwhile.
            let mut buf = match self.tls {
                None => std::mem::take(input),
                Some(_) => BytesMut::new(),
            };
            buf.reserve(STARTUP_READ);
            let len = buf.len();
            let (res, spare) = self.stream.read(buf.slice_mut(len..)).await;
            let buf = spare.into_inner();
            let Some(conn) = self.tls.as_mut() else {
                *input = buf;
                return (res.unwrap_or(0) > 0).then_some(());
            };
            if res.unwrap_or(0) == 0 {
                return None;
            }
            let before = input.len();
            let closed = crate::tls::open(conn, &buf, input).ok()?;
            if input.len() > before {
                return Some(());
            }
            if closed {
                return None;
            }
        }
    }

    /// The TLS handshake after the `S`; `None` if the client does not finish it.
    async fn accept_tls(
        &mut self,
        config: Arc<rustls::ServerConfig>,
        input: &mut BytesMut,
    ) -> Option<()> {
        let mut conn = match ServerConnection::new(config) {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("cannot start TLS with a client: {e}");
                return None;
            }
        };
        loop {
            let out = crate::tls::pending(&mut conn).ok()?;
            if !out.is_empty() {
                self.stream.write_all(out).await.0.ok()?;
            }
            if !conn.is_handshaking() {
                self.tls = Some(conn);
                return Some(());
            }
            let (res, buf) = self
                .stream
                .read(BytesMut::with_capacity(STARTUP_READ))
                .await;
            if res.unwrap_or(0) == 0 {
                return None;
            }
            if let Err(e) = crate::tls::open(&mut conn, &buf, input) {
                log::info!("client refused at startup: TLS handshake failed: {e}");
                // The alert rustls queued tells the client why.
                if let Ok(alert) = crate::tls::pending(&mut conn) {
                    let _ = self.stream.write_all(alert).await;
                }
                return None;
            }
        }
    }
}

/// Performs the handshake's actions until it is done (`Some`) or over (`None`).
async fn drive(
    core: &Rc<Core>,
    hs: &mut Handshake<'_>,
    link: &mut Link,
    tls: Option<crate::tls::ClientTls>,
    admission: &mut Option<Admission>,
) -> Option<Startup> {
    loop {
        match hs.step() {
            Action::Send(bytes) => link.send(bytes).await?,
            Action::Read => link.recv(&mut hs.input).await?,
            Action::StartTls(answer) => {
                link.send(answer).await?;
                let config = tls.as_ref()?.config.clone();
                link.accept_tls(config, &mut hs.input).await?;
                hs.tls_started();
            }
            Action::Admit => {
                let ok = core.admit_client();
                if ok {
                    // From here on the client is counted; the admission releases it however
                    // startup or the session ends.
                    *admission = Some(Admission {
                        core: core.clone(),
                        pid: None,
                    });
                }
                hs.admitted(ok);
            }
            Action::Cancel { pid, secret } => {
                core.cancel(pid, secret);
                return None;
            }
            Action::Close(bytes) => {
                if !bytes.is_empty() {
                    let _ = link.send(bytes).await;
                }
                return None;
            }
            Action::Done(st) => return Some(st),
            Action::LookUp { user, database } => {
                hs.looked_up(crate::auth_query::look_up(core, &user, &database).await)
            }
        }
    }
}

/// The session of an authenticated client, logged in (or `None`, told why).
async fn session(
    core: Rc<Core>,
    mut link: Link,
    input: BytesMut,
    st: Startup,
    mut admission: Admission,
) -> Option<Client> {
    let console = crate::admin::is_console(&st.database);
    if console && !core.config().admin.users.contains(&st.user) {
        log::info!("client refused: {} may not open the admin console", st.user);
        let mut out = BytesMut::new();
        let message = format!(
            "permission denied: \"{}\" is not one of [admin] users, who alone may open the \
             admin console (database \"{}\")",
            st.user, st.database
        );
        encode::error_response(&mut out, &ErrorFields::fatal("42501", message));
        let _ = link.send(out).await;
        return None;
    }
    let card = Rc::new(card_for(&link, &st, console));
    let (pid, secret) = core.register_session(card.clone());
    admission.pid = Some(pid);
    if console {
        super::console::serve(
            core,
            &mut link,
            input,
            (pid, secret),
            &card.application_name,
        )
        .await;
        drop(admission);
        return None;
    }
    let start = Start {
        pid,
        user: st.user.into(),
        database: st.database.into(),
        gucs: st.gucs,
        rule: st.rule,
        keys: st.keys.map(Rc::new),
        input,
    };
    let (read, write) = link.stream.into_split();
    let mut client = Client {
        reader: super::io::Reader::new(read),
        read_room: 0,
        streaming_in: false,
        writer: write,
        tls: link.tls.map(|conn| Box::new(super::io::Sealed::new(conn))),
        session: Session::new(core, start, card),
        admission,
    };
    match client.login(secret).await {
        Ok(()) => Some(client),
        Err(e) => {
            log::info!("session={pid} login failed: {} {}", e.code, e.message);
            client.session.queue_error(&e);
            client.finish().await;
            None
        }
    }
}

/// What the admin console shows of this client.
fn card_for(link: &Link, st: &Startup, console: bool) -> ClientCard {
    let mut card = ClientCard::new(st.user.as_str().into(), st.database.as_str().into());
    card.peer = link.stream.peer_addr().ok();
    card.local = link.stream.local_addr().ok();
    card.tls = link.tls.as_ref().map(|conn| {
        let version = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS");
        let suite = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("");
        format!("{version}/{suite}").into_boxed_str()
    });
    card.application_name = st
        .gucs
        .list
        .iter()
        .find(|(n, _)| n == "application_name")
        .map_or("", |(_, v)| v.as_str())
        .into();
    card.console = console;
    card
}
