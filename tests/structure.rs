//! The shape of `src/`, checked on every `cargo test` (alone: `cargo test --test structure`):
//! the top-level modules form a layered graph without cycles, SQL lives in `db/`, and no
//! function is longer than a screen. docs/design.md, "Modules", draws the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longer functions do several jobs; split them (docs/design.md, "Modules").
const MAX_FUNCTION_LINES: usize = 80;

/// Each layer may use the layers after it, never those before.
const LAYERS: &[&[&str]] = &[
    &["app"],
    &["http", "dispatch", "telemetry"],
    &["db", "carriers", "auth0"],
    &["limits", "metrics", "audit"],
    &["config"],
    &["domain", "secret"],
];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The library's files by top-level module (`src/db/queue.rs` → `db`); the binaries'
/// entry points are not modules of the library.
fn library_files() -> BTreeMap<String, Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut by_module: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    for path in files {
        let relative = path.strip_prefix(src()).expect("under src");
        let first = relative
            .components()
            .next()
            .expect("a component")
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if ["main", "lib", "bin"].contains(&first.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        by_module.entry(first).or_default().push((path, text));
    }
    by_module
}

/// Top-level modules a file names: `crate::x` anywhere, and each item of `use crate::{x, y}`.
fn modules_named(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let after = &code[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            named.extend(group.split(',').map(|item| ident(item.trim())));
        } else {
            named.insert(ident(after));
        }
    }
    named.retain(|name| !name.is_empty());
    named
}

/// The code of a file with comments, strings and char literals blanked out (lines kept), so
/// braces and names inside them count for nothing.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let keep_lines = |s: &[u8], out: &mut String| {
        for &b in s {
            out.push(if b == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < bytes.len() {
        let rest = &bytes[i..];
        let end = if rest.starts_with(b"//") {
            rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len())
        } else if rest.starts_with(b"/*") {
            rest.windows(2)
                .position(|w| w == b"*/")
                .map_or(rest.len(), |p| p + 2)
        } else if rest.starts_with(b"r#\"") || rest.starts_with(b"r\"") {
            let hashes = rest[1..].iter().take_while(|&&b| b == b'#').count();
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let body = 2 + hashes;
            rest[body..]
                .windows(close.len())
                .position(|w| w == close.as_slice())
                .map_or(rest.len(), |p| body + p + close.len())
        } else if rest[0] == b'"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != b'"' {
                j += if rest[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(rest.len())
        } else if rest[0] == b'\'' && rest.len() > 2 && (rest[2] == b'\'' || rest[1] == b'\\') {
            // A char literal ('{', '\n', '\''); a lifetime ('a) has no closing quote there.
            let close = rest[2..]
                .iter()
                .position(|&b| b == b'\'')
                .map_or(2, |p| p + 3);
            close.min(rest.len())
        } else {
            out.push(rest[0] as char);
            i += 1;
            continue;
        };
        keep_lines(&rest[..end], &mut out);
        i += end;
    }
    out
}

/// Every `fn` with a body in `code`: its name, first line and length in lines.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(at) = line.find("fn ") else {
            continue;
        };
        let before = line[..at].trim();
        let is_item = before.split_whitespace().all(|word| {
            ["pub", "async", "const", "unsafe", "extern"].contains(&word)
                || word.starts_with("pub(")
        });
        if !is_item {
            continue;
        }
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // From the signature to the brace closing the body (a `;` first means no body).
        let mut depth = 0i32;
        let mut opened = false;
        'scan: for (offset, text) in lines[start..].iter().enumerate() {
            let text = if offset == 0 { &text[at..] } else { text };
            for c in text.chars() {
                match c {
                    ';' if !opened && depth == 0 => break 'scan,
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            found.push((name.clone(), start + 1, offset + 1));
                            break 'scan;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    found
}

#[test]
fn top_level_modules_use_only_the_layers_below_them_so_there_is_no_cycle() {
    let layer_of = |module: &str| LAYERS.iter().position(|layer| layer.contains(&module));
    let mut wrong = Vec::new();
    for (module, files) in library_files() {
        let Some(layer) = layer_of(&module) else {
            wrong.push(format!("{module}: not in LAYERS; place it in a layer"));
            continue;
        };
        for (path, text) in files {
            for used in modules_named(&code_only(&text)) {
                if used == module {
                    continue;
                }
                match layer_of(&used) {
                    Some(used_layer) if used_layer > layer => {}
                    _ => wrong.push(format!(
                        "{} ({module}) uses {used}",
                        path.strip_prefix(src()).expect("under src").display()
                    )),
                }
            }
        }
    }
    assert_none(wrong, "uses against the layers");
}

#[test]
fn sql_lives_in_db() {
    let mut outside = Vec::new();
    for (module, files) in library_files() {
        if module == "db" {
            continue;
        }
        for (path, text) in files {
            let code = code_only(&text);
            for needle in ["sqlx::query", "query_as(", "query_scalar(", "PgListener"] {
                if code.contains(needle) {
                    outside.push(format!("{}: {needle}", path.display()));
                }
            }
        }
    }
    assert_none(outside, "SQL outside src/db");
}

#[test]
fn no_function_in_src_is_longer_than_a_screen() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut long = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("readable");
        for (name, line, length) in functions(&code_only(&text)) {
            if length > MAX_FUNCTION_LINES {
                long.push(format!("{}:{line} {name}: {length} lines", path.display()));
            }
        }
    }
    assert_none(long, &format!("functions over {MAX_FUNCTION_LINES} lines"));
}

#[test]
fn the_checks_see_what_they_look_for() {
    let code = code_only(
        "use crate::{config::A, db};\n// crate::http in a comment\nfn f() {\n    let s = \"{\";\n    let c = '}';\n    crate::limits::x();\n}\nfn g();\n",
    );
    let named = modules_named(&code);
    assert_eq!(
        named,
        ["config", "db", "limits"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    assert_eq!(functions(&code), vec![("f".to_string(), 3, 5)]);
}

/// Sibling modules a file of a module folder names through `super::` (`super::x`, each item
/// of `use super::{x, y}`), among `siblings`.
fn siblings_named(code: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = BTreeSet::new();
    for (i, _) in code.match_indices("super::") {
        let after = &code[i + "super::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            named.extend(group.split(',').map(|item| ident(item.trim())));
        } else {
            named.insert(ident(after));
        }
    }
    named.retain(|name| siblings.contains(name));
    named
}

/// The files of each module folder (`src/config/`), by sibling name (`validate`), `mod.rs`
/// left out: a child may use its parent, the parent declares its children.
fn module_folders() -> BTreeMap<PathBuf, BTreeMap<String, String>> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut folders: BTreeMap<PathBuf, BTreeMap<String, String>> = BTreeMap::new();
    for path in files {
        let (Some(dir), Some(stem)) = (path.parent(), path.file_stem()) else {
            continue;
        };
        let stem = stem.to_string_lossy().to_string();
        if stem == "mod" || !dir.join("mod.rs").exists() {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let code = code_only(&text);
        // Unit tests may reach anywhere in their module.
        let code = code
            .split("#[cfg(test)]")
            .next()
            .unwrap_or_default()
            .to_string();
        folders
            .entry(dir.to_path_buf())
            .or_default()
            .insert(stem, code);
    }
    folders
}

#[test]
fn the_files_of_a_module_folder_use_each_other_without_a_cycle() {
    let mut wrong = Vec::new();
    for (dir, files) in module_folders() {
        let siblings: BTreeSet<String> = files.keys().cloned().collect();
        let uses: BTreeMap<&String, BTreeSet<String>> = files
            .iter()
            .map(|(name, code)| {
                let mut named = siblings_named(code, &siblings);
                named.remove(name);
                (name, named)
            })
            .collect();
        // A cycle shows as a pair that reach each other.
        let reaches = |from: &String, to: &String| {
            let mut seen = BTreeSet::new();
            let mut stack = vec![from.clone()];
            while let Some(at) = stack.pop() {
                for next in uses.get(&at).into_iter().flatten() {
                    if next == to {
                        return true;
                    }
                    if seen.insert(next.clone()) {
                        stack.push(next.clone());
                    }
                }
            }
            false
        };
        for (a, used) in &uses {
            for b in used.iter().filter(|b| *a < *b) {
                if reaches(b, a) {
                    wrong.push(format!("{}: {a} <-> {b}", dir.display()));
                }
            }
        }
    }
    assert_none(wrong, "files of one module folder that use each other");
}

/// Fails listing what was `found`, under `what`.
fn assert_none(found: Vec<String>, what: &str) {
    assert!(found.is_empty(), "{what}:\n{}", found.join("\n"));
}

/// Files of `src/` (binaries too) outside `src/carriers/<kind>/` that name a kind.
const MAX_FILES_NAMING_A_KIND: usize = 3;

/// A carrier kind is one folder: outside it, the kind's name (in any case, inside other words
/// too, comments included) appears in at most three files of `src/`, the registry among them
/// (docs/design.md, "Adding a carrier"). The development carrier `log` is left out: its name
/// is an English word.
#[test]
fn a_carrier_kind_is_named_in_at_most_three_files_outside_its_folder() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let texts: Vec<(PathBuf, String)> = files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            (path, text.to_lowercase())
        })
        .collect();
    let kinds: Vec<&str> = smsgate::carriers::KINDS
        .iter()
        .map(|kind| kind.name())
        .collect();
    assert!(kinds.contains(&"twilio"), "the registry lists the kinds");
    let mut wrong = Vec::new();
    for kind in kinds.into_iter().filter(|kind| *kind != "log") {
        let folder = src().join("carriers").join(kind);
        let naming: Vec<String> = texts
            .iter()
            .filter(|(path, text)| !path.starts_with(&folder) && text.contains(kind))
            .map(|(path, _)| {
                path.strip_prefix(src())
                    .unwrap_or(path)
                    .display()
                    .to_string()
            })
            .collect();
        if naming.len() > MAX_FILES_NAMING_A_KIND {
            wrong.push(format!("{kind}: {}", naming.join(", ")));
        }
    }
    assert_none(
        wrong,
        "carrier kinds named in more than three files outside their folder",
    );
}
