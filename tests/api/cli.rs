//! The real `smsgate` binary: `check-config`, `token`, and `serve` on the embedded database.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::helpers::{TestApp, base_config, sms};
use crate::test_config::TestConfig;

pub const BINARY: &str = env!("CARGO_BIN_EXE_smsgate");

/// Environment variables set for one run of the binary.
type EnvOverrides<'a> = &'a [(&'a str, &'a str)];

pub fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("smsgate.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

pub fn smsgate(args: &[&str], config: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BINARY);
    command.args(args).arg("--config").arg(config);
    command.env_remove("DATABASE_URL");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run smsgate")
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &base_config());

    let output = smsgate(
        &["check-config"],
        &config,
        &[
            ("SMSGATE__DISPATCH__WORKERS", "7"),
            ("SMSGATE__CARRIERS__CONSOLE__KIND", "log"),
        ],
    );

    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("workers = 7"),
        "environment override applied:\n{printed}"
    );
    assert!(printed.contains("[redacted]"));
    assert!(
        !printed.contains(crate::helpers::SECRET),
        "signer secret leaked"
    );
    assert!(
        !printed.contains(crate::helpers::ADMIN_TOKEN),
        "admin token leaked"
    );
}

#[test]
fn check_config_names_the_bad_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = TestConfig::base;
    let console = |key: &str, value: &str| base().set(&format!("carriers.console.{key}"), value);
    let cases: [(TestConfig, EnvOverrides, &str); 15] = [
        (
            base(),
            &[("SMSGATE__DISPATCH__WORKERS", "many")],
            "dispatch.workers",
        ),
        (
            base(),
            &[("SMSGATE__DISPATCH__MESSAGE_TTL_SECONDS", "0")],
            "dispatch.message_ttl_seconds",
        ),
        (base().route("", &["nope"]), &[], "routes[0].carriers"),
        (
            base().route("+44", &["console"]).without_route(""),
            &[],
            "routes",
        ),
        (
            base().set("auth0.primary.secret_base64_encoded", true),
            &[],
            "auth0.primary.secret",
        ),
        (console("kind", "carrier-pigeon"), &[], "carriers.console"),
        (console("kind", "twilio"), &[], "carriers.console.account_sid"),
        (console("auth_token", "x"), &[], "carriers.console.auth_token"),
        (
            base(),
            &[("SMSGATE__DISPATCH__LEASE_SECONDS", "3")],
            "dispatch.lease_seconds",
        ),
        (
            base().merge(
                "[carriers.console]\nkind = \"messagemedia\"\napi_key = \"k\"\napi_secret = \"s\"\n\
                 public_url = \"https://sms.example.com\"",
            ),
            &[],
            "carriers.console.callback_secret",
        ),
        (
            base().merge(
                "[carriers.console]\nkind = \"twilio\"\naccount_sid = \"AC1\"\napi_key_sid = \"SK1\"\n\
                 api_key_secret = \"s\"\nfrom = \"+15005550006\"\npublic_url = \"https://x\"",
            ),
            &[],
            "carriers.console.public_url",
        ),
        (
            base(),
            &[("SMSGATE__DESTINATIONS__BLOCKED_PREFIXES", "[\"44\"]")],
            "destinations.blocked_prefixes",
        ),
        (
            base(),
            &[("SMSGATE__DESTINATIONS__ALLOWED_COUNTRIES", "[\"UK\"]")],
            "destinations.allowed_countries",
        ),
        (
            base(),
            &[("SMSGATE__SERVER__MAX_HEADER_BYTES", "1024")],
            "server.max_header_bytes",
        ),
        (
            TestConfig::with("[[limits.ip]]\nmax = 0\nwindow_seconds = 60\n"),
            &[],
            "limits.ip[0]",
        ),
    ];
    for (text, env, key) in cases {
        let config = write_config(dir.path(), &text.to_string());
        let output = smsgate(&["check-config"], &config, env);
        assert_eq!(output.status.code(), Some(2), "exit code for {key}");
        assert!(
            stderr(&output).contains(key),
            "message names {key}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn check_config_refuses_an_empty_or_unbounded_issuer_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = "i".repeat(1025);
    let cases: [(Vec<&str>, &str); 3] = [
        (vec![], "must list at least one issuer"),
        (vec!["Auth0", " "], "must not be empty"),
        (vec![long.as_str()], "characters or fewer"),
    ];
    for (issuers, reason) in cases {
        let text = TestConfig::base().set("auth0.primary.issuers", issuers.clone());
        let config = write_config(dir.path(), &text.to_string());

        let output = smsgate(&["check-config"], &config, &[]);

        assert_eq!(output.status.code(), Some(2), "exit code for {issuers:?}");
        let said = stderr(&output);
        assert!(
            said.contains("auth0.primary.issuers") && said.contains(reason),
            "names the key and why for {issuers:?}: {said}"
        );
    }
}

#[test]
fn a_gateway_without_signers_refuses_to_start_unless_unauthenticated_is_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unsigned = TestConfig::base().without("auth0");
    let config = write_config(dir.path(), &unsigned.to_string());

    let output = smsgate(&["check-config"], &config, &[]);

    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("allow_unauthenticated"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_development_secret_is_refused_on_a_public_address() {
    let output = smsgate(
        &["check-config"],
        Path::new("config/development.toml"),
        &[("SMSGATE__SERVER__LISTEN", "0.0.0.0:8080")],
    );

    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("server.listen"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn smsgate_token_signs_what_the_gateway_accepts() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &base_config());

    let output = smsgate(&["token", "--signer", "primary"], &config, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output).trim().to_string();

    let response = app.post_sms(Some(&token), &sms("+14155552671")).await;
    assert_eq!(response.status().as_u16(), 200);
}

/// A config for the real binary: embedded database in `dir`, fixed loopback port.
pub fn serve_config(dir: &Path, port: u16) -> std::path::PathBuf {
    let text = TestConfig::base()
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("database.data_dir", dir.join("pg").display().to_string());
    write_config(dir, &text.to_string())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// PostgreSQL processes whose command line mentions `dir`.
pub fn postgres_processes_for(dir: &Path) -> usize {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| {
            cmdline.contains("postgres") && cmdline.contains(&needle) && !cmdline.contains("sh -c")
        })
        .count()
}

fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn start_serve(dir: &Path) -> (Child, u16) {
    // The embedded cluster may run as the postgres account, which must reach data_dir.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod tempdir");
    let port = free_port();
    (spawn_serve(&serve_config(dir, port)), port)
}

/// `smsgate serve --config config` on the embedded database, its output discarded.
pub fn spawn_serve(config: &Path) -> Child {
    Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smsgate serve")
}

pub async fn wait_until_healthy(port: u16) -> reqwest::Client {
    let client = crate::helpers::http_client(30);
    let start = Instant::now();
    loop {
        let health = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await;
        if health.is_ok_and(|r| r.status().is_success()) {
            return client;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "smsgate never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Signs with `smsgate token` for the serve config in `dir` and posts one message.
pub async fn post_with_smsgate_token(
    client: &reqwest::Client,
    dir: &Path,
    port: u16,
) -> reqwest::Response {
    let token = stdout(&smsgate(&["token"], &serve_config(dir, port), &[]))
        .trim()
        .to_string();
    crate::helpers::sms_request(client, port, &token, "+14155552671")
        .send()
        .await
        .expect("sent")
}

/// SIGTERM, then the exit status.
pub async fn terminate(child: Child) -> std::process::ExitStatus {
    let mut child = child;
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait")
}

#[tokio::test]
async fn serve_on_the_embedded_database_accepts_a_token_and_stops_postgres_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = start_serve(dir.path());
    let client = wait_until_healthy(port).await;
    let response = post_with_smsgate_token(&client, dir.path(), port).await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        postgres_processes_for(dir.path()) > 0,
        "embedded PostgreSQL runs"
    );

    let status = terminate(child).await;
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    assert_eq!(
        postgres_processes_for(dir.path()),
        0,
        "no PostgreSQL left behind"
    );
}

#[tokio::test]
async fn a_killed_gateway_leaves_no_postgres_behind_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, port) = start_serve(dir.path());
    let client = wait_until_healthy(port).await;
    let response = post_with_smsgate_token(&client, dir.path(), port).await;
    assert_eq!(response.status().as_u16(), 200);
    let id = response.json::<serde_json::Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_string();

    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    wait_for(
        "the watchdog to stop PostgreSQL",
        Duration::from_secs(30),
        || postgres_processes_for(dir.path()) == 0,
    );

    // Restarted on the same data directory, the acknowledged message is still there.
    let (child, port) = start_serve(dir.path());
    let client = wait_until_healthy(port).await;
    let status = client
        .get(format!("http://127.0.0.1:{port}/v1/messages/{id}"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(status.status().as_u16(), 200);
    assert!(terminate(child).await.success());
}

#[test]
fn check_config_names_every_zero_and_every_other_problem_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = TestConfig::base()
        .set("dispatch.workers", 0)
        .set("server.max_connections", 0)
        .set("carriers.console.breaker_failures", 0)
        .merge("[[limits.ip]]\nmax = 0\nwindow_seconds = 60\n")
        .route("", &["nope"])
        .set("log.level", "info,,==")
        .set("limits.max_in_flight", 2_305_843_009_213_693_952_i64)
        .merge("[auth0.-]\nsecret = \"another-secret\"\naudience = \"urn:x\"\n");
    let config = write_config(dir.path(), &text.to_string());

    let output = smsgate(
        &["check-config"],
        &config,
        &[("SMSGATE__DISPATCH__CLAIMERS", "0")],
    );

    assert_eq!(output.status.code(), Some(2));
    let errors = stderr(&output);
    for key in [
        "dispatch.workers: must be at least 1",
        "dispatch.claimers: must be at least 1 (set by SMSGATE__DISPATCH__CLAIMERS)",
        "server.max_connections: must be at least 1",
        "carriers.console.breaker_failures: must be at least 1",
        "limits.ip[0].max: must be at least 1",
        "routes[0].carriers",
        "log.level",
        "limits.max_in_flight: must be at most 1000000",
        "auth0.-: \"-\" (and an empty name) stand for no signer",
    ] {
        assert!(errors.contains(key), "{key} not named in:\n{errors}");
    }
}

/// Found by an attack: a TOML syntax error quoted the offending line, secret and all.
#[test]
fn a_syntax_error_names_its_place_without_quoting_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{}\n[auth0.second]\naudience = Zq8vUnquotedSecret\n",
        base_config()
    );
    let config = write_config(dir.path(), &text);

    let output = smsgate(&["check-config"], &config, &[]);

    assert_eq!(output.status.code(), Some(2));
    let errors = stderr(&output);
    assert!(errors.contains("TOML parse error at line"), "{errors}");
    assert!(!errors.contains("Zq8v"), "the line is quoted: {errors}");
}

/// Behind a transaction pooler, migrations need PostgreSQL itself: a configuration that would
/// run them through the pooler is refused, naming the keys, and `migrate` says what to set.
#[test]
fn transaction_pooling_without_a_direct_url_is_refused_where_a_session_is_needed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pooled = TestConfig::base()
        .set("database.url", "postgres://postgres@127.0.0.1:1/smsgate")
        .set("database.transaction_pooling", true);
    let migrating = write_config(dir.path(), &pooled.to_string());
    let output = smsgate(&["check-config"], &migrating, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output)
            .contains("database.direct_url: must be set when database.transaction_pooling"),
        "{}",
        stderr(&output)
    );

    let embedded = TestConfig::base()
        .set("database.url", "")
        .set("database.transaction_pooling", true)
        .set(
            "database.direct_url",
            "postgres://postgres@127.0.0.1:1/smsgate",
        );
    let embedded = write_config(dir.path(), &embedded.to_string());
    let output = smsgate(&["check-config"], &embedded, &[]);
    assert_eq!(output.status.code(), Some(2));
    for named in [
        "database.transaction_pooling: needs database.url",
        "database.direct_url: is set without database.url",
    ] {
        assert!(stderr(&output).contains(named), "{}", stderr(&output));
    }

    // The pooler's own address as the direct one would put LISTEN on a shared session; a URL
    // that does not parse is named without being quoted.
    let same = pooled
        .clone()
        .set(
            "database.direct_url",
            "postgres://other:pw@127.0.0.1:1/smsgate",
        )
        .set(
            "database.url",
            "postgres://smsgate:TopSecretPW@127.0.0.1:1/smsgate",
        );
    let same = write_config(dir.path(), &same.to_string());
    let output = smsgate(&["check-config"], &same, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("database.direct_url: is the pooler's address"),
        "{}",
        stderr(&output)
    );
    let unparsable = pooled.clone().set(
        "database.direct_url",
        "postgres://smsgate:TopSecretPW@db:notaport/smsgate",
    );
    let unparsable = write_config(dir.path(), &unparsable.to_string());
    let output = smsgate(&["check-config"], &unparsable, &[]);
    assert_eq!(output.status.code(), Some(2));
    let errors = stderr(&output);
    assert!(
        errors.contains("database.direct_url: is not a valid postgres:// URL"),
        "{errors}"
    );
    assert!(!errors.contains("TopSecretPW"), "{errors}");

    // Not migrating on start is a valid choice; `migrate` then refuses without connecting.
    let serving = pooled.set("database.migrate_on_start", false);
    let serving = write_config(dir.path(), &serving.to_string());
    let output = smsgate(&["check-config"], &serving, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stderr(&output).contains("no LISTEN"), "{}", stderr(&output));
    let output = smsgate(&["migrate"], &serving, &[]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("set database.direct_url"),
        "{}",
        stderr(&output)
    );
}

/// The guard's configuration mistakes are refused at once, each naming its key.
#[test]
fn fraud_and_cost_settings_that_cannot_work_are_refused_naming_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = TestConfig::with(
        "[spend]\ndaily_limit = 10.0\n\
         [[prices]]\ncarrier = \"nope\"\nprefix = \"44\"\nper_segment = -1.0\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"+44\"\nper_segment = 0.0000004\n\
         [[limits.country]]\ncountries = [\"*\", \"GB\"]\nmax = 5\nwindow_seconds = 60\n\
         [[limits.country]]\ncountries = [\"UK\"]\nmax = 5\nwindow_seconds = 60\n\
         [[limits.recipient]]\nmax = 1\nwindow_seconds = 60\nmode = \"monitor\"\n\
         [[test_numbers]]\nnumber = \"+1 500 555 0006\"\noutcome = \"sent\"\n",
    );
    let config = write_config(dir.path(), &text.to_string());

    let output = smsgate(&["check-config"], &config, &[]);

    assert_eq!(output.status.code(), Some(2));
    let errors = stderr(&output);
    for named in [
        "spend.currency: must be an ISO 4217 code",
        "prices[0].carrier: \"nope\" is not a configured carrier",
        "prices[0].prefix: must be \"\" or \"+\" and digits",
        "prices[0].per_segment: must be between 0 and",
        "prices: a spend ceiling needs a default price (prefix = \"\") for every carrier that is first on a route (or first to place calls); missing for console",
        "limits.country[0].countries: \"*\" stands alone",
        "limits.country[1].countries: \"UK\" is not an ISO 3166-1 alpha-2 country code",
        "limits.recipient[0].mode: must be \"block\"",
        "test_numbers[0].number: write it in E.164 form: +15005550006",
        "prices[1].per_segment: has more than 6 decimal places",
    ] {
        assert!(errors.contains(named), "{named} not named in:\n{errors}");
    }

    // A fractional ceiling from the environment (its text kept exact) is an amount.
    let priced = TestConfig::with(
        "[spend]\ncurrency = \"USD\"\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.01\n",
    );
    let config = write_config(dir.path(), &priced.to_string());
    let output = smsgate(
        &["check-config"],
        &config,
        &[("SMSGATE__SPEND__DAILY_LIMIT", "0.5")],
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("daily_limit = 0.5"),
        "{}",
        stdout(&output)
    );
}

/// An alphanumeric sender where a country refuses one is caught before anything is sent.
#[test]
fn a_route_sender_is_checked_against_the_numbers_its_route_takes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = TestConfig::base()
        .merge("[[routes]]\nprefix = \"+1415\"\ncarriers = [\"console\"]\nsender = \"ACME\"\n")
        .merge("[[routes]]\nprefix = \"+44\"\ncarriers = [\"console\"]\nsender = \"-bad-\"\n");
    let config = write_config(dir.path(), &refused.to_string());
    let output = smsgate(&["check-config"], &config, &[]);
    assert_eq!(output.status.code(), Some(2));
    let errors = stderr(&output);
    for named in [
        "routes[1].sender: an alphanumeric sender ID is not accepted for numbers starting with +1",
        "routes[2].sender: must be an E.164 number",
    ] {
        assert!(errors.contains(named), "{named} not named in:\n{errors}");
    }

    // The default route may have one when +1 and +86 have routes of their own.
    let default_acme = "[[routes]]\nprefix = \"\"\ncarriers = [\"console\"]\nsender = \"ACME\"\n";
    let allowed = TestConfig::base()
        .without("routes")
        .merge(default_acme)
        .merge("[[routes]]\nprefix = \"+1\"\ncarriers = [\"console\"]\n")
        .merge("[[routes]]\nprefix = \"+86\"\ncarriers = [\"console\"]\n");
    let config = write_config(dir.path(), &allowed.to_string());
    let output = smsgate(&["check-config"], &config, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let without_us_route = TestConfig::base().without("routes").merge(default_acme);
    let config = write_config(dir.path(), &without_us_route.to_string());
    let output = smsgate(&["check-config"], &config, &[]);
    assert!(
        stderr(&output).contains("routes[0].sender: an alphanumeric sender ID is not accepted"),
        "{}",
        stderr(&output)
    );
}

/// Found by a first-time user: `messages list` beside a running gateway said it was stopping
/// the embedded database, which it only visits (the gateway keeps it running).
#[tokio::test]
async fn an_operator_command_beside_a_gateway_does_not_say_it_stops_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = start_serve(dir.path());
    wait_until_healthy(port).await;

    let config = serve_config(dir.path(), port);
    let output = smsgate(&["messages", "list"], &config, &[("RUST_LOG", "info")]);

    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(log.contains("connecting only"), "a guest: {log}");
    assert!(!log.contains("stopping embedded PostgreSQL"), "{log}");
    assert!(
        postgres_processes_for(dir.path()) > 0,
        "the gateway's database runs on"
    );
    assert!(terminate(child).await.success());
}

/// Runs check-config on `text`: it must refuse it (exit 2, nothing printed as if valid) and
/// name every one of `named`, in one run. Returns what it said.
fn check_config_names_all(text: &TestConfig, named: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &text.to_string());
    let output = smsgate(&["check-config"], &config, &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "nothing printed as if valid");
    let errors = stderr(&output);
    for named in named {
        assert!(errors.contains(named), "{named} not named in:\n{errors}");
    }
    errors
}

/// Found by a first-time user: check-config stopped at the first mistake, so each fix
/// revealed the next one.
#[test]
fn check_config_names_every_bad_key_in_one_run() {
    let text = TestConfig::base()
        .set("server.lisen", "127.0.0.1:8080")
        .set("dispatch.wokers", 4)
        .set("server.max_connections", "many")
        .set("server.max_header_bytes", 1024);
    let errors = check_config_names_all(
        &text,
        &[
            "server.lisen: unknown key; did you mean `listen`?",
            "dispatch.wokers: unknown key; did you mean `workers`?",
            "server.max_connections: invalid type: found a string",
            "server.max_header_bytes",
        ],
    );
    assert!(!errors.contains("`one of"), "garbled: {errors}");
    assert!(
        !errors.contains("many"),
        "the value is not repeated: {errors}"
    );
}

/// A review of issue 23: mistyped and unknown keys were named, but the range checks of the
/// rest waited for the next run.
#[test]
fn check_config_names_type_errors_unknown_keys_and_ranges_in_one_run() {
    let text = TestConfig::base()
        .set("server.lisen", "x")
        .set("server.max_header_bytes", 100)
        .set("dispatch.workers", "many")
        .set("dispatch.message_ttl_seconds", 0);
    check_config_names_all(
        &text,
        &[
            "server.lisen: unknown key",
            "server.max_header_bytes: must be at least",
            "dispatch.workers: invalid type: found a string",
            "dispatch.message_ttl_seconds: must be between",
        ],
    );
}

#[test]
fn check_config_checks_ranges_even_when_a_whole_table_is_set_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A mistyped required key sets its signer's table aside: the range checks elsewhere are
    // still true, "no signer is configured" would not be.
    let text = TestConfig::base()
        .set("auth0.primary.audience", toml::Value::Array(vec![1.into()]))
        .set("server.max_header_bytes", 100)
        .set("dispatch.message_ttl_seconds", 0);
    let config = write_config(dir.path(), &text.to_string());

    let output = smsgate(&["check-config"], &config, &[]);

    assert_eq!(output.status.code(), Some(2));
    let errors = stderr(&output);
    for named in [
        "auth0.primary.audience: invalid type",
        "server.max_header_bytes: must be at least",
        "dispatch.message_ttl_seconds: must be between",
    ] {
        assert!(errors.contains(named), "{named} not named in:\n{errors}");
    }
    assert!(!errors.contains("no signer is configured"), "{errors}");
}

#[test]
fn check_config_warns_about_the_development_secret_given_in_base64() {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("tempdir");
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(smsgate::config::DEVELOPMENT_SECRET);
    let text = TestConfig::base()
        .set("auth0.primary.secret", encoded)
        .set("auth0.primary.secret_base64_encoded", true);
    let config = write_config(dir.path(), &text.to_string());

    let output = smsgate(&["check-config"], &config, &[]);

    assert!(output.status.success(), "{}", stderr(&output));
    let warnings = stderr(&output);
    assert!(
        warnings.contains("warning: a signer uses the development secret"),
        "{warnings}"
    );
}

#[test]
fn check_config_warns_about_the_public_development_secret() {
    let output = smsgate(&["check-config"], Path::new("config/development.toml"), &[]);

    assert!(output.status.success(), "{}", stderr(&output));
    let warnings = stderr(&output);
    assert!(
        warnings.contains("warning: a signer uses the development secret"),
        "{warnings}"
    );
}

/// Issue 23 §2: a database reached over a network without a checked certificate could be
/// read or impersonated; `prefer`, the default, even falls back to plain text silently.
#[test]
fn check_config_warns_about_a_database_reached_without_a_checked_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warned = |url: Option<&str>, direct: Option<&str>| {
        let mut text = TestConfig::base();
        if let Some(direct) = direct {
            text = text.set("database.direct_url", direct);
        }
        let config = write_config(dir.path(), &text.to_string());
        let env: Vec<(&str, &str)> = url.map(|url| ("DATABASE_URL", url)).into_iter().collect();
        let output = smsgate(&["check-config"], &config, &env);
        assert!(output.status.success(), "{}", stderr(&output));
        stderr(&output)
            .lines()
            .filter(|line| line.starts_with("warning: database."))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };

    let default_mode = warned(Some("postgres://u:pw@db.example.com/smsgate"), None);
    assert_eq!(default_mode.len(), 1, "{default_mode:?}");
    assert!(default_mode[0].contains("database.url reaches db.example.com:5432"));
    assert!(default_mode[0].contains("falls back to plain text"));
    assert!(
        !default_mode[0].contains("pw"),
        "no password: {default_mode:?}"
    );
    let direct = warned(
        Some("postgres://u@db.example.com/smsgate?sslmode=verify-full&sslrootcert=/etc/ca.pem"),
        Some("postgres://u@10.1.2.3/smsgate?sslmode=require"),
    );
    assert_eq!(direct.len(), 1, "{direct:?}");
    assert!(direct[0].contains("database.direct_url reaches 10.1.2.3:5432"));
    assert!(direct[0].contains("without checking the server's certificate"));

    // A verifying mode with nothing to verify against cannot connect (libpq's reading).
    let no_anchor = warned(
        Some("postgres://u@db.example.com/smsgate?sslmode=verify-full"),
        None,
    );
    assert!(no_anchor[0].contains("no sslrootcert"), "{no_anchor:?}");
    // prefer with a root certificate verifies a server that offers TLS, but still speaks
    // plain text to one (or to a man in the middle) that says it has none.
    let preferred = warned(
        Some("postgres://u@db.example.com/smsgate?sslmode=prefer&sslrootcert=/etc/ca.pem"),
        None,
    );
    assert!(
        preferred[0].contains("in plain text when it"),
        "{preferred:?}"
    );
    assert!(
        !preferred[0].contains("checks no certificate"),
        "{preferred:?}"
    );
    let impossible = warned(
        Some("postgres://u@db.example.com/smsgate?sslmode=require&sslrootcert=system"),
        None,
    );
    assert_eq!(impossible.len(), 1, "{impossible:?}");
    assert!(impossible[0].contains("cannot work"), "{impossible:?}");

    for quiet in [
        "postgres://u@db.example.com/smsgate?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
        // libpq verifies the chain under require when a root certificate is given.
        "postgres://u@db.example.com/smsgate?sslmode=require&sslrootcert=/etc/ca.pem",
        "postgres://u@localhost/smsgate",
        "postgres://u@127.0.0.1:5433/smsgate?sslmode=disable",
        "postgres://u@[::1]/smsgate",
        "postgres://u@localhost/smsgate?host=/var/run/postgresql",
    ] {
        assert_eq!(warned(Some(quiet), None), Vec::<String>::new(), "{quiet}");
    }
}

/// The compose file's PostgreSQL has no TLS: its URL says plain text aloud instead of
/// leaving it to `prefer`'s silent fallback.
#[test]
fn the_compose_database_url_chooses_plain_text_visibly() {
    let compose = std::fs::read_to_string("docker-compose.yml").expect("compose file");
    let line = compose
        .lines()
        .find(|line| line.trim_start().starts_with("DATABASE_URL:"))
        .expect("DATABASE_URL in compose");
    let url = line
        .split_once(':')
        .map(|(_, url)| url.trim())
        .expect("a value")
        .replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}", "pw");
    assert!(url.ends_with("?sslmode=disable"), "{url}");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &base_config());

    let output = smsgate(&["check-config"], &config, &[("DATABASE_URL", &url)]);

    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("in plain text (sslmode=disable)"),
        "{}",
        stderr(&output)
    );
}

/// Issue 25: a carrier table is read by its kind. Every problem of every table is still named
/// in one run, with its key and the variable that set it, and no value is repeated.
#[test]
fn check_config_names_every_problem_of_the_carrier_tables_in_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = TestConfig::base()
        .merge("[carriers.pigeon]\nkind = \"carrier-pigeon\"\n")
        .merge("[carriers.nameless]\nfrom = \"+15005550006\"\n")
        .merge(
            "[carriers.mixed]\nkind = \"twilio\"\ntimeout_ms = \"slow\"\n\
             api_token = \"tok-3141592653\"\nfromm = \"+15005550006\"\n\
             auth_token = \"twilio-token-2718281828\"\nmessaging_service_sid = \"MG1\"\n",
        );
    let config = write_config(dir.path(), &text.to_string());
    let env = [("SMSGATE__CARRIERS__MIXED__MAX_IN_FLIGHT", "0")];

    let output = smsgate(&["check-config"], &config, &env);

    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "nothing printed as if valid");
    let errors = stderr(&output);
    for named in [
        "carriers.pigeon.kind: unknown value; expected one of `log`, `twilio`, `messagemedia`, \
         `sns`, `telnyx`",
        "carriers.nameless.kind: missing field `kind`",
        "carriers.mixed.timeout_ms: invalid type: found a string",
        "carriers.mixed.api_token: is not a key of kind \"twilio\"; did you mean `auth_token`?",
        "carriers.mixed.fromm: is not a key of kind \"twilio\"; did you mean `from`?",
        "carriers.mixed.account_sid: is required",
        "carriers.mixed.max_in_flight: must be at least 1 (remove it for no limit) (set by \
         SMSGATE__CARRIERS__MIXED__MAX_IN_FLIGHT)",
    ] {
        assert!(errors.contains(named), "{named} not named in:\n{errors}");
    }
    for value in [
        "tok-3141592653",
        "twilio-token-2718281828",
        "slow",
        "carrier-pigeon",
    ] {
        assert!(!errors.contains(value), "{value} repeated in:\n{errors}");
    }
}

/// `--version` names the commit; completions and the manual page come from the command line's
/// own definition, so every subcommand is in them; none of these needs a configuration.
#[test]
fn version_completions_and_manual_page_need_no_configuration() {
    let run = |args: &[&str]| {
        std::process::Command::new(BINARY)
            .args(args)
            .env("SMSGATE_CONFIG", "/nonexistent/smsgate.toml")
            .output()
            .expect("smsgate runs")
    };
    let version = run(&["--version"]);
    assert_eq!(
        stdout(&version).trim(),
        format!(
            "smsgate {} ({})",
            env!("CARGO_PKG_VERSION"),
            env!("SMSGATE_COMMIT")
        )
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        assert!(script.status.success(), "{shell}: {}", stderr(&script));
        let text = stdout(&script);
        for command in [
            "serve",
            "migrate",
            "messages",
            "carriers",
            "openapi",
            "completions",
        ] {
            assert!(text.contains(command), "{shell} completes {command}");
        }
    }
    let unknown = run(&["completions", "cmd.exe"]);
    assert_eq!(
        unknown.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
    let man = run(&["man"]);
    assert!(man.status.success(), "{}", stderr(&man));
    let page = stdout(&man);
    assert!(
        page.starts_with(".ie") || page.contains(".TH smsgate 1"),
        "roff: {page}"
    );
    assert!(
        page.contains("check\\-config") && page.contains("messages"),
        "{page}"
    );
    let openapi = run(&["openapi"]);
    assert!(openapi.status.success());
    let document: serde_json::Value = serde_json::from_slice(&openapi.stdout).expect("JSON");
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
}
