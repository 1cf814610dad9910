//! Hostile input, generated: the request body parser and validation, token verification,
//! phone normalisation, number classification and config parsing are fed thousands of
//! generated and mutated inputs on every `cargo test`. None may panic, and whatever they
//! accept must satisfy the invariants the rest of smsgate relies on. Failing cases found so
//! far are kept in `tests/properties.proptest-regressions` and replayed first.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};
use smsgate::auth0::Verifier;
use smsgate::config::{Config, DestinationsConfig, SignerConfig};
use smsgate::domain::{PhoneNumber, classify};
use smsgate::http::parse_request;
use smsgate::limits::destinations::DestinationPolicy;
use smsgate::limits::pricing::country_of;
use smsgate::secret::Secret;

const SECRET: &str = "property-secret-0123456789abcdef";
const AUDIENCE: &str = "urn:MySmsGateway";

/// `cases` per property on every `cargo test` (about half a minute for the file in CI);
/// `PROPTEST_CASES=100000 cargo test --test properties` digs deeper.
fn config(cases: u32) -> ProptestConfig {
    if std::env::var_os("PROPTEST_CASES").is_some() {
        ProptestConfig::default()
    } else {
        ProptestConfig {
            cases,
            ..ProptestConfig::default()
        }
    }
}

/// Strings that stress a text field: printable text, digits and separators, control
/// characters, astral characters, and very long runs.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[+0-9 .()-]{0,24}",
        "\\PC{0,40}",
        "[\\x00-\\x1f\\x7f]{0,8}[0-9]{0,12}",
        ("[a-z]{1,3}", 1500usize..1700).prop_map(|(s, n)| s.repeat(n / s.len().max(1))),
    ]
}

fn field_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        nasty_string().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!([])),
        Just(json!({})),
    ]
}

fn request_body() -> impl Strategy<Value = Value> {
    (
        proptest::option::of(field_value()),
        proptest::option::of(field_value()),
        proptest::option::of(field_value()),
        proptest::option::of((field_value(), field_value())),
    )
        .prop_map(|(recipient, body, sender, req)| {
            let mut object = serde_json::Map::new();
            let mut put = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    object.insert(key.into(), value);
                }
            };
            put("recipient", recipient);
            put("body", body);
            put("sender", sender);
            put(
                "req",
                req.map(|(ip, ua)| json!({"ip": ip, "user-agent": ua})),
            );
            Value::Object(object)
        })
}

fn is_e164(text: &str) -> bool {
    let digits = text.strip_prefix('+').unwrap_or("");
    (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

proptest! {
    #![proptest_config(config(8000))]

    #[test]
    fn the_body_parser_never_panics_and_accepts_only_valid_messages(body in request_body()) {
        let bytes = body.to_string().into_bytes();
        if let Ok(message) = parse_request(&bytes, None) {
            prop_assert!(is_e164(message.recipient.as_str()), "{:?}", message.recipient);
            let text = message.body.as_str();
            prop_assert!(!text.trim().is_empty() && text.chars().count() <= 1600);
            prop_assert!(!text.contains('\0'));
            if let Some(sender) = &message.sender {
                prop_assert!(sender.chars().count() <= 128);
                prop_assert!(!sender.chars().any(char::is_control));
            }
            if let Some(agent) = &message.request.user_agent {
                prop_assert!(agent.chars().count() <= 512 && !agent.contains('\0'));
            }
        }
    }

    #[test]
    fn the_body_parser_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_request(&bytes, None);
    }

    #[test]
    fn the_body_parser_survives_mutated_valid_bodies(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
    ) {
        let valid = br#"{"recipient":"+14155552671","body":"Your code is 123456","sender":"+15555555555","req":{"ip":"203.0.113.7","user-agent":"Mozilla/5.0"}}"#;
        let mut bytes = valid.to_vec();
        for (index, byte) in flips {
            let at = index.index(bytes.len());
            bytes[at] = byte;
        }
        if let Ok(message) = parse_request(&bytes, None) {
            prop_assert!(is_e164(message.recipient.as_str()));
        }
    }

    #[test]
    fn phone_normalisation_is_total_idempotent_and_e164(input in nasty_string()) {
        if let Ok(number) = PhoneNumber::parse(&input) {
            prop_assert!(is_e164(number.as_str()), "{input:?} -> {:?}", number);
            prop_assert_eq!(PhoneNumber::parse(number.as_str()), Ok(number.clone()));
            let mut rules = DestinationsConfig { mobile_only: true, ..Default::default() };
            rules.blocked_countries = vec!["DE".into()];
            let _ = DestinationPolicy::new(&rules).check(&number);
        }
    }

    #[test]
    fn the_fast_phone_path_refuses_nothing_the_full_parser_accepts(digits in "[0-9]{1,16}") {
        // The plain form takes the table path, the bracketed form the full parser. The table
        // path may let through a number the parser reads differently (it checks lengths, not
        // patterns; the carrier refuses such a number as a recipient failure), but it must not
        // refuse one the parser accepts, and where both accept they must agree.
        let plain = PhoneNumber::parse(&format!("+{digits}"));
        let bracketed = PhoneNumber::parse(&format!("+({digits})"));
        prop_assert!(plain.is_ok() || bracketed.is_err(), "{}: {:?} vs {:?}", digits, plain, bracketed);
        if let (Ok(a), Ok(b)) = (plain, bracketed) {
            prop_assert_eq!(a, b);
        }
    }
}

fn verifier() -> Verifier {
    let mut signers = BTreeMap::new();
    signers.insert(
        "primary".to_string(),
        SignerConfig {
            secret: Secret::new(SECRET.to_string()),
            secret_base64_encoded: false,
            audience: AUDIENCE.into(),
            subject: Some("urn:Auth0".into()),
            public_secret: false,
            issuers: SignerConfig::default_issuers(),
        },
    );
    Verifier::new(&signers)
}

fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signs")
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

proptest! {
    #![proptest_config(config(5000))]

    #[test]
    fn token_verification_never_panics_on_arbitrary_text(token in any::<String>()) {
        prop_assert!(verifier().verify(&token).is_err());
    }

    #[test]
    fn any_change_to_a_valid_token_is_refused(
        index in any::<prop::sample::Index>(),
        replacement in "[A-Za-z0-9_.=-]",
    ) {
        let claims = json!({"iss": "Auth0", "sub": "urn:Auth0", "aud": AUDIENCE, "exp": now() + 300});
        let token = sign(&claims);
        prop_assert!(verifier().verify(&token).is_ok());
        let at = index.index(token.len());
        let mut changed = token.clone();
        changed.replace_range(at..at + 1, &replacement);
        // Base64url's last character can carry unused bits: a change there may decode to the
        // same bytes, so only a different decoding must be refused.
        let same_bytes = decoded(&changed) == decoded(&token);
        prop_assert!(same_bytes || verifier().verify(&changed).is_err(), "{} -> {}", token, changed);
    }

    #[test]
    fn signed_claims_are_accepted_exactly_when_they_match(
        aud in prop_oneof![Just(json!(AUDIENCE)), Just(json!([AUDIENCE, "x"])), Just(json!("urn:Other")), Just(json!(["x"])), Just(json!(7))],
        sub in prop_oneof![Just(json!("urn:Auth0")), Just(json!("urn:Other")), Just(Value::Null)],
        exp_offset in prop_oneof![Just(None), (-600i64..600).prop_map(Some)],
        nbf_offset in prop_oneof![Just(None), (-600i64..600).prop_map(Some)],
    ) {
        let mut claims = json!({"iss": "Auth0", "aud": aud.clone()});
        if !sub.is_null() {
            claims["sub"] = sub.clone();
        }
        if let Some(offset) = exp_offset {
            claims["exp"] = json!(now() + offset);
        }
        if let Some(offset) = nbf_offset {
            claims["nbf"] = json!(now() + offset);
        }
        let audience_ok = aud == json!(AUDIENCE) || aud.as_array().is_some_and(|a| a.contains(&json!(AUDIENCE)));
        let subject_ok = sub == json!("urn:Auth0");
        // 60 s of leeway; stay clear of the edges so a slow run cannot flip the answer.
        let exp_ok = exp_offset.is_none_or(|o| o > -55);
        let nbf_ok = nbf_offset.is_none_or(|o| o < 55);
        let near_edge = exp_offset.is_some_and(|o| (-65..=-55).contains(&o))
            || nbf_offset.is_some_and(|o| (55..=65).contains(&o));
        prop_assume!(!near_edge);
        let accepted = verifier().verify(&sign(&claims)).is_ok();
        prop_assert_eq!(accepted, audience_ok && subject_ok && exp_ok && nbf_ok, "{}", claims);
    }
}

fn decoded(token: &str) -> Vec<Option<Vec<u8>>> {
    use base64::Engine;
    token
        .split('.')
        .map(|part| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()
        })
        .collect()
}

const SECTIONS: &[&str] = &[
    "server",
    "metrics",
    "database",
    "admin",
    "dispatch",
    "limits",
    "destinations",
    "retention",
    "log",
    "auth0.a",
    "carriers.c",
];
const KEYS: &[&str] = &[
    "listen",
    "url",
    "max_connections",
    "token",
    "secret",
    "audience",
    "kind",
    "workers",
    "message_ttl_seconds",
    "lease_seconds",
    "max_in_flight",
    "mobile_only",
    "allowed_countries",
    "blocked_prefixes",
    "days",
    "format",
    "level",
    "header_timeout_ms",
    "max_header_bytes",
    "base_url",
    "timeout_ms",
    "account_sid",
    "unknown_key",
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        nasty_string().prop_map(|s| format!("{s:?}")),
        proptest::collection::vec("[A-Za-z+0-9]{0,6}", 0..4).prop_map(|v| format!("{v:?}")),
        Just("{ }".to_string()),
        Just("1e400".to_string()),
    ]
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn config_parsing_never_panics_on_arbitrary_text(text in any::<String>()) {
        let _ = Config::from_toml_str(&text);
    }

    #[test]
    fn config_parsing_reports_problems_instead_of_panicking(
        lines in proptest::collection::vec(
            (prop::sample::select(SECTIONS), prop::sample::select(KEYS), toml_value()),
            0..8,
        )
    ) {
        let text: String = lines
            .iter()
            .map(|(section, key, value)| format!("[{section}]\n{key} = {value}\n"))
            .collect();
        if let Err(err) = Config::from_toml_str(&text) {
            prop_assert!(!err.to_string().is_empty());
        }
    }
}

/// Every example number of the crate's metadata, in E.164 form: each region's numbers of each
/// type, the shapes real recipients have.
fn example_numbers() -> Vec<String> {
    use phonenumber::metadata::DATABASE;
    let mut numbers: Vec<String> = DATABASE
        .iter()
        .flat_map(|meta| {
            let d = meta.descriptors();
            let kinds = [
                Some(d.general()),
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ];
            let code = meta.country_code();
            kinds
                .into_iter()
                .flatten()
                .filter_map(|descriptor| descriptor.example())
                .map(move |example| format!("+{code}{example}"))
        })
        .collect();
    numbers.sort();
    numbers.dedup();
    numbers
}

fn calling_codes() -> Vec<u16> {
    (1..1000)
        .filter(|code| phonenumber::metadata::DATABASE.by_code(code).is_some())
        .collect()
}

/// An example number, maybe with one digit changed, one cut off or one added; or random
/// digits after a calling code (leading zeros and national prefixes included).
fn classifiable_number() -> impl Strategy<Value = String> {
    let examples = example_numbers();
    let mutated = (
        prop::sample::select(examples),
        any::<prop::sample::Index>(),
        0u8..10,
        0u8..4,
    )
        .prop_map(|(number, at, digit, edit)| {
            let mut digits: Vec<u8> = number.bytes().skip(1).collect();
            let at = at.index(digits.len());
            match edit {
                0 => {}
                1 => digits[at] = b'0' + digit,
                2 => {
                    digits.pop();
                }
                _ => digits.push(b'0' + digit),
            }
            format!("+{}", String::from_utf8_lossy(&digits))
        });
    let random = (prop::sample::select(calling_codes()), "[0-9]{0,14}")
        .prop_map(|(code, national)| format!("+{code}{national}"));
    prop_oneof![mutated, random]
}

/// `country_of` as it was before the classifier: the crate's parser, then the calling code's
/// main country.
fn country_by_the_crate(parsed: &phonenumber::PhoneNumber) -> Option<String> {
    if let Some(id) = parsed.country().id() {
        return Some(id.as_ref().to_string());
    }
    let regions = phonenumber::metadata::DATABASE.region(&parsed.code().value())?;
    let main = regions.first()?;
    (main.len() == 2 && main.bytes().all(|b| b.is_ascii_uppercase())).then(|| main.to_string())
}

proptest! {
    // Each case runs the crate's parser, slow in a debug build: about ten seconds.
    #![proptest_config(config(3000))]

    #[test]
    fn the_classifier_answers_as_the_phonenumber_crate_does(number in classifiable_number()) {
        let parsed = phonenumber::parse(None, &number).ok();
        let expected = parsed
            .as_ref()
            .map(|n| (n.country().id(), n.number_type(&phonenumber::metadata::DATABASE)));
        let ours = classify(&number);
        prop_assert_eq!(ours.map(|c| (c.region(), c.kind())), expected, "{}", number);
        let country = country_of(&PhoneNumber::from_e164_unchecked(number.clone()));
        prop_assert_eq!(country, parsed.as_ref().and_then(country_by_the_crate), "{}", number);
    }
}
