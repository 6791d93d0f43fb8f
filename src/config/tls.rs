//! `[tls]` and `backends[].sslmode`: how connections to each backend use TLS.

use std::path::Path;

use serde::Deserialize;

use super::raw::Problem;
use super::secret::relative_to;
use super::{BackendConfig, ConfigError};
use crate::tls::{read_certs, server_config, Builder, ClientMode, ClientTls, SslMode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    client_mode: ClientMode,
    cert_file: String,
    key_file: String,
    backend_mode: SslMode,
    backend_ca_file: String,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            client_mode: ClientMode::Disable,
            cert_file: String::new(),
            key_file: String::new(),
            backend_mode: SslMode::Prefer,
            backend_ca_file: String::new(),
        }
    }
}

/// Checks `[tls]`, gives every backend its TLS settings (`sslmodes` are the backends' own
/// `sslmode` keys, in order) and returns the TLS offered to clients.
pub(super) fn apply(
    t: RawTls,
    path: &Path,
    backends: &mut [BackendConfig],
    sslmodes: &[Option<SslMode>],
    err: Problem<'_>,
) -> Result<Option<ClientTls>, ConfigError> {
    let clients = match t.client_mode {
        ClientMode::Disable => None,
        mode => {
            for (key, value) in [
                ("tls.cert_file", &t.cert_file),
                ("tls.key_file", &t.key_file),
            ] {
                if value.is_empty() {
                    return Err(err(
                        key,
                        format!(
                            "is needed: tls.client_mode = \"{}\" offers TLS",
                            mode.as_str()
                        ),
                    ));
                }
            }
            let cert = relative_to(path, &t.cert_file);
            let key = relative_to(path, &t.key_file);
            let config = server_config(&cert, &key).map_err(|(which, p)| {
                err(
                    if which == 0 {
                        "tls.cert_file"
                    } else {
                        "tls.key_file"
                    },
                    p,
                )
            })?;
            Some(ClientTls { mode, config })
        }
    };
    let ca_file = (!t.backend_ca_file.is_empty()).then(|| relative_to(path, &t.backend_ca_file));
    if let Some(file) = &ca_file {
        read_certs(file).map_err(|p| err("tls.backend_ca_file", p))?;
    }
    let mut builder = Builder::new(ca_file);
    for (i, b) in backends.iter_mut().enumerate() {
        let mode = sslmodes.get(i).copied().flatten().unwrap_or(t.backend_mode);
        b.tls = builder.backend(mode, &b.host).map_err(|p| {
            let key = match sslmodes.get(i).copied().flatten() {
                Some(_) => format!("backends[{i}].sslmode"),
                None => "tls.backend_mode".to_owned(),
            };
            err(&key, format!("backend {}: {p}", b.name))
        })?;
    }
    Ok(clients)
}
