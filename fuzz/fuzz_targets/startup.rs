//! Feeds arbitrary bytes to the startup phase the way a session reads it: `peek_len` until the
//! packet is whole, then `parse` on exactly that packet; and checks what a parse returns
//! against the packet's bytes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgpilot_protocol::startup::{
    self, StartupPacket, CANCEL_REQUEST, GSSENC_REQUEST, MAX_STARTUP_LEN, SSL_REQUEST,
};
use pgpilot_protocol::{encode, ProtocolError};

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end <= o.end
}

fn check_packet(packet: &[u8]) {
    let code = packet
        .get(4..8)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4")));
    match startup::parse(packet) {
        Ok(StartupPacket::SslRequest) => assert_eq!(code, Some(SSL_REQUEST)),
        Ok(StartupPacket::GssEncRequest) => assert_eq!(code, Some(GSSENC_REQUEST)),
        Ok(StartupPacket::CancelRequest { pid, secret }) => {
            assert_eq!(code, Some(CANCEL_REQUEST));
            assert_eq!(&packet[8..12], pid.to_be_bytes());
            assert_eq!(&packet[12..16], secret.to_be_bytes());
        }
        Ok(StartupPacket::Startup(msg)) => {
            let code = code.expect("a startup message has a code");
            assert_eq!(u32::from(msg.major), code >> 16);
            assert_eq!(u32::from(msg.minor), code & 0xffff);
            // The parameters are the packet: re-encoding them gives back its bytes after the
            // code, up to and including the terminating NUL, and nothing after it is ignored.
            let mut rebuilt = Vec::new();
            for (name, value) in &msg.params {
                for s in [name, value] {
                    assert!(within(packet, s.as_bytes()), "{s:?} is not from the packet");
                    assert!(!s.contains('\0'));
                    rebuilt.extend_from_slice(s.as_bytes());
                    rebuilt.push(0);
                }
                // `param` finds the first value for a name.
                let first = msg.params.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
                assert_eq!(msg.param(name), first);
            }
            rebuilt.push(0);
            assert_eq!(&packet[8..], &rebuilt[..], "parameters are not the packet");
            if msg.minor == 0 {
                let mut buf = BytesMut::new();
                encode::startup_message(&mut buf, &msg.params);
                assert_eq!(&buf[4..], &packet[4..], "encode does not round-trip");
            }
        }
        Err(ProtocolError::UnsupportedVersion { code: c }) => {
            assert_eq!(Some(c), code);
            assert!(![SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST].contains(&c));
            assert_ne!(c >> 16, 3);
        }
        Err(ProtocolError::Malformed { tag: 0, .. }) => {}
        Err(ProtocolError::StartupLayout) => assert_eq!(code.map(|c| c >> 16), Some(3)),
        Err(e) => panic!("startup::parse reported {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    // As a session reads: the length word decides how much is the packet.
    for cut in 0..data.len().min(4) {
        assert_eq!(
            startup::peek_len(&data[..cut]),
            Ok(None),
            "needs four bytes"
        );
    }
    match startup::peek_len(data) {
        Ok(None) => assert!(data.len() < 4),
        Ok(Some(len)) => {
            // The limit is on the body, as PostgreSQL's: the length word may add its own 4.
            assert!((8..=MAX_STARTUP_LEN as usize + 4).contains(&len));
            assert_eq!(Some(&(len as u32).to_be_bytes()[..]), data.get(..4));
            if let Some(packet) = data.get(..len) {
                check_packet(packet);
            }
        }
        Err(ProtocolError::BadLength { tag: 0, msg_len }) => assert!(msg_len < 8),
        Err(ProtocolError::TooLarge { tag: 0, msg_len }) => {
            assert!(msg_len.saturating_sub(4) > MAX_STARTUP_LEN)
        }
        Err(e) => panic!("peek_len reported {e:?}"),
    }
    // And `parse` on its own, given any bytes whatever their length word says.
    check_packet(data);
});
