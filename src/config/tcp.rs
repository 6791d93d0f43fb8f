//! Validates the `[server] tcp_*` keys into [`TcpOptions`] (the sockets get them in `crate::tcp`).

use std::time::Duration;

use super::raw::Problem;
use super::{ConfigError, TcpOptions};

/// The kernel keeps keepalive times in whole seconds, at most this many (`MAX_TCP_KEEPIDLE`).
const MAX_KEEPALIVE_SECS: u64 = 32_767;
/// And at most this many probes (`MAX_TCP_KEEPCNT`).
const MAX_KEEPALIVE_COUNT: u64 = 127;
/// TCP_USER_TIMEOUT is a C `int` of milliseconds.
const MAX_USER_TIMEOUT_MS: u64 = i32::MAX as u64;

/// `[idle_ms, interval_ms, count, user_timeout_ms]` as written; 0 leaves each one off.
pub(super) fn validate(raw: [u64; 4], err: Problem<'_>) -> Result<TcpOptions, ConfigError> {
    let [idle, interval, count, user_timeout] = raw;
    let secs = |key: &str, ms: u64| match ms {
        0 => Ok(None),
        ms if ms % 1000 == 0 && ms <= MAX_KEEPALIVE_SECS * 1000 => {
            Ok(Some(Duration::from_millis(ms)))
        }
        _ => Err(err(
            key,
            format!(
                "{ms} must be 0 or whole seconds up to {} (the kernel counts seconds)",
                MAX_KEEPALIVE_SECS * 1000
            ),
        )),
    };
    let keepalive_idle = secs("server.tcp_keepalive_idle_ms", idle)?;
    let keepalive_interval = secs("server.tcp_keepalive_interval_ms", interval)?;
    if count > MAX_KEEPALIVE_COUNT {
        return Err(err(
            "server.tcp_keepalive_count",
            format!("{count} is more than {MAX_KEEPALIVE_COUNT}"),
        ));
    }
    if user_timeout > MAX_USER_TIMEOUT_MS {
        return Err(err(
            "server.tcp_user_timeout_ms",
            format!("{user_timeout} is more than {MAX_USER_TIMEOUT_MS}"),
        ));
    }
    Ok(TcpOptions {
        keepalive_idle,
        keepalive_interval,
        keepalive_count: u32::try_from(count).ok().filter(|&c| c > 0),
        user_timeout: (user_timeout > 0).then(|| Duration::from_millis(user_timeout)),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, TcpOptions};
    use std::time::Duration;

    fn parse(server: &str) -> Result<TcpOptions, ConfigError> {
        let text = format!(
            "[server]\n{server}\n[[backends]]\nname = \"p\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n"
        );
        Config::parse(&text, std::path::Path::new("t.toml")).map(|c| c.server.tcp)
    }

    #[test]
    fn defaults_find_a_dead_peer_within_two_minutes() {
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            parse("").unwrap(),
            TcpOptions {
                keepalive_idle: secs(60),
                keepalive_interval: secs(10),
                keepalive_count: Some(6),
                user_timeout: secs(120),
            }
        );
        let off = "tcp_keepalive_idle_ms = 0\ntcp_keepalive_interval_ms = 0\n\
                   tcp_keepalive_count = 0\ntcp_user_timeout_ms = 0\n";
        assert_eq!(parse(off).unwrap(), TcpOptions::default());
    }

    #[test]
    fn values_the_kernel_refuses_name_their_key() {
        for (line, key) in [
            (
                "tcp_keepalive_idle_ms = 1500",
                "server.tcp_keepalive_idle_ms",
            ),
            (
                "tcp_keepalive_idle_ms = 32768000",
                "server.tcp_keepalive_idle_ms",
            ),
            (
                "tcp_keepalive_interval_ms = 999",
                "server.tcp_keepalive_interval_ms",
            ),
            ("tcp_keepalive_count = 128", "server.tcp_keepalive_count"),
            (
                "tcp_user_timeout_ms = 2147483648",
                "server.tcp_user_timeout_ms",
            ),
            ("tcp_keepalive_count = -1", "server.tcp_keepalive_count"),
        ] {
            assert_eq!(parse(line).unwrap_err().key, key, "{line}");
        }
        assert_eq!(
            parse("tcp_keepalive_count = 128").unwrap_err().to_string(),
            "t.toml: server.tcp_keepalive_count: 128 is more than 127"
        );
        assert!(
            parse("tcp_keepalive_idle_ms = 32767000\ntcp_user_timeout_ms = 2147483647").is_ok()
        );
    }
}
