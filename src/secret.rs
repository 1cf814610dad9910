//! A string that must never appear in logs, `Debug` output or printed configuration.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What stands in a secret's place wherever it would be shown.
pub const REDACTED: &str = "[redacted]";

/// Holds a credential or shared secret; only [`Secret::expose`] reveals it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The clear value, for the one place that needs it (signing, comparing, connecting).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(\"{REDACTED}\")")
    }
}

/// Serialising is only used to print the effective configuration, so it redacts too.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { REDACTED })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        lenient_string(deserializer).map(Secret)
    }
}

/// Reads a string, also from a number or boolean: environment overrides are parsed as TOML
/// values, so an all-digit token set through `SMSGATE__…` arrives as an integer.
pub fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
        // Not echoed: the value may be a secret, and its text is already lost to the float.
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<String, E> {
            Err(E::custom("a decimal number where a string goes; quote it"))
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// Decodes a base64url secret leniently, as Auth0's own Node code does: padding optional and
/// either alphabet accepted.
pub fn decode_base64url_secret(secret: &str) -> Option<Vec<u8>> {
    let normalised: String = secret
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            other => other,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(normalised).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_serialize_never_show_the_value() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        let json = serde_json::to_string(&secret).expect("serialises");
        assert_eq!(json, "\"[redacted]\"");
        assert_eq!(secret.expose(), "hunter2");
    }
}
