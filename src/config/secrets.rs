//! Secrets that must not be guessable once the gateway faces a network: HS256 keys of at least
//! the hash's length (RFC 7518 §3.2), admin tokens of 32 characters or more, and none of the
//! placeholder values the shipped examples carry. On a loopback listener (development) only
//! an empty key is refused.

use super::Config;
use super::validate::Problem;
use crate::auth0::decode_base64url_secret;

/// RFC 7518 §3.2: an HS256 key must be at least as long as the SHA-256 output.
pub const MIN_HS256_KEY_BYTES: usize = 32;
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// With `public_secret = true` the audience is what nobody else knows.
pub const MIN_SECRET_AUDIENCE_CHARS: usize = 24;

/// Values from config/*.toml, .env.example and the README: never a real secret.
const PLACEHOLDERS: [&str; 6] = [
    super::DEVELOPMENT_SECRET,
    "smsgate-development-admin-token",
    "at-least-16-random-characters",
    "secret",
    "password",
    "changeme",
];

/// A value copied from an example instead of made up.
fn is_placeholder(value: &str) -> bool {
    let value = value.trim().to_ascii_lowercase();
    value.starts_with("change-me")
        || value.starts_with("change_me")
        || PLACEHOLDERS.iter().any(|p| value == p.to_ascii_lowercase())
}

pub(super) fn problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |key: String, reason: String| problems.push(Problem { key, reason });
    let exposed = !config.server.listen.ip().is_loopback();
    for (name, signer) in &config.auth0 {
        let key = format!("auth0.{name}.secret");
        let bytes = if signer.secret_base64_encoded {
            decode_base64url_secret(signer.secret.expose()).map(|key| key.len())
        } else {
            Some(signer.secret.expose().len())
        };
        if bytes == Some(0) && !signer.secret.is_empty() {
            problem(key.clone(), "decodes to an empty HMAC key".into());
        }
        if !exposed {
            continue;
        }
        if signer.public_secret {
            // MessageMedia's Auth0 guide uses a published secret: the audience carries it.
            if signer.audience.chars().count() < MIN_SECRET_AUDIENCE_CHARS {
                problem(
                    format!("auth0.{name}.audience"),
                    format!(
                        "with public_secret = true the audience is the only secret: it must be \
                         at least {MIN_SECRET_AUDIENCE_CHARS} characters"
                    ),
                );
            }
            continue;
        }
        if is_placeholder(signer.secret.expose()) {
            problem(
                key,
                "is a placeholder from an example; set the connection's own secret".into(),
            );
        } else if bytes.is_some_and(|n| n < MIN_HS256_KEY_BYTES) {
            problem(
                key,
                format!(
                    "is {} bytes; an HS256 key must be at least {MIN_HS256_KEY_BYTES} bytes \
                     (RFC 7518 section 3.2) on a non-loopback listener",
                    bytes.unwrap_or(0)
                ),
            );
        }
    }
    if !exposed {
        return problems;
    }
    if let Some(token) = &config.admin.token {
        let token = token.expose();
        if is_placeholder(token) {
            problem(
                "admin.token".into(),
                "is a placeholder from an example".into(),
            );
        } else if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            problem(
                "admin.token".into(),
                format!(
                    "must be at least {MIN_ADMIN_TOKEN_CHARS} characters on a non-loopback listener"
                ),
            );
        }
    }
    for (name, carrier) in &config.carriers {
        for (field, value) in carrier.secret_values() {
            if is_placeholder(value) {
                problem(
                    format!("carriers.{name}.{field}"),
                    "is a placeholder from an example".into(),
                );
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised_whatever_their_case() {
        for value in [
            "change-me",
            "CHANGE-ME-too",
            "change-me-to-a-long-random-string",
            "Secret",
        ] {
            assert!(is_placeholder(value), "{value}");
        }
        assert!(!is_placeholder("k3J9v0Qm-a-real-looking-secret-value"));
    }
}
