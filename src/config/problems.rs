//! A configuration's problems, each naming the key it concerns (and the environment variable
//! that set it): what every check reports and what `smsgate check-config` prints. Its own
//! module, so the checks in `validate`, `secrets` and `carriers` all depend on it and none on
//! another.

use std::fmt;

/// One or more configuration problems, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn single(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                key: key.into(),
                reason: reason.into(),
            }],
        }
    }

    pub(super) fn from_figment(error: figment::Error) -> Self {
        let problems = error
            .into_iter()
            .map(|e| {
                let mut path = e.path.clone();
                if let figment::error::Kind::UnknownField(field, _) = &e.kind
                    && path.last() != Some(field)
                {
                    path.push(field.clone());
                }
                let kind = without_value(&e.kind);
                let reason = match environment_variable(e.metadata.as_ref(), &path) {
                    Some(variable) => format!("{kind} (set by {variable})"),
                    None => kind,
                };
                let key = if path.is_empty() {
                    "(top level)".to_string()
                } else {
                    key_of(&path)
                };
                Problem { key, reason }
            })
            .collect();
        Self { problems }
    }

    /// Names the environment variable behind each problem whose value came from one.
    pub(super) fn naming_variables(mut self, figment: &figment::Figment) -> Self {
        for problem in &mut self.problems {
            let path: Vec<String> = problem.key.split('.').map(str::to_string).collect();
            if let Some(variable) = environment_variable(figment.find_metadata(&problem.key), &path)
            {
                problem.reason.push_str(&format!(" (set by {variable})"));
            }
        }
        self
    }
}

/// A path segment that is a position in a list (`limits.ip.0.max`).
pub(super) fn is_list_position(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())
}

/// A zero where a count or a duration goes (they are typed non-zero).
pub(super) fn is_zero_refused(kind: &figment::error::Kind) -> bool {
    use figment::error::{Actual, Kind};
    matches!(kind, Kind::InvalidValue(Actual::Unsigned(0) | Actual::Signed(0), expected)
        if expected.starts_with("a nonzero"))
}

/// `limits.ip[0].max`: list positions written as the validation messages write them.
fn key_of(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if is_list_position(part) && !key.is_empty() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// What went wrong, without the value that was found: it may be a secret set where a table
/// or a number goes.
pub(super) fn without_value(kind: &figment::error::Kind) -> String {
    use figment::error::{Actual, Kind};
    let found = |actual: &Actual| match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) | Actual::Float(_) => "a number",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "another kind of value",
    };
    match kind {
        Kind::InvalidType(actual, expected) => {
            format!("invalid type: found {}, expected {expected}", found(actual))
        }
        kind if is_zero_refused(kind) => "must be at least 1".to_string(),
        Kind::UnknownField(field, expected) => unknown_key(field, expected),
        Kind::UnknownVariant(_, expected) => unknown_choice(expected),
        Kind::InvalidValue(actual, expected) => {
            format!(
                "invalid value: found {}, expected {expected}",
                found(actual)
            )
        }
        // A TOML syntax error quotes the offending line, which may hold a secret: keep where
        // and what, not the text.
        Kind::Message(message) => message
            .lines()
            .filter(|line| !line.trim_start().starts_with('|') && !is_quoted_source(line))
            .collect::<Vec<_>>()
            .join(" ")
            .trim()
            .to_string(),
        other => other.to_string(),
    }
}

/// `12 | audience = …`: a line of the source a parse error quotes.
fn is_quoted_source(line: &str) -> bool {
    let line = line.trim_start();
    let digits = line.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && line[digits..].trim_start().starts_with('|')
}

/// The variable an environment provider maps `path` from, e.g. `SMSGATE__SERVER__LISTEN`.
fn environment_variable(metadata: Option<&figment::Metadata>, path: &[String]) -> Option<String> {
    let metadata = metadata.filter(|m| m.name.contains("environment") && !path.is_empty())?;
    Some(if metadata.name.contains("SMSGATE__") {
        // A list is set whole by one variable: name that one, not its element.
        let named: Vec<&str> = path
            .iter()
            .map(String::as_str)
            .take_while(|part| !is_list_position(part))
            .collect();
        format!("SMSGATE__{}", named.join("__").to_uppercase())
    } else if path == ["database", "url"] {
        "DATABASE_URL".to_string()
    } else {
        metadata.interpolate(&figment::Profile::Default, path)
    })
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(
                f,
                "invalid configuration: {}: {}",
                problem.key, problem.reason
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// `unknown key; did you mean `listen`?`: the closest known key when one is close.
fn unknown_key(field: &str, expected: &[&str]) -> String {
    unknown_key_named("unknown key", field, expected)
}

/// `refused; did you mean `listen`?`, or the keys the table takes.
pub(super) fn unknown_key_named(refused: &str, field: &str, expected: &[&str]) -> String {
    let closest = expected
        .iter()
        .map(|known| (edit_distance(field, known), *known))
        .min()
        .filter(|(distance, known)| *distance <= (known.len() / 3).max(1));
    match closest {
        Some((_, known)) => format!("{refused}; did you mean `{known}`?"),
        None if expected.is_empty() => refused.to_string(),
        None => format!("{refused} (this table takes: {})", expected.join(", ")),
    }
}

/// A value that is none of the choices, which are listed (the value is not repeated: it may
/// be a secret written on the wrong line).
fn unknown_choice(expected: &[&str]) -> String {
    let choices: Vec<String> = expected.iter().map(|c| format!("`{c}`")).collect();
    format!("unknown value; expected one of {}", choices.join(", "))
}

/// Levenshtein distance, for suggestions only.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(previous + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_miss_gets_a_suggestion_and_a_stranger_the_list() {
        let keys = ["listen", "allow_unauthenticated", "max_connections"];
        assert_eq!(
            unknown_key("lisen", &keys),
            "unknown key; did you mean `listen`?"
        );
        assert_eq!(
            unknown_key("max_connection", &keys),
            "unknown key; did you mean `max_connections`?"
        );
        assert!(unknown_key("colour", &keys).contains("takes: listen, "));
    }
}
