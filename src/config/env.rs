//! `SMSGATE__SECTION__KEY=value` overrides. figment's own environment provider reads every
//! value as a loose TOML-like literal, which changes text: `+61491570157` loses its plus (a
//! sender then no longer is E.164), `007` its zeros, `12345.50` becomes a float (and a secret
//! shaped so was echoed in the error). Here a value (surrounding white space trimmed, as
//! before) is a number or boolean only when it reads back as exactly the same text, a list or
//! table only when it is one (a list's numbers are read as the strings written), a value in
//! one pair of quotes is what stands between them (no escapes), and anything else is the
//! string it is; an unquoted scalar holding `#` or a line break is always that string (TOML
//! would drop a comment from it silently).

use figment::value::{Dict, Map};
use figment::{Error, Metadata, Profile, Provider};

/// The prefix, matched without regard to case; `__` separates the keys below it.
pub const PREFIX: &str = "SMSGATE__";

pub struct ExactEnv {
    /// Sorted by name, so overlapping variables combine the same way in every environment.
    vars: Vec<(String, String)>,
    /// Variables under the prefix that cannot be used, by name (never by value).
    refused: Vec<String>,
}

/// No configuration key is deeper than this (`carriers.<name>.<key>` is three).
const MAX_DEPTH: usize = 8;

impl ExactEnv {
    /// The `SMSGATE__…` variables of this process; one whose name or value is not UTF-8 is
    /// refused by name (others' are none of smsgate's business).
    pub fn from_process() -> Self {
        let mut vars = Vec::new();
        let mut refused = Vec::new();
        for (name, value) in std::env::vars_os() {
            let shown = name.to_string_lossy().into_owned();
            if !is_ours(&shown) {
                continue;
            }
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => vars.push((name, value)),
                _ => refused.push(format!("{shown}: not UTF-8")),
            }
        }
        Self::new(vars, refused)
    }

    #[cfg(test)]
    fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = vars.into_iter().filter(|(name, _)| is_ours(name)).collect();
        Self::new(vars, Vec::new())
    }

    fn new(mut vars: Vec<(String, String)>, mut refused: Vec<String>) -> Self {
        vars.retain(|(name, _)| {
            let parts = name[PREFIX.len()..]
                .split("__")
                .filter(|part| !part.is_empty());
            let deep = parts.count() > MAX_DEPTH;
            if deep {
                refused.push(format!("{name}: nests deeper than any key"));
            }
            !deep
        });
        // By name regardless of case: upper- and lower-case spellings land the same way.
        vars.sort_by_key(|(name, _)| name.to_ascii_lowercase());
        Self { vars, refused }
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

fn is_ours(name: &str) -> bool {
    name.len() > PREFIX.len()
        && name.is_char_boundary(PREFIX.len())
        && name[..PREFIX.len()].eq_ignore_ascii_case(PREFIX)
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

/// `raw`, trimmed, as a TOML value when it reads back as the same text, else as a string.
fn exact_value(raw: &str) -> toml::Value {
    let text = raw.trim();
    let quoted = text.starts_with(['"', '\'']);
    let structured = text.starts_with(['[', '{']);
    // A comment or a second line would be dropped from a scalar without a word.
    // Quoting says "this text, exactly": what stands between one pair of quotes, no escapes.
    if let Some(inner) = between_quotes(text) {
        return toml::Value::String(inner.to_string());
    }
    let unclosed = structured && !text.ends_with([']', '}']);
    if unclosed || (!quoted && !structured && text.contains(['#', '\n', '\r'])) {
        return toml::Value::String(text.to_string());
    }
    let parsed = format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("v"));
    match parsed {
        Some(toml::Value::Integer(n)) if n.to_string() == text => toml::Value::Integer(n),
        Some(toml::Value::Boolean(b)) if b.to_string() == text => toml::Value::Boolean(b),
        // No list of the configuration holds numbers: `[+1900, 44]` means the strings.
        Some(toml::Value::Array(items)) if items.iter().any(is_number) => bare_list(text),
        Some(value @ (toml::Value::Array(_) | toml::Value::Table(_))) => value,
        // A list of bare words (`[AU, NZ]`), as figment's own reading allowed.
        None if text.starts_with('[') && text.ends_with(']') => bare_list(text),
        // Floats, dates, hex, signed or zero-padded numbers: the exact text.
        _ => toml::Value::String(text.to_string()),
    }
}

/// The text inside `"…"` or `'…'` when the quotes open and close it and stand nowhere inside.
fn between_quotes(text: &str) -> Option<&str> {
    ['"', '\''].into_iter().find_map(|quote| {
        let inner = text.strip_prefix(quote)?.strip_suffix(quote)?;
        (!inner.contains(quote)).then_some(inner)
    })
}

fn is_number(value: &toml::Value) -> bool {
    matches!(value, toml::Value::Integer(_) | toml::Value::Float(_))
}

/// `[a, "b"]` as a list of the strings between the commas (quotes around one taken off).
fn bare_list(text: &str) -> toml::Value {
    let inner = &text[1..text.len() - 1];
    let items = inner
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| item.strip_prefix(*q).and_then(|rest| rest.strip_suffix(*q)));
            toml::Value::String(unquoted.unwrap_or(item).to_string())
        })
        .collect();
    toml::Value::Array(items)
}

impl Provider for ExactEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("`{PREFIX}` environment variable(s)"))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        if !self.refused.is_empty() {
            return Err(Error::from(format!(
                "environment variables refused: {}",
                self.refused.join("; ")
            )));
        }
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
        // Text stays text; a quoted value is what stands between its quotes, without escapes.
        for (raw, text) in [
            ("+61491570157", "+61491570157"),
            ("007", "007"),
            ("12345.50", "12345.50"),
            ("0x1F", "0x1F"),
            ("1e5", "1e5"),
            ("a b=c", "a b=c"),
            ("\"+61 4\"", "+61 4"),
            ("  secret \n", "secret"),
            ("\"ab\" # rest", "\"ab\" # rest"),
            ("true # no", "true # no"),
            ("\"urn:pa#ss\"", "urn:pa#ss"),
            ("\"C:\\temp\"", "C:\\temp"),
            ("'+61\\u0034'", "+61\\u0034"),
            ("\"a\" # \"b\"", "\"a\" # \"b\""),
        ] {
            assert_eq!(value(raw).as_str(), Some(text), "{raw:?}");
        }
        assert!(value("[\"44\", \"1\"]").is_array());
        assert!(value("[\n \"AU\",\n \"NZ\"\n]").is_array());
        let plus = value("[+1900, +44]");
        assert_eq!(plus[0].as_str(), Some("+1900"));
        assert_eq!(value("[\"AU\", NZ]")[0].as_str(), Some("AU"));
        let bare = value("[AU, NZ]");
        assert_eq!(bare.as_array().map(Vec::len), Some(2));
        assert_eq!(bare[1].as_str(), Some("NZ"));
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
