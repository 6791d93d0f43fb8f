//! SCRAM-SHA-256 (RFC 5802 / RFC 7677, as PostgreSQL uses it) for both sides, and MD5
//! password hashing. The primitives are RustCrypto's; this file only arranges the messages.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use subtle::ConstantTimeEq;

/// Iterations PostgreSQL uses by default (`scram_iterations`).
pub const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length PostgreSQL uses (`SCRAM_DEFAULT_SALT_LEN`); mock salts have the same length.
pub const SALT_LEN: usize = 16;
/// The mechanism name pgpilot speaks. Channel binding (`-PLUS`) needs TLS, which comes later.
pub const MECHANISM: &str = "SCRAM-SHA-256";

type HmacSha256 = Hmac<Sha256>;

/// Why a SCRAM exchange stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramError {
    /// A message did not follow the SCRAM grammar.
    Malformed(&'static str),
    /// The proof (or, on the client, the server signature) was wrong.
    AuthFailed,
}

impl std::fmt::Display for ScramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScramError::Malformed(what) => write!(f, "malformed SCRAM message: {what}"),
            ScramError::AuthFailed => f.write_str("SCRAM authentication failed"),
        }
    }
}

impl std::error::Error for ScramError {}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).expect("the OS random source is available");
    b
}

/// Compares secrets without an early exit, so the time taken does not tell an attacker how many
/// leading bytes were right. Lengths are public (a proof is always 32 bytes, an MD5 answer 35).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Lets [`ScramServer::new`] take a borrowed secret as it takes an owned one.
impl<'a> From<&'a ScramSecret> for Cow<'a, ScramSecret> {
    fn from(secret: &'a ScramSecret) -> Self {
        Cow::Borrowed(secret)
    }
}

impl From<ScramSecret> for Cow<'_, ScramSecret> {
    fn from(secret: ScramSecret) -> Self {
        Cow::Owned(secret)
    }
}

/// What the server keeps of a password: derived once, used for every login.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// SHA-256(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramSecret { .. }")
    }
}

impl ScramSecret {
    /// Derives the secret from a password (the slow step: PBKDF2).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Reads a verifier as PostgreSQL stores it in `pg_authid.rolpassword`:
    /// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64). `None` for
    /// anything else (an MD5 hash, a plain password, NULL).
    pub fn from_verifier(text: &str) -> Option<Self> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations: u32 = iterations.parse().ok().filter(|i| *i > 0)?;
        let key = |b64: &str| -> Option<[u8; 32]> { B64.decode(b64).ok()?.try_into().ok() };
        Some(ScramSecret {
            iterations,
            salt: B64.decode(salt).ok().filter(|s| !s.is_empty())?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// A secret no password matches, with a salt chosen by the caller: lets the server run
    /// the whole exchange for an unknown user, so that a login does not reveal which users exist.
    pub fn impossible(salt: &[u8]) -> Self {
        ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: salt.to_vec(),
            stored_key: random_bytes(),
            server_key: random_bytes(),
        }
    }
}

/// Secrets for users the server does not know (PostgreSQL's mock authentication). The salt is
/// HMAC-SHA-256(per-process key, user name) cut to [`SALT_LEN`]: a probe that asks twice for
/// one name sees one salt, as it would for a real user, and without the key a salt does not
/// show whether the user exists.
#[derive(Clone)]
pub struct MockAuth {
    key: [u8; 32],
}

impl std::fmt::Debug for MockAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockAuth { .. }")
    }
}

impl MockAuth {
    /// A fresh random key: salts are stable for the life of the process.
    pub fn random() -> Self {
        MockAuth {
            key: random_bytes(),
        }
    }

    /// The secret an unknown `user` is checked against: its stable salt, the default
    /// iteration count, and keys no password matches.
    pub fn secret(&self, user: &[u8]) -> ScramSecret {
        let salt = hmac(&self.key, &[b"pgpilot mock salt\0", user]);
        ScramSecret::impossible(&salt[..SALT_LEN])
    }
}

/// Splits `a=value` attributes of a SCRAM message.
fn attrs(msg: &str) -> impl Iterator<Item = (u8, &str)> {
    msg.split(',').filter_map(|a| {
        let (k, v) = a.split_once('=')?;
        match k.as_bytes() {
            &[key] => Some((key, v)),
            _ => None,
        }
    })
}

fn attr(msg: &str, key: u8) -> Option<&str> {
    attrs(msg).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// What a client proved in a SCRAM exchange: enough to log in to a server holding the same
/// verifier as that client (SCRAM pass-through), never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// The verifier the client was checked against.
    pub secret: ScramSecret,
    /// HMAC(SaltedPassword, "Client Key"), recovered from the client's proof.
    pub client_key: [u8; 32],
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys { .. }")
    }
}

/// The server side of one SCRAM-SHA-256 exchange.
pub struct ScramServer<'s> {
    secret: Cow<'s, ScramSecret>,
    /// gs2 header, client-first-message-bare, server-first-message, full nonce.
    first: Option<(String, String, String, String)>,
    /// The ClientKey of a proof that held.
    proven: Option<[u8; 32]>,
}

impl<'s> ScramServer<'s> {
    /// Starts an exchange against `secret`, borrowed (a configured user's) or owned (an
    /// unknown user's mock secret).
    pub fn new(secret: impl Into<Cow<'s, ScramSecret>>) -> Self {
        ScramServer {
            secret: secret.into(),
            first: None,
            proven: None,
        }
    }

    /// Takes the client-first-message and returns the server-first-message.
    pub fn handle_client_first(&mut self, data: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (gs2, bare) = match msg.as_bytes().first() {
            Some(b'n' | b'y') => {
                let mut it = msg.splitn(3, ',');
                let cb = it.next().unwrap_or_default();
                let authzid = it.next().ok_or(ScramError::Malformed("no gs2 header"))?;
                let bare = it.next().ok_or(ScramError::Malformed("no gs2 header"))?;
                if cb.len() != 1 {
                    return Err(ScramError::Malformed("bad channel binding flag"));
                }
                (format!("{cb},{authzid},"), bare)
            }
            Some(b'p') => return Err(ScramError::Malformed("channel binding needs TLS")),
            _ => return Err(ScramError::Malformed("bad gs2 header")),
        };
        let client_nonce = attr(bare, b'r').ok_or(ScramError::Malformed("no nonce"))?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(ScramError::Malformed("bad nonce"));
        }
        let nonce = format!("{client_nonce}{}", B64.encode(random_bytes::<18>()));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.secret.salt),
            self.secret.iterations
        );
        self.first = Some((gs2, bare.to_owned(), server_first.clone(), nonce));
        Ok(server_first)
    }

    /// Takes the client-final-message; returns the server-final-message when the proof holds.
    pub fn handle_client_final(&mut self, data: &[u8]) -> Result<String, ScramError> {
        let (gs2, bare, server_first, nonce) = self
            .first
            .take()
            .ok_or(ScramError::Malformed("final before first"))?;
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        if attr(without_proof, b'c') != Some(B64.encode(gs2.as_bytes()).as_str()) {
            return Err(ScramError::Malformed("channel binding mismatch"));
        }
        if attr(without_proof, b'r') != Some(nonce.as_str()) {
            return Err(ScramError::Malformed("nonce mismatch"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("bad proof"))?;
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let signature = hmac(&self.secret.stored_key, &[auth_message.as_bytes()]);
        if proof.len() != 32 {
            return Err(ScramError::AuthFailed);
        }
        let mut client_key = [0u8; 32];
        for ((k, p), s) in client_key.iter_mut().zip(&proof).zip(signature) {
            *k = p ^ s;
        }
        if !ct_eq(&Sha256::digest(client_key), &self.secret.stored_key) {
            return Err(ScramError::AuthFailed);
        }
        self.proven = Some(client_key);
        let server_signature = hmac(&self.secret.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

impl ScramServer<'_> {
    /// After a proof held: what the client proved, for logging in on its behalf.
    pub fn proven_keys(&self) -> Option<ScramKeys> {
        Some(ScramKeys {
            secret: self.secret.as_ref().clone(),
            client_key: self.proven?,
        })
    }
}

/// SCRAM-SHA-256 bound to the TLS channel (RFC 5802, `tls-server-end-point`).
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// How a client's exchange relates to the TLS channel under it (the gs2 header's flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// No TLS, or no way to bind: `n`.
    None,
    /// TLS, and the server offers no binding: `y` (a server that does offer it then knows
    /// the offer was stripped on the way).
    Unused,
    /// `tls-server-end-point` with this hash of the server's certificate
    /// ([`end_point_hash`]); the mechanism is [`MECHANISM_PLUS`].
    EndPoint(Vec<u8>),
}

/// What the client side proves with.
enum Credential {
    Password(Vec<u8>),
    /// A client's proven keys: the server must hold the verifier they were proven against.
    Keys(Box<ScramKeys>),
}

/// The client side of one SCRAM-SHA-256 exchange (pgpilot logging in to a backend).
pub struct ScramClient {
    credential: Credential,
    bare: String,
    nonce: String,
    /// The `c=` attribute: the gs2 header and the binding data, in base64.
    channel: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// Starts an exchange without TLS; returns the client and its client-first-message.
    pub fn new(password: &[u8]) -> (Self, Vec<u8>) {
        Self::with_binding(password, Binding::None)
    }

    /// Starts an exchange bound (or not) to the TLS channel.
    pub fn with_binding(password: &[u8], binding: Binding) -> (Self, Vec<u8>) {
        Self::start(Credential::Password(password.to_vec()), binding)
    }

    /// Starts an exchange that proves a client's keys instead of a password (SCRAM
    /// pass-through): it succeeds when the server's verifier is the one they were proven
    /// against.
    pub fn with_keys(keys: &ScramKeys, binding: Binding) -> (Self, Vec<u8>) {
        Self::start(Credential::Keys(Box::new(keys.clone())), binding)
    }

    fn start(credential: Credential, binding: Binding) -> (Self, Vec<u8>) {
        let nonce = B64.encode(random_bytes::<18>());
        let bare = format!("n=,r={nonce}");
        let (gs2, data) = match binding {
            Binding::None => ("n,,", Vec::new()),
            Binding::Unused => ("y,,", Vec::new()),
            Binding::EndPoint(hash) => ("p=tls-server-end-point,,", hash),
        };
        let first = format!("{gs2}{bare}").into_bytes();
        let mut channel = gs2.as_bytes().to_vec();
        channel.extend_from_slice(&data);
        let client = ScramClient {
            credential,
            bare,
            nonce,
            channel: B64.encode(channel),
            expected_server_signature: None,
        };
        (client, first)
    }

    /// Takes the server-first-message; returns the client-final-message.
    pub fn handle_server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let nonce = attr(msg, b'r').ok_or(ScramError::Malformed("no nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Malformed("server nonce does not extend ours"));
        }
        let salt = attr(msg, b's').ok_or(ScramError::Malformed("no salt"))?;
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramError::Malformed("bad salt"))?;
        let iterations: u32 = attr(msg, b'i')
            .and_then(|i| i.parse().ok())
            .filter(|i| (1..=10_000_000).contains(i))
            .ok_or(ScramError::Malformed("bad iteration count"))?;
        let (client_key, server_key) = match &self.credential {
            Credential::Password(password) => {
                let salted = salted_password(password, &salt, iterations);
                (
                    hmac(&salted, &[b"Client Key"]),
                    hmac(&salted, &[b"Server Key"]),
                )
            }
            Credential::Keys(keys) => {
                if keys.secret.salt != salt || keys.secret.iterations != iterations {
                    // The password changed since the client proved it.
                    return Err(ScramError::AuthFailed);
                }
                (keys.client_key, keys.secret.server_key)
            }
        };
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={},r={nonce}", self.channel);
        let auth_message = format!("{},{msg},{without_proof}", self.bare);
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(k, s)| k ^ s)
            .collect();
        self.expected_server_signature = Some(hmac(&server_key, &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message: the server proves it knew the password too.
    pub fn verify_server_final(&self, data: &[u8]) -> Result<(), ScramError> {
        let msg = std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        if attr(msg, b'e').is_some() {
            return Err(ScramError::AuthFailed);
        }
        let v = attr(msg, b'v').ok_or(ScramError::Malformed("no verifier"))?;
        let v = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("bad verifier"))?;
        match &self.expected_server_signature {
            Some(expected) if ct_eq(expected, &v) => Ok(()),
            _ => Err(ScramError::AuthFailed),
        }
    }
}

/// `tls-server-end-point` channel binding data (RFC 5929): the hash of the server's DER
/// certificate with the hash of its signature algorithm, SHA-256 for MD5 and SHA-1. `None` for
/// algorithms that define no such hash (RSASSA-PSS, EdDSA) or a certificate that does not parse:
/// then the exchange is not bound.
pub fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::{Sha384, Sha512};
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    let oid = signature_algorithm(cert)?;
    let bits = match oid.split_last()? {
        (4 | 5, head) if head == RSA => 256, // md5, sha1 with RSA
        (11, head) if head == RSA => 256,
        (12, head) if head == RSA => 384,
        (13, head) if head == RSA => 512,
        (2, head) if head == ECDSA_SHA2 => 256,
        (3, head) if head == ECDSA_SHA2 => 384,
        (4, head) if head == ECDSA_SHA2 => 512,
        _ if oid == ECDSA_SHA1 => 256,
        _ => return None,
    };
    Some(match bits {
        256 => Sha256::digest(cert).to_vec(),
        384 => Sha384::digest(cert).to_vec(),
        _ => Sha512::digest(cert).to_vec(),
    })
}

/// The signature algorithm's OID of a DER certificate: `Certificate ::= SEQUENCE {
/// tbsCertificate, signatureAlgorithm SEQUENCE { OID, … }, signature }`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, cert, _) = der_element(cert)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der_element(cert)? else {
        return None;
    };
    let (0x30, algorithm, _) = der_element(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_element(algorithm)? else {
        return None;
    };
    Some(oid)
}

/// One DER element at the start of `der`: its tag, its contents and what follows it.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for &b in rest.get(..n)? {
            len = len.checked_mul(256)?.checked_add(usize::from(b))?;
        }
        (len, rest.get(n..)?)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}

/// The PasswordMessage payload for MD5 auth: `"md5" + hex(md5(hex(md5(password + user)) + salt))`.
pub fn md5_password(user: &[u8], password: &[u8], salt: [u8; 4]) -> Vec<u8> {
    let inner = hex(&Md5::new()
        .chain_update(password)
        .chain_update(user)
        .finalize());
    let outer = hex(&Md5::new()
        .chain_update(inner.as_bytes())
        .chain_update(salt)
        .finalize());
    format!("md5{outer}").into_bytes()
}

/// Compares an MD5 PasswordMessage against the expected one in constant time.
pub fn md5_matches(received: &[u8], expected: &[u8]) -> bool {
    ct_eq(received, expected)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secret = ScramSecret::derive(b"pencil", &salt, 4096);
        let bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let without_proof = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth = format!("{bare},{server_first},{without_proof}");
        let sig = hmac(&secret.server_key, &[auth.as_bytes()]);
        assert_eq!(
            B64.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let client_sig = hmac(&secret.stored_key, &[auth.as_bytes()]);
        let salted = salted_password(b"pencil", &salt, 4096);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(client_sig)
            .map(|(k, s)| k ^ s)
            .collect();
        assert_eq!(
            B64.encode(proof),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
    }

    fn exchange(server_password: &[u8], client_password: &[u8]) -> Result<(), ScramError> {
        let secret = ScramSecret::derive(server_password, b"salty", 4096);
        let mut server = ScramServer::new(&secret);
        let (mut client, first) = ScramClient::new(client_password);
        let server_first = server.handle_client_first(&first)?;
        let client_final = client.handle_server_first(server_first.as_bytes())?;
        let server_final = server.handle_client_final(&client_final)?;
        client.verify_server_final(server_final.as_bytes())
    }

    #[test]
    fn client_and_server_agree_on_the_right_password_only() {
        assert_eq!(exchange(b"app", b"app"), Ok(()));
        assert_eq!(exchange(b"app", b"ap"), Err(ScramError::AuthFailed));
    }

    /// One exchange of `client` against `secret`; what the client proved when it held.
    fn run(
        secret: &ScramSecret,
        mut client: ScramClient,
        first: Vec<u8>,
    ) -> Result<ScramKeys, ScramError> {
        let mut server = ScramServer::new(secret);
        let server_first = server.handle_client_first(&first)?;
        let client_final = client.handle_server_first(server_first.as_bytes())?;
        let server_final = server.handle_client_final(&client_final)?;
        client.verify_server_final(server_final.as_bytes())?;
        Ok(server.proven_keys().expect("the proof held"))
    }

    #[test]
    fn proven_keys_log_in_where_the_same_verifier_is_and_nowhere_else() {
        let secret = ScramSecret::derive(b"s3cret", b"some salt", 4096);
        let verifier = format!(
            "SCRAM-SHA-256$4096:{}${}:{}",
            B64.encode(&secret.salt),
            B64.encode(secret.stored_key),
            B64.encode(secret.server_key)
        );
        assert_eq!(
            ScramSecret::from_verifier(&verifier).as_ref(),
            Some(&secret)
        );
        for bad in [
            "md5abc",
            "SCRAM-SHA-256$0:c2FsdA==$AA==:AA==",
            "",
            "SCRAM-SHA-256$4096:$x:y",
        ] {
            assert!(ScramSecret::from_verifier(bad).is_none(), "{bad}");
        }
        let (client, first) = ScramClient::new(b"s3cret");
        let keys = run(&secret, client, first).unwrap();
        // The keys log in again, to any server that holds this verifier, bound or not.
        for binding in [Binding::None, Binding::Unused] {
            let (client, first) = ScramClient::with_keys(&keys, binding);
            assert_eq!(run(&secret, client, first).map(|_| ()), Ok(()));
        }
        // A new password (a new salt, or the same salt and other keys) is refused.
        let changed = ScramSecret::derive(b"other", b"another salt", 4096);
        let (client, first) = ScramClient::with_keys(&keys, Binding::None);
        assert_eq!(
            run(&changed, client, first).map(|_| ()),
            Err(ScramError::AuthFailed)
        );
        let same_salt = ScramSecret::derive(b"other", b"some salt", 4096);
        let (client, first) = ScramClient::with_keys(&keys, Binding::None);
        assert_eq!(
            run(&same_salt, client, first).map(|_| ()),
            Err(ScramError::AuthFailed)
        );
    }

    #[test]
    fn server_rejects_tampering() {
        let secret = ScramSecret::derive(b"pw", b"salt", 4096);
        let mut server = ScramServer::new(&secret);
        assert!(server
            .handle_client_first(b"p=tls-server-end-point,,n=,r=x")
            .is_err());
        assert!(server.handle_client_first(b"n,,n=,r=").is_err());
        let first = server.handle_client_first(b"n,,n=,r=abc").unwrap();
        let nonce = attr(&first, b'r').unwrap().to_owned();
        assert!(server
            .handle_client_final(format!("c=eSws,r={nonce},p=AAAA").as_bytes())
            .is_err());
        let mut server = ScramServer::new(&secret);
        server.handle_client_first(b"n,,n=,r=abc").unwrap();
        assert_eq!(
            server.handle_client_final(b"c=biws,r=abcWRONG,p=AAAA"),
            Err(ScramError::Malformed("nonce mismatch"))
        );
    }

    #[test]
    fn impossible_secret_never_matches() {
        let secret = ScramSecret::impossible(b"salt");
        let mut server = ScramServer::new(&secret);
        let (mut client, first) = ScramClient::new(b"");
        let sf = server.handle_client_first(&first).unwrap();
        let cf = client.handle_server_first(sf.as_bytes()).unwrap();
        assert_eq!(server.handle_client_final(&cf), Err(ScramError::AuthFailed));
    }

    #[test]
    fn mock_salt_is_stable_per_user_and_shaped_like_a_real_one() {
        let mock = MockAuth::random();
        let (a, b) = (mock.secret(b"nobody"), mock.secret(b"nobody"));
        assert_eq!((a.salt.len(), a.iterations), (SALT_LEN, DEFAULT_ITERATIONS));
        assert_eq!(a.salt, b.salt, "two probes for one name see one salt");
        assert_ne!(
            a.stored_key, b.stored_key,
            "no fixed key to find a password for"
        );
        assert_ne!(a.salt, mock.secret(b"nobody2").salt);
        assert_ne!(a.salt, MockAuth::random().secret(b"nobody").salt);
        assert!(!format!("{mock:?}").contains(&format!("{:?}", mock.key)));
    }

    #[test]
    fn md5_matches_postgres() {
        // md5(md5("app" + "app") + salt) computed by hand with PostgreSQL's formula.
        let inner = hex(&Md5::digest(b"appapp"));
        let expected = hex(&Md5::digest([inner.as_bytes(), &[1, 2, 3, 4]].concat()));
        assert_eq!(
            md5_password(b"app", b"app", [1, 2, 3, 4]),
            format!("md5{expected}").into_bytes()
        );
        assert!(md5_matches(b"md5abc", b"md5abc"));
        assert!(!md5_matches(b"md5abc", b"md5abd"));
    }

    #[test]
    fn channel_binding_data_follows_the_certificates_signature_hash() {
        // SEQUENCE { SEQUENCE {} (tbs), SEQUENCE { OID }, BIT STRING {} }
        let cert = |oid: &[u8]| {
            let mut alg = vec![0x06, oid.len() as u8];
            alg.extend_from_slice(oid);
            let mut body = vec![0x30, 0x00, 0x30, alg.len() as u8];
            body.extend_from_slice(&alg);
            body.extend_from_slice(&[0x03, 0x01, 0x00]);
            let mut der = vec![0x30, body.len() as u8];
            der.extend_from_slice(&body);
            der
        };
        let ecdsa_sha256 = cert(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
        assert_eq!(
            end_point_hash(&ecdsa_sha256),
            Some(Sha256::digest(&ecdsa_sha256).to_vec())
        );
        let rsa_sha384 = cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]);
        assert_eq!(end_point_hash(&rsa_sha384).map(|h| h.len()), Some(48));
        let rsa_sha1 = cert(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(
            end_point_hash(&rsa_sha1).map(|h| h.len()),
            Some(32),
            "SHA-1 → SHA-256"
        );
        let ed25519 = cert(&[0x2b, 0x65, 0x70]);
        assert_eq!(end_point_hash(&ed25519), None);
        for cut in 0..ecdsa_sha256.len() {
            assert_eq!(end_point_hash(&ecdsa_sha256[..cut]), None, "cut at {cut}");
        }
        assert_eq!(end_point_hash(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn the_gs2_header_says_how_the_exchange_is_bound() {
        let (_, first) = ScramClient::with_binding(b"pw", Binding::Unused);
        assert!(first.starts_with(b"y,,n=,r="));
        let (mut client, first) =
            ScramClient::with_binding(b"pw", Binding::EndPoint(vec![1, 2, 3]));
        assert!(first.starts_with(b"p=tls-server-end-point,,n=,r="));
        let nonce = std::str::from_utf8(&first)
            .unwrap()
            .rsplit("r=")
            .next()
            .unwrap()
            .to_owned();
        let server_first = format!("r={nonce}xyz,s={},i=4096", B64.encode(b"salt"));
        let last = client.handle_server_first(server_first.as_bytes()).unwrap();
        let mut expected = b"p=tls-server-end-point,,".to_vec();
        expected.extend_from_slice(&[1, 2, 3]);
        let c = format!("c={},", B64.encode(expected));
        assert!(
            last.starts_with(c.as_bytes()),
            "{}",
            String::from_utf8_lossy(&last)
        );
    }
}
