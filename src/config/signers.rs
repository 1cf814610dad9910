//! `[auth0.<name>]`: the token signers, with their defaults and checks.

use serde::{Deserialize, Serialize};

use super::Config;
use crate::secret::{Secret, decode_base64url_secret, lenient_string};

/// How one Auth0 connection signs its gateway token (`options.gateway_authentication`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    pub secret: Secret,
    #[serde(default)]
    pub secret_base64_encoded: bool,
    #[serde(deserialize_with = "lenient_string")]
    pub audience: String,
    /// Auth0 does not require a subject; when set, `sub` must equal it.
    #[serde(default, deserialize_with = "lenient_optional_string")]
    pub subject: Option<String>,
    /// The secret is published (docs/auth0.md, the hosted integration's recipe): allowed on a
    /// public listener only with this opt-in, and then the audience, which must be long, is
    /// what proves the caller (and is redacted like a secret).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_secret: bool,
    /// Accepted values of the token's `iss` (checked only when the token has one). Auth0 is
    /// seen sending `Auth0` but does not document it, so a tenant that sends another value
    /// needs only this list.
    #[serde(default = "SignerConfig::default_issuers")]
    pub issuers: Vec<String>,
}

impl SignerConfig {
    /// The issuer seen in the tokens Auth0 signs.
    pub const AUTH0_ISSUER: &str = "Auth0";
    /// An issuer is a name or a URL; anything longer is a mistake, not a tenant.
    pub const MAX_ISSUER_CHARS: usize = 256;

    pub fn default_issuers() -> Vec<String> {
        vec![Self::AUTH0_ISSUER.to_string()]
    }
}

impl std::fmt::Debug for SignerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // With a public secret, audience and subject are the account's API secret and key.
        let (audience, subject) = if self.public_secret {
            let redacted = self
                .subject
                .as_ref()
                .map(|_| crate::secret::REDACTED.to_string());
            (crate::secret::REDACTED, redacted)
        } else {
            (self.audience.as_str(), self.subject.clone())
        };
        f.debug_struct("SignerConfig")
            .field("secret", &self.secret)
            .field("secret_base64_encoded", &self.secret_base64_encoded)
            .field("audience", &audience)
            .field("subject", &subject)
            .field("public_secret", &self.public_secret)
            .field("issuers", &self.issuers)
            .finish()
    }
}

fn lenient_optional_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    lenient_string(deserializer).map(Some)
}

impl Config {
    pub(super) fn validate_signers(&self, problem: &mut impl FnMut(String, String)) {
        if self.auth0.is_empty() && !self.server.allow_unauthenticated {
            problem(
                "auth0".into(),
                "no signer is configured; add an [auth0.<name>] table, or set \
                 server.allow_unauthenticated = true to accept unsigned requests"
                    .into(),
            );
        }
        for (name, signer) in &self.auth0 {
            let key = |field: &str| format!("auth0.{name}.{field}");
            if name == crate::domain::NO_SIGNER || name.trim().is_empty() {
                problem(
                    format!("auth0.{name}"),
                    "\"-\" (and an empty name) stand for no signer in metrics and logs; \
                     choose another name"
                        .into(),
                );
            }
            if signer.secret.is_empty() {
                problem(key("secret"), "must not be empty".into());
            } else if signer.secret_base64_encoded
                && decode_base64url_secret(signer.secret.expose()).is_none()
            {
                problem(
                    key("secret"),
                    "secret_base64_encoded is true but the secret is not base64url".into(),
                );
            }
            if signer.audience.trim().is_empty() {
                problem(key("audience"), "must not be empty".into());
            }
            if signer
                .subject
                .as_deref()
                .is_some_and(|s| s.trim().is_empty())
            {
                problem(key("subject"), "must not be empty when present".into());
            }
            if let Some(reason) = issuers_problem(&signer.issuers) {
                problem(key("issuers"), reason);
            }
        }
        if self.uses_development_secret() && !self.server.listen.ip().is_loopback() {
            problem(
                "server.listen".into(),
                format!(
                    "{} is not a loopback address, and a signer uses the development secret \
                     from config/development.toml; set your own secret first",
                    self.server.listen
                ),
            );
        }
    }
}

/// Why a signer's `issuers` cannot work: an empty list would refuse every token with an `iss`.
fn issuers_problem(issuers: &[String]) -> Option<String> {
    let max = SignerConfig::MAX_ISSUER_CHARS;
    if issuers.is_empty() {
        Some("must list at least one issuer; leave it out for the default [\"Auth0\"]".into())
    } else if issuers.iter().any(|issuer| issuer.trim().is_empty()) {
        Some("an issuer must not be empty".into())
    } else if issuers.iter().any(|issuer| issuer.chars().count() > max) {
        Some(format!("each issuer must be {max} characters or fewer"))
    } else {
        None
    }
}
