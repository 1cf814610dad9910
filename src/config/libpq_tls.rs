//! libpq's TLS parameters as libpq reads them (docs/design.md, "TLS to PostgreSQL"): which
//! modes verify the server, against which trust anchors, and which name the certificate must
//! carry. `db::tls` connects by this reading, and `check-config` warns by it, so the two never
//! disagree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

/// The TLS parameters of a connection URL, in libpq's names (sqlx's aliases accepted), with
/// the `PGSSL*` environment variables as defaults, as libpq and sqlx read them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: Option<String>,
    pub root_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// The host as written (the URL's, or a `host=` parameter that is not a socket
    /// directory): what verify-full compares the certificate with, even when `hostaddr`
    /// says where to connect.
    pub host: Option<String>,
    /// `connect_timeout` in seconds (libpq: 0 or none waits for ever; less than 2 means 2).
    pub connect_timeout: Option<u64>,
}

impl TlsParams {
    pub fn of(url: &str) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut params = Self {
            mode: env("PGSSLMODE"),
            root_cert: env("PGSSLROOTCERT"),
            client_cert: env("PGSSLCERT"),
            client_key: env("PGSSLKEY"),
            host: authority_host(url),
            connect_timeout: None,
        };
        let query = url.split_once('?').map_or("", |(_, query)| query);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = Some(value.into_owned());
            match &*key {
                "sslmode" | "ssl-mode" => params.mode = value,
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => params.root_cert = value,
                "sslcert" | "ssl-cert" => params.client_cert = value,
                "sslkey" | "ssl-key" => params.client_key = value,
                "host" if value.as_deref().is_some_and(|h| !h.starts_with('/')) => {
                    params.host = value;
                }
                "connect_timeout" => {
                    params.connect_timeout = value.and_then(|v| v.trim().parse().ok());
                }
                _ => {}
            }
        }
        params
    }

    /// How long a TCP connect and TLS handshake may take: libpq's `connect_timeout`
    /// (at least 2 s), else `default`.
    pub fn handshake_timeout(&self, default: Duration) -> Duration {
        match self.connect_timeout {
            Some(seconds) if seconds > 0 => Duration::from_secs(seconds.max(2)),
            _ => default,
        }
    }
}

/// The host of a `postgres://user:password@host:port/db` URL, without brackets or port.
fn authority_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']')?.0,
        None => host_port.split(':').next()?,
    };
    let host = form_urlencoded::parse(format!("h={host}").as_bytes())
        .next()
        .map(|(_, h)| h.into_owned())?;
    (!host.is_empty() && !host.starts_with('/')).then_some(host)
}

/// Where the server's certificate must lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchors {
    /// The certificates of a PEM file, and nothing else.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`, as in libpq 16).
    System,
}

/// What a URL's TLS parameters ask for, as libpq reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Nothing to verify: sqlx handles the mode as libpq does.
    Unverified,
    /// The chain to `anchors`; with `host_name`, the certificate must also name the host.
    /// With `plain_fallback` (`prefer`), a server that offers no TLS is spoken to in plain
    /// text, but one that offers it must pass the check.
    Verified {
        anchors: Anchors,
        host_name: bool,
        plain_fallback: bool,
    },
}

/// libpq's rules: whenever a root certificate is at hand (`sslrootcert`, or
/// `~/.postgresql/root.crt`), every mode that uses TLS verifies the chain to it (`prefer`
/// and `require` as `verify-ca`); `verify-ca` and `verify-full` require one and fail
/// without; `sslrootcert=system` allows only `verify-full` and implies it when no mode is
/// given. `allow` is left to sqlx, which never upgrades it to TLS (it fails closed where
/// libpq would retry with TLS).
pub fn policy(params: &TlsParams) -> anyhow::Result<Policy> {
    let system = params.root_cert.as_deref() == Some("system");
    let mode = match params.mode.as_deref() {
        None if system => "verify-full",
        None => "prefer",
        Some(mode) => mode,
    };
    if system && mode != "verify-full" {
        bail!("sslrootcert=system needs sslmode=verify-full (libpq refuses weaker modes with it)");
    }
    let anchors = match params.root_cert.as_deref() {
        Some("system") => Some(Anchors::System),
        Some(path) => Some(Anchors::File(PathBuf::from(path))),
        None => std::env::var_os("HOME")
            .map(|home| Path::new(&home).join(".postgresql/root.crt"))
            .filter(|path| path.exists())
            .map(Anchors::File),
    };
    let (host_name, plain_fallback) = match mode {
        "disable" | "allow" => return Ok(Policy::Unverified),
        "prefer" => (false, true),
        "require" | "verify-ca" => (false, false),
        "verify-full" => (true, false),
        other => bail!(
            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ),
    };
    match anchors {
        Some(anchors) => Ok(Policy::Verified {
            anchors,
            host_name,
            plain_fallback,
        }),
        None if mode.starts_with("verify") => bail!(
            "sslmode={mode} verifies the server's certificate, but no sslrootcert is given and \
             ~/.postgresql/root.crt does not exist: set sslrootcert to the CA file, or \
             sslrootcert=system for the system's trusted roots"
        ),
        None => Ok(Policy::Unverified),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(mode: Option<&str>, root: Option<&str>) -> TlsParams {
        TlsParams {
            mode: mode.map(str::to_string),
            root_cert: root.map(str::to_string),
            ..TlsParams::default()
        }
    }

    fn chain(path: &str, plain_fallback: bool) -> Policy {
        Policy::Verified {
            anchors: Anchors::File(path.into()),
            host_name: false,
            plain_fallback,
        }
    }

    #[test]
    fn a_root_certificate_makes_every_tls_mode_verify_the_chain_as_libpq_does() {
        let policy_of = |mode, root| policy(&params(mode, root)).expect("valid");
        assert_eq!(
            policy_of(Some("require"), Some("/ca.pem")),
            chain("/ca.pem", false)
        );
        assert_eq!(
            policy_of(Some("prefer"), Some("/ca.pem")),
            chain("/ca.pem", true)
        );
        assert_eq!(policy_of(None, Some("/ca.pem")), chain("/ca.pem", true));
        assert_eq!(
            policy_of(Some("allow"), Some("/ca.pem")),
            Policy::Unverified
        );
        assert_eq!(
            policy_of(Some("disable"), Some("/ca.pem")),
            Policy::Unverified
        );
    }

    #[test]
    fn sslrootcert_system_means_the_system_store_and_verify_full_only() {
        assert_eq!(
            policy(&params(None, Some("system"))).expect("valid"),
            Policy::Verified {
                anchors: Anchors::System,
                host_name: true,
                plain_fallback: false,
            }
        );
        for weaker in ["require", "verify-ca", "prefer"] {
            assert!(
                policy(&params(Some(weaker), Some("system"))).is_err(),
                "{weaker}"
            );
        }
    }

    #[test]
    fn url_parameters_are_read_with_sqlx_aliases_and_the_last_wins() {
        let read = TlsParams::of(
            "postgres://u:p%40ss@db.example.com:5433/x?ssl-mode=require&sslmode=verify-ca&ssl-ca=%2Fetc%2Fca.pem&sslcert=/c&sslkey=/k&hostaddr=10.0.0.1&connect_timeout=1",
        );
        assert_eq!(read.mode.as_deref(), Some("verify-ca"));
        assert_eq!(read.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(read.client_cert.as_deref(), Some("/c"));
        assert_eq!(read.client_key.as_deref(), Some("/k"));
        assert_eq!(read.host.as_deref(), Some("db.example.com"), "not hostaddr");
        assert_eq!(
            read.handshake_timeout(Duration::from_secs(30)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_host_verify_full_checks_is_the_one_written() {
        let host = |url: &str| TlsParams::of(url).host;
        assert_eq!(host("postgres://u@[::1]:5432/x").as_deref(), Some("::1"));
        assert_eq!(
            host("postgres://db/x?host=other.example").as_deref(),
            Some("other.example")
        );
        assert_eq!(host("postgres:///x?host=/var/run/postgresql"), None);
        assert_eq!(
            host("postgres://u@localhost/x").as_deref(),
            Some("localhost")
        );
    }

    #[test]
    fn an_unknown_mode_is_refused() {
        assert!(policy(&params(Some("verify"), None)).is_err());
    }
}
