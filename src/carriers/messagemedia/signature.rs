//! MessageMedia's signed delivery reports. With secure callbacks enabled on the account, each
//! report carries an RSA PKCS #1 v1.5 signature (`X-MessageMedia-Signature`, base64) made with
//! the account's enabled signature key over three things joined without separators: the
//! request line (`POST /path?query HTTP/1.1`), the `Date` header's value and the body. The
//! digest is the one the key was created with (SHA-224, SHA-256 or SHA-512), named in
//! `X-MessageMedia-Digest-Type`. docs/carriers.md, "Delivery receipts", has the contract and its sources.
//!
//! A leaf module: configuration checks parse the keys with it, the callback route verifies.

use base64::Engine;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, PublicKey};
use sha2::{Digest, Sha224, Sha256, Sha512};

/// How many keys may be trusted at once: the enabled one and those being rotated out.
pub const MAX_KEYS: usize = 4;
/// Keys smaller than this verify but draw a warning (NIST SP 800-131A: 2048 bits or more).
pub const RECOMMENDED_BITS: usize = 2048;
/// Larger keys are refused: every forged report costs one check per key, and an 8192-bit
/// check is some 15 times a 2048-bit one.
pub const MAX_BITS: usize = 4096;
/// A configured key's text is never longer (an 8192-bit key in PEM is about 1.5 KiB).
const MAX_KEY_TEXT: usize = 16 * 1024;
/// A 4096-bit signature is 512 bytes, 684 base64 characters.
const MAX_SIGNATURE_TEXT: usize = 700;

/// The digests MessageMedia signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DigestKind {
    Sha224,
    Sha256,
    Sha512,
}

impl DigestKind {
    /// `SHA224`, `sha-256`, … as the digest header names it.
    fn from_header(value: &str) -> Option<Self> {
        match value.trim().to_ascii_uppercase().replace('-', "").as_str() {
            "SHA224" => Some(Self::Sha224),
            "SHA256" => Some(Self::Sha256),
            "SHA512" => Some(Self::Sha512),
            _ => None,
        }
    }

    fn hash(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut hasher = D::new();
            for part in parts {
                hasher.update(part);
            }
            hasher.finalize().to_vec()
        }
        match self {
            Self::Sha224 => run::<Sha224>(parts),
            Self::Sha256 => run::<Sha256>(parts),
            Self::Sha512 => run::<Sha512>(parts),
        }
    }

    /// The padding, whose DigestInfo prefix names this digest.
    fn scheme(self) -> Pkcs1v15Sign {
        match self {
            Self::Sha224 => Pkcs1v15Sign::new::<Sha224>(),
            Self::Sha256 => Pkcs1v15Sign::new::<Sha256>(),
            Self::Sha512 => Pkcs1v15Sign::new::<Sha512>(),
        }
    }
}

/// Reads one public key as MessageMedia's key API returns it (base64 DER
/// SubjectPublicKeyInfo) or as PEM (`PUBLIC KEY` or `RSA PUBLIC KEY`).
pub fn parse_public_key(text: &str) -> Result<PublicKey, String> {
    if text.len() > MAX_KEY_TEXT {
        return Err(format!("is longer than {MAX_KEY_TEXT} characters"));
    }
    let base64: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("-----"))
        .flat_map(str::chars)
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(base64.as_bytes())
        .map_err(|_| "is not base64 (paste the public_key MessageMedia returned)".to_string())?;
    let key = PublicKey::from_public_key_der(&der)
        .or_else(|_| PublicKey::from_pkcs1_der(&der))
        .map_err(|_| {
            format!("is not an RSA public key of 1024 to {MAX_BITS} bits (exponent below 2^33)")
        })?;
    if key.size() * 8 > MAX_BITS {
        return Err(format!(
            "is a {}-bit key; at most {MAX_BITS} bits are taken",
            key.size() * 8
        ));
    }
    Ok(key)
}

/// The public keys a carrier's signed reports are checked against.
#[derive(Clone, Default)]
pub struct SignatureKeys {
    keys: Vec<PublicKey>,
}

impl std::fmt::Debug for SignatureKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// What a signed report carries besides its body.
pub struct SignedRequest<'a> {
    /// `POST /v1/callbacks/messagemedia/<name>?query` as MessageMedia called it.
    pub method_and_target: &'a str,
    pub date: &'a [u8],
    pub body: &'a [u8],
    pub signature: &'a [u8],
    /// Required: each forged report then costs one check per key, not one per digest too.
    pub digest_type: Option<&'a [u8]>,
    pub cipher_type: Option<&'a [u8]>,
}

impl SignatureKeys {
    /// Every key parsed, or the position and reason of the first that is not a key.
    pub fn parse(texts: &[String]) -> Result<Self, (usize, String)> {
        let keys = texts
            .iter()
            .enumerate()
            .map(|(i, text)| parse_public_key(text).map_err(|why| (i, why)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The smallest modulus among the keys, in bits.
    pub fn smallest_bits(&self) -> Option<usize> {
        self.keys.iter().map(|key| key.size() * 8).min()
    }

    /// The checks that cost no RSA work: the cipher and digest named, and a base64 signature
    /// as long as one of the keys makes them. Run before a report waits for its RSA turn, so
    /// junk never takes one.
    pub fn precheck(&self, request: &SignedRequest<'_>) -> Result<(), &'static str> {
        self.decoded(request).map(|_| ())
    }

    /// `Ok` when one of the keys signed this request; otherwise why not, for the log.
    pub fn verify(&self, request: &SignedRequest<'_>) -> Result<(), &'static str> {
        let (digest, signature) = self.decoded(request)?;
        // MessageMedia writes HTTP/1.1 into the signed request line whatever the hop to us used.
        let request_line = format!("{} HTTP/1.1", request.method_and_target);
        let parts = [request_line.as_bytes(), request.date, request.body];
        let hashed = digest.hash(&parts);
        let signed_by_a_key = self
            .keys
            .iter()
            .filter(|key| key.size() == signature.len())
            .any(|key| key.verify(digest.scheme(), &hashed, &signature).is_ok());
        if signed_by_a_key {
            Ok(())
        } else {
            Err("X-MessageMedia-Signature does not match the request")
        }
    }

    /// The digest named and the signature's bytes, when both could be one of ours.
    fn decoded(&self, request: &SignedRequest<'_>) -> Result<(DigestKind, Vec<u8>), &'static str> {
        if let Some(cipher) = request.cipher_type
            && !cipher.trim_ascii().eq_ignore_ascii_case(b"RSA")
        {
            return Err("X-MessageMedia-Cipher-Type is not RSA");
        }
        let digest = request
            .digest_type
            .ok_or("X-MessageMedia-Digest-Type is missing")
            .and_then(|value| {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(DigestKind::from_header)
                    .ok_or("X-MessageMedia-Digest-Type names no supported digest")
            })?;
        if request.signature.len() > MAX_SIGNATURE_TEXT {
            return Err("X-MessageMedia-Signature is too long");
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(request.signature.trim_ascii())
            .map_err(|_| "X-MessageMedia-Signature is not base64")?;
        if !self.keys.iter().any(|key| key.size() == signature.len()) {
            return Err("X-MessageMedia-Signature has no key's length");
        }
        Ok((digest, signature))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_names_are_read_loosely_and_unknown_ones_refused() {
        assert_eq!(DigestKind::from_header("SHA224"), Some(DigestKind::Sha224));
        assert_eq!(DigestKind::from_header("sha-256"), Some(DigestKind::Sha256));
        assert_eq!(
            DigestKind::from_header(" SHA512 "),
            Some(DigestKind::Sha512)
        );
        assert_eq!(DigestKind::from_header("MD5"), None);
        assert_eq!(DigestKind::from_header("SHA1"), None);
    }

    #[test]
    fn text_that_is_not_a_key_is_refused_with_a_reason() {
        assert!(parse_public_key("not base64 !").is_err());
        assert!(parse_public_key("aGVsbG8=").is_err());
        assert!(parse_public_key(&"A".repeat(MAX_KEY_TEXT + 1)).is_err());
    }
}
