//! The README's quick start, run as written against the real binary, so it cannot drift from
//! what smsgate does: the set-up block's gateway is started, the "Try it" block is run with
//! bash, and each answer it shows (`# {…}` lines) is compared with the real one: the same keys,
//! and the same values wherever the README does not write `…`. And the README stays a short
//! way in: every file under docs/ is linked from it, and every relative link in the README and
//! docs/ leads to a file and a heading that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::cli::{BINARY, free_port, wait_until_healthy};

const README: &str = include_str!("../../README.md");
const CARGO_TOML: &str = include_str!("../../Cargo.toml");

/// The first ```sh block after the heading `heading`.
fn shell_block(heading: &str) -> &'static str {
    let section = README
        .split_once(&format!("\n{heading}\n"))
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("README has no {heading}"));
    let (_, block) = section.split_once("```sh\n").expect("a shell block");
    let (block, _) = block.split_once("\n```").expect("the block ends");
    block
}

/// The command lines of a block, without comments and blank lines.
fn commands(block: &str) -> Vec<&str> {
    block
        .lines()
        .map(|line| line.split(" #").next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// The README's commands for this machine: the built binary for `cargo run`, and the port
/// the test gateway listens on.
fn for_this_run(block: &str, port: u16) -> String {
    let text = block
        .replace("cargo run --release -q --", BINARY)
        .replace("cargo run --release", BINARY)
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    assert!(
        !text.contains("cargo "),
        "a cargo command left to run:\n{text}"
    );
    text
}

/// The answers a block shows: its `# {…}` lines.
fn shown_answers(block: &str) -> Vec<Value> {
    block
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("# {")
                .map(|rest| format!("{{{rest}"))
        })
        .map(|json| serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}")))
        .collect()
}

/// Numbers that differ from run to run: the README shows an example, of the right type.
const VARYING_NUMBERS: [&str; 1] = [".latency_ms"];

/// `actual` has exactly `shown`'s keys, and its values wherever `shown` has no `…` (where it
/// has, at least the type: a string).
fn assert_matches(shown: &Value, actual: &Value, at: &str) {
    match (shown, actual) {
        (Value::String(text), _) if text.contains('…') => {
            assert!(
                actual.is_string(),
                "{at} is {actual}, the README shows a string"
            );
        }
        (Value::Number(_), _) if VARYING_NUMBERS.iter().any(|key| at.ends_with(key)) => {
            assert!(
                actual.is_number(),
                "{at} is {actual}, the README shows a number"
            );
        }
        (Value::Object(shown), Value::Object(actual)) => {
            let shown_keys: Vec<_> = shown.keys().collect();
            let actual_keys: Vec<_> = actual.keys().collect();
            assert_eq!(shown_keys, actual_keys, "keys of {at}");
            for (key, value) in shown {
                assert_matches(value, &actual[key], &format!("{at}.{key}"));
            }
        }
        (Value::Array(shown), Value::Array(actual)) => {
            assert_eq!(shown.len(), actual.len(), "length of {at}");
            for (i, (shown, actual)) in shown.iter().zip(actual).enumerate() {
                assert_matches(shown, actual, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(shown, actual, "{at}"),
    }
}

/// The README's gateway; SIGTERM when dropped, so a failing test leaves nothing behind.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// What the README's gateway needs to run beside other tests: its own port and directory.
fn environment(dir: &Path, port: u16) -> [(&'static str, String); 3] {
    [
        ("SMSGATE__SERVER__LISTEN", format!("127.0.0.1:{port}")),
        ("SMSGATE__METRICS__LISTEN", "127.0.0.1:0".to_string()),
        (
            "SMSGATE__DATABASE__DATA_DIR",
            dir.join("pg").display().to_string(),
        ),
    ]
}

#[test]
fn the_set_up_block_runs_the_tests_before_the_gateway_that_blocks() {
    let set_up = commands(shell_block("## Set up"));
    let test = set_up.iter().position(|c| c.starts_with("cargo test"));
    let run = set_up.iter().position(|c| c.starts_with("cargo run"));
    assert!(
        matches!((test, run), (Some(test), Some(run)) if test < run),
        "{set_up:?}"
    );
}

/// Whether Cargo.toml's `[package]` names the binary a bare `cargo run` runs.
fn has_default_run() -> bool {
    let package = CARGO_TOML
        .split_once("[package]\n")
        .map(|(_, rest)| rest.split("\n[").next().unwrap_or_default())
        .unwrap_or_default();
    package
        .lines()
        .any(|line| line.replace(' ', "") == "default-run=\"smsgate\"")
}

#[test]
fn every_cargo_run_in_the_readme_knows_which_binary_to_run() {
    // Two binaries (smsgate, smsgate-bench): without --bin, cargo needs default-run to choose.
    let bare: Vec<&str> = README
        .lines()
        .filter(|line| line.contains("cargo run") && !line.contains("--bin"))
        .collect();
    assert!(
        !bare.is_empty(),
        "the README starts the gateway with cargo run"
    );
    assert!(
        has_default_run(),
        "Cargo.toml has no default-run, so these fail with \"could not determine which binary \
         to run\": {bare:#?}"
    );
}

#[test]
fn the_try_it_block_waits_for_the_send_in_a_bounded_poll_not_a_fixed_sleep() {
    // A fixed sleep races a loaded machine; a loop that stops once the message left `queued`
    // (and gives up after a bound) does not.
    let try_it = shell_block("## Try it");
    let lines = commands(try_it);
    assert!(
        !lines.iter().any(|line| line.starts_with("sleep")),
        "a bare sleep: {lines:#?}"
    );
    assert!(
        lines.iter().any(|line| line.starts_with("for i in $(seq ")),
        "no bounded poll: {lines:#?}"
    );
}

#[tokio::test]
async fn the_readme_try_it_block_gives_the_answers_it_shows() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The embedded cluster may run as the postgres account, which must reach data_dir.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod tempdir");
    let port = free_port();
    let env = environment(dir.path(), port);
    let serve = commands(shell_block("## Set up"))
        .into_iter()
        .find(|c| c.starts_with("cargo run"))
        .map(|c| for_this_run(c, port))
        .expect("the set-up block starts the gateway");
    let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
    let _gateway = Gateway(
        Command::new("bash")
            .args(["-c", &format!("exec {serve}")])
            .envs(env.clone())
            .env_remove("DATABASE_URL")
            .env_remove("SMSGATE_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the gateway starts"),
    );
    wait_until_healthy(port).await;
    let try_it = shell_block("## Try it");

    let script = for_this_run(try_it, port);
    let output = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .envs(env)
            .env_remove("DATABASE_URL")
            .env_remove("SMSGATE_CONFIG")
            .output()
            .expect("bash runs")
    })
    .await
    .expect("join");

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answers: Vec<Value> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("a JSON answer"))
        .collect();
    let shown = shown_answers(try_it);
    assert_eq!(answers.len(), shown.len(), "answers: {stdout}");
    for (i, (shown, actual)) in shown.iter().zip(&answers).enumerate() {
        assert_matches(shown, actual, &format!("answer {i}"));
    }
    // The status example looks up the message the first command sent.
    assert_eq!(answers[1]["id"], answers[0]["id"]);
}

/// The issue that moved the reference into docs/ set this bound: a newcomer reads it all.
const README_MAX_LINES: usize = 200;

#[test]
fn the_readme_stays_short() {
    let lines = README.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "the README has {lines} lines; move reference material into docs/ and link it"
    );
}

/// The README and every Markdown file under docs/, with their text.
fn documents() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ is readable")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    paths.sort();
    paths.insert(0, root.join("README.md"));
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("readable");
            (path, text)
        })
        .collect()
}

/// A document's lines outside its fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a document's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .into_iter()
        .filter_map(|line| {
            let level = line.len() - line.trim_start_matches('#').len();
            let title = line[level..].strip_prefix(' ')?;
            (1..=6).contains(&level).then(|| anchor_of(title))
        })
        .collect()
}

/// The targets of a document's Markdown links (`[text](target)`) outside code.
fn link_targets(text: &str) -> Vec<String> {
    let prose = prose(text).join("\n");
    // Inline code may hold `](`: keep only what lies between code spans.
    let outside_code: Vec<&str> = prose.split('`').step_by(2).collect();
    outside_code
        .join(" ")
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target.to_string()))
        .filter(|target| !target.contains(char::is_whitespace))
        .collect()
}

/// Why `target`, linked from `document`, leads nowhere; `None` when it leads somewhere.
fn broken_link(document: &Path, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
    let linked = match file {
        "" => document.to_path_buf(),
        file => document.parent().expect("a directory").join(file),
    };
    if !linked.exists() {
        return Some(format!("{target}: no such file"));
    }
    if anchor.is_empty() || linked.is_dir() {
        return None;
    }
    let text = std::fs::read_to_string(&linked).expect("readable");
    (!anchors(&text).contains(anchor)).then(|| format!("{target}: no such heading"))
}

#[test]
fn every_relative_link_in_the_readme_and_docs_leads_somewhere() {
    let mut broken = Vec::new();
    for (path, text) in documents() {
        for target in link_targets(&text) {
            if let Some(why) = broken_link(&path, &target) {
                broken.push(format!("{}: {why}", path.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_links_every_file_under_docs() {
    let unlinked: Vec<String> = documents()
        .into_iter()
        .filter_map(|(path, _)| {
            let name = path.file_name()?.to_str()?.to_string();
            path.parent()?
                .ends_with("docs")
                .then(|| format!("docs/{name}"))
        })
        .filter(|doc| {
            !README.contains(&format!("]({doc})")) && !README.contains(&format!("]({doc}#"))
        })
        .collect();
    assert!(
        unlinked.is_empty(),
        "the README does not link {unlinked:?}: a newcomer would not find them"
    );
}
