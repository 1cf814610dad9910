//! `[carriers.<name>]`: one table per carrier account. The keys every kind shares (`kind`,
//! timeouts, limits, the breaker) are read here; the rest of the table belongs to its kind,
//! which reads and checks it ([`CarrierKindConfig`], implemented in each kind's folder under
//! `carriers/`). The configuration is read with the list of kinds, so this module names none.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use figment::Figment;
use figment::error::Kind;
use figment::providers::Serialized;
use figment::value::{Dict, Value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::problems::Problem;
use super::{Millis, Seconds};
use crate::secret::Secret;

/// A carrier kind as the configuration sees it. `carriers::KINDS` lists every kind once.
pub trait CarrierKindConfig: Sync {
    /// The `kind = "…"` that names it.
    fn name(&self) -> &'static str;
    /// Reads and checks the kind's own keys of `[carriers.<name>]`: the settings, and every
    /// problem, each naming its key within the table (`account_sid`, `callback_public_keys[1]`).
    /// The settings are built even from a table with problems (a missing key left empty), so
    /// validation still asks them whether the carrier calls and which secrets it holds; a
    /// configuration with problems is never handed to anything else.
    fn read(&self, name: &str, keys: &KindKeys) -> (Arc<dyn KindSettings>, Found);
}

/// A kind's checked settings, as far as the rest of the configuration needs them; the kind
/// itself reads its own type back with [`KindSettings::as_any`].
pub trait KindSettings: fmt::Debug + Send + Sync + 'static {
    /// Whether the carrier places calls: a call is never handed to one that does not.
    fn places_calls(&self) -> bool {
        false
    }
    /// The credentials that are set, by key: checked for placeholders. (A printed
    /// configuration hides every key the kind's table holds as a `Secret`, listed or not.)
    fn secrets(&self) -> Vec<(&'static str, &Secret)>;
    /// Valid but risky settings, for `check-config` and the start-up log (without the
    /// `carriers.<name>.` that goes before each).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    fn as_any(&self) -> &dyn Any;
}

/// Problems under one carrier: (key within its table, reason).
pub type Found = Vec<(String, String)>;

/// One `[carriers.<name>]` table: the shared keys, read, and the kind's own, as written.
#[derive(Clone, Default)]
pub struct CarrierConfig {
    pub kind: String,
    pub transport: TransportConfig,
    pub keys: KindKeys,
}

/// The keys every kind shares.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// Connecting must succeed within this long.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: Millis,
    /// One whole request must finish within this long; keep the sum over a route well under
    /// Auth0's 30 s.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: Millis,
    /// Sends per second through this carrier, per smsgate process; none = unlimited.
    #[serde(default)]
    pub max_per_second: Option<u32>,
    /// Concurrent requests to this carrier, per smsgate process; none = unlimited.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Consecutive carrier failures that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: NonZeroU32,
    /// How long an open breaker skips the carrier before one message probes it.
    #[serde(default = "default_breaker_cooldown_seconds")]
    pub breaker_cooldown_seconds: Seconds,
    /// A message this carrier took and gave no final receipt for within this long is treated
    /// as a silent route failure (sent again through another carrier while the code has time
    /// left); none = wait for the receipt (some carriers drop messages without a word).
    #[serde(default)]
    pub receipt_timeout_seconds: Option<Seconds>,
}

/// The keys of [`TransportConfig`] and `kind`: every other key of a table is its kind's.
pub const SHARED_KEYS: [&str; 8] = [
    "kind",
    "connect_timeout_ms",
    "timeout_ms",
    "max_per_second",
    "max_in_flight",
    "breaker_failures",
    "breaker_cooldown_seconds",
    "receipt_timeout_seconds",
];

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: default_connect_timeout_ms(),
            timeout_ms: default_timeout_ms(),
            max_per_second: None,
            max_in_flight: None,
            breaker_failures: default_breaker_failures(),
            breaker_cooldown_seconds: default_breaker_cooldown_seconds(),
            receipt_timeout_seconds: None,
        }
    }
}

fn default_connect_timeout_ms() -> Millis {
    Millis::new(2000)
}

fn default_timeout_ms() -> Millis {
    Millis::new(5000)
}

fn default_breaker_failures() -> NonZeroU32 {
    super::units::count32(5)
}

fn default_breaker_cooldown_seconds() -> Seconds {
    Seconds::new(30)
}

/// A kind's keys as written. Shown by name only: the values hold credentials.
#[derive(Clone, Default)]
pub struct KindKeys {
    kind: String,
    keys: Dict,
    /// The keys the kind's type holds as a `Secret`, learnt when it reads them: a printed
    /// configuration hides them without a list to keep in step with the type.
    secret: Arc<Mutex<Vec<String>>>,
}

impl fmt::Debug for KindKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.keys.keys()).finish()
    }
}

impl fmt::Debug for CarrierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CarrierConfig")
            .field("kind", &self.kind)
            .field("transport", &self.transport)
            .field("keys", &self.keys)
            .finish()
    }
}

impl KindKeys {
    /// The keys as the kind's type `T`, which takes only its own keys: every key it refuses
    /// (unknown, or a value of the wrong type) is a problem and is set aside, and the rest is
    /// read again, so one run names them all.
    pub fn read<T: DeserializeOwned + Default + Serialize>(&self) -> (T, Found) {
        let mut keys = self.keys.clone();
        let mut found = Vec::new();
        // Each round sets one key aside, so there are at most as many rounds as keys.
        for _ in 0..=self.keys.len() {
            let figment = Figment::from(Serialized::defaults(Value::from(keys.clone())));
            let error = match figment.extract::<T>() {
                Ok(read) => {
                    self.learn_secrets(&read);
                    return (read, found);
                }
                Err(error) => error,
            };
            let Some(first) = error.into_iter().next() else {
                break;
            };
            let key = match &first.kind {
                Kind::UnknownField(field, _) => field.clone(),
                _ => match first.path.first() {
                    Some(key) => key.clone(),
                    None => break,
                },
            };
            let reason = match &first.kind {
                Kind::UnknownField(field, expected) => self.unknown(field, expected),
                kind => super::problems::without_value(kind),
            };
            found.push((key.clone(), reason));
            if keys.remove(&key).is_none() {
                break;
            }
        }
        (T::default(), found)
    }

    /// Notes the keys `read` holds as secrets: a `Secret` serialises as the redaction mark.
    fn learn_secrets<T: Serialize>(&self, read: &T) {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(read) else {
            return;
        };
        let redacted = |value: &serde_json::Value| value.as_str() == Some(crate::secret::REDACTED);
        // A secret, or a list holding one.
        let secret: Vec<String> = fields
            .into_iter()
            .filter(|(_, value)| {
                redacted(value)
                    || value
                        .as_array()
                        .is_some_and(|items| items.iter().any(redacted))
            })
            .map(|(key, _)| key)
            .collect();
        if let Ok(mut learnt) = self.secret.lock() {
            *learnt = secret;
        }
    }

    /// The keys as written, those the kind holds as secrets redacted.
    fn shown(&self) -> Dict {
        let secret = self.secret.lock().map(|s| s.clone()).unwrap_or_default();
        let mut shown = self.keys.clone();
        for (key, value) in shown.iter_mut() {
            if secret.contains(key) {
                *value = Value::from(crate::secret::REDACTED);
            }
        }
        shown
    }

    /// Why `field` is refused, with the keys this kind takes (the shared ones among them).
    fn unknown(&self, field: &str, expected: &[&str]) -> String {
        let mut takes: Vec<&str> = SHARED_KEYS.to_vec();
        takes.extend(expected);
        let refused = format!("is not a key of kind \"{}\"", self.kind);
        super::problems::unknown_key_named(&refused, field, &takes)
    }

    /// The value of `key` as written, for checks on text (e.g. a redaction).
    fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.keys.get_mut(key)
    }
}

impl<'de> Deserialize<'de> for CarrierConfig {
    /// The table as written: its kind reads it once the kinds are known (`read_carriers`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let keys = Dict::deserialize(d)?;
        Ok(Self {
            keys: KindKeys {
                keys,
                ..KindKeys::default()
            },
            ..Self::default()
        })
    }
}

impl Serialize for CarrierConfig {
    /// `kind`, the shared keys with their defaults, then the kind's keys as written.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            kind: &'a str,
            #[serde(flatten)]
            transport: &'a TransportConfig,
            #[serde(flatten)]
            keys: &'a Dict,
        }
        Shown {
            kind: &self.kind,
            transport: &self.transport,
            keys: &self.keys.shown(),
        }
        .serialize(s)
    }
}

impl CarrierConfig {
    /// Replaces the value of each of `keys` by `shown` (credentials in a printed config).
    pub(super) fn redact(&mut self, keys: &[&str], shown: &str) {
        for key in keys {
            if let Some(value) = self.keys.get_mut(key) {
                *value = Value::from(shown.to_string());
            }
        }
    }

    /// The keys of the kind's set to `text`, as written: a string, or a number that reads as
    /// it (a variable of digits is read as a number).
    pub(super) fn keys_set_to(&self, text: &str) -> Vec<String> {
        let reads_as = |value: &Value| match value {
            Value::String(_, s) => s == text,
            Value::Num(_, n) => {
                n.to_i128().map(|i| i.to_string()).as_deref() == Some(text)
                    || n.to_u128().map(|u| u.to_string()).as_deref() == Some(text)
                    || n.to_f64().is_some_and(|f| f.to_string() == text)
            }
            _ => false,
        };
        self.keys
            .keys
            .iter()
            .filter(|(_, value)| reads_as(value))
            .map(|(key, _)| key.clone())
            .collect()
    }
}

/// Reads every carrier table with `kinds`: the shared keys here, the rest by its kind. Fills
/// in each table's kind and shared keys, and returns the settings of every table whose kind
/// is known (see [`CarrierKindConfig::read`]) and every table's problems.
pub(super) fn read_carriers(
    carriers: &mut BTreeMap<String, CarrierConfig>,
    kinds: &[&dyn CarrierKindConfig],
) -> (BTreeMap<String, Arc<dyn KindSettings>>, Vec<Problem>) {
    let mut settings = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, table) in carriers.iter_mut() {
        let (read, found) = read_one(name, table, kinds);
        if let Some(read) = read {
            settings.insert(name.clone(), read);
        }
        problems.extend(found.into_iter().map(|(key, reason)| Problem {
            key: format!("carriers.{name}.{key}"),
            reason,
        }));
    }
    (settings, problems)
}

/// One table: its kind, its shared keys, then the kind's own.
fn read_one(
    name: &str,
    table: &mut CarrierConfig,
    kinds: &[&dyn CarrierKindConfig],
) -> (Option<Arc<dyn KindSettings>>, Found) {
    let mut written = std::mem::take(&mut table.keys.keys);
    let kind_value = written.remove("kind");
    let mut shared = Dict::new();
    for key in SHARED_KEYS.iter().skip(1) {
        if let Some(value) = written.remove(*key) {
            shared.insert(key.to_string(), value);
        }
    }
    table.keys.keys = written;
    let names: Vec<&str> = kinds.iter().map(|kind| kind.name()).collect();
    let mut found = Vec::new();
    let kind = match &kind_value {
        None => {
            found.push(problem("kind", "missing field `kind`"));
            None
        }
        Some(written) => {
            let kind = kinds
                .iter()
                .find(|kind| written.as_str() == Some(kind.name()));
            if kind.is_none() {
                let choices: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                let reason = format!("unknown value; expected one of {}", choices.join(", "));
                found.push(("kind".to_string(), reason));
            }
            kind
        }
    };
    let shared = KindKeys {
        keys: shared,
        ..KindKeys::default()
    };
    let (transport, mistyped) = shared.read::<TransportConfig>();
    found.extend(mistyped);
    found.extend(transport_problems(&transport));
    table.transport = transport;
    let Some(kind) = kind else {
        return (None, found);
    };
    table.kind = kind.name().to_string();
    table.keys.kind = table.kind.clone();
    let (settings, more) = kind.read(name, &table.keys);
    found.extend(more);
    (Some(settings), found)
}

/// Timeouts, limits and the breaker, shared by every kind.
fn transport_problems(transport: &TransportConfig) -> Found {
    let mut found = Vec::new();
    if transport.timeout_ms.get() > 25_000 {
        found.push(problem(
            "timeout_ms",
            "must be between 1 and 25000 (Auth0 waits 30 s in all)",
        ));
    }
    if transport.connect_timeout_ms > transport.timeout_ms {
        found.push(problem(
            "connect_timeout_ms",
            "must be between 1 and timeout_ms",
        ));
    }
    for (key, zero) in [
        ("max_per_second", transport.max_per_second == Some(0)),
        ("max_in_flight", transport.max_in_flight == Some(0)),
    ] {
        if zero {
            found.push(problem(key, "must be at least 1 (remove it for no limit)"));
        }
    }
    found
}

/// The checks kinds share: each names a key of the table.
pub mod checks {
    use super::{Found, problem};
    use crate::secret::Secret;

    /// What a kind says of a key it requires that is missing or empty.
    pub const REQUIRED: &str = "is required for this kind";

    /// A URL key (`base_url`, `endpoint_url`) that is not http(s).
    pub fn url(key: &str, value: &Option<String>) -> Found {
        match value {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                vec![problem(key, "must be an http(s) URL")]
            }
            _ => Vec::new(),
        }
    }

    /// `public_url`: smsgate's own address, to which the carrier's receipts go under
    /// `/v1/callbacks/<kind>/<name>`. Carriers sign that URL, so it must read back exactly as
    /// it was handed out, and the carrier's name must be usable in it.
    pub fn public_url(name: &str, public_url: &Option<String>) -> Found {
        let Some(public_url) = public_url else {
            return Vec::new();
        };
        let mut found = url("public_url", &Some(public_url.clone()));
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if !name.chars().all(plain) {
            found.push(problem(
                "public_url",
                "needs a carrier name of letters, digits, '-' and '_' only (the name is part \
                 of the callback URL the carrier signs)",
            ));
        }
        // The path as written, not only as parsed: `/a/../b` or a space would be normalised
        // here but signed by the carrier as sent. (Host case and default ports may differ.)
        let usable = reqwest::Url::parse(public_url).is_ok_and(|url| {
            url.host().is_some()
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
                && url.password().is_none()
                && url.path().trim_end_matches('/') == written_path(public_url)
        });
        if !usable {
            found.push(problem(
                "public_url",
                "must be an absolute http(s) URL with a host and no query, fragment or user \
                 name, whose path reads back as written (no `..`, `.`, spaces or other \
                 characters a parser would rewrite; e.g. https://example.com/sms)",
            ));
        }
        found
    }

    /// The path of `url` as written (after the authority), without a trailing slash.
    fn written_path(url: &str) -> &str {
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = after_scheme.find('/').map_or("", |at| &after_scheme[at..]);
        path.trim_end_matches('/')
    }

    /// Set and not blank.
    pub fn has(value: &Option<String>) -> bool {
        value.as_deref().is_some_and(|v| !v.trim().is_empty())
    }

    /// Set and not empty.
    pub fn has_secret(value: &Option<Secret>) -> bool {
        value.as_ref().is_some_and(|v| !v.is_empty())
    }
}

/// A string key of a kind's table: one an environment variable set to digits is still text.
pub fn optional_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    crate::secret::lenient_string(d).map(Some)
}

/// `(key, reason)`.
pub fn problem(key: &str, reason: &str) -> (String, String) {
    (key.to_string(), reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind that forgets to list its credential among its secrets.
    struct Forgetful;

    #[derive(Debug, Default, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct ForgetfulTable {
        #[serde(default)]
        token: Option<Secret>,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        spare_tokens: Vec<Secret>,
    }

    #[derive(Debug)]
    struct ForgetfulSettings;

    impl KindSettings for ForgetfulSettings {
        fn secrets(&self) -> Vec<(&'static str, &Secret)> {
            Vec::new()
        }

        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    impl CarrierKindConfig for Forgetful {
        fn name(&self) -> &'static str {
            "forgetful"
        }

        fn read(&self, _name: &str, keys: &KindKeys) -> (Arc<dyn KindSettings>, Found) {
            let (_, found): (ForgetfulTable, Found) = keys.read();
            (Arc::new(ForgetfulSettings), found)
        }
    }

    #[test]
    fn a_key_the_kind_holds_as_a_secret_is_never_printed_even_unlisted() {
        let config = crate::config::Config::from_toml_with(
            "[auth0.a]\nsecret = \"0123456789abcdefghijklmnopqrstuvwxyzABCD\"\n\
             audience = \"urn:a\"\n\
             [carriers.f]\nkind = \"forgetful\"\ntoken = \"tok-123456789\"\n\
             region = \"eu-west-1\"\nspare_tokens = [\"spare-987654321\"]\n\
             [[routes]]\nprefix = \"\"\ncarriers = [\"f\"]\n",
            &[&Forgetful],
        )
        .expect("valid");
        let printed = config.to_redacted_toml();
        assert!(!printed.contains("tok-123456789"), "{printed}");
        assert!(!printed.contains("spare-987654321"), "{printed}");
        assert!(printed.contains("token = \"[redacted]\""), "{printed}");
        assert!(printed.contains("region = \"eu-west-1\""), "{printed}");
        assert!(!format!("{config:?}").contains("tok-123456789"));
    }

    #[test]
    fn the_shared_keys_are_the_transport_s_fields_and_kind() {
        let mut probe = Dict::new();
        probe.insert("zzz_probe".into(), Value::from(1u32));
        let figment = Figment::from(Serialized::defaults(Value::from(probe)));
        let error = figment.extract::<TransportConfig>().expect_err("refused");
        let Some(Kind::UnknownField(_, expected)) = error.into_iter().next().map(|e| e.kind) else {
            panic!("an unknown field");
        };
        let mut fields: Vec<&str> = expected.to_vec();
        fields.insert(0, "kind");
        assert_eq!(fields, SHARED_KEYS);
    }
}
