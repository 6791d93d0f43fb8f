//! The I/O of an admin console session: after authentication, the ParameterStatus set
//! PgBouncer's console reports (drivers look for it), then one simple Query at a time, each
//! answered by [`crate::admin::answer`]. The console never attaches a backend.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::Poll;

use bytes::BytesMut;
use pgpilot_protocol::backend::TransactionStatus;
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frame::split_frame;
use pgpilot_protocol::frontend::{query_sql, FrontendTag};

use super::startup::Link;
use crate::core::Core;

/// Admin queries are small; anything bigger is refused (08P01) and the session closed.
const MAX_CONSOLE_MESSAGE: u32 = 64 * 1024;

/// Serves a console session until the client leaves or the proxy shuts down.
pub(super) async fn serve(
    core: Rc<Core>,
    link: &mut Link,
    mut input: BytesMut,
    (pid, secret): (u32, u32),
    application_name: &str,
) {
    let mut out = BytesMut::new();
    let version = format!("{}/pgpilot", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("server_version", version.as_str()),
        ("client_encoding", "UTF8"),
        ("server_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "on"),
        ("application_name", application_name),
    ] {
        encode::parameter_status(&mut out, name, value);
    }
    encode::backend_key_data(&mut out, pid, secret);
    encode::ready_for_query(&mut out, TransactionStatus::Idle);
    // After an extended-protocol message: the rest up to Sync is skipped, as PostgreSQL skips
    // what follows an error.
    let mut skipping = false;
    loop {
        loop {
            let frame = match split_frame(&mut input, MAX_CONSOLE_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    encode::error_response(&mut out, &ErrorFields::fatal("08P01", e.to_string()));
                    let _ = link.send(out).await;
                    return;
                }
            };
            let body = frame.body();
            match frame.tag {
                t if t == FrontendTag::Query as u8 => {
                    skipping = false;
                    match query_sql(body).map(|sql| String::from_utf8_lossy(sql).into_owned()) {
                        Ok(sql) => crate::admin::answer(&core, &sql, &mut out).await,
                        Err(e) => encode::error_response(
                            &mut out,
                            &ErrorFields::error("08P01", e.to_string()),
                        ),
                    }
                    encode::ready_for_query(&mut out, TransactionStatus::Idle);
                }
                t if t == FrontendTag::Terminate as u8 => {
                    let _ = link.send(out).await;
                    return;
                }
                t if t == FrontendTag::Sync as u8 => {
                    skipping = false;
                    encode::ready_for_query(&mut out, TransactionStatus::Idle);
                }
                t if t == FrontendTag::Flush as u8 => {}
                _ if skipping => {}
                _ => {
                    skipping = true;
                    let e = ErrorFields::error(
                        "0A000",
                        "the admin console takes the simple query protocol only",
                    );
                    encode::error_response(&mut out, &e);
                }
            }
        }
        if !out.is_empty() && link.send(out.split()).await.is_none() {
            return;
        }
        let shutdown = poll_fn(|cx| {
            if core.shutting_down() {
                return Poll::Ready(None);
            }
            core.on_shutdown(pid, cx.waker());
            Poll::Pending
        });
        match futures_lite::future::or(link.recv(&mut input), shutdown).await {
            Some(()) => {}
            None if core.shutting_down() => {
                let mut bye = BytesMut::new();
                encode::error_response(
                    &mut bye,
                    &ErrorFields::fatal(
                        "57P01",
                        "terminating connection due to administrator command",
                    ),
                );
                let _ = link.send(bye).await;
                return;
            }
            None => return,
        }
    }
}
