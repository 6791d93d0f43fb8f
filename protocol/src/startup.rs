//! The untagged packets a client may send before authentication: StartupMessage,
//! SSLRequest, GSSENCRequest and CancelRequest. Each starts with its length word.

use crate::cstr::cstr_utf8;
use crate::ProtocolError;

/// Protocol 3.0 as a startup code.
pub const PROTOCOL_3_0: u32 = 196_608;
/// Request code of an SSLRequest.
pub const SSL_REQUEST: u32 = 80_877_103;
/// Request code of a GSSENCRequest.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// Request code of a CancelRequest.
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// Startup packets are small: a body (after the length word) longer than this is refused
/// before allocation, as PostgreSQL refuses it.
pub const MAX_STARTUP_LEN: u32 = 10_000;

/// `Ok(Some(len))` once the length word of a startup packet is buffered; `len` counts the
/// whole packet including the length word.
pub fn peek_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(&[a, b, c, d]) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    match u32::from_be_bytes([a, b, c, d]) {
        len @ 0..=7 => Err(ProtocolError::BadLength {
            tag: 0,
            msg_len: len,
        }),
        len if len.saturating_sub(4) > MAX_STARTUP_LEN => Err(ProtocolError::TooLarge {
            tag: 0,
            msg_len: len,
        }),
        len => Ok(Some(len as usize)),
    }
}

/// One startup-phase packet, borrowed from the buffer that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption.
    GssEncRequest,
    /// The client asks to cancel the query running on the session with this key.
    CancelRequest {
        /// Process id from the BackendKeyData the session was given.
        pid: u32,
        /// Secret key from the same BackendKeyData.
        secret: u32,
    },
    /// The real startup: protocol version and parameters.
    Startup(StartupMessage<'a>),
}

/// A StartupMessage: protocol version and `name=value` parameters, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage<'a> {
    /// Major protocol version (3).
    pub major: u16,
    /// Minor protocol version; pgpilot speaks 0 and negotiates down from higher ones.
    pub minor: u16,
    /// Parameters as sent, including `user`, `database` and `options`.
    pub params: Vec<(&'a str, &'a str)>,
}

impl StartupMessage<'_> {
    /// The value of one parameter, if the client sent it.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
    }
}

/// Parses a whole startup packet (`packet` starts with the length word).
pub fn parse(packet: &[u8]) -> Result<StartupPacket<'_>, ProtocolError> {
    let bad = |what| ProtocolError::Malformed { tag: 0, what };
    let body = packet.get(4..).ok_or(bad("short packet"))?;
    let (&code, rest) = body.split_first_chunk::<4>().ok_or(bad("missing code"))?;
    match u32::from_be_bytes(code) {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let (pid, rest) = rest.split_first_chunk::<4>().ok_or(bad("short cancel"))?;
            let (secret, _) = rest.split_first_chunk::<4>().ok_or(bad("short cancel"))?;
            Ok(StartupPacket::CancelRequest {
                pid: u32::from_be_bytes(*pid),
                secret: u32::from_be_bytes(*secret),
            })
        }
        code if code >> 16 == 3 => {
            let params = parse_params(rest).ok_or(ProtocolError::StartupLayout)?;
            Ok(StartupPacket::Startup(StartupMessage {
                major: 3,
                minor: (code & 0xffff) as u16,
                params,
            }))
        }
        code => Err(ProtocolError::UnsupportedVersion { code }),
    }
}

/// What PostgreSQL says to a startup packet with a protocol it does not speak; a client that
/// asked for protocol 2 (or older) gets it in protocol 2's own error format.
pub fn unsupported_version(code: u32) -> (String, bool) {
    let text = format!(
        "unsupported frontend protocol {}.{}: server supports 3.0 to 3.0",
        code >> 16,
        code & 0xffff
    );
    (text, code >> 16 < 3)
}

fn parse_params(mut input: &[u8]) -> Option<Vec<(&str, &str)>> {
    let mut params = Vec::new();
    loop {
        match input {
            [0] => return Some(params),
            [] => return None,
            _ => {
                let (rest, name) = cstr_utf8(input).ok()?;
                // An empty name ends the list for PostgreSQL: anything after it is a layout
                // error there, not a parameter.
                if name.is_empty() {
                    return None;
                }
                let (rest, value) = cstr_utf8(rest).ok()?;
                params.push((name, value));
                input = rest;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode;
    use bytes::BytesMut;

    #[test]
    fn startup_round_trip_and_every_cut_needs_more() {
        let mut buf = BytesMut::new();
        encode::startup_message(&mut buf, &[("user", "app"), ("database", "db")]);
        let wire = buf.freeze();
        for cut in 0..wire.len() {
            let need = match peek_len(&wire[..cut]).unwrap() {
                None => true,
                Some(len) => len > cut,
            };
            assert!(need, "cut at {cut}");
        }
        assert_eq!(peek_len(&wire).unwrap(), Some(wire.len()));
        let StartupPacket::Startup(msg) = parse(&wire).unwrap() else {
            panic!()
        };
        assert_eq!((msg.major, msg.minor), (3, 0));
        assert_eq!(msg.param("user"), Some("app"));
        assert_eq!(msg.param("database"), Some("db"));
    }

    #[test]
    fn a_parameter_list_without_its_terminator_or_with_an_empty_name_is_postgres_layout_error() {
        // Also an empty name before the end: PostgreSQL takes it as the terminator.
        let cases = [
            &b"user\0app"[..],
            b"user\0app\0",
            b"user\0",
            b"",
            b"\0x\0\0",
            b"user\0app\0\0database\0db\0\0",
        ];
        for params in cases {
            let mut wire = ((8 + params.len()) as u32).to_be_bytes().to_vec();
            wire.extend_from_slice(&0x0003_0000u32.to_be_bytes());
            wire.extend_from_slice(params);
            let e = parse(&wire).unwrap_err();
            assert_eq!(e, ProtocolError::StartupLayout, "{params:?}");
            assert_eq!(
                e.to_string(),
                "invalid startup packet layout: expected terminator as last byte"
            );
        }
    }

    #[test]
    fn golden_ssl_and_cancel_requests() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(parse(&ssl).unwrap(), StartupPacket::SslRequest);
        let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
        assert_eq!(parse(&gss).unwrap(), StartupPacket::GssEncRequest);
        let mut buf = BytesMut::new();
        encode::cancel_request(&mut buf, 0x0102_0304, 0xdead_beef);
        assert_eq!(&buf[..8], &[0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e]);
        assert_eq!(
            parse(&buf).unwrap(),
            StartupPacket::CancelRequest {
                pid: 0x0102_0304,
                secret: 0xdead_beef
            }
        );
    }

    #[test]
    fn bad_packets_are_errors() {
        assert!(peek_len(&[0, 0, 0, 2]).is_err());
        assert!(peek_len(&[0, 1, 0, 0]).is_err());
        assert!(parse(&[0, 0, 0, 8, 0, 2, 0, 0]).is_err());
        assert!(parse(&[0, 0, 0, 11, 0, 3, 0, 0, b'u', 0, 0]).is_err());
    }

    #[test]
    fn length_words_at_the_limits() {
        let limit = MAX_STARTUP_LEN + 4;
        assert_eq!(peek_len(&limit.to_be_bytes()), Ok(Some(limit as usize)));
        for len in [limit + 1, u32::MAX] {
            assert_eq!(
                peek_len(&len.to_be_bytes()),
                Err(ProtocolError::TooLarge {
                    tag: 0,
                    msg_len: len
                })
            );
        }
    }
}
