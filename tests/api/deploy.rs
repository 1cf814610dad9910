//! Deployment safety with the real binary: the embedded database belongs to the gateway that
//! started it and to nobody else.

use std::process::Command;
use std::time::Duration;

use crate::cli::{
    BINARY, post_with_smsgate_token, postgres_processes_for, start_serve, terminate,
    wait_until_healthy,
};

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
        assert_eq!(ready.status().as_u16(), 200, "still ready after {args:?}");
        let accepted = post_with_smsgate_token(&client, dir.path(), port).await;
        assert_eq!(
            accepted.status().as_u16(),
            200,
            "still accepting after {args:?}"
        );
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
fn public(secret: &str, admin: &str) -> String {
    crate::helpers::base_config()
        .replacen("listen = \"127.0.0.1:0\"", "listen = \"0.0.0.0:8080\"", 1)
        .replace(crate::helpers::SECRET, secret)
        .replace(crate::helpers::ADMIN_TOKEN, admin)
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

/// `text` with its `[auth0.primary]` table cut out.
fn without_signers(text: &str) -> String {
    let start = text.find("[auth0.primary]").expect("a signer table");
    let end = text
        .find("[carriers.console]")
        .expect("the carriers after it");
    format!("{}{}", &text[..start], &text[end..])
}

const GOOD_SECRET: &str = "k3J9v0Qm7Lr2Xz8Wq4Nt6Bp1Yc5Hd0Gs";
const GOOD_ADMIN: &str = "Adm1n-t0ken-Of-32-characters-xyz";

#[test]
fn placeholder_and_short_secrets_are_refused_on_a_public_listener_naming_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(String, &str)> = vec![
        (
            public("change-me", GOOD_ADMIN),
            "auth0.primary.secret: is a placeholder",
        ),
        (public("x", GOOD_ADMIN), "auth0.primary.secret: is 1 bytes"),
        (
            public(crate::helpers::SECRET, GOOD_ADMIN)
                .replace(
                    "[auth0.primary]",
                    "[auth0.primary]\nsecret_base64_encoded = true",
                )
                .replace(crate::helpers::SECRET, "="),
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
            public(GOOD_SECRET, GOOD_ADMIN).replace(
                "kind = \"log\"",
                "kind = \"twilio\"\naccount_sid = \"AC0123456789abcdef0123456789abcdef\"\n\
                 auth_token = \"change-me\"\nfrom = \"+15005550006\"",
            ),
            "carriers.console.auth_token: is a placeholder",
        ),
        (
            public("MessageMedia", GOOD_ADMIN)
                .replace("[auth0.primary]", "[auth0.primary]\npublic_secret = true"),
            "auth0.primary.audience: with public_secret = true",
        ),
        // The development secret, base64url-encoded, is still the development secret.
        (
            public(
                "c21zZ2F0ZS1kZXZlbG9wbWVudC1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u",
                GOOD_ADMIN,
            )
            .replace(
                "[auth0.primary]",
                "[auth0.primary]\nsecret_base64_encoded = true",
            ),
            "auth0.primary.secret: is a placeholder",
        ),
        (
            public(&"a".repeat(40), GOOD_ADMIN),
            "auth0.primary.secret: has fewer than 8 distinct bytes",
        ),
        (public(GOOD_SECRET, GOOD_SECRET), "admin.token: must differ"),
        // Loopback ingress, but the admin listener faces the network.
        (
            crate::helpers::base_config()
                .replace(crate::helpers::ADMIN_TOKEN, "x")
                .replace("[admin]", "[admin]\nlisten = \"0.0.0.0:9465\""),
            "admin.token: must be at least 32",
        ),
        (
            without_signers(&public(GOOD_SECRET, GOOD_ADMIN))
                .replace("[server]", "[server]\nallow_unauthenticated = true"),
            "server.allow_unauthenticated: would accept unsigned requests",
        ),
    ];
    for (text, expected) in cases {
        let config = crate::cli::write_config(dir.path(), &text);
        let output = crate::cli::smsgate(&["check-config"], &config, &[]);
        assert_eq!(output.status.code(), Some(2), "{expected}");
        let stderr = crate::cli::stderr(&output);
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }

    // The same on loopback is development: only the empty key is refused.
    let config = crate::cli::write_config(
        dir.path(),
        &crate::helpers::base_config().replace(crate::helpers::SECRET, "x"),
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
    let text = public("MessageMedia", GOOD_ADMIN)
        .replace("[auth0.primary]", "[auth0.primary]\npublic_secret = true")
        .replace(crate::helpers::AUDIENCE, audience);
    let config = crate::cli::write_config(dir.path(), &text);

    let output = crate::cli::smsgate(&["check-config"], &config, &[]);

    assert!(output.status.success(), "{}", crate::cli::stderr(&output));
    let printed = crate::cli::stdout(&output);
    assert!(
        !printed.contains(audience),
        "the audience is redacted: {printed}"
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
    let base = crate::helpers::base_config().replace(
        "[carriers.console]\nkind = \"log\"\n",
        "[carriers.console]\nkind = \"messagemedia\"\napi_key = \"k\"\napi_secret = \"s\"\n",
    );
    let config = crate::cli::write_config(dir.path(), &base);
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

    // A value of the wrong shape for a secret names the key, not the value.
    let output = check(&[("SMSGATE__CARRIERS__CONSOLE__API_SECRET", "[1.5, 2]")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("carriers.console.api_secret"), "{stderr}");
    assert!(!stderr.contains("1.5"), "{stderr}");
}
