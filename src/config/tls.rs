//! `[tls]` and `backends[].sslmode`: how connections to each backend use TLS.

use std::path::Path;

use serde::Deserialize;

use super::raw::Problem;
use super::secret::relative_to;
use super::{BackendConfig, ConfigError};
use crate::tls::{read_certs, Builder, SslMode};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    client_mode: String,
    cert_file: String,
    key_file: String,
    backend_mode: SslMode,
    backend_ca_file: String,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            client_mode: "disable".into(),
            cert_file: String::new(),
            key_file: String::new(),
            backend_mode: SslMode::Prefer,
            backend_ca_file: String::new(),
        }
    }
}

/// Checks `[tls]` and gives every backend its TLS settings; `sslmodes` are the backends'
/// own `sslmode` keys, in order.
pub(super) fn apply(
    t: RawTls,
    path: &Path,
    backends: &mut [BackendConfig],
    sslmodes: &[Option<SslMode>],
    err: Problem<'_>,
) -> Result<(), ConfigError> {
    // TLS towards clients is not built yet: say so rather than run without it.
    if t.client_mode != "disable" {
        return Err(err(
            "tls.client_mode",
            format!(
                "{:?}: TLS towards clients is not available in this version; only \"disable\"",
                t.client_mode
            ),
        ));
    }
    for (key, value) in [
        ("tls.cert_file", &t.cert_file),
        ("tls.key_file", &t.key_file),
    ] {
        if !value.is_empty() {
            return Err(err(
                key,
                "is for TLS towards clients, which is not available in this version".into(),
            ));
        }
    }
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
    Ok(())
}
