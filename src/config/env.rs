//! `SMSGATE__SECTION__KEY=value` overrides. figment's own environment provider reads every
//! value as a loose TOML-like literal, which changes text: `+61491570157` loses its plus (a
//! sender then no longer is E.164), `007` its zeros, `12345.50` becomes a float (and a secret
//! shaped so was echoed in the error). Here a value is taken as a number, boolean, list or
//! table only when it reads back as exactly the same text; otherwise it stays the string it was.

use figment::value::{Dict, Map};
use figment::{Error, Metadata, Profile, Provider};

/// The prefix, matched without regard to case; `__` separates the keys below it.
pub const PREFIX: &str = "SMSGATE__";

pub struct ExactEnv {
    vars: Vec<(String, String)>,
}

impl ExactEnv {
    /// The `SMSGATE__…` variables of this process (variables that are not UTF-8 are skipped).
    pub fn from_process() -> Self {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = vars
            .into_iter()
            .filter(|(name, _)| {
                name.len() > PREFIX.len()
                    && name.is_char_boundary(PREFIX.len())
                    && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
            })
            .collect();
        Self { vars }
    }

    fn table(&self) -> toml::Table {
        let mut root = toml::Table::new();
        for (name, raw) in &self.vars {
            let path: Vec<String> = name[PREFIX.len()..]
                .split("__")
                .filter(|part| !part.is_empty())
                .map(str::to_ascii_lowercase)
                .collect();
            insert(&mut root, &path, exact_value(raw));
        }
        root
    }
}

/// Puts `value` at `path`, making the tables on the way (a later variable wins over an earlier
/// one that named a value where a table goes).
fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let Some(next) = entry.as_table_mut() {
                insert(next, rest, value);
            }
        }
    }
}

/// `raw` as a TOML value when it reads back as the same text, else as a string.
fn exact_value(raw: &str) -> toml::Value {
    let text = raw.trim();
    let parsed = format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("v"));
    match parsed {
        Some(toml::Value::Integer(n)) if n.to_string() == text => toml::Value::Integer(n),
        Some(toml::Value::Boolean(b)) => toml::Value::Boolean(b),
        Some(value @ (toml::Value::Array(_) | toml::Value::Table(_))) => value,
        // Quoting is the way to say "this text, exactly", as before.
        Some(toml::Value::String(quoted)) if text.starts_with(['"', '\'']) => {
            toml::Value::String(quoted)
        }
        // Floats, dates, hex, signed or zero-padded numbers: the exact text.
        _ => toml::Value::String(raw.to_string()),
    }
}

impl Provider for ExactEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{PREFIX}` environment variable(s)"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        figment::providers::Serialized::defaults(self.table()).data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_text_unless_they_read_back_the_same() {
        let value = |raw: &str| exact_value(raw);
        assert_eq!(value("4"), toml::Value::Integer(4));
        assert_eq!(value("true"), toml::Value::Boolean(true));
        assert_eq!(value("+61491570157").as_str(), Some("+61491570157"));
        assert_eq!(value("007").as_str(), Some("007"));
        assert_eq!(value("12345.50").as_str(), Some("12345.50"));
        assert_eq!(value("0x1F").as_str(), Some("0x1F"));
        assert_eq!(value("1e5").as_str(), Some("1e5"));
        assert_eq!(value("a b=c").as_str(), Some("a b=c"));
        assert_eq!(value("\"+61 4\"").as_str(), Some("+61 4"));
        assert!(value("[\"44\", \"1\"]").is_array());
    }

    #[test]
    fn names_nest_by_double_underscore_in_lower_case() {
        let env = ExactEnv::from_vars([
            ("SMSGATE__AUTH0__PRIMARY__SECRET".into(), "s3cret.0".into()),
            ("smsgate__server__listen".into(), "0.0.0.0:8080".into()),
            ("OTHER__X".into(), "1".into()),
        ]);
        let table = env.table();
        assert_eq!(
            table["auth0"]["primary"]["secret"].as_str(),
            Some("s3cret.0")
        );
        assert_eq!(table["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
        assert_eq!(table.len(), 2);
    }
}
