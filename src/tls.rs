//! TLS towards backends, with rustls and libpq's `sslmode` semantics: what each backend's
//! connections ask for, what they accept, and the sans-IO glue between a rustls connection and
//! the sockets (ciphertext in and out of buffers the caller owns).
//!
//! - `disable`: plaintext, no SSLRequest.
//! - `prefer`: TLS if the server offers it, plaintext if it answers `N`; the certificate is not
//!   checked.
//! - `require`: TLS or nothing; the certificate is not checked, unless `backend_ca_file` is set
//!   (then as `verify-ca`, as libpq does when a root certificate file exists).
//! - `verify-ca`: TLS, the chain must lead to a root of the CA bundle (or the system's).
//! - `verify-full`: `verify-ca`, and the certificate must name the host as configured (the
//!   name, not the address it resolved to).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};
use serde::Deserialize;

/// libpq's `sslmode`, towards one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Whether a server that answers `N` to SSLRequest may still be used, in plaintext.
    pub fn allows_plaintext(self) -> bool {
        matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// How one backend's connections use TLS: its mode, and (unless `disable`) the rustls
/// configuration and the name its certificate is checked against.
#[derive(Clone)]
pub struct BackendTls {
    pub mode: SslMode,
    /// The host as configured, for messages (and what verify-full checks).
    pub host: String,
    config: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// The same mode towards the same host name. (A reload builds a new rustls configuration each
/// time; new connections use it, but it alone is no reason to drop the pooled ones.)
impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.host == other.host
    }
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Plaintext only.
    pub fn disabled() -> BackendTls {
        BackendTls {
            mode: SslMode::Disable,
            host: String::new(),
            config: None,
        }
    }

    /// A new rustls connection to the server, once it said yes to SSLRequest.
    pub fn start(&self) -> Result<Option<ClientConnection>, rustls::Error> {
        match &self.config {
            None => Ok(None),
            Some((config, name)) => ClientConnection::new(config.clone(), name.clone()).map(Some),
        }
    }
}

/// Builds every backend's TLS settings once, at config load. `roots` is loaded only if a
/// backend needs it. Errors are `(key, problem)`.
pub struct Builder {
    provider: Arc<CryptoProvider>,
    ca_file: Option<std::path::PathBuf>,
    unverified: Option<Arc<ClientConfig>>,
    chain_only: Option<Arc<ClientConfig>>,
    full: Option<Arc<ClientConfig>>,
}

impl Builder {
    pub fn new(ca_file: Option<std::path::PathBuf>) -> Builder {
        Builder {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            ca_file,
            unverified: None,
            chain_only: None,
            full: None,
        }
    }

    /// The settings of a backend at `host` in `mode`.
    pub fn backend(&mut self, mode: SslMode, host: &str) -> Result<BackendTls, String> {
        // libpq: with a root certificate file, `require` checks the chain as `verify-ca`.
        let checks = match mode {
            SslMode::Disable => return Ok(BackendTls::disabled()),
            SslMode::Require if self.ca_file.is_some() => SslMode::VerifyCa,
            other => other,
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| format!("{host:?} is not a host name or address TLS can check"))?;
        let config = self.config_for(checks)?;
        Ok(BackendTls {
            mode,
            host: host.to_owned(),
            config: Some((config, name)),
        })
    }

    fn client_config(
        &self,
        verifier: Arc<dyn ServerCertVerifier>,
    ) -> Result<Arc<ClientConfig>, String> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // PostgreSQL 17 checks it when present; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Arc::new(config))
    }

    fn webpki(&self) -> Result<Arc<WebPkiServerVerifier>, String> {
        let roots = self.roots()?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| e.to_string())
    }

    /// The configuration for a level of checking (built once, then shared).
    fn config_for(&mut self, checks: SslMode) -> Result<Arc<ClientConfig>, String> {
        if let Some(config) = self.cache(checks) {
            return Ok(config.clone());
        }
        let chain = match checks {
            SslMode::VerifyFull | SslMode::VerifyCa => Some(self.webpki()?),
            _ => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (checks, chain) {
            (SslMode::VerifyFull, Some(full)) => full,
            (_, chain) => Arc::new(Relaxed {
                chain,
                provider: self.provider.clone(),
            }),
        };
        let config = self.client_config(verifier)?;
        *self.cache(checks) = Some(config.clone());
        Ok(config)
    }

    fn cache(&mut self, checks: SslMode) -> &mut Option<Arc<ClientConfig>> {
        match checks {
            SslMode::VerifyFull => &mut self.full,
            SslMode::VerifyCa => &mut self.chain_only,
            _ => &mut self.unverified,
        }
    }

    /// The CA bundle, or the system's roots.
    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for cert in read_certs(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A system bundle may hold certificates webpki cannot use: skip those.
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(
                        "no system root certificates found; set backend_ca_file (for RDS, \
                         AWS's global bundle)"
                            .into(),
                    );
                }
            }
        }
        Ok(roots)
    }
}

/// `tls.client_mode`: whether clients may, or must, speak TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMode {
    /// SSLRequest is answered `N`.
    Disable,
    /// SSLRequest is answered `S`; plaintext clients are served too.
    Allow,
    /// Plaintext clients are refused (28000).
    Require,
}

impl ClientMode {
    /// As the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientMode::Disable => "disable",
            ClientMode::Allow => "allow",
            ClientMode::Require => "require",
        }
    }
}

/// TLS towards clients: the mode, and the certificate they are shown.
#[derive(Clone)]
pub struct ClientTls {
    pub mode: ClientMode,
    pub config: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The server side of TLS from a PEM certificate chain and its key. Errors are
/// `(which file, problem)`: 0 the chain, 1 the key.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, (u8, String)> {
    let certs = read_certs(cert_file).map_err(|p| (0, p))?;
    let key_pem =
        std::fs::read(key_file).map_err(|e| (1, format!("{}: {e}", key_file.display())))?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            1,
            format!("{}: no PEM private key: {e}", key_file.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| (0, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            (
                1,
                format!(
                    "{} does not go with {}: {e}",
                    key_file.display(),
                    cert_file.display()
                ),
            )
        })?;
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// `verify-ca` (with `chain`: it must lead to a trusted root, whatever name the certificate
/// carries) and `prefer` / `require` (without: nothing is checked, as libpq does). The
/// handshake's signatures are checked either way, so the session is at least bound to the
/// certificate the server showed.
#[derive(Debug)]
struct Relaxed {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            // The chain was good: only the name did not match.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

mod records;
pub use records::{open, pending, seal};

#[cfg(test)]
mod tests;
