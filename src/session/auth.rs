//! Client authentication: SCRAM-SHA-256 against secrets derived once per user, MD5, or trust.
//! An unknown user runs the whole exchange and fails like a wrong password.

use std::rc::Rc;

use bytes::BytesMut;
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frontend::{self, SaslInitialResponse};
use pgpilot_protocol::scram::{self, ScramSecret, ScramServer};
use pgpilot_protocol::ProtocolError;

use super::startup::{Conn, Refusal};
use crate::config::AuthMethod;
use crate::core::Core;

pub(super) async fn authenticate(
    core: &Rc<Core>,
    conn: &mut Conn,
    user: &str,
) -> Result<(), Refusal> {
    let config = &core.config;
    let known = config.user(user);
    let failed = || {
        ErrorFields::fatal(
            "28P01",
            format!("password authentication failed for user \"{user}\""),
        )
    };
    let mut out = BytesMut::new();
    match config.auth_method {
        AuthMethod::Trust => {
            if known.is_none() {
                return Err(ErrorFields::fatal(
                    "28000",
                    format!("role \"{user}\" is not served by pgpilot"),
                )
                .into());
            }
        }
        AuthMethod::Md5 => {
            let salt: [u8; 4] = scram::random_bytes();
            encode::auth_md5(&mut out, salt);
            conn.send(&out).await?;
            let frame = conn.password_frame().await?;
            let got = frontend::password(frame.body())
                .map_err(|e| ErrorFields::fatal("08P01", e.to_string()))?;
            let ok = known.is_some_and(|u| {
                scram::md5_matches(
                    got,
                    &scram::md5_password(user.as_bytes(), u.password.as_bytes(), salt),
                )
            });
            if !ok {
                return Err(failed().into());
            }
        }
        AuthMethod::ScramSha256 => {
            let impossible;
            let secret: &ScramSecret = match known {
                Some(u) => &u.scram,
                None => {
                    impossible = ScramSecret::impossible(&scram::random_bytes::<16>());
                    &impossible
                }
            };
            scram_exchange(conn, secret).await.map_err(|e| match e {
                Refusal::Fatal(f) if f.code == "28P01" => failed().into(),
                other => other,
            })?;
        }
    }
    out.clear();
    encode::auth_ok(&mut out);
    conn.send(&out).await
}

async fn scram_exchange(conn: &mut Conn, secret: &ScramSecret) -> Result<(), Refusal> {
    let bad = |e: ProtocolError| Refusal::from(ErrorFields::fatal("08P01", e.to_string()));
    let mut out = BytesMut::new();
    encode::auth_sasl(&mut out, &[scram::MECHANISM]);
    conn.send(&out).await?;
    let frame = conn.password_frame().await?;
    let init = SaslInitialResponse::parse(frame.body()).map_err(bad)?;
    if init.mechanism != scram::MECHANISM {
        return Err(ErrorFields::fatal(
            "08P01",
            "client selected an invalid SASL authentication mechanism",
        )
        .into());
    }
    let mut server = ScramServer::new(secret);
    let first = server
        .handle_client_first(init.data.unwrap_or_default())
        .map_err(|e| ErrorFields::fatal("08P01", e.to_string()))?;
    out.clear();
    encode::auth_sasl_continue(&mut out, first.as_bytes());
    conn.send(&out).await?;
    let frame = conn.password_frame().await?;
    let fin = match server.handle_client_final(frame.body()) {
        Ok(fin) => fin,
        Err(scram::ScramError::AuthFailed) => return Err(ErrorFields::fatal("28P01", "").into()),
        Err(e) => return Err(ErrorFields::fatal("08P01", e.to_string()).into()),
    };
    out.clear();
    encode::auth_sasl_final(&mut out, fin.as_bytes());
    conn.send(&out).await
}
