//! Tags and borrowed views of the tagged messages a client sends.

use nom::number::complete::{be_i16, be_i32, be_u16, be_u32, be_u8};

use crate::cstr::{cstr, cstr_utf8};
use crate::ProtocolError;

/// The message type byte of a frontend (client → server) message.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrontendTag {
    Query = b'Q',
    Parse = b'P',
    Bind = b'B',
    Describe = b'D',
    Execute = b'E',
    Sync = b'S',
    Flush = b'H',
    Close = b'C',
    CopyData = b'd',
    CopyDone = b'c',
    CopyFail = b'f',
    /// PasswordMessage, SASLInitialResponse and SASLResponse share this tag.
    Password = b'p',
    FunctionCall = b'F',
    Terminate = b'X',
}

impl FrontendTag {
    /// The tag a message type byte stands for; `None` for a byte no client message starts with.
    #[inline]
    pub const fn from_byte(tag: u8) -> Option<Self> {
        use FrontendTag::*;
        Some(match tag {
            b'Q' => Query,
            b'P' => Parse,
            b'B' => Bind,
            b'D' => Describe,
            b'E' => Execute,
            b'S' => Sync,
            b'H' => Flush,
            b'C' => Close,
            b'd' => CopyData,
            b'c' => CopyDone,
            b'f' => CopyFail,
            b'p' => Password,
            b'F' => FunctionCall,
            b'X' => Terminate,
            _ => return None,
        })
    }
}

impl TryFrom<u8> for FrontendTag {
    type Error = ProtocolError;

    fn try_from(tag: u8) -> Result<Self, ProtocolError> {
        FrontendTag::from_byte(tag).ok_or(ProtocolError::UnknownTag { tag })
    }
}

/// The kind byte of a Describe or Close that names a prepared statement.
pub const KIND_STATEMENT: u8 = b'S';
/// The kind byte of a Describe or Close that names a portal.
pub const KIND_PORTAL: u8 = b'P';

/// A decoded frontend message; every slice borrows from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    /// Simple query: SQL text without its NUL.
    Query {
        sql: &'a [u8],
    },
    /// Prepare a statement; `name` is empty for the unnamed statement.
    Parse {
        name: &'a [u8],
        query: &'a [u8],
        param_types: Vec<u32>,
    },
    /// Bind a portal to a statement; parameters are left undecoded.
    Bind {
        portal: &'a [u8],
        statement: &'a [u8],
    },
    /// Describe a statement (`b'S'`) or portal (`b'P'`).
    Describe {
        kind: u8,
        name: &'a [u8],
    },
    /// Run a portal; `max_rows` 0 means all.
    Execute {
        portal: &'a [u8],
        max_rows: i32,
    },
    Sync,
    Flush,
    /// Close a statement (`b'S'`) or portal (`b'P'`).
    Close {
        kind: u8,
        name: &'a [u8],
    },
    CopyData {
        data: &'a [u8],
    },
    CopyDone,
    CopyFail {
        message: &'a [u8],
    },
    /// Body of a `p` message; its meaning depends on the authentication in progress.
    Password {
        body: &'a [u8],
    },
    /// Call a function by OID; arguments are left undecoded.
    FunctionCall {
        oid: u32,
    },
    Terminate,
}

impl<'a> FrontendMessage<'a> {
    /// Decodes one whole frame (tag, length word and body).
    pub fn parse(frame: &'a [u8]) -> Result<Self, ProtocolError> {
        let (&tag, _) = frame
            .split_first()
            .ok_or(ProtocolError::UnknownTag { tag: 0 })?;
        let body = frame.get(5..).ok_or(ProtocolError::Malformed {
            tag,
            what: "short frame",
        })?;
        let bad = |what| ProtocolError::Malformed { tag, what };
        use FrontendMessage as M;
        Ok(match FrontendTag::try_from(tag)? {
            FrontendTag::Query => M::Query {
                sql: cstr(body).map_err(|_| bad("no NUL"))?.1,
            },
            FrontendTag::Parse => parse_parse(body).ok_or(bad("bad Parse"))?,
            FrontendTag::Bind => {
                let (rest, portal) = cstr(body).map_err(|_| bad("bad portal"))?;
                let (_, statement) = cstr(rest).map_err(|_| bad("bad statement"))?;
                M::Bind { portal, statement }
            }
            FrontendTag::Describe | FrontendTag::Close => {
                let (rest, kind) = be_u8::<_, ()>(body).map_err(|_| bad("no kind"))?;
                if kind != KIND_STATEMENT && kind != KIND_PORTAL {
                    return Err(bad("kind is neither S nor P"));
                }
                let (_, name) = cstr(rest).map_err(|_| bad("bad name"))?;
                if tag == b'D' {
                    M::Describe { kind, name }
                } else {
                    M::Close { kind, name }
                }
            }
            FrontendTag::Execute => {
                let (rest, portal) = cstr(body).map_err(|_| bad("bad portal"))?;
                let (_, max_rows) = be_i32::<_, ()>(rest).map_err(|_| bad("no row count"))?;
                M::Execute { portal, max_rows }
            }
            FrontendTag::Sync => M::Sync,
            FrontendTag::Flush => M::Flush,
            FrontendTag::CopyData => M::CopyData { data: body },
            FrontendTag::CopyDone => M::CopyDone,
            FrontendTag::CopyFail => M::CopyFail {
                message: cstr(body).map_err(|_| bad("no NUL"))?.1,
            },
            FrontendTag::Password => M::Password { body },
            FrontendTag::FunctionCall => {
                let (_, oid) = be_u32::<_, ()>(body).map_err(|_| bad("no oid"))?;
                M::FunctionCall { oid }
            }
            FrontendTag::Terminate => M::Terminate,
        })
    }
}

fn parse_parse(body: &[u8]) -> Option<FrontendMessage<'_>> {
    let (rest, name) = cstr(body).ok()?;
    let (rest, query) = cstr(rest).ok()?;
    let (mut rest, count) = be_i16::<_, ()>(rest).ok()?;
    let count = usize::try_from(count).ok()?;
    // Each type is four bytes: bound the count by what is really there before allocating.
    if count
        .checked_mul(4)
        .is_none_or(|types_len| rest.len() < types_len)
    {
        return None;
    }
    let mut param_types = Vec::with_capacity(count);
    for _ in 0..count {
        let (r, oid) = be_u32::<_, ()>(rest).ok()?;
        param_types.push(oid);
        rest = r;
    }
    Some(FrontendMessage::Parse {
        name,
        query,
        param_types,
    })
}

/// The two shapes a `p` message takes in a SCRAM exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    /// The mechanism the client picked, e.g. `SCRAM-SHA-256`.
    pub mechanism: &'a str,
    /// The client-first-message; `None` when the client sent length -1.
    pub data: Option<&'a [u8]>,
}

impl<'a> SaslInitialResponse<'a> {
    /// Decodes the body of a `p` message sent as the first SASL step.
    pub fn parse(body: &'a [u8]) -> Result<Self, ProtocolError> {
        let bad = ProtocolError::Malformed {
            tag: b'p',
            what: "bad SASLInitialResponse",
        };
        let (rest, mechanism) = cstr_utf8(body).map_err(|_| bad)?;
        let (rest, len) = be_i32::<_, ()>(rest).map_err(|_| bad)?;
        let data = match len {
            -1 => None,
            n if n >= 0 && n as usize == rest.len() => Some(rest),
            _ => return Err(bad),
        };
        Ok(SaslInitialResponse { mechanism, data })
    }
}

/// The body of a PasswordMessage without its NUL (cleartext or `md5…` hash).
pub fn password(body: &[u8]) -> Result<&[u8], ProtocolError> {
    cstr(body)
        .map(|(_, p)| p)
        .map_err(|_| ProtocolError::Malformed {
            tag: b'p',
            what: "password without NUL",
        })
}

/// Statement name and query text of a Parse body, without allocating.
pub fn statement_of(body: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let bad = ProtocolError::Malformed {
        tag: b'P',
        what: "bad Parse",
    };
    let (rest, name) = cstr(body).map_err(|_| bad)?;
    let (_, query) = cstr(rest).map_err(|_| bad)?;
    Ok((name, query))
}

/// The SQL text of a Query body without its NUL; the string must end the message.
pub fn query_sql(body: &[u8]) -> Result<&[u8], ProtocolError> {
    match cstr(body) {
        Ok((&[], sql)) => Ok(sql),
        _ => Err(ProtocolError::Malformed {
            tag: b'Q',
            what: "invalid string in Query message",
        }),
    }
}

/// The statement a Bind body names (after its portal name).
pub fn bind_statement(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let bad = ProtocolError::Malformed {
        tag: b'B',
        what: "bad Bind",
    };
    let (rest, _portal) = cstr(body).map_err(|_| bad)?;
    cstr(rest).map(|(_, statement)| statement).map_err(|_| bad)
}

/// What a Describe or Close body names: `(b'S', statement)` or `(b'P', portal)`.
pub fn describe_target(tag: u8, body: &[u8]) -> Result<(u8, &[u8]), ProtocolError> {
    let bad = ProtocolError::Malformed {
        tag,
        what: "bad Describe or Close",
    };
    match body.split_first() {
        Some((&kind @ (KIND_STATEMENT | KIND_PORTAL), rest)) => {
            cstr(rest).map(|(_, name)| (kind, name)).map_err(|_| bad)
        }
        _ => Err(bad),
    }
}

/// Parameter type count of a Parse body, without decoding the types.
pub fn parse_param_count(body: &[u8]) -> Option<u16> {
    let (rest, _) = cstr(body).ok()?;
    let (rest, _) = cstr(rest).ok()?;
    be_u16::<_, ()>(rest).ok().map(|(_, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_bytes_round_trip() {
        let mut known = 0;
        for b in 0..=u8::MAX {
            if let Some(tag) = FrontendTag::from_byte(b) {
                assert_eq!(tag as u8, b);
                known += 1;
            }
            assert_eq!(FrontendTag::try_from(b).ok(), FrontendTag::from_byte(b));
        }
        assert_eq!(known, 14, "every variant has its byte");
    }

    #[test]
    fn checked_views_refuse_what_postgres_refuses() {
        assert_eq!(query_sql(b"SELECT 1\0"), Ok(&b"SELECT 1"[..]));
        assert_eq!(query_sql(b"\0"), Ok(&b""[..]));
        for bad in [&b""[..], b"SELECT 1", b"SELECT 1\0junk"] {
            assert!(query_sql(bad).is_err(), "{bad:?}");
        }
        assert_eq!(bind_statement(b"p\0s1\0\0\0"), Ok(&b"s1"[..]));
        assert!(bind_statement(b"p\0s1").is_err());
        assert!(bind_statement(b"").is_err());
        assert_eq!(describe_target(b'D', b"Ss1\0"), Ok((b'S', &b"s1"[..])));
        assert_eq!(describe_target(b'C', b"P\0"), Ok((b'P', &b""[..])));
        for bad in [&b""[..], b"X\0", b"S", b"Sname"] {
            assert!(describe_target(b'D', bad).is_err(), "{bad:?}");
        }
    }
    #[test]
    fn parameter_and_sasl_lengths_are_checked_against_the_body() {
        let parse_body = |count: i16, types: &[u8]| {
            [&b"s\0SELECT $1\0"[..], &count.to_be_bytes(), types].concat()
        };
        // The count says how many 4-byte types follow: bounded by the body before allocating.
        let one = parse_body(1, &23u32.to_be_bytes());
        assert!(
            matches!(parse_parse(&one), Some(FrontendMessage::Parse { param_types, .. }) if param_types == [23])
        );
        for (count, types) in [(i16::MAX, &[0u8; 8][..]), (2, &[0; 7]), (-1, &[])] {
            assert_eq!(parse_parse(&parse_body(count, types)), None, "{count}");
        }
        let sasl =
            |len: i32, data: &[u8]| [&b"SCRAM-SHA-256\0"[..], &len.to_be_bytes(), data].concat();
        assert_eq!(
            SaslInitialResponse::parse(&sasl(3, b"abc")).unwrap().data,
            Some(&b"abc"[..])
        );
        assert_eq!(
            SaslInitialResponse::parse(&sasl(-1, b"")).unwrap().data,
            None
        );
        for (len, data) in [(i32::MAX, &b"abc"[..]), (4, b"abc"), (-2, b"")] {
            assert!(
                SaslInitialResponse::parse(&sasl(len, data)).is_err(),
                "{len}"
            );
        }
    }

    use crate::encode;
    use crate::frame::split_frame;
    use bytes::BytesMut;

    fn pipeline() -> BytesMut {
        let mut buf = BytesMut::new();
        encode::parse(&mut buf, b"s1", b"SELECT $1::int", &[23]);
        encode::bind(&mut buf, b"", b"s1", &[Some(b"42")]);
        encode::describe(&mut buf, b'P', b"");
        encode::execute(&mut buf, b"", 0);
        encode::close(&mut buf, b'S', b"s1");
        encode::flush(&mut buf);
        encode::sync(&mut buf);
        encode::query(&mut buf, b"SELECT 1");
        encode::copy_data(&mut buf, b"1\t2\n");
        encode::copy_done(&mut buf);
        encode::copy_fail(&mut buf, b"nope");
        encode::function_call(&mut buf, 1234);
        encode::password_message(&mut buf, b"secret");
        encode::terminate(&mut buf);
        buf
    }

    fn decode_all(buf: &mut BytesMut) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(f) = split_frame(buf, 1 << 20).unwrap() {
            out.push(format!("{:?}", FrontendMessage::parse(&f.bytes).unwrap()));
        }
        out
    }

    #[test]
    fn every_message_round_trips_at_every_cut() {
        let wire = pipeline().freeze();
        let whole = decode_all(&mut BytesMut::from(&wire[..]));
        assert_eq!(whole.len(), 14);
        assert!(whole[0].contains("param_types: [23]"), "{}", whole[0]);
        assert_eq!(whole[1], r#"Bind { portal: [], statement: [115, 49] }"#);
        assert_eq!(whole[3], "Execute { portal: [], max_rows: 0 }");
        assert_eq!(whole[11], "FunctionCall { oid: 1234 }");
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = decode_all(&mut buf);
            buf.extend_from_slice(&wire[cut..]);
            got.extend(decode_all(&mut buf));
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn golden_query_bytes() {
        let wire = b"Q\0\0\0\x0dSELECT 1\0";
        assert_eq!(
            FrontendMessage::parse(wire).unwrap(),
            FrontendMessage::Query { sql: b"SELECT 1" }
        );
        let mut buf = BytesMut::new();
        encode::query(&mut buf, b"SELECT 1");
        assert_eq!(&buf[..], &wire[..]);
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        assert!(FrontendMessage::parse(b"Q\0\0\0\x05x").is_err());
        assert!(FrontendMessage::parse(b"D\0\0\0\x06Z\0").is_err());
        // Parse claiming 1000 parameter types with none present.
        assert!(FrontendMessage::parse(b"P\0\0\0\x0aa\0b\0\x03\xe8").is_err());
        assert!(FrontendMessage::parse(b"?\0\0\0\x04").is_err());
        for len in 0..32 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            let _ = FrontendMessage::parse(&junk);
        }
    }

    #[test]
    fn sasl_initial_response_round_trip() {
        let mut buf = BytesMut::new();
        encode::sasl_initial_response(&mut buf, "SCRAM-SHA-256", b"n,,n=,r=abc");
        let f = split_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let r = SaslInitialResponse::parse(f.body()).unwrap();
        assert_eq!(r.mechanism, "SCRAM-SHA-256");
        assert_eq!(r.data, Some(&b"n,,n=,r=abc"[..]));
        assert!(SaslInitialResponse::parse(b"SCRAM-SHA-256\0\0\0\0\x09abc").is_err());
    }
}
