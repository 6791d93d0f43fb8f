//! The one error type of the protocol crate. "Need more bytes" is `Ok(None)`, never an error.

use std::fmt;

/// A message that breaks the PostgreSQL v3 protocol.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// The length word is smaller than the length word itself.
    BadLength { tag: u8, msg_len: u32 },
    /// The length word exceeds the configured maximum.
    TooLarge { tag: u8, msg_len: u32 },
    /// A tag this side of the protocol does not know.
    UnknownTag { tag: u8 },
    /// The body does not have the shape its tag promises.
    Malformed { tag: u8, what: &'static str },
    /// A startup packet with a protocol version or request code we do not speak.
    UnsupportedVersion { code: u32 },
    /// A startup packet whose parameter list is not NUL-terminated name/value pairs ending in
    /// a lone NUL.
    StartupLayout,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |t: u8| if t.is_ascii_graphic() { t as char } else { '?' };
        match *self {
            ProtocolError::BadLength { tag, msg_len } => {
                write!(f, "invalid length {msg_len} in message '{}'", show(tag))
            }
            ProtocolError::TooLarge { tag, msg_len } => {
                write!(
                    f,
                    "message '{}' of {msg_len} bytes exceeds the limit",
                    show(tag)
                )
            }
            ProtocolError::UnknownTag { tag } => write!(f, "unknown message type 0x{tag:02x}"),
            ProtocolError::Malformed { tag, what } => {
                write!(f, "malformed message '{}': {what}", show(tag))
            }
            ProtocolError::UnsupportedVersion { code } => {
                write!(f, "unsupported protocol version or request code {code}")
            }
            // PostgreSQL's own words for any packet it cannot split into parameters.
            ProtocolError::StartupLayout => {
                f.write_str("invalid startup packet layout: expected terminator as last byte")
            }
        }
    }
}

impl std::error::Error for ProtocolError {}
