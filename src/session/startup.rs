//! The I/O shell of a client's startup: it runs the [`Handshake`] state machine over the
//! socket within `startup_timeout_ms`, then builds the session and logs it in. Every decision
//! is the handshake's; auth failures never reach a backend.

use std::cell::Cell;
use std::rc::Rc;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;
use pgpilot_protocol::encode::{self, ErrorFields};

use super::handshake::{Action, Handshake, Startup};
use super::shell::{Admission, Client};
use super::{Session, Start};
use crate::core::Core;

/// How many bytes a startup read asks for at most.
const STARTUP_READ: usize = 1024;

/// Runs startup within `startup_timeout_ms`; `None` when the client goes away or is refused.
pub(super) async fn start(core: Rc<Core>, mut stream: TcpStream) -> Option<Client> {
    let config = core.config.clone();
    let mut hs = Handshake::new(&config);
    let mut admission = None;
    let limit = config.server.startup_timeout;
    let shake = drive(&core, &mut hs, &mut stream, &mut admission);
    let st = match monoio::time::timeout(limit, shake).await {
        Ok(Some(st)) => st,
        Ok(None) => return None,
        Err(_) => {
            log::info!("client refused at startup: not done within startup_timeout_ms");
            let mut out = BytesMut::new();
            let e = ErrorFields::fatal("08006", "startup did not finish within startup_timeout_ms");
            encode::error_response(&mut out, &e);
            let _ = stream.write_all(out).await;
            return None;
        }
    };
    let admission = admission?;
    let client = stream;
    let cbuf = std::mem::take(&mut hs.input);
    drop(hs);
    session(core, client, cbuf, st, admission).await
}

/// Performs the handshake's actions until it is done (`Some`) or over (`None`).
async fn drive(
    core: &Rc<Core>,
    hs: &mut Handshake<'_>,
    stream: &mut TcpStream,
    admission: &mut Option<Admission>,
) -> Option<Startup> {
    loop {
        match hs.step() {
            Action::Send(bytes) => {
                stream.write_all(bytes).await.0.ok()?;
            }
            Action::Read => {
                // The read fills the spare room of the input buffer, which it owns meanwhile.
                let mut buf = std::mem::take(&mut hs.input);
                buf.reserve(STARTUP_READ);
                let len = buf.len();
                let (res, spare) = stream.read(buf.slice_mut(len..)).await;
                hs.input = spare.into_inner();
                if res.unwrap_or(0) == 0 {
                    return None;
                }
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
                    let _ = stream.write_all(bytes).await;
                }
                return None;
            }
            Action::Done(st) => return Some(st),
        }
    }
}

/// The session of an authenticated client, logged in (or `None`, told why).
async fn session(
    core: Rc<Core>,
    stream: TcpStream,
    input: BytesMut,
    st: Startup,
    mut admission: Admission,
) -> Option<Client> {
    let cancel = Rc::new(Cell::new(None));
    let (pid, secret) = core.register_session(cancel.clone());
    admission.pid = Some(pid);
    let start = Start {
        pid,
        user: st.user.into(),
        database: st.database.into(),
        gucs: st.gucs,
        rule: st.rule,
        input,
    };
    let (read, write) = stream.into_split();
    let mut client = Client {
        reader: super::io::Reader::new(read),
        read_room: 0,
        streaming_in: false,
        writer: write,
        session: Session::new(core, start, cancel),
        _admission: admission,
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
