//! Drives both sides of SCRAM-SHA-256 with arbitrary messages: the server with arbitrary
//! client messages (and client-final messages that carry the right nonce, so the proof check
//! is reached), the client with arbitrary server messages, and a full exchange with an
//! arbitrary password and salt, which must succeed exactly when the passwords match.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use pgpilot_protocol::scram::{
    md5_matches, md5_password, ScramClient, ScramError, ScramSecret, ScramServer,
};

const PASSWORD: &[u8] = b"pencil";
const SALT: &[u8] = b"salt";
/// Low on purpose: PBKDF2 is the slow step and the count does not change the code path.
const ITERATIONS: u32 = 16;
/// Server-first-messages asking for more iterations are skipped: the client must run them
/// (up to 10 million), which is correct and slow, and would only cut the exec rate.
const MAX_CLIENT_ITERATIONS: u32 = 64;
/// The server appends 18 random bytes, base64: 24 characters.
const SERVER_NONCE_LEN: usize = 24;

fn secret() -> &'static ScramSecret {
    static SECRET: OnceLock<ScramSecret> = OnceLock::new();
    SECRET.get_or_init(|| ScramSecret::derive(PASSWORD, SALT, ITERATIONS))
}

/// The value of a SCRAM attribute as the protocol crate reads it: first `k=` wins.
fn attr(msg: &str, key: char) -> Option<&str> {
    msg.split(',').find_map(|a| {
        let (k, v) = a.split_once('=')?;
        (k.len() == 1 && k.starts_with(key)).then_some(v)
    })
}

/// The server against an arbitrary client-first and client-final, then against a client-final
/// that carries the right channel binding and nonce, so that the proof check is reached.
fn check_server(client_first: &[u8], client_final: &[u8], proof: &[u8]) {
    let mut server = ScramServer::new(secret());
    assert_eq!(
        server.handle_client_final(client_final),
        Err(ScramError::Malformed("final before first"))
    );
    let mut server = ScramServer::new(secret());
    let Ok(server_first) = server.handle_client_first(client_first) else {
        return;
    };
    let first = std::str::from_utf8(client_first).expect("accepted text is UTF-8");
    let suffix = format!(",s={},i={ITERATIONS}", B64.encode(SALT));
    let nonce = server_first
        .strip_prefix("r=")
        .and_then(|s| s.strip_suffix(&suffix))
        .unwrap_or_else(|| panic!("bad server-first-message {server_first:?}"))
        .to_owned();
    assert!(
        nonce.len() > SERVER_NONCE_LEN,
        "no client nonce in {nonce:?}"
    );
    assert!(nonce.bytes().all(|b| b.is_ascii_graphic() && b != b','));
    let client_nonce = &nonce[..nonce.len() - SERVER_NONCE_LEN];
    let (gs2_flag, rest) = first.split_once(',').expect("accepted gs2 header");
    let (authzid, bare) = rest.split_once(',').expect("accepted gs2 header");
    assert_eq!(
        attr(bare, 'r'),
        Some(client_nonce),
        "nonce is not the client's"
    );

    // The server's nonce is random: the fuzzer's own client-final cannot carry it.
    let mut raw = ScramServer::new(secret());
    raw.handle_client_first(client_first)
        .expect("accepted once");
    assert!(raw.handle_client_final(client_final).is_err());

    // The fuzzer's client-final with our binding and nonce in front of its other attributes:
    // no proof it makes up may pass.
    let gs2 = format!("{gs2_flag},{authzid},");
    let text = String::from_utf8_lossy(client_final);
    let extra: Vec<&str> = text
        .split(',')
        .filter(|a| !a.is_empty() && !["c=", "r=", "p="].iter().any(|k| a.starts_with(k)))
        .collect();
    let extra: String = extra.iter().map(|a| format!(",{a}")).collect();
    let client_final = format!(
        "c={},r={nonce}{extra},p={}",
        B64.encode(gs2),
        B64.encode(proof)
    );
    assert_eq!(
        server.handle_client_final(client_final.as_bytes()),
        Err(ScramError::AuthFailed),
        "{client_final:?}"
    );
    assert_eq!(
        server.handle_client_final(client_final.as_bytes()),
        Err(ScramError::Malformed("final before first")),
        "an exchange was reused"
    );
}

fn check_client(password: &[u8], server_first: &[u8], server_final: &[u8]) {
    // Raw: without our (random) nonce nothing passes; it must just be refused.
    let (mut raw, _) = ScramClient::new(password);
    assert!(raw.handle_server_first(server_first).is_err());
    // With our nonce in front: the salt, iteration count and the rest are the fuzzer's.
    let (mut client, first) = ScramClient::new(password);
    let nonce = std::str::from_utf8(&first)
        .expect("client-first is text")
        .strip_prefix("n,,n=,r=")
        .expect("client-first shape")
        .to_owned();
    let text = String::from_utf8_lossy(server_first);
    let msg = format!("r={nonce}{}", text.strip_prefix("r=").unwrap_or(&text));
    let iterations = attr(&msg, 'i').and_then(|i| i.parse::<u32>().ok());
    if iterations.is_some_and(|i| i > MAX_CLIENT_ITERATIONS) {
        return;
    }
    match client.handle_server_first(msg.as_bytes()) {
        Ok(client_final) => {
            let client_final = String::from_utf8(client_final).expect("client-final is text");
            let server_nonce = attr(&msg, 'r').expect("accepted a message without nonce");
            assert!(server_nonce.len() > nonce.len() && server_nonce.starts_with(&nonce));
            let (without_proof, proof) = client_final.rsplit_once(",p=").expect("has a proof");
            assert_eq!(without_proof, format!("c=biws,r={server_nonce}"));
            assert_eq!(B64.decode(proof).map(|p| p.len()), Ok(32));
            assert!(
                client.verify_server_final(server_final).is_err(),
                "forged verifier"
            );
            assert_eq!(
                client.verify_server_final(b"e=other-error"),
                Err(ScramError::AuthFailed)
            );
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(client.verify_server_final(server_final).is_err());
        }
    }
}

/// One whole exchange; it succeeds exactly when the client's password is the server's.
fn exchange(server_pw: &[u8], client_pw: &[u8], salt: &[u8], iterations: u32) {
    let secret = ScramSecret::derive(server_pw, salt, iterations);
    let mut server = ScramServer::new(&secret);
    let (mut client, first) = ScramClient::new(client_pw);
    let server_first = server
        .handle_client_first(&first)
        .expect("own client-first");
    let client_final = client
        .handle_server_first(server_first.as_bytes())
        .expect("own server-first");
    let server_final = server.handle_client_final(&client_final);
    if server_pw == client_pw {
        let server_final = server_final.expect("right password refused");
        assert_eq!(client.verify_server_final(server_final.as_bytes()), Ok(()));
    } else {
        assert_eq!(
            server_final,
            Err(ScramError::AuthFailed),
            "wrong password accepted"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // NUL-separated, in the order of a real exchange (the seeds are cut from one).
    let mut parts = data.split(|&b| b == 0);
    let mut next = || parts.next().unwrap_or_default();
    let (client_first, client_final, server_first, server_final, password) =
        (next(), next(), next(), next(), next());

    check_server(client_first, client_final, password);
    check_client(password, server_first, server_final);

    let iterations = 1 + (password.len() % 4) as u32;
    exchange(password, password, server_first, iterations);
    exchange(password, client_first, server_first, iterations);

    let salt = [client_final.len() as u8, 1, 2, 3];
    let md5 = md5_password(client_first, password, salt);
    assert_eq!(md5.len(), 35);
    assert!(md5.starts_with(b"md5"));
    assert!(md5[3..]
        .iter()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert!(md5_matches(&md5, &md5));
    assert_eq!(md5_matches(&md5, client_final), client_final == &md5[..]);
});
