//! Each `sslmode` against a server in memory (rustls on both sides, certificates made here):
//! what it accepts, what it refuses, and the glue that moves records in and out.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};

use super::*;

/// A CA, and a server certificate it signed for `localhost` only.
struct Pki {
    ca_pem: String,
    server: Arc<ServerConfig>,
}

fn pki(cn: &str) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, cn);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let server =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// A CA bundle file holding `pem`, unique to this test.
fn bundle(name: &str, pem: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pgpilot-tls-{name}-{}.pem", std::process::id()));
    std::fs::write(&path, pem).unwrap();
    path
}

/// Runs the handshake between a client of `tls` and `server`; the client's error, if any.
fn handshake(
    tls: &BackendTls,
    server: &Arc<ServerConfig>,
) -> Result<(ClientConnection, ServerConnection), String> {
    let mut client = tls.start().unwrap().expect("a TLS mode");
    let mut server = ServerConnection::new(server.clone()).unwrap();
    for _ in 0..10 {
        let to_server = pending(&mut client).unwrap();
        if !to_server.is_empty() {
            server.read_tls(&mut to_server.as_slice()).unwrap();
            if let Err(e) = server.process_new_packets() {
                return Err(format!("the server refused: {e}"));
            }
        }
        let mut to_client = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut to_client).unwrap();
        }
        if !to_client.is_empty() {
            open(&mut client, &to_client, &mut BytesMut::new()).map_err(|e| e.to_string())?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok((client, server));
        }
    }
    Err("the handshake never ended".into())
}

#[test]
fn verify_full_checks_the_chain_and_the_configured_host_name() {
    let ours = pki("ours");
    let theirs = pki("theirs");
    let ca = bundle("full", &ours.ca_pem);
    let mut b = Builder::new(Some(ca.clone()));
    let by_name = b.backend(SslMode::VerifyFull, "localhost").unwrap();
    assert!(handshake(&by_name, &ours.server).is_ok());
    let by_address = b.backend(SslMode::VerifyFull, "127.0.0.1").unwrap();
    let refused = handshake(&by_address, &ours.server).unwrap_err();
    assert!(refused.contains("name"), "{refused}");
    let refused = handshake(&by_name, &theirs.server).unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let _ = std::fs::remove_file(ca);
}

#[test]
fn verify_ca_checks_the_chain_only() {
    let ours = pki("ours");
    let theirs = pki("theirs");
    let ca = bundle("ca", &ours.ca_pem);
    let mut b = Builder::new(Some(ca.clone()));
    let tls = b.backend(SslMode::VerifyCa, "127.0.0.1").unwrap();
    assert!(handshake(&tls, &ours.server).is_ok(), "any name");
    let refused = handshake(&tls, &theirs.server).unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let _ = std::fs::remove_file(ca);
}

#[test]
fn prefer_and_require_encrypt_without_checking_unless_a_ca_file_is_given() {
    let theirs = pki("theirs");
    let mut no_ca = Builder::new(None);
    for mode in [SslMode::Prefer, SslMode::Require] {
        let tls = no_ca.backend(mode, "127.0.0.1").unwrap();
        assert!(handshake(&tls, &theirs.server).is_ok(), "{mode}");
    }
    assert!(SslMode::Prefer.allows_plaintext() && !SslMode::Require.allows_plaintext());
    // libpq: with a root certificate file, require checks the chain as verify-ca does.
    let ours = pki("ours");
    let ca = bundle("require", &ours.ca_pem);
    let tls = Builder::new(Some(ca.clone()))
        .backend(SslMode::Require, "127.0.0.1")
        .unwrap();
    assert_eq!(tls.mode, SslMode::Require);
    assert!(handshake(&tls, &ours.server).is_ok());
    assert!(handshake(&tls, &theirs.server).is_err());
    let disabled = no_ca.backend(SslMode::Disable, "127.0.0.1").unwrap();
    assert!(disabled.start().unwrap().is_none());
    let _ = std::fs::remove_file(ca);
}

#[test]
fn records_go_both_ways_and_close_notify_is_seen() {
    let ours = pki("ours");
    let tls = Builder::new(None)
        .backend(SslMode::Require, "localhost")
        .unwrap();
    let (mut client, mut server) = handshake(&tls, &ours.server).unwrap();
    let sealed = seal(&mut client, b"SELECT 1").unwrap();
    server.read_tls(&mut sealed.as_slice()).unwrap();
    server.process_new_packets().unwrap();
    let mut got = [0u8; 8];
    std::io::Read::read_exact(&mut server.reader(), &mut got).unwrap();
    assert_eq!(&got, b"SELECT 1");
    server.writer().write_all(&[7u8; 20_000]).unwrap();
    server.send_close_notify();
    let mut s = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut s).unwrap();
    }
    // Byte by byte: records split anywhere come out whole.
    let mut plain = BytesMut::new();
    let mut closed = false;
    for b in s.chunks(1) {
        closed |= open(&mut client, b, &mut plain).unwrap();
    }
    assert_eq!(plain.len(), 20_000);
    assert!(plain.iter().all(|&b| b == 7));
    assert!(closed, "close_notify");
    // Bytes after the close are not read (and do not loop for ever).
    assert!(open(&mut client, b"more", &mut plain).unwrap());
    assert_eq!(plain.len(), 20_000);
    // Garbage in place of a record is an error, not a panic.
    let (mut fresh, _server) = handshake(&tls, &ours.server).unwrap();
    assert!(open(&mut fresh, &[0x17, 3, 3, 0, 5, 1, 2, 3, 4, 5], &mut plain).is_err());
}

#[test]
fn bad_settings_are_clear_errors() {
    let mut b = Builder::new(None);
    let e = b.backend(SslMode::VerifyFull, "not a host!").unwrap_err();
    assert!(e.contains("not a host!"), "{e}");
    let missing = read_certs(std::path::Path::new("/nonexistent/ca.pem")).unwrap_err();
    assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
    let empty = bundle("empty", "no certificates here\n");
    let e = read_certs(&empty).unwrap_err();
    assert!(e.contains("no PEM certificate"), "{e}");
    let _ = std::fs::remove_file(empty);
}
