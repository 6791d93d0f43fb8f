//! Writers for the messages pgpilot originates: each appends one message to a `BytesMut`.

use bytes::{BufMut, BytesMut};

use crate::backend::TransactionStatus;
use crate::startup::{CANCEL_REQUEST, PROTOCOL_3_0, SSL_REQUEST};

/// Appends a tagged message whose body `body` writes; fills in the length word after.
fn tagged(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let msg_len = buf.len().saturating_sub(at) as u32;
    if let Some(word) = buf.get_mut(at..).and_then(|b| b.first_chunk_mut::<4>()) {
        *word = msg_len.to_be_bytes();
    }
}

/// Appends an untagged startup-phase packet.
fn untagged(buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = buf.len().saturating_sub(at) as u32;
    if let Some(word) = buf.get_mut(at..).and_then(|b| b.first_chunk_mut::<4>()) {
        *word = len.to_be_bytes();
    }
}

/// Appends a protocol-2 ErrorResponse (`E` and one C string, no length word): what
/// PostgreSQL answers a client that asked for protocol 2, which libpq still reads.
pub fn error_response_v2(buf: &mut BytesMut, message: &str) {
    buf.put_u8(b'E');
    put_cstr(buf, format!("FATAL:  {message}\n").as_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

// ---- startup phase (frontend) ----

/// StartupMessage for protocol 3.0 with the given parameters.
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    untagged(buf, |b| {
        b.put_u32(PROTOCOL_3_0);
        for (name, value) in params {
            put_cstr(b, name.as_bytes());
            put_cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

/// CancelRequest for the session with this key.
pub fn cancel_request(buf: &mut BytesMut, pid: u32, secret: u32) {
    untagged(buf, |b| {
        b.put_u32(CANCEL_REQUEST);
        b.put_u32(pid);
        b.put_u32(secret);
    });
}

/// SSLRequest.
pub fn ssl_request(buf: &mut BytesMut) {
    untagged(buf, |b| b.put_u32(SSL_REQUEST));
}

// ---- frontend ----

/// PasswordMessage (cleartext or md5 hash).
pub fn password_message(buf: &mut BytesMut, password: &[u8]) {
    tagged(buf, b'p', |b| put_cstr(b, password));
}

/// SASLInitialResponse with the client-first-message.
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    tagged(buf, b'p', |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// SASLResponse with the client-final-message.
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    tagged(buf, b'p', |b| b.put_slice(data));
}

/// Query (simple protocol).
pub fn query(buf: &mut BytesMut, sql: &[u8]) {
    tagged(buf, b'Q', |b| put_cstr(b, sql));
}

/// Parse.
pub fn parse(buf: &mut BytesMut, name: &[u8], query: &[u8], param_types: &[u32]) {
    tagged(buf, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, query);
        b.put_i16(param_types.len() as i16);
        for oid in param_types {
            b.put_u32(*oid);
        }
    });
}

/// Bind with text parameters (`None` is NULL) and text results.
pub fn bind(buf: &mut BytesMut, portal: &[u8], statement: &[u8], params: &[Option<&[u8]>]) {
    tagged(buf, b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, statement);
        b.put_i16(0);
        b.put_i16(params.len() as i16);
        for p in params {
            match p {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
        b.put_i16(0);
    });
}

/// Describe a statement (`b'S'`) or portal (`b'P'`).
pub fn describe(buf: &mut BytesMut, kind: u8, name: &[u8]) {
    tagged(buf, b'D', |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// Execute a portal.
pub fn execute(buf: &mut BytesMut, portal: &[u8], max_rows: i32) {
    tagged(buf, b'E', |b| {
        put_cstr(b, portal);
        b.put_i32(max_rows);
    });
}

/// Close a statement (`b'S'`) or portal (`b'P'`).
pub fn close(buf: &mut BytesMut, kind: u8, name: &[u8]) {
    tagged(buf, b'C', |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// Sync.
pub fn sync(buf: &mut BytesMut) {
    tagged(buf, b'S', |_| {});
}

/// Flush.
pub fn flush(buf: &mut BytesMut) {
    tagged(buf, b'H', |_| {});
}

/// Terminate.
pub fn terminate(buf: &mut BytesMut) {
    tagged(buf, b'X', |_| {});
}

/// CopyData (either direction).
pub fn copy_data(buf: &mut BytesMut, data: &[u8]) {
    tagged(buf, b'd', |b| b.put_slice(data));
}

/// CopyDone (either direction).
pub fn copy_done(buf: &mut BytesMut) {
    tagged(buf, b'c', |_| {});
}

/// CopyFail.
pub fn copy_fail(buf: &mut BytesMut, message: &[u8]) {
    tagged(buf, b'f', |b| put_cstr(b, message));
}

/// FunctionCall with no arguments and a text result.
pub fn function_call(buf: &mut BytesMut, oid: u32) {
    tagged(buf, b'F', |b| {
        b.put_u32(oid);
        b.put_i16(0);
        b.put_i16(0);
        b.put_i16(0);
    });
}

// ---- backend ----

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    tagged(buf, b'R', |b| b.put_i32(0));
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext(buf: &mut BytesMut) {
    tagged(buf, b'R', |b| b.put_i32(3));
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    tagged(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL offering these mechanisms.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    tagged(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue with the server-first-message.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    tagged(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal with the server-final-message.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    tagged(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    tagged(buf, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, pid: u32, secret: u32) {
    tagged(buf, b'K', |b| {
        b.put_u32(pid);
        b.put_u32(secret);
    });
}

/// ReadyForQuery.
pub fn ready_for_query(buf: &mut BytesMut, status: TransactionStatus) {
    tagged(buf, b'Z', |b| b.put_u8(status.as_byte()));
}

/// ParseComplete.
pub fn parse_complete(buf: &mut BytesMut) {
    tagged(buf, b'1', |_| {});
}

/// CommandComplete.
pub fn command_complete(buf: &mut BytesMut, tag: &[u8]) {
    tagged(buf, b'C', |b| put_cstr(b, tag));
}

/// EmptyQueryResponse: the answer to a query string with no statement in it.
pub fn empty_query_response(buf: &mut BytesMut) {
    tagged(buf, b'I', |_| {});
}

/// RowDescription of text-format columns: each a name and a type OID (no table, no modifier).
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    tagged(buf, b'T', |b| {
        b.put_u16(columns.len() as u16);
        for (name, type_oid) in columns {
            put_cstr(b, name.as_bytes());
            b.put_u32(0); // table OID
            b.put_u16(0); // column number
            b.put_u32(*type_oid);
            b.put_i16(-1); // variable size
            b.put_i32(-1); // no type modifier
            b.put_u16(0); // text format
        }
    });
}

/// DataRow of text values; `None` is SQL NULL.
pub fn data_row(buf: &mut BytesMut, values: &[Option<&[u8]>]) {
    tagged(buf, b'D', |b| {
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_u32(v.len() as u32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// CopyInResponse with text format for every column.
pub fn copy_in_response(buf: &mut BytesMut, format: u8, columns: u16) {
    tagged(buf, b'G', |b| {
        b.put_u8(format);
        b.put_u16(columns);
        for _ in 0..columns {
            b.put_u16(u16::from(format));
        }
    });
}

/// NotificationResponse.
pub fn notification_response(buf: &mut BytesMut, pid: u32, channel: &[u8], payload: &[u8]) {
    tagged(buf, b'A', |b| {
        b.put_u32(pid);
        put_cstr(b, channel);
        put_cstr(b, payload);
    });
}

/// NegotiateProtocolVersion: the newest minor version we speak and the options we ignored.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: u32, unknown_options: &[&str]) {
    tagged(buf, b'v', |b| {
        b.put_u32(minor);
        b.put_u32(unknown_options.len() as u32);
        for o in unknown_options {
            put_cstr(b, o.as_bytes());
        }
    });
}

/// The fields of an ErrorResponse or NoticeResponse that pgpilot writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// `ERROR`, `FATAL` or `NOTICE`.
    pub severity: &'static str,
    /// SQLSTATE.
    pub code: &'static str,
    /// Primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
}

impl ErrorFields {
    /// An ERROR: the statement failed, the session goes on.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "ERROR",
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// A FATAL: the session ends after this message.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ErrorFields {
            severity: "FATAL",
            code,
            message: message.into(),
            detail: None,
        }
    }
}

fn put_fields(b: &mut BytesMut, e: &ErrorFields) {
    for code in [b'S', b'V'] {
        b.put_u8(code);
        put_cstr(b, e.severity.as_bytes());
    }
    b.put_u8(b'C');
    put_cstr(b, e.code.as_bytes());
    b.put_u8(b'M');
    put_cstr(b, e.message.as_bytes());
    if let Some(d) = &e.detail {
        b.put_u8(b'D');
        put_cstr(b, d.as_bytes());
    }
    b.put_u8(0);
}

/// ErrorResponse.
pub fn error_response(buf: &mut BytesMut, e: &ErrorFields) {
    tagged(buf, b'E', |b| put_fields(b, e));
}

/// NoticeResponse with severity NOTICE and SQLSTATE 00000.
pub fn notice_response(buf: &mut BytesMut, message: &str) {
    let e = ErrorFields {
        severity: "NOTICE",
        code: "00000",
        message: message.into(),
        detail: None,
    };
    tagged(buf, b'N', |b| put_fields(b, &e));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_auth_ok_and_rfq() {
        let mut buf = BytesMut::new();
        auth_ok(&mut buf);
        ready_for_query(&mut buf, TransactionStatus::Idle);
        assert_eq!(&buf[..], b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I");
    }

    #[test]
    fn golden_startup_message() {
        let mut buf = BytesMut::new();
        startup_message(&mut buf, &[("user", "u")]);
        assert_eq!(&buf[..], b"\0\0\0\x10\0\x03\0\0user\0u\0\0");
    }
}
