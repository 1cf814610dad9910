//! Auth0's gateway token: an HS256 JWT carrying the connection's `sub` and `aud`, signed with
//! `gateway_authentication.secret` (docs/design.md, "The path of a request"). Verified strictly
//! where Auth0 documents the token and tolerantly elsewhere.

use std::collections::{BTreeMap, HashSet};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;

use crate::config::SignerConfig;
use crate::secret::{Secret, decode_base64url_secret};

mod recent;

use recent::{RecentTokens, Verified};

/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 60;
/// Auth0's tokens are a few hundred bytes; anything this long is not one of them.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Why a bearer token was refused. Every variant is answered 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the Authorization header is missing")]
    Missing,
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token is not signed with HS256")]
    UnsupportedAlgorithm,
    #[error(
        "the token's header names critical parameters (crit), which this gateway does not process"
    )]
    CriticalHeader,
    #[error("the token signature does not match any configured signer")]
    BadSignature,
    #[error("the token audience does not match")]
    WrongAudience,
    #[error("the token subject does not match")]
    WrongSubject,
    #[error("the token issuer is not one this gateway accepts")]
    WrongIssuer,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
}

impl TokenError {
    /// How specific a failure is: when several signers refuse a token, the answer reports the
    /// reason of the signer whose secret matched, not a generic signature error.
    fn specificity(self) -> u8 {
        match self {
            TokenError::BadSignature => 0,
            _ => 1,
        }
    }
}

/// One accepted signer with its key material prepared once.
struct Signer {
    name: String,
    key: DecodingKey,
    validation: Validation,
    /// Keys the digests this signer's requests leave in the database (never stored itself).
    digest_key: Vec<u8>,
}

/// All configured signers; a token is accepted when any of them verifies it completely.
pub struct Verifier {
    signers: Vec<Signer>,
    /// Tokens verified a moment ago (`recent`): most requests at volume carry one.
    recent: RecentTokens,
}

impl Verifier {
    pub fn new(signers: &BTreeMap<String, SignerConfig>) -> Self {
        let signers = signers
            .iter()
            .map(|(name, config)| Signer {
                name: name.clone(),
                key: DecodingKey::from_secret(&key_bytes(config)),
                validation: validation_for(config),
                digest_key: digest_key(config),
            })
            .collect();
        Self {
            signers,
            recent: RecentTokens::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// Checks an `Authorization` header value; returns the name of the signer that accepted it.
    pub fn verify_header(&self, header: Option<&[u8]>) -> Result<&str, TokenError> {
        let header = header.ok_or(TokenError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| TokenError::NotBearer)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(TokenError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::NotBearer);
        }
        self.verify(token.trim())
    }

    /// HMAC-SHA256 of `parts` (each length-prefixed) under a key derived from `signer`'s
    /// secret, as hex: what idempotency fingerprints and derived keys store, so a database
    /// dump cannot be searched for the one-time code they cover. Unsigned requests (only with
    /// `server.allow_unauthenticated`, for development) get a fixed key.
    pub fn digest(&self, signer: Option<&str>, parts: &[&str]) -> String {
        use hmac::{Hmac, KeyInit, Mac};
        let key = signer
            .and_then(|name| self.signers.iter().find(|s| s.name == name))
            .map_or(&b"smsgate-unsigned"[..], |s| s.digest_key.as_slice());
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else {
            return String::new();
        };
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Checks a compact JWT against every signer.
    pub fn verify(&self, token: &str) -> Result<&str, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        if let Some(known) = self.recent.find(token)
            && let Some(signer) = self.signers.get(known.signer)
        {
            known.in_time(jsonwebtoken::get_current_timestamp(), LEEWAY_SECONDS)?;
            return Ok(&signer.name);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        if has_critical_parameters(token)? {
            return Err(TokenError::CriticalHeader);
        }
        let mut best = TokenError::BadSignature;
        for (index, signer) in self.signers.iter().enumerate() {
            match jsonwebtoken::decode::<CheckedClaims>(token, &signer.key, &signer.validation) {
                // jsonwebtoken checks `iss` only when it is a string: any other type is
                // refused here, so a number or an object cannot slip past the check.
                Ok(data) => {
                    let CheckedClaims { iss, exp, nbf } = data.claims;
                    return match iss {
                        None | Some(serde_json::Value::String(_)) => {
                            let verified = Verified {
                                signer: index,
                                exp,
                                nbf,
                            };
                            self.recent.remember(token, verified);
                            Ok(&signer.name)
                        }
                        Some(_) => Err(TokenError::WrongIssuer),
                    };
                }
                Err(err) => {
                    let reason = classify(err.kind());
                    if reason.specificity() > best.specificity() {
                        best = reason;
                    }
                }
            }
        }
        Err(best)
    }
}

/// The claims read back after verification: the issuer whatever its JSON type, and the times
/// a remembered token is checked against again (jsonwebtoken has read them as integers).
#[derive(serde::Deserialize)]
struct CheckedClaims {
    #[serde(default)]
    iss: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
}

/// Whether the protected header has a `crit` member, whatever its value. RFC 7515 §4.1.11 has a
/// recipient refuse the extensions it does not process, and smsgate processes none; an empty
/// list is invalid too. Read from the header's own JSON: `decode_header` reads `crit: null` as
/// no `crit` at all.
fn has_critical_parameters(token: &str) -> Result<bool, TokenError> {
    use base64::Engine;
    // `verify` has bounded the whole token, so the header is at most that long.
    let encoded = token.split('.').next().ok_or(TokenError::Malformed)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| TokenError::Malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    Ok(header.contains_key("crit"))
}

fn classify(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::UnsupportedAlgorithm
        }
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::InvalidSubject => TokenError::WrongSubject,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => TokenError::WrongSubject,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::WrongAudience,
        _ => TokenError::Malformed,
    }
}

/// `aud` is required and must contain the audience; `sub` is required only when a subject is
/// configured; `iss` (one of the signer's `issuers`), `exp` and `nbf` are checked only when
/// present, since Auth0 does not document that it sends them.
fn validation_for(config: &SignerConfig) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_audience(&[config.audience.as_str()]);
    validation.set_issuer(&config.issuers);
    let mut required = HashSet::from(["aud".to_string()]);
    if let Some(subject) = &config.subject {
        validation.sub = Some(subject.clone());
        required.insert("sub".to_string());
    }
    validation.required_spec_claims = required;
    validation
}

/// The digest key: the signing key, and for a signer whose secret is published
/// (`public_secret`) the audience too, which is then the secret part.
fn digest_key(config: &SignerConfig) -> Vec<u8> {
    let mut key = b"smsgate-digest\0".to_vec();
    key.extend(key_bytes(config));
    if config.public_secret {
        key.push(0);
        key.extend(config.audience.as_bytes());
    }
    key
}

/// The HMAC key: the secret's UTF-8 bytes, or its base64url-decoded bytes when so configured.
fn key_bytes(config: &SignerConfig) -> Vec<u8> {
    if config.secret_base64_encoded {
        // Validation guarantees this decodes; an empty key would match nothing real.
        decode_base64url_secret(config.secret.expose()).unwrap_or_default()
    } else {
        config.secret.expose().as_bytes().to_vec()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs a token the way Auth0 signs its gateway calls, valid for `ttl_seconds` from `now`.
pub fn sign(config: &SignerConfig, now_unix: u64, ttl_seconds: u64) -> Result<Secret, String> {
    let claims = Claims {
        // Validation keeps the list non-empty; the fallback is what Auth0 itself sends.
        iss: config
            .issuers
            .first()
            .map_or(SignerConfig::AUTH0_ISSUER, String::as_str),
        sub: config.subject.as_deref(),
        aud: &config.audience,
        iat: now_unix,
        exp: now_unix.saturating_add(ttl_seconds),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key_bytes(config)),
    )
    .map(Secret::new)
    .map_err(|err| format!("cannot sign token: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_secrets_decode_with_or_without_padding_in_either_alphabet() {
        let expected = vec![0xfb, 0xff, 0xfe];
        assert_eq!(decode_base64url_secret("-__-"), Some(expected.clone()));
        assert_eq!(decode_base64url_secret("+//+"), Some(expected));
        assert_eq!(decode_base64url_secret("YQ=="), Some(b"a".to_vec()));
        assert_eq!(decode_base64url_secret("YQ"), Some(b"a".to_vec()));
        assert_eq!(decode_base64url_secret("not base64!"), None);
    }

    #[test]
    fn a_signed_token_carries_the_signers_first_issuer_and_passes_its_check() {
        let config = SignerConfig {
            secret: Secret::new("a-test-secret-of-thirty-two-bytes!".to_string()),
            secret_base64_encoded: false,
            audience: "urn:Test".into(),
            subject: None,
            public_secret: false,
            issuers: vec!["https://tenant.auth0.com/".into()],
        };
        let verifier = Verifier::new(&BTreeMap::from([("t".to_string(), config.clone())]));
        let now = jsonwebtoken::get_current_timestamp();

        let token = sign(&config, now, 60).expect("signs");

        assert_eq!(verifier.verify(token.expose()), Ok("t"));
    }
}
