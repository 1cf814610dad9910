//! Every configuration key smsgate reads is in the configuration reference: docs/configuration.md,
//! and for each carrier kind's own keys the examples of docs/carriers.md. The keys are asked of
//! smsgate itself, which names every key of a table when it refuses an unknown one, so a key
//! added to the code without a line in the docs fails here.

use std::collections::BTreeSet;

use smsgate::config::Config;

const REFERENCE: &str = include_str!("../../docs/configuration.md");
const CARRIERS: &str = include_str!("../../docs/carriers.md");
/// A key no table has, set to learn what each table does have.
const PROBE: &str = "zzz_probe";
/// Tables of named entries (`[auth0.<name>]`), probed through one entry.
const NAMED: [&str; 2] = ["auth0", "carriers"];

/// What smsgate says of a configuration file holding `toml`: (key, reason) per problem.
fn problems(toml: &str) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("probe.toml");
    std::fs::write(&path, toml).expect("write the probe");
    match Config::load(&path) {
        Ok(_) => Vec::new(),
        Err(error) => error
            .problems
            .into_iter()
            .map(|p| (p.key, p.reason))
            .collect(),
    }
}

/// The keys of the table that `header` opens ("" for the top level), from smsgate's refusal of
/// an unknown key there; `None` when `header` opens no table smsgate knows.
fn keys_of(header: &str, extra: &str) -> Option<Vec<String>> {
    let (_, reason) = problems(&format!("{header}\n{extra}{PROBE} = 1\n"))
        .into_iter()
        .find(|(key, _)| key.ends_with(PROBE))?;
    let (_, list) = reason.split_once("(this table takes: ")?;
    Some(
        list.trim_end_matches(')')
            .split(", ")
            .map(String::from)
            .collect(),
    )
}

/// A key smsgate reads: the table it is in (`server`, `limits.ip`, `carriers.<name>`), whether
/// that table is a list (`[[limits.ip]]`), and its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    table: String,
    list: bool,
    name: String,
}

/// Every leaf key under `path` (a table's dotted path), probing each key for a table or a
/// list of tables under it.
fn leaf_keys(path: &str, found: &mut BTreeSet<Key>) {
    let header = match path {
        path if NAMED.contains(&path) => format!("[{path}.x]"),
        path => format!("[{path}]"),
    };
    let table = if NAMED.contains(&path) {
        format!("{path}.<name>")
    } else {
        path.to_string()
    };
    // A carrier table takes its kind's keys: ask every kind of the registry.
    let extras: Vec<String> = match path {
        "carriers" => smsgate::carriers::KINDS
            .iter()
            .map(|kind| format!("kind = \"{}\"\n", kind.name()))
            .collect(),
        _ => vec![String::new()],
    };
    let keys: Vec<String> = extras
        .iter()
        .filter_map(|extra| keys_of(&header, extra))
        .flatten()
        .collect();
    if keys.is_empty() {
        return;
    }
    for name in keys {
        // A named entry's keys are its own: `[auth0.audience]` would open another entry.
        if NAMED.contains(&path) {
            found.insert(Key {
                table: table.clone(),
                list: false,
                name,
            });
            continue;
        }
        let inner = format!("{path}.{name}");
        if keys_of(&format!("[{inner}]"), "").is_some() {
            leaf_keys(&inner, found);
        } else if let Some(list_keys) = keys_of(&format!("[[{inner}]]"), "") {
            for key in list_keys {
                found.insert(Key {
                    table: inner.clone(),
                    list: true,
                    name: key,
                });
            }
        } else {
            found.insert(Key {
                table: table.clone(),
                list: false,
                name,
            });
        }
    }
}

/// Every key smsgate reads, from the top-level sections down.
fn every_key() -> BTreeSet<Key> {
    let mut found = BTreeSet::new();
    for section in keys_of("", "").expect("the top level names its sections") {
        if keys_of(&format!("[[{section}]]"), "").is_some() && !NAMED.contains(&section.as_str()) {
            for key in keys_of(&format!("[[{section}]]"), "").unwrap_or_default() {
                found.insert(Key {
                    table: section.clone(),
                    list: true,
                    name: key,
                });
            }
        } else {
            leaf_keys(&section, &mut found);
        }
    }
    found
}

/// The code spans (`…`) of the first cell of each table row of `doc`.
fn first_cells(doc: &str) -> Vec<Vec<&str>> {
    doc.lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|row| row.split(" | ").next())
        .map(|cell| cell.split('`').skip(1).step_by(2).collect())
        .collect()
}

/// Whether a row of the reference names `key`: `table.name`, or its table's marker
/// (`[[table]]`, or a span starting `table.`) and the name alone or after the marker.
fn in_reference(key: &Key) -> bool {
    let marker = |span: &str| {
        if key.list {
            span.starts_with(&format!("[[{}]]", key.table))
        } else {
            span.starts_with(&format!("{}.", key.table))
        }
    };
    first_cells(REFERENCE).iter().any(|spans| {
        spans.iter().any(|s| marker(s))
            && spans.iter().any(|s| {
                *s == key.name
                    || *s == format!("{}.{}", key.table, key.name)
                    || s.ends_with(&format!(" {}", key.name))
            })
    })
}

/// Whether the carrier examples set `name` (a TOML line `name = …`, commented out or not).
fn in_carrier_examples(name: &str) -> bool {
    CARRIERS.lines().any(|line| {
        let line = line.trim_start().trim_start_matches('#').trim_start();
        line.strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

#[test]
fn every_configuration_key_is_in_the_reference() {
    let keys = every_key();
    // The probe sees what it looks for: plain, listed, named and nested keys.
    for (table, list, name) in [
        ("server", false, "listen"),
        ("limits.ip", true, "window_seconds"),
        ("carriers.<name>", false, "account_sid"),
        ("carriers.<name>", false, "webhook_public_key"),
        ("carriers.<name>", false, "timeout_ms"),
        ("auth0.<name>", false, "audience"),
        ("routes", true, "prefix"),
        ("limits", false, "max_in_flight"),
    ] {
        let key = Key {
            table: table.into(),
            list,
            name: name.into(),
        };
        assert!(keys.contains(&key), "the probe missed {key:?}");
    }
    let missing: Vec<String> = keys
        .iter()
        .filter(|key| {
            let carrier_example = key.table == "carriers.<name>" && in_carrier_examples(&key.name);
            !(in_reference(key) || carrier_example)
        })
        .map(|key| match key.list {
            true => format!("[[{}]] {}", key.table, key.name),
            false => format!("{}.{}", key.table, key.name),
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys smsgate reads that docs/configuration.md (or docs/carriers.md for a carrier \
         kind's own keys) does not list:\n{}",
        missing.join("\n")
    );
}

#[test]
fn a_key_missing_from_the_reference_is_noticed() {
    let invented = Key {
        table: "server".into(),
        list: false,
        name: "invented_key".into(),
    };
    assert!(!in_reference(&invented));
    assert!(!in_carrier_examples("invented_key"));
    let listed = Key {
        table: "limits.ip".into(),
        list: true,
        name: "mode".into(),
    };
    assert!(in_reference(&listed));
}
