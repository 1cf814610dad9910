//! libpq's TLS parameters as libpq reads them (docs/design.md, "TLS to PostgreSQL"): which
//! modes verify the server and against which trust anchors. `db::tls` connects by this
//! reading, and `check-config` warns by it, so the two never disagree.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// The TLS parameters of a connection URL, in libpq's names (sqlx's aliases accepted), with
/// the `PGSSL*` environment variables as defaults, as libpq and sqlx read them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: Option<String>,
    pub root_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

impl TlsParams {
    pub fn of(url: &str) -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mut params = Self {
            mode: env("PGSSLMODE"),
            root_cert: env("PGSSLROOTCERT"),
            client_cert: env("PGSSLCERT"),
            client_key: env("PGSSLKEY"),
        };
        let query = url.split_once('?').map_or("", |(_, query)| query);
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = Some(value.into_owned());
            match &*key {
                "sslmode" | "ssl-mode" => params.mode = value,
                "sslrootcert" | "ssl-root-cert" | "ssl-ca" => params.root_cert = value,
                "sslcert" | "ssl-cert" => params.client_cert = value,
                "sslkey" | "ssl-key" => params.client_key = value,
                _ => {}
            }
        }
        params
    }
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
    Verified { anchors: Anchors, host_name: bool },
}

/// libpq's rules: `verify-ca` and `verify-full` verify; `require` verifies the chain when a
/// root certificate is given; `sslrootcert=system` allows only `verify-full` (and implies it
/// when no mode is given); without `sslrootcert` the verifying modes read
/// `~/.postgresql/root.crt` and fail when it is missing.
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
    let (verify, host_name) = match mode {
        "disable" | "allow" | "prefer" => (false, false),
        "require" => (params.root_cert.is_some(), false),
        "verify-ca" => (true, false),
        "verify-full" => (true, true),
        other => bail!(
            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        ),
    };
    if !verify {
        return Ok(Policy::Unverified);
    }
    let anchors = match params.root_cert.as_deref() {
        Some("system") => Anchors::System,
        Some(path) => Anchors::File(PathBuf::from(path)),
        None => {
            let default = std::env::var_os("HOME")
                .map(|home| Path::new(&home).join(".postgresql/root.crt"))
                .filter(|path| path.exists());
            match default {
                Some(path) => Anchors::File(path),
                None => bail!(
                    "sslmode={mode} verifies the server's certificate, but no sslrootcert is \
                     given and ~/.postgresql/root.crt does not exist: set sslrootcert to the CA \
                     file, or sslrootcert=system for the system's trusted roots"
                ),
            }
        }
    };
    Ok(Policy::Verified { anchors, host_name })
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

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
        assert_eq!(
            policy(&params(Some("require"), Some("/ca.pem"))).expect("valid"),
            Policy::Verified {
                anchors: Anchors::File("/ca.pem".into()),
                host_name: false
            }
        );
        assert_eq!(
            policy(&params(Some("require"), None)).expect("valid"),
            Policy::Unverified
        );
        assert_eq!(
            policy(&params(None, Some("/ca.pem"))).expect("valid"),
            Policy::Unverified,
            "prefer never verifies"
        );
    }

    #[test]
    fn sslrootcert_system_means_the_system_store_and_verify_full_only() {
        assert_eq!(
            policy(&params(None, Some("system"))).expect("valid"),
            Policy::Verified {
                anchors: Anchors::System,
                host_name: true
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
            "postgres://u@db/x?ssl-mode=require&sslmode=verify-ca&ssl-ca=%2Fetc%2Fca.pem&sslcert=/c&sslkey=/k",
        );
        assert_eq!(read.mode.as_deref(), Some("verify-ca"));
        assert_eq!(read.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(read.client_cert.as_deref(), Some("/c"));
        assert_eq!(read.client_key.as_deref(), Some("/k"));
    }

    #[test]
    fn an_unknown_mode_is_refused() {
        assert!(policy(&params(Some("verify"), None)).is_err());
    }
}
