//! Client authentication: SCRAM-SHA-256 against secrets derived once per user, MD5, or trust.
//! An unknown user runs the whole exchange, with a salt that is stable per name (PostgreSQL's
//! mock authentication), and fails with the same error as a wrong password.

use std::borrow::Cow;
use std::rc::Rc;

use bytes::BytesMut;
use pgpilot_protocol::encode::{self, ErrorFields};
use pgpilot_protocol::frontend::{self, SaslInitialResponse};
use pgpilot_protocol::scram::{self, ScramSecret, ScramServer};
use pgpilot_protocol::ProtocolError;

use super::startup::{Conn, Refusal};
use crate::config::{AuthMethod, Config};
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
            // Trust has no secret to protect, so (as PostgreSQL does) it says who is unknown.
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
            // An unknown user's answer is checked too (against no password), so that it
            // takes as long as a known user's.
            let password = known.map_or("", |u| u.password.as_str());
            let expected = scram::md5_password(user.as_bytes(), password.as_bytes(), salt);
            if !(scram::md5_matches(got, &expected) && known.is_some()) {
                return Err(failed().into());
            }
        }
        AuthMethod::ScramSha256 => {
            let secret = scram_secret(config, user);
            scram_exchange(conn, &secret).await.map_err(|e| match e {
                Refusal::Fatal(f) if f.code == "28P01" => failed().into(),
                other => other,
            })?;
        }
    }
    out.clear();
    encode::auth_ok(&mut out);
    conn.send(&out).await
}

/// The secret a SCRAM login for `user` is checked against: the user's own, or for an unknown
/// name a mock one whose salt and iteration count look like a real user's.
fn scram_secret<'c>(config: &'c Config, user: &str) -> Cow<'c, ScramSecret> {
    match config.user(user) {
        Some(u) => Cow::Borrowed(&u.scram),
        None => Cow::Owned(config.mock_auth.secret(user.as_bytes())),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "[[users]]\nname = \"app\"\npassword = \"app\"\n\n\
        [[backends]]\nname = \"p\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n";

    /// What a probe sees of a server-first message: each attribute's name and length, and the salt.
    fn seen(secret: &ScramSecret) -> (Vec<(String, usize)>, String) {
        let first = ScramServer::new(secret)
            .handle_client_first(b"n,,n=,r=probe")
            .unwrap();
        let attrs: Vec<(String, usize)> = first
            .split(',')
            .map(|a| (a[..2].to_owned(), a.len()))
            .collect();
        let salt = first.split(',').nth(1).unwrap().to_owned();
        (attrs, salt)
    }

    #[test]
    fn unknown_user_sees_a_stable_salt_and_the_same_shape_as_a_known_one() {
        let config = Config::parse(CONFIG, std::path::Path::new("t.toml")).unwrap();
        let (known_shape, known_salt) = seen(&scram_secret(&config, "app"));
        let (shape, salt) = seen(&scram_secret(&config, "nobody"));
        let (shape_again, salt_again) = seen(&scram_secret(&config, "nobody"));
        assert_eq!(shape, known_shape, "r=, s=, i= of the same lengths");
        assert!(shape.iter().map(|(k, _)| k).eq(["r=", "s=", "i="].iter()));
        assert_eq!(shape_again, shape);
        assert_eq!(salt, salt_again, "a second attempt sees the same salt");
        assert_ne!(salt, known_salt);
        assert_ne!(salt, seen(&scram_secret(&config, "nobody2")).1);
        assert_eq!(shape.last(), Some(&("i=".to_owned(), "i=4096".len())));
    }
}
