//! Warnings about settings that work but promise less than they seem to: the public
//! development secret, and a database reached over a network without a checked certificate.

use std::net::IpAddr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::Config;
use super::libpq_tls::{Policy, TlsParams, policy};

impl Config {
    /// The development secret is public: anyone can mint tokens for a signer using it.
    pub(super) fn development_secret_warning(&self) -> Option<String> {
        self.uses_development_secret().then(|| {
            "a signer uses the development secret from config/development.toml: anyone can mint \
             tokens for it; smsgate stays on loopback until you set your own secret"
                .to_string()
        })
    }

    /// Each database URL that leaves this host without `sslmode=verify-ca` or `verify-full`:
    /// with `prefer` (libpq's default) a connection silently falls back to plain text, and
    /// `require` encrypts without checking whom it talks to.
    pub(super) fn database_tls_warnings(&self) -> Vec<String> {
        [
            ("database.url", &self.database.url),
            ("database.direct_url", &self.database.direct_url),
        ]
        .into_iter()
        .filter(|(_, url)| !url.is_empty())
        .filter_map(|(key, url)| {
            // A URL that does not parse is refused by validation, naming its key.
            let options = url.expose().parse::<PgConnectOptions>().ok()?;
            // A unix socket uses no TLS, whatever the TLS parameters say (as in libpq).
            if options.get_socket().is_some() || options.get_host().starts_with('/') {
                return None;
            }
            // As libpq reads it (`require` with `sslrootcert` verifies the chain, too).
            let verified_when_offered = match policy(&TlsParams::of(url.expose())) {
                Ok(Policy::Verified {
                    plain_fallback: false,
                    ..
                }) => return None,
                Ok(Policy::Verified { .. }) => true,
                Ok(Policy::Unverified) => false,
                Err(err) => return Some(format!("{key}: its TLS settings cannot work: {err}")),
            };
            let why = unchecked_tls(&options)?;
            // `prefer` with a root certificate verifies a server that offers TLS, but still
            // speaks plain text to one (or to a man in the middle) that says it has none.
            let why = if verified_when_offered {
                "with TLS verified against the root certificate when the server offers it, \
                 but in plain text when it (or anyone in between) says it has none \
                 (sslmode=prefer)"
            } else {
                why
            };
            Some(why).map(|why| {
                format!(
                    "{key} reaches {}:{} {why}; to be sure whom it talks to, add \
                     sslmode=verify-full (or verify-ca) and sslrootcert to the URL",
                    options.get_host(),
                    options.get_port()
                )
            })
        })
        .collect()
    }
}

/// Why a connection to these options could be read or redirected on the way, if it could:
/// `None` on a unix socket, on loopback, and with a verified certificate.
fn unchecked_tls(options: &PgConnectOptions) -> Option<&'static str> {
    if options.get_socket().is_some() || is_loopback(options.get_host()) {
        return None;
    }
    match options.get_ssl_mode() {
        PgSslMode::VerifyCa | PgSslMode::VerifyFull => None,
        PgSslMode::Require => Some("over TLS without checking the server's certificate"),
        PgSslMode::Disable => Some(
            "in plain text (sslmode=disable): safe only on a private network, such as the \
             compose file's",
        ),
        PgSslMode::Allow | PgSslMode::Prefer => Some(
            "with TLS only if the server offers it (sslmode prefer or allow, prefer being the \
             default): it silently falls back to plain text and checks no certificate (write \
             sslmode=disable if plain text on a private network is meant)",
        ),
    }
}

/// `localhost`, 127.0.0.0/8 and ::1 (a host starting with `/` is a socket directory).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warned(url: &str) -> bool {
        let options: PgConnectOptions = url.parse().expect("valid URL");
        unchecked_tls(&options).is_some()
    }

    #[test]
    fn only_a_network_url_without_a_checked_certificate_is_warned_about() {
        for url in [
            "postgres://u@db.example.com/smsgate",
            "postgres://u@db.example.com/smsgate?sslmode=prefer",
            "postgres://u@db.example.com/smsgate?sslmode=require",
            "postgres://u@10.0.0.5:5432/smsgate?sslmode=disable",
            "postgres://u@[2001:db8::1]/smsgate",
        ] {
            assert!(warned(url), "{url}");
        }
        for url in [
            "postgres://u@db.example.com/smsgate?sslmode=verify-full",
            "postgres://u@db.example.com/smsgate?sslmode=verify-ca",
            "postgres://u@localhost/smsgate",
            "postgres://u@127.0.0.2:5432/smsgate",
            "postgres://u@[::1]:5432/smsgate",
            "postgres://u@localhost/smsgate?host=/var/run/postgresql",
            "postgres:///smsgate?host=/var/run/postgresql",
        ] {
            assert!(!warned(url), "{url}");
        }
    }
}
