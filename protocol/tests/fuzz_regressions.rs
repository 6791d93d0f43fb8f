//! Inputs the fuzz targets in `fuzz/` found, each pinned by the behaviour the target asserted.
//! A new finding goes here with its bytes as the target saw them (see README, "Fuzzing").

use pgpilot_protocol::backend::BackendMessage;
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
