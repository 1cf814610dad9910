//! Secrets that must not be guessable once the gateway faces a network: HS256 keys of at least
//! the hash's length (RFC 7518 §3.2), admin tokens of 32 characters or more, and none of the
//! placeholder values the shipped examples carry. On a loopback listener (development) only
//! an empty key is refused.

use super::problems::Problem;
use super::{Config, SignerConfig};
use crate::secret::decode_base64url_secret;

/// RFC 7518 §3.2: an HS256 key must be at least as long as the SHA-256 output.
pub const MIN_HS256_KEY_BYTES: usize = 32;
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;
/// With `public_secret = true` the audience is what nobody else knows.
pub const MIN_SECRET_AUDIENCE_CHARS: usize = 24;

/// Values from config/*.toml, .env.example, the README and docs/, refused wherever they appear
/// in a secret, and short words refused as the whole secret: never a real secret.
const PLACEHOLDERS: [&str; 5] = [
    "change-me",
    "change_me",
    super::DEVELOPMENT_SECRET,
    "smsgate-development-admin-token",
    "at-least-16-random-characters",
];
const PLACEHOLDER_WORDS: [&str; 3] = ["secret", "password", "changeme"];
/// A secret drawn at random has many distinct bytes; one with fewer is typed, not generated.
const MIN_DISTINCT_BYTES: usize = 8;

/// A value copied from an example instead of made up.
fn is_placeholder(value: &str) -> bool {
    let value = value.trim().to_ascii_lowercase();
    PLACEHOLDERS
        .iter()
        .any(|p| value.contains(&p.to_ascii_lowercase()))
        || PLACEHOLDER_WORDS.contains(&value.as_str())
}

/// Too few distinct bytes to have been generated (`aaaa…`, an all-zero key, a word repeated).
fn lacks_variety(bytes: &[u8]) -> bool {
    let mut seen = [false; 256];
    bytes.iter().for_each(|&b| seen[usize::from(b)] = true);
    seen.iter().filter(|&&s| s).count() < MIN_DISTINCT_BYTES
}

/// Problems (key, reason) with secrets; most only on a listener reachable from elsewhere.
pub(super) fn problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |key: String, reason: String| problems.push(Problem { key, reason });
    // Reachable from elsewhere: the public listener, or the admin one.
    let exposed = !config.server.listen.ip().is_loopback()
        || config.admin.listen.is_some_and(|a| !a.ip().is_loopback());
    if exposed && config.auth0.is_empty() && config.server.allow_unauthenticated {
        problem(
            "server.allow_unauthenticated".into(),
            "would accept unsigned requests on a non-loopback listener (an open SMS relay)".into(),
        );
    }
    for (name, signer) in &config.auth0 {
        signer_problems(name, signer, exposed, &mut problem);
    }
    if !exposed {
        return problems;
    }
    if let Some(token) = &config.admin.token {
        admin_token_problems(config, token.expose(), &mut problem);
    }
    for (name, carrier) in config.carrier_settings() {
        for (field, value) in carrier.settings.secrets() {
            if !value.is_empty() && is_placeholder(value.expose()) {
                problem(
                    format!("carriers.{name}.{field}"),
                    "is a placeholder from an example".into(),
                );
            }
        }
    }
    problems
}

fn signer_problems(
    name: &str,
    signer: &SignerConfig,
    exposed: bool,
    problem: &mut impl FnMut(String, String),
) {
    let key = format!("auth0.{name}.secret");
    let decoded = if signer.secret_base64_encoded {
        decode_base64url_secret(signer.secret.expose())
    } else {
        Some(signer.secret.expose().as_bytes().to_vec())
    };
    let bytes = decoded.as_ref().map(Vec::len);
    if bytes == Some(0) && !signer.secret.is_empty() {
        problem(key.clone(), "decodes to an empty HMAC key".into());
    }
    if !exposed {
        return;
    }
    if signer.public_secret {
        // A published secret (docs/auth0.md, the hosted integration's recipe): the audience
        // carries the proof.
        let audience = signer.audience.trim();
        if audience.chars().count() < MIN_SECRET_AUDIENCE_CHARS
            || audience.contains("://")
            || lacks_variety(audience.as_bytes())
        {
            problem(
                format!("auth0.{name}.audience"),
                format!(
                    "with public_secret = true the audience is the only secret: it must be \
                     a generated value (the MessageMedia API secret) of at least \
                     {MIN_SECRET_AUDIENCE_CHARS} characters, not a URL"
                ),
            );
        }
        return;
    }
    let decoded_text = decoded
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    if is_placeholder(signer.secret.expose()) || is_placeholder(&decoded_text) {
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
    } else if decoded.as_deref().is_some_and(lacks_variety) {
        problem(
            key,
            format!("has fewer than {MIN_DISTINCT_BYTES} distinct bytes; generate it"),
        );
    }
}

fn admin_token_problems(config: &Config, token: &str, problem: &mut impl FnMut(String, String)) {
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
    } else if lacks_variety(token.as_bytes()) {
        problem(
            "admin.token".into(),
            format!("has fewer than {MIN_DISTINCT_BYTES} distinct characters; generate it"),
        );
    } else if config.auth0.values().any(|s| s.secret.expose() == token) {
        problem(
            "admin.token".into(),
            "must differ from every signer's secret".into(),
        );
    }
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
        assert!(is_placeholder(&format!(
            "{}2",
            crate::config::DEVELOPMENT_SECRET
        )));
    }

    #[test]
    fn typed_secrets_lack_variety_and_generated_ones_do_not() {
        assert!(lacks_variety(&[b'a'; 40]));
        assert!(lacks_variety(&[0; 32]));
        assert!(lacks_variety("secretsecretsecretsecretsecret12".as_bytes()));
        assert!(!lacks_variety(
            "k3J9v0Qm7Lr2Xz8Wq4Nt6Bp1Yc5Hd0Gs".as_bytes()
        ));
    }
}
