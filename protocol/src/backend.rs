//! Tags and borrowed views of the tagged messages a server sends. pgpilot decodes only
//! the ones it acts on; everything else is an opaque frame forwarded as it came.

use nom::number::complete::{be_i16, be_i32, be_u32, be_u8};

use crate::cstr::{cstr, cstr_utf8};
use crate::ProtocolError;

/// The message type byte of a backend (server → client) message.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendTag {
    Authentication = b'R',
    ParameterStatus = b'S',
    BackendKeyData = b'K',
    ReadyForQuery = b'Z',
    ErrorResponse = b'E',
    NoticeResponse = b'N',
    CommandComplete = b'C',
    CopyInResponse = b'G',
    CopyOutResponse = b'H',
    CopyBothResponse = b'W',
    CopyData = b'd',
    CopyDone = b'c',
    NotificationResponse = b'A',
    RowDescription = b'T',
    DataRow = b'D',
    ParseComplete = b'1',
    BindComplete = b'2',
    CloseComplete = b'3',
    NoData = b'n',
    PortalSuspended = b's',
    EmptyQueryResponse = b'I',
    ParameterDescription = b't',
    FunctionCallResponse = b'V',
    NegotiateProtocolVersion = b'v',
}

impl BackendTag {
    /// The tag a message type byte stands for; `None` for a byte no server message starts with.
    #[inline]
    pub const fn from_byte(tag: u8) -> Option<Self> {
        use BackendTag::*;
        Some(match tag {
            b'R' => Authentication,
            b'S' => ParameterStatus,
            b'K' => BackendKeyData,
            b'Z' => ReadyForQuery,
            b'E' => ErrorResponse,
            b'N' => NoticeResponse,
            b'C' => CommandComplete,
            b'G' => CopyInResponse,
            b'H' => CopyOutResponse,
            b'W' => CopyBothResponse,
            b'd' => CopyData,
            b'c' => CopyDone,
            b'A' => NotificationResponse,
            b'T' => RowDescription,
            b'D' => DataRow,
            b'1' => ParseComplete,
            b'2' => BindComplete,
            b'3' => CloseComplete,
            b'n' => NoData,
            b's' => PortalSuspended,
            b'I' => EmptyQueryResponse,
            b't' => ParameterDescription,
            b'V' => FunctionCallResponse,
            b'v' => NegotiateProtocolVersion,
            _ => return None,
        })
    }
}

impl TryFrom<u8> for BackendTag {
    type Error = ProtocolError;

    fn try_from(tag: u8) -> Result<Self, ProtocolError> {
        BackendTag::from_byte(tag).ok_or(ProtocolError::UnknownTag { tag })
    }
}

/// The transaction status carried by ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block; only ROLLBACK gets out.
    Failed,
}

impl TransactionStatus {
    /// The status byte on the wire.
    pub fn as_byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }

    /// Decodes a status byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(TransactionStatus::Idle),
            b'T' => Some(TransactionStatus::InTransaction),
            b'E' => Some(TransactionStatus::Failed),
            _ => None,
        }
    }
}

/// The Authentication family (`R`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    Ok,
    CleartextPassword,
    Md5Password {
        salt: [u8; 4],
    },
    /// SASL mechanisms the server offers, as a list of C strings ending with an empty one.
    Sasl {
        mechanisms: &'a [u8],
    },
    SaslContinue {
        data: &'a [u8],
    },
    SaslFinal {
        data: &'a [u8],
    },
    /// A method pgpilot does not speak (Kerberos, GSS, SSPI).
    Unsupported {
        code: u32,
    },
}

impl<'a> Authentication<'a> {
    /// Iterates the mechanism names of an `Sasl` request.
    pub fn mechanisms(list: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        list.split(|&b| b == 0).take_while(|m| !m.is_empty())
    }
}

/// The fields of an ErrorResponse or NoticeResponse: `(code, value)` pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    raw: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Wraps a body and checks that it is a well-formed field list.
    pub fn parse(raw: &'a [u8]) -> Result<Self, ProtocolError> {
        let fields = Fields { raw };
        let mut rest = raw;
        while let Some((&code, tail)) = rest.split_first() {
            if code == 0 {
                return Ok(fields);
            }
            rest = cstr(tail)
                .map_err(|_| ProtocolError::Malformed {
                    tag: b'E',
                    what: "unterminated field",
                })?
                .0;
        }
        Err(ProtocolError::Malformed {
            tag: b'E',
            what: "missing terminator",
        })
    }

    /// Iterates `(code, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
        let mut rest = self.raw;
        std::iter::from_fn(move || {
            let (&code, tail) = rest.split_first()?;
            if code == 0 {
                return None;
            }
            let (next, value) = cstr(tail).ok()?;
            rest = next;
            Some((code, value))
        })
    }

    /// The value of one field, e.g. `b'C'` for the SQLSTATE.
    pub fn get(&self, code: u8) -> Option<&'a [u8]> {
        self.iter().find(|(c, _)| *c == code).map(|(_, v)| v)
    }

    /// SQLSTATE, `"XX000"` when absent.
    pub fn code(&self) -> &'a str {
        self.get(b'C')
            .and_then(|c| std::str::from_utf8(c).ok())
            .unwrap_or("XX000")
    }

    /// Primary message text.
    pub fn message(&self) -> String {
        String::from_utf8_lossy(self.get(b'M').unwrap_or_default()).into_owned()
    }
}

/// A decoded backend message the proxy acts on; other tags become `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    Authentication(Authentication<'a>),
    ParameterStatus {
        name: &'a str,
        value: &'a str,
    },
    BackendKeyData {
        pid: u32,
        secret: u32,
    },
    ReadyForQuery {
        status: TransactionStatus,
    },
    ErrorResponse(Fields<'a>),
    NoticeResponse(Fields<'a>),
    CommandComplete {
        tag: &'a [u8],
    },
    /// CopyIn/Out/BothResponse: which one, overall format, column count.
    CopyResponse {
        tag: BackendTag,
        format: u8,
        columns: u16,
    },
    NotificationResponse {
        pid: u32,
        channel: &'a [u8],
        payload: &'a [u8],
    },
    /// Any other message: not decoded, forwarded as is.
    Other {
        tag: BackendTag,
    },
}

impl<'a> BackendMessage<'a> {
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
        use BackendMessage as M;
        Ok(match BackendTag::try_from(tag)? {
            BackendTag::Authentication => {
                M::Authentication(parse_auth(body).ok_or(bad("bad auth"))?)
            }
            BackendTag::ParameterStatus => {
                let (rest, name) = cstr_utf8(body).map_err(|_| bad("bad name"))?;
                let (_, value) = cstr_utf8(rest).map_err(|_| bad("bad value"))?;
                M::ParameterStatus { name, value }
            }
            BackendTag::BackendKeyData => {
                let (rest, pid) = be_u32::<_, ()>(body).map_err(|_| bad("short"))?;
                let (_, secret) = be_u32::<_, ()>(rest).map_err(|_| bad("short"))?;
                M::BackendKeyData { pid, secret }
            }
            BackendTag::ReadyForQuery => {
                let (_, b) = be_u8::<_, ()>(body).map_err(|_| bad("no status"))?;
                M::ReadyForQuery {
                    status: TransactionStatus::from_byte(b).ok_or(bad("bad status"))?,
                }
            }
            BackendTag::ErrorResponse => M::ErrorResponse(Fields::parse(body)?),
            // Fields::parse names ErrorResponse in its errors; a notice must name itself.
            BackendTag::NoticeResponse => {
                M::NoticeResponse(Fields::parse(body).map_err(|e| match e {
                    ProtocolError::Malformed { what, .. } => bad(what),
                    e => e,
                })?)
            }
            BackendTag::CommandComplete => M::CommandComplete {
                tag: cstr(body).map_err(|_| bad("no NUL"))?.1,
            },
            t @ (BackendTag::CopyInResponse
            | BackendTag::CopyOutResponse
            | BackendTag::CopyBothResponse) => {
                let (rest, format) = be_u8::<_, ()>(body).map_err(|_| bad("no format"))?;
                let (_, columns) = be_i16::<_, ()>(rest).map_err(|_| bad("no columns"))?;
                M::CopyResponse {
                    tag: t,
                    format,
                    columns: columns as u16,
                }
            }
            BackendTag::NotificationResponse => {
                let (rest, pid) = be_u32::<_, ()>(body).map_err(|_| bad("short"))?;
                let (rest, channel) = cstr(rest).map_err(|_| bad("bad channel"))?;
                let (_, payload) = cstr(rest).map_err(|_| bad("bad payload"))?;
                M::NotificationResponse {
                    pid,
                    channel,
                    payload,
                }
            }
            tag => M::Other { tag },
        })
    }
}

fn parse_auth(body: &[u8]) -> Option<Authentication<'_>> {
    let (rest, code) = be_i32::<_, ()>(body).ok()?;
    Some(match code {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => Authentication::Md5Password {
            salt: *rest.first_chunk::<4>()?,
        },
        10 => Authentication::Sasl { mechanisms: rest },
        11 => Authentication::SaslContinue { data: rest },
        12 => Authentication::SaslFinal { data: rest },
        code => Authentication::Unsupported { code: code as u32 },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode;
    use crate::frame::split_frame;
    use bytes::BytesMut;

    fn stream() -> BytesMut {
        let mut buf = BytesMut::new();
        encode::auth_sasl(&mut buf, &["SCRAM-SHA-256"]);
        encode::auth_sasl_continue(&mut buf, b"r=abc,s=c2FsdA==,i=4096");
        encode::auth_sasl_final(&mut buf, b"v=xyz");
        encode::auth_md5(&mut buf, [1, 2, 3, 4]);
        encode::auth_cleartext(&mut buf);
        encode::auth_ok(&mut buf);
        encode::parameter_status(&mut buf, "server_version", "15.0");
        encode::backend_key_data(&mut buf, 7, 9);
        encode::error_response(&mut buf, &encode::ErrorFields::error("28P01", "no"));
        encode::notice_response(&mut buf, "hello");
        encode::command_complete(&mut buf, b"SELECT 1");
        encode::copy_in_response(&mut buf, 0, 2);
        encode::notification_response(&mut buf, 5, b"chan", b"pay");
        encode::ready_for_query(&mut buf, TransactionStatus::InTransaction);
        buf
    }

    fn decode_all(buf: &mut BytesMut) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(f) = split_frame(buf, 1 << 20).unwrap() {
            out.push(format!("{:?}", BackendMessage::parse(&f.bytes).unwrap()));
        }
        out
    }

    #[test]
    fn tag_bytes_round_trip() {
        let mut known = 0;
        for b in 0..=u8::MAX {
            if let Some(tag) = BackendTag::from_byte(b) {
                assert_eq!(tag as u8, b);
                known += 1;
            }
            assert_eq!(BackendTag::try_from(b).ok(), BackendTag::from_byte(b));
        }
        assert_eq!(known, 24, "every variant has its byte");
    }

    #[test]
    fn every_message_round_trips_at_every_cut() {
        let wire = stream().freeze();
        let whole = decode_all(&mut BytesMut::from(&wire[..]));
        assert_eq!(whole.len(), 14);
        assert_eq!(
            whole[3],
            "Authentication(Md5Password { salt: [1, 2, 3, 4] })"
        );
        assert_eq!(whole[5], "Authentication(Ok)");
        assert_eq!(whole[7], "BackendKeyData { pid: 7, secret: 9 }");
        assert_eq!(whole[13], "ReadyForQuery { status: InTransaction }");
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = decode_all(&mut buf);
            buf.extend_from_slice(&wire[cut..]);
            got.extend(decode_all(&mut buf));
            assert_eq!(got, whole, "cut at {cut}");
        }
    }

    #[test]
    fn error_fields_are_readable() {
        let mut buf = BytesMut::new();
        let mut e = encode::ErrorFields::fatal("53300", "too many clients");
        e.detail = Some("limit is 2".into());
        encode::error_response(&mut buf, &e);
        let BackendMessage::ErrorResponse(fields) = BackendMessage::parse(&buf).unwrap() else {
            panic!()
        };
        assert_eq!(fields.code(), "53300");
        assert_eq!(fields.get(b'S'), Some(&b"FATAL"[..]));
        assert_eq!(fields.get(b'D'), Some(&b"limit is 2"[..]));
        assert_eq!(fields.message(), "too many clients");
    }

    #[test]
    fn golden_ready_for_query_and_sasl_list() {
        let wire = b"Z\0\0\0\x05I";
        assert_eq!(
            BackendMessage::parse(wire).unwrap(),
            BackendMessage::ReadyForQuery {
                status: TransactionStatus::Idle
            }
        );
        let sasl = b"R\0\0\0\x2a\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0";
        let BackendMessage::Authentication(Authentication::Sasl { mechanisms }) =
            BackendMessage::parse(sasl).unwrap()
        else {
            panic!()
        };
        let names: Vec<_> = Authentication::mechanisms(mechanisms).collect();
        assert_eq!(names, [&b"SCRAM-SHA-256-PLUS"[..], &b"SCRAM-SHA-256"[..]]);
        assert!(BackendMessage::parse(b"Z\0\0\0\x05Q").is_err());
        assert!(BackendMessage::parse(b"E\0\0\0\x06Cx").is_err());
    }
}
