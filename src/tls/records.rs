//! The sans-IO glue between a rustls connection (either side) and the sockets: plaintext
//! sealed into records to write, ciphertext read opened into the caller's buffer.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use rustls::ConnectionCommon;

/// Encrypts `plain` and returns the records to send (with anything else rustls has to say).
pub fn seal<D>(conn: &mut ConnectionCommon<D>, plain: &[u8]) -> io::Result<Vec<u8>> {
    conn.writer().write_all(plain)?;
    pending(conn)
}

/// What rustls has to send now (handshake messages, records, alerts).
pub fn pending<D>(conn: &mut ConnectionCommon<D>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// Takes in ciphertext (all of it) and appends the plaintext it held to `plain`. Returns
/// whether the peer closed the TLS session (close_notify).
pub fn open<D>(
    conn: &mut ConnectionCommon<D>,
    mut cipher: &[u8],
    plain: &mut BytesMut,
) -> io::Result<bool> {
    while !cipher.is_empty() {
        let took = conn.read_tls(&mut cipher)?;
        let state = conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        drain(conn, plain)?;
        // Nothing taken: the session is over (rustls reads nothing after close_notify).
        if state.peer_has_closed() || took == 0 {
            return Ok(state.peer_has_closed());
        }
    }
    Ok(false)
}

/// Moves the decrypted bytes rustls holds into `plain`.
fn drain<D>(conn: &mut ConnectionCommon<D>, plain: &mut BytesMut) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.reader().read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => plain.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}
