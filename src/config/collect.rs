//! Reading the configuration so that one run names every bad key: serde stops at the first
//! problem, so each one found is noted, taken out of the way (a zero where a count goes is
//! read as 1, an unknown or mistyped key is dropped so its default stands), and the rest is
//! read again, until nothing more is found.

use figment::Figment;
use figment::error::Kind;
use figment::providers::Serialized;
use figment::value::Value;

use super::Config;
use super::problems::{ConfigError, is_list_position, is_zero_refused};

/// More rounds than any file has keys to get wrong; each round sets one aside.
const MAX_ROUNDS: usize = 256;

/// What reading found: the configuration read around its problems, the problems, and the
/// whole tables that had to be set aside (checks that look at them would be judged wrongly).
pub(super) struct Read {
    pub config: Option<Config>,
    pub problems: ConfigError,
    pub dropped_tables: Vec<Vec<String>>,
}

impl Read {
    /// Whether a check of `key` can still be trusted on the configuration read without the
    /// dropped tables. Without `[carriers.x]` a route naming x looks wrong, without the only
    /// signer "no signer is configured" does, and once a `[[routes]]` entry is gone the
    /// others' positions shift; every other check judges what is really there.
    pub fn can_judge(&self, key: &str) -> bool {
        let section = key.split(['.', '[']).next().unwrap_or_default();
        self.dropped_tables.iter().all(|dropped| {
            let top = dropped.first().map(String::as_str).unwrap_or_default();
            let shifted = dropped.iter().any(|part| is_list_position(part));
            let referenced = top == "carriers" && section == "routes";
            let emptied = key == top || key.starts_with(&dropped.join("."));
            !(referenced || emptied || (shifted && section == top))
        })
    }
}

/// Reads `figment`, naming every problem serde finds rather than the first.
pub(super) fn read_naming_every_problem(original: &Figment) -> Read {
    let mut read = Read {
        config: None,
        problems: ConfigError {
            problems: Vec::new(),
        },
        dropped_tables: Vec::new(),
    };
    let mut figment = original.clone();
    // The whole merged tree, to take problems out of; read only after the first problem.
    let mut tree: Option<Value> = None;
    let mut removed: Vec<Vec<String>> = Vec::new();
    for round in 0..MAX_ROUNDS {
        let error = match figment.extract::<Config>() {
            Ok(config) => {
                read.config = Some(config);
                return read;
            }
            Err(error) => error,
        };
        let Some(first) = error.clone().into_iter().next() else {
            return read;
        };
        let mut path = first.path.clone();
        if let Kind::UnknownField(field, _) = &first.kind
            && path.last() != Some(field)
        {
            path.push(field.clone());
        }
        let ours = matches!(&first.kind, Kind::MissingField(field)
            if removed.contains(&[path.clone(), vec![field.to_string()]].concat()));
        if !ours {
            let found = ConfigError::from_figment(error);
            // After the first round the values carry no provider: name variables from the
            // original sources.
            let found = if round == 0 {
                found
            } else {
                found.naming_variables(original)
            };
            read.problems.problems.extend(found.problems);
        }
        let tree = match &mut tree {
            Some(tree) => tree,
            None => match original.extract::<Value>() {
                Ok(value) => tree.insert(value),
                Err(_) => return read,
            },
        };
        let patched = match &first.kind {
            kind if is_zero_refused(kind) => replace(tree, &path, Value::from(1u32)),
            // A required key is missing (or was set aside above): its table goes too.
            Kind::MissingField(_) => {
                read.dropped_tables.push(path.clone());
                remove(tree, &path)
            }
            Kind::Message(_) if path.is_empty() => false,
            _ => remove(tree, &path),
        };
        if !patched {
            return read;
        }
        removed.push(path);
        figment = Figment::from(Serialized::defaults(tree.clone()));
    }
    read
}

/// The value at `path`, if there is one.
fn at<'a>(tree: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut here = tree;
    for part in path {
        here = match here {
            Value::Dict(_, dict) => dict.get_mut(part)?,
            Value::Array(_, items) if is_list_position(part) => {
                items.get_mut(part.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(here)
}

fn replace(tree: &mut Value, path: &[String], value: Value) -> bool {
    match at(tree, path) {
        Some(here) => {
            *here = value;
            true
        }
        None => false,
    }
}

fn remove(tree: &mut Value, path: &[String]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    match at(tree, parent) {
        Some(Value::Dict(_, dict)) => dict.remove(last).is_some(),
        Some(Value::Array(_, items)) => match last.parse::<usize>() {
            Ok(index) if index < items.len() => {
                items.remove(index);
                true
            }
            _ => false,
        },
        _ => false,
    }
}
