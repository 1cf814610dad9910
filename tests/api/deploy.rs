//! Deployment safety with the real binary: the embedded database belongs to the gateway that
//! started it and to nobody else.

use std::process::Command;
use std::time::Duration;

use crate::cli::{
    BINARY, post_with_smsgate_token, postgres_processes_for, start_serve, terminate,
    wait_until_healthy,
};
use crate::test_config::TestConfig;

/// A directory the embedded cluster's account can enter, a free port, and a config serving
/// there on the embedded database.
fn embedded_gateway_config() -> (tempfile::TempDir, u16, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let port = crate::cli::free_port();
    let config = crate::cli::serve_config(dir.path(), port);
    (dir, port, config)
}

#[tokio::test]
async fn operator_commands_beside_a_live_gateway_never_stop_its_embedded_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = start_serve(dir.path());
    let client = wait_until_healthy(port).await;
    let config = dir.path().join("smsgate.toml");

    for args in [
        vec!["messages", "list"],
        vec!["migrate"],
        vec!["messages", "show", "0190b8a4-0000-7000-8000-000000000000"],
    ] {
        let output = Command::new(BINARY)
            .args(&args)
            .arg("--config")
            .arg(&config)
            .env_remove("DATABASE_URL")
            .output()
            .expect("run");
        assert!(
            output.status.code().is_some_and(|c| c <= 1),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The command's exit would have stopped the cluster: give a watchdog time to act.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ready = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .expect("sent");
        crate::helpers::assert_status(&ready, 200, &format!("still ready after {args:?}"));
        let accepted = post_with_smsgate_token(&client, dir.path(), port).await;
        crate::helpers::assert_status(&accepted, 200, &format!("still accepting after {args:?}"));
    }

    assert!(terminate(child).await.success());
    assert_eq!(
        postgres_processes_for(dir.path()),
        0,
        "the owner stopped it"
    );
}

#[tokio::test]
async fn no_other_local_account_can_open_a_session_on_the_embedded_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = start_serve(dir.path());
    wait_until_healthy(port).await;
    let socket_dir = dir.path().join("pg");

    let output = Command::new("runuser")
        .args(["-u", "nobody", "--", "psql", "-h"])
        .arg(&socket_dir)
        .args(["-U", "postgres", "-d", "postgres", "-c", "SELECT 1"])
        .output()
        .expect("run psql as nobody");

    assert!(!output.status.success(), "nobody must not connect");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(terminate(child).await.success());
}

/// The base configuration on a public address, with `secret` and `admin` as the signer's secret
/// and the admin token.
fn public(secret: &str, admin: &str) -> TestConfig {
    TestConfig::base()
        .set("server.listen", "0.0.0.0:8080")
        .set("auth0.primary.secret", secret)
        .set("admin.token", admin)
}

/// `smsgate serve --config config` on the embedded database, its log discarded.
fn serve_quietly(config: &std::path::Path) -> std::process::Child {
    Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("DATABASE_URL")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start smsgate serve")
}

const GOOD_SECRET: &str = "k3J9v0Qm7Lr2Xz8Wq4Nt6Bp1Yc5Hd0Gs";
const GOOD_ADMIN: &str = "Adm1n-t0ken-Of-32-characters-xyz";

#[test]
fn placeholder_and_short_secrets_are_refused_on_a_public_listener_naming_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(TestConfig, &str)> = vec![
        (
            public("change-me", GOOD_ADMIN),
            "auth0.primary.secret: is a placeholder",
        ),
        (public("x", GOOD_ADMIN), "auth0.primary.secret: is 1 bytes"),
        (
            public("=", GOOD_ADMIN).set("auth0.primary.secret_base64_encoded", true),
            "auth0.primary.secret: decodes to an empty HMAC key",
        ),
        (
            public(GOOD_SECRET, "change-me"),
            "admin.token: is a placeholder",
        ),
        (
            public(GOOD_SECRET, "short-admin-token"),
            "admin.token: must be at least 32",
        ),
        (
            public(GOOD_SECRET, GOOD_ADMIN).merge(
                "[carriers.console]\nkind = \"twilio\"\n\
                 account_sid = \"AC0123456789abcdef0123456789abcdef\"\n\
                 auth_token = \"change-me\"\nfrom = \"+15005550006\"",
            ),
            "carriers.console.auth_token: is a placeholder",
        ),
        (
            public("MessageMedia", GOOD_ADMIN).set("auth0.primary.public_secret", true),
            "auth0.primary.audience: with public_secret = true",
        ),
        // The development secret, base64url-encoded, is still the development secret.
        (
            public(
                "c21zZ2F0ZS1kZXZlbG9wbWVudC1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u",
                GOOD_ADMIN,
            )
            .set("auth0.primary.secret_base64_encoded", true),
            "auth0.primary.secret: is a placeholder",
        ),
        (
            public(&"a".repeat(40), GOOD_ADMIN),
            "auth0.primary.secret: has fewer than 8 distinct bytes",
        ),
        (public(GOOD_SECRET, GOOD_SECRET), "admin.token: must differ"),
        // Loopback ingress, but the admin listener faces the network.
        (
            TestConfig::base()
                .set("admin.token", "x")
                .set("admin.listen", "0.0.0.0:9465"),
            "admin.token: must be at least 32",
        ),
        (
            public(GOOD_SECRET, GOOD_ADMIN)
                .without("auth0")
                .set("server.allow_unauthenticated", true),
            "server.allow_unauthenticated: would accept unsigned requests",
        ),
    ];
    for (text, expected) in cases {
        let config = crate::cli::write_config(dir.path(), &text.to_string());
        let output = crate::cli::smsgate(&["check-config"], &config, &[]);
        assert_eq!(output.status.code(), Some(2), "{expected}");
        let stderr = crate::cli::stderr(&output);
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }

    // The same on loopback is development: only the empty key is refused.
    let config = crate::cli::write_config(
        dir.path(),
        &TestConfig::base()
            .set("auth0.primary.secret", "x")
            .to_string(),
    );
    assert!(
        crate::cli::smsgate(&["check-config"], &config, &[])
            .status
            .success()
    );
}

#[test]
fn a_public_secret_signer_is_allowed_with_a_long_audience_which_is_then_redacted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let audience = "mm-api-secret-0123456789abcdefXYZ";
    // MessageMedia's recipe: the subject is the account's API key.
    let subject = "mm-api-key-4f6a9c";
    let text = public("MessageMedia", GOOD_ADMIN)
        .set("auth0.primary.public_secret", true)
        .set("auth0.primary.audience", audience)
        .set("auth0.primary.subject", subject)
        // The recipe's carrier: its API key is the signer's subject.
        .merge(&format!(
            "[carriers.console]\nkind = \"messagemedia\"\napi_key = \"{subject}\"\n\
             api_secret = \"{audience}\""
        ));
    let config = crate::cli::write_config(dir.path(), &text.to_string());

    let output = crate::cli::smsgate(&["check-config"], &config, &[]);

    assert!(output.status.success(), "{}", crate::cli::stderr(&output));
    let printed = crate::cli::stdout(&output);
    assert!(
        !printed.contains(audience),
        "the audience is redacted: {printed}"
    );
    assert!(
        !printed.contains(subject),
        "the subject is redacted: {printed}"
    );
    assert!(printed.contains("public_secret = true"));
}

#[test]
fn configuration_mistakes_are_caught_at_start_and_name_their_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = crate::helpers::base_config();
    let config = crate::cli::write_config(dir.path(), &base);
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("DATABASE_URL", "mysql://db/smsgate")],
            "database.url: must start with postgres://",
        ),
        (
            &[("SMSGATE__LOG__LEVEL", "info,[[[")],
            "log.level: is not a tracing filter",
        ),
        (
            &[("SMSGATE__SERVER__LISTEN", "nowhere")],
            "(set by SMSGATE__SERVER__LISTEN)",
        ),
        (
            &[("SMSGATE__SERVER__BOGUS", "1")],
            "(set by SMSGATE__SERVER__BOGUS)",
        ),
    ];
    for (env, expected) in cases {
        let mut command = Command::new(BINARY);
        command.args(["check-config", "--config"]).arg(&config);
        command.env_remove("DATABASE_URL");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("run");
        assert_eq!(output.status.code(), Some(2), "{expected}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }

    // SMSGATE_CONFIG stands in for --config.
    let output = Command::new(BINARY)
        .arg("check-config")
        .env("SMSGATE_CONFIG", &config)
        .env_remove("DATABASE_URL")
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("urn:MySmsGateway"));
}

#[test]
fn environment_values_keep_their_exact_text_and_secrets_are_not_echoed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = TestConfig::base().merge(
        "[carriers.console]\nkind = \"messagemedia\"\napi_key = \"k\"\napi_secret = \"s\"\n",
    );
    let config = crate::cli::write_config(dir.path(), &base.to_string());
    let check = |env: &[(&str, &str)]| {
        let mut command = Command::new(BINARY);
        command.args(["check-config", "--config"]).arg(&config);
        command.env_remove("DATABASE_URL");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("run")
    };

    // figment's own reading made these +-less, zero-less and a float.
    let output = check(&[
        ("SMSGATE__CARRIERS__CONSOLE__FROM", "+61491570157"),
        ("SMSGATE__CARRIERS__CONSOLE__API_KEY", "007"),
        ("SMSGATE__CARRIERS__CONSOLE__API_SECRET", "12345.50"),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.contains("from = \"+61491570157\""), "{stdout}");
    assert!(stdout.contains("api_key = \"007\""), "{stdout}");
    assert!(
        !format!("{stdout}{stderr}").contains("12345.5"),
        "{stdout}{stderr}"
    );

    // A value of the wrong shape for a secret names the key, not the value; so does a secret
    // set one level too high, where a table goes.
    for (variable, value, key) in [
        (
            "SMSGATE__CARRIERS__CONSOLE__API_SECRET",
            "[1.5, 2]",
            "carriers.console.api_secret",
        ),
        ("SMSGATE__ADMIN", "hunter2-hunter2-hunter2", "admin"),
    ] {
        let output = check(&[(variable, value)]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
        assert!(!stderr.contains(&value[1..4]), "{stderr}");
    }

    // A variable that is not UTF-8 is refused by its name: no panic, no value shown.
    use std::os::unix::ffi::OsStrExt;
    let output = Command::new(BINARY)
        .args(["check-config", "--config"])
        .arg(&config)
        .env_remove("DATABASE_URL")
        .env(
            "SMSGATE__ADMIN__TOKEN",
            std::ffi::OsStr::from_bytes(b"s3cr\xffet"),
        )
        .env("UNRELATED", std::ffi::OsStr::from_bytes(b"\xfe"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("SMSGATE__ADMIN__TOKEN: not UTF-8"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cr"), "{stderr}");
}

#[tokio::test]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    let (dir, port, config) = embedded_gateway_config();
    let log = dir.path().join("smsgate.log");
    let child = Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("DATABASE_URL")
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start");
    wait_until_healthy(port).await;
    assert!(terminate(child).await.success());

    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("dispatch workers started"), "{text}");
    assert!(!text.contains('\u{1b}'), "no ANSI escape codes: {text:?}");
}

/// The digest an attacker with a database dump would try: SHA-256 over the length-prefixed
/// parts, with no key.
fn unkeyed(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    hex::encode(digest.finalize())
}

#[tokio::test]
async fn nothing_stored_lets_a_database_dump_recover_a_code() {
    let standin = crate::standins::twilio::TwilioStandIn::start().await;
    let app = crate::helpers::TestApp::spawn_role(
        &crate::dispatch::config_with(&standin, crate::dispatch::FAST_DISPATCH),
        smsgate::Role::All,
    )
    .await;
    let recipient = "+14155552671";
    // Arabic-Indic digits: masking ASCII digits would leave this code readable.
    let body = "رمز التحقق: ٤٥٦٧٨٩";
    let keyed = app
        .client
        .post(app.url("/v1/auth0/sms"))
        .bearer_auth(crate::helpers::token())
        .header("content-type", "application/json")
        .header("idempotency-key", "dump-1")
        .body(serde_json::json!({"recipient": recipient, "body": body}).to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(keyed.status().as_u16(), 200);
    let action = app
        .client
        .post(app.url("/v1/auth0/phone-provider"))
        .bearer_auth(crate::helpers::token())
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"notification": {"recipient": recipient, "as_text": "Code 482913",
                "message_type": "otp_verify", "code": "482913", "delivery_method": "text"}})
            .to_string(),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(action.status().as_u16(), 200);
    crate::dispatch::wait_until("both sent", Duration::from_secs(10), async || {
        smsgate::db::queue::depth(&smsgate::db::Db::direct(app.pool.clone()))
            .await
            .unwrap_or(1)
            == 0
    })
    .await;

    let keys: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT key, fingerprint FROM idempotency_keys")
            .fetch_all(&app.pool)
            .await
            .expect("keys");
    assert_eq!(keys.len(), 2);
    let header_print = keys
        .iter()
        .find_map(|(key, print)| key.ends_with("/dump-1").then(|| print.clone()))
        .flatten()
        .expect("a fingerprint");
    assert_ne!(
        header_print,
        unkeyed(&[recipient, body, ""]),
        "keyed, not a plain digest"
    );
    let derived = unkeyed(&[recipient, "otp_verify", "482913", "Code 482913"]);
    assert!(
        keys.iter().all(|(key, _)| !key.contains(&derived)),
        "the derived key is keyed too: {keys:?}"
    );
    let bodies: Vec<String> = sqlx::query_scalar("SELECT body FROM messages")
        .fetch_all(&app.pool)
        .await
        .expect("bodies");
    assert_eq!(
        bodies,
        vec![String::new(), String::new()],
        "bodies erased once final"
    );
}

#[tokio::test]
async fn a_gateway_whose_log_reader_went_away_keeps_serving_and_stops_cleanly() {
    let (dir, port, config) = embedded_gateway_config();
    let mut child = Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "debug")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    // The log shipper dies: nobody reads stderr any more.
    drop(child.stderr.take());
    let client = wait_until_healthy(port).await;

    for _ in 0..3 {
        let accepted = post_with_smsgate_token(&client, dir.path(), port).await;
        assert_eq!(accepted.status().as_u16(), 200);
    }
    let stopping = std::time::Instant::now();
    let status = terminate(child).await;

    assert!(status.success(), "clean exit: {status}");
    assert!(stopping.elapsed() < Duration::from_secs(15));
}

/// A PostgreSQL that accepts only TLS connections with scram passwords, its server
/// certificate signed by a CA this test makes; stopped when dropped.
struct TlsPostgres {
    dir: tempfile::TempDir,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn run(command: &mut Command) {
    let output = command.output().expect("run");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

/// A CA and a certificate it signs for `localhost` / 127.0.0.1, in `dir`.
fn make_certificates(dir: &std::path::Path, ca: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509"])
        .args(ec)
        .args([
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ])
        .args(["-days", "2", "-subj", &format!("/CN={ca}")]));
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req"])
        .args(ec)
        .args([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]));
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("san");
    run(Command::new("openssl")
        .current_dir(dir)
        .args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.crt"),
        ])
        .args([
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
        ])
        .args(["-days", "2", "-extfile", "san.cnf"]));
}

impl TlsPostgres {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        make_certificates(path, "test-ca");
        run(Command::new("chown").args(["-R", "postgres"]).arg(path));
        std::fs::set_permissions(
            path.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("key mode");
        let data = path.join("data");
        run(as_postgres(&format!("{PG_BIN}/initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"]));
        // Local socket for the test's own set-up; over TCP, TLS with scram or nothing.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .expect("hba");
        let port = crate::cli::free_port();
        let options = format!(
            "-k {dir} -c listen_addresses=127.0.0.1 -p {port} -c ssl=on \
             -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key -c fsync=off",
            dir = path.display()
        );
        run(as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-w", "-l"])
            .arg(path.join("pg.log"))
            .args(["-o", &options, "start"]));
        let server = Self { dir, port };
        run(Command::new("psql")
            .arg("-h")
            .arg(server.dir.path())
            .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args([
                "-c",
                "CREATE ROLE smsgate LOGIN PASSWORD 'tls-test-password'",
            ])
            .args(["-c", "CREATE DATABASE smsgate OWNER smsgate"]));
        server
    }

    fn url(&self, mode: &str, root: &std::path::Path) -> String {
        self.url_with(&format!("sslmode={mode}&sslrootcert={}", root.display()))
    }

    fn url_with(&self, query: &str) -> String {
        format!(
            "postgres://smsgate:tls-test-password@localhost:{}/smsgate?{query}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

#[tokio::test]
async fn smsgate_reaches_a_tls_only_postgres_with_verify_full_and_refuses_anything_less() {
    let postgres = tokio::task::spawn_blocking(TlsPostgres::start)
        .await
        .expect("start");
    let ca = postgres.dir.path().join("test-ca.crt");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::cli::free_port();
    let config = crate::cli::write_config(
        dir.path(),
        &TestConfig::base()
            .set("server.listen", format!("127.0.0.1:{port}"))
            .to_string(),
    );

    let child = Command::new(BINARY)
        .args(["serve", "--config"])
        .arg(&config)
        .env("DATABASE_URL", postgres.url("verify-full", &ca))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let client = wait_until_healthy(port).await;
    let accepted = client
        .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
        .bearer_auth(crate::helpers::token())
        .header("content-type", "application/json")
        .body(crate::helpers::sms("+14155552671").to_string())
        .send()
        .await
        .expect("sent");
    crate::helpers::assert_status(&accepted, 200, "stored over TLS");
    assert!(terminate(child).await.success());

    // Another CA's certificate, and no TLS at all: both refused, naming why.
    let other = tempfile::tempdir().expect("tempdir");
    make_certificates(other.path(), "other-ca");
    for url in [
        postgres.url("verify-full", &other.path().join("other-ca.crt")),
        postgres.url("disable", &ca),
    ] {
        let output = Command::new(BINARY)
            .args(["migrate", "--config"])
            .arg(&config)
            .env("DATABASE_URL", &url)
            .output()
            .expect("run");
        assert!(!output.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    }
}

/// `smsgate migrate` against the TLS server with `url` and extra environment: its success
/// and its standard error.
fn migrate_with(
    config: &std::path::Path,
    url: &str,
    env: &[(&str, &std::path::Path)],
) -> (bool, String) {
    let mut command = Command::new(BINARY);
    command
        .args(["migrate", "--config"])
        .arg(config)
        .env("DATABASE_URL", url)
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGSSLMODE");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("run");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Found by an attack: `require` with `sslrootcert` checked nothing, and the root certificate
/// was added to the public web roots. Now each mode trusts what libpq's does, and only that.
#[tokio::test]
async fn tls_modes_trust_sslrootcert_alone_as_libpq_does() {
    let postgres = tokio::task::spawn_blocking(TlsPostgres::start)
        .await
        .expect("start");
    let ca = postgres.dir.path().join("test-ca.crt");
    let other_dir = tempfile::tempdir().expect("tempdir");
    make_certificates(other_dir.path(), "other-ca");
    let other = other_dir.path().join("other-ca.crt");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = crate::cli::write_config(dir.path(), &TestConfig::base().to_string());
    let home = tempfile::tempdir().expect("an empty HOME");

    for mode in ["require", "verify-ca", "verify-full"] {
        let (ok, stderr) = migrate_with(&config, &postgres.url(mode, &ca), &[]);
        assert!(ok, "{mode} with the server's CA: {stderr}");
        let (ok, stderr) = migrate_with(&config, &postgres.url(mode, &other), &[]);
        assert!(!ok, "{mode} with another CA must refuse");
        assert!(
            stderr.contains("TLS handshake with PostgreSQL failed"),
            "{mode}: {stderr}"
        );
    }
    // Found by an attack: libpq verifies the chain in every TLS mode once a root
    // certificate is at hand (prefer, no mode, require with ~/.postgresql/root.crt).
    for query in [
        format!("sslmode=prefer&sslrootcert={}", other.display()),
        format!("sslrootcert={}", other.display()),
    ] {
        let (ok, _) = migrate_with(&config, &postgres.url_with(&query), &[]);
        assert!(!ok, "{query} trusts only another CA");
    }
    let (ok, stderr) = migrate_with(&config, &postgres.url("prefer", &ca), &[]);
    assert!(ok, "prefer with the server's CA: {stderr}");
    let wrong_home = tempfile::tempdir().expect("a HOME with another CA");
    std::fs::create_dir(wrong_home.path().join(".postgresql")).expect("mkdir");
    std::fs::copy(&other, wrong_home.path().join(".postgresql/root.crt")).expect("copy");
    let (ok, _) = migrate_with(
        &config,
        &postgres.url_with("sslmode=require"),
        &[("HOME", wrong_home.path())],
    );
    assert!(!ok, "require with another CA in ~/.postgresql/root.crt");
    // verify-full compares the certificate with the host as written, not with hostaddr.
    let via_hostaddr = |mode: &str| {
        format!(
            "postgres://smsgate:tls-test-password@db.example.com:{}/smsgate?hostaddr=127.0.0.1&sslmode={mode}&sslrootcert={}",
            postgres.port,
            ca.display()
        )
    };
    let (ok, _) = migrate_with(&config, &via_hostaddr("verify-full"), &[]);
    assert!(!ok, "the certificate does not name db.example.com");
    let (ok, stderr) = migrate_with(&config, &via_hostaddr("verify-ca"), &[]);
    assert!(ok, "verify-ca checks no name: {stderr}");

    // A verifying mode without sslrootcert reads ~/.postgresql/root.crt, as libpq does.
    let (ok, stderr) = migrate_with(
        &config,
        &postgres.url_with("sslmode=verify-full"),
        &[("HOME", home.path())],
    );
    assert!(!ok);
    assert!(stderr.contains("sslrootcert=system"), "{stderr}");
    std::fs::create_dir(home.path().join(".postgresql")).expect("mkdir");
    std::fs::copy(&ca, home.path().join(".postgresql/root.crt")).expect("copy");
    let (ok, stderr) = migrate_with(
        &config,
        &postgres.url_with("sslmode=verify-full"),
        &[("HOME", home.path())],
    );
    assert!(ok, "~/.postgresql/root.crt: {stderr}");
    // sslrootcert=system: the system store (here SSL_CERT_FILE) and only verify-full.
    let system = postgres.url_with("sslrootcert=system");
    let (ok, stderr) = migrate_with(&config, &system, &[("SSL_CERT_FILE", &ca)]);
    assert!(ok, "system store with the CA: {stderr}");
    let (ok, _) = migrate_with(&config, &system, &[("SSL_CERT_FILE", &other)]);
    assert!(!ok, "system store without it");
    let (ok, stderr) = migrate_with(
        &config,
        &postgres.url_with("sslrootcert=system&sslmode=require"),
        &[("SSL_CERT_FILE", &ca)],
    );
    assert!(!ok);
    assert!(stderr.contains("needs sslmode=verify-full"), "{stderr}");
}

#[tokio::test]
async fn with_admin_listen_the_admin_routes_leave_the_public_listener() {
    let (dir, port, config) = embedded_gateway_config();
    let admin_port = crate::cli::free_port();
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "[admin]",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
    );
    let config = crate::cli::write_config(dir.path(), &text);
    let child = serve_quietly(&config);
    let client = wait_until_healthy(port).await;
    let accepted = post_with_smsgate_token(&client, dir.path(), port).await;
    crate::helpers::assert_status(&accepted, 200, "the ingress stays public");
    let id = accepted.json::<serde_json::Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let admin = |port: u16, path: String| {
        client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .send()
    };

    for path in [
        format!("/v1/messages/{id}"),
        "/v1/messages".to_string(),
        "/openapi.json".to_string(),
    ] {
        let public = admin(port, path.clone()).await.expect("sent");
        crate::helpers::assert_status(&public, 404, &format!("{path} is not public"));
        let private = admin(admin_port, path.clone()).await.expect("sent");
        crate::helpers::assert_status(&private, 200, &format!("{path} on admin.listen"));
    }
    // The admin listener's description has only what that listener answers.
    let described: serde_json::Value = admin(admin_port, "/openapi.json".to_string())
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    let paths = described["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/v1/messages/{id}") && paths.contains_key("/readyz"));
    assert!(
        !paths.contains_key("/v1/auth0/sms")
            && !paths.keys().any(|p| p.starts_with("/v1/callbacks")),
        "{:?}",
        paths.keys()
    );
    let switch = client
        .post(format!(
            "http://127.0.0.1:{port}/v1/carriers/console/disable"
        ))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(switch.status().as_u16(), 404);
    let ingress_on_admin = client
        .post(format!("http://127.0.0.1:{admin_port}/v1/auth0/sms"))
        .send()
        .await
        .expect("sent");
    crate::helpers::assert_status(&ingress_on_admin, 404, "no ingress on the admin port");
    assert!(terminate(child).await.success());
}

#[tokio::test]
async fn a_second_gateway_waits_for_a_live_embedded_database_and_commands_during_start_up_do_no_harm()
 {
    let (dir, port, config) = embedded_gateway_config();
    let child = serve_quietly(&config);
    // Operator commands while the gateway is still starting its cluster.
    for _ in 0..3 {
        let _ = Command::new(BINARY)
            .args(["messages", "list", "--config"])
            .arg(&config)
            .env_remove("DATABASE_URL")
            .output();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let client = wait_until_healthy(port).await;
    let accepted = post_with_smsgate_token(&client, dir.path(), port).await;
    crate::helpers::assert_status(&accepted, 200, "still serving after the commands");

    // A second gateway on the same data directory waits for it instead of sharing it, and
    // takes over once the first stops (a replacement on one box).
    let second_port = crate::cli::free_port();
    let text = std::fs::read_to_string(&config).expect("config").replace(
        &format!("127.0.0.1:{port}"),
        &format!("127.0.0.1:{second_port}"),
    );
    let second_config = dir.path().join("second.toml");
    std::fs::write(&second_config, text).expect("config");
    let second = serve_quietly(&second_config);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let not_yet = client
        .get(format!("http://127.0.0.1:{second_port}/readyz"))
        .send()
        .await;
    assert!(not_yet.is_err(), "the second waits, not serving");
    let ready = client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .expect("sent");
    crate::helpers::assert_status(&ready, 200, "the first keeps its database");
    assert!(terminate(child).await.success());

    let client = wait_until_healthy(second_port).await;
    let accepted = post_with_smsgate_token(&client, dir.path(), second_port).await;
    crate::helpers::assert_status(&accepted, 200, "the second took over");
    assert!(terminate(second).await.success());
}

#[test]
fn a_data_dir_that_is_a_symbolic_link_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::create_dir(&victim).expect("victim");
    let link = dir.path().join("postgres");
    std::os::unix::fs::symlink(&victim, &link).expect("link");
    let text = TestConfig::base().set("database.data_dir", link.display().to_string());
    let config = crate::cli::write_config(dir.path(), &text.to_string());

    let output = crate::cli::smsgate(&["messages", "list"], &config, &[]);

    assert!(!output.status.success());
    assert!(crate::cli::stderr(&output).contains("is a symbolic link"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&victim).expect("victim").permissions(),
    );
    assert_ne!(mode & 0o777, 0o700, "the link's target was left alone");
}
