//! Inputs the fuzz targets in `fuzz/` found, each pinned by the behaviour the target asserted.
//! A new finding goes here with its bytes as the target saw them (see README, "Fuzzing").

use pgpilot_protocol::backend::BackendMessage;
use pgpilot_protocol::classify::{classify, lone_default_begin, Reason};
use pgpilot_protocol::ProtocolError;

/// fuzz target `backend`, artifact `crash-f09c896b…`: a NoticeResponse whose field list is
/// cut short was reported as a malformed ErrorResponse (`'E'`), so the log named the wrong message.
#[test]
fn malformed_notice_response_is_reported_as_a_notice() {
    // 'N', length 8, body: field 0x08 = "", then field 0x12 with no NUL.
    let frame = b"N\0\0\0\x08\x08\0\x12\x04";
    assert!(matches!(
        BackendMessage::parse(frame),
        Err(ProtocolError::Malformed { tag: b'N', .. })
    ));
    let frame = b"E\0\0\0\x08\x08\0\x12\x04";
    assert!(matches!(
        BackendMessage::parse(frame),
        Err(ProtocolError::Malformed { tag: b'E', .. })
    ));
}

/// fuzz target `classify`, artifact `crash-cc61f02a…` (`BEGIN/*…` with the comment never
/// closed): `lone_default_begin` took text the lexer could not follow for a lone BEGIN, which
/// the session may then route as a read-only block; PostgreSQL rejects the text instead. The
/// other lone-statement readers already refuse unparsable text.
#[test]
fn lone_default_begin_refuses_an_unterminated_comment() {
    assert_eq!(classify(b"BEGIN /* never closed").reason, Reason::Unparsed);
    assert!(!lone_default_begin(b"BEGIN /* never closed"));
    assert!(!lone_default_begin(b"BEGIN/*LE.C/*L*/"));
    assert!(lone_default_begin(b"BEGIN /* closed */"));
}
