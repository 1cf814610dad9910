//! MessageMedia's signed delivery reports, with the real binary: reports are signed here by
//! `openssl` (not by smsgate's code) the way MessageMedia signs them — RSA PKCS #1 v1.5 over
//! the request line, the `Date` header and the body — and only those signed by a configured
//! key change a message. The callback URL handed to the carrier then holds no secret.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::cli::{free_port, smsgate, stderr, terminate, wait_until_healthy, write_config};
use crate::dispatch::FAST_DISPATCH;
use crate::helpers::ADMIN_TOKEN;
use crate::standins::messagemedia::MessageMediaStandIn;
use crate::test_config::TestConfig;

const DATE: &str = "Mon, 30 Nov 2026 01:30:00 GMT";
const TARGET: &str = "/v1/callbacks/messagemedia/mm";

fn openssl(dir: &Path, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write");
    let output = child.wait_with_output().expect("openssl ran");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A new RSA key in `dir/<name>.key`; its public half as MessageMedia's key API returns it
/// (base64 DER SubjectPublicKeyInfo).
fn rsa_key(dir: &Path, name: &str, bits: u32) -> String {
    let key = format!("{name}.key");
    let bits = format!("rsa_keygen_bits:{bits}");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &bits,
            "-out",
            &key,
        ],
        b"",
    );
    let der = openssl(
        dir,
        &["pkey", "-in", &key, "-pubout", "-outform", "DER"],
        b"",
    );
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// Base64 RSA PKCS #1 v1.5 signature by `dir/<key>.key` with `digest` (sha224, sha256, sha512).
fn sign(dir: &Path, key: &str, digest: &str, message: &[u8]) -> String {
    let key = format!("{key}.key");
    let signature = openssl(
        dir,
        &["dgst", &format!("-{digest}"), "-sign", &key],
        message,
    );
    base64::engine::general_purpose::STANDARD.encode(signature)
}

/// What MessageMedia signs: request line, then `Date`, then the body, without separators.
fn signed_text(target: &str, date: &str, body: &str) -> Vec<u8> {
    format!("POST {target} HTTP/1.1{date}{body}").into_bytes()
}

struct Gateway {
    dir: tempfile::TempDir,
    port: u16,
    client: reqwest::Client,
    /// Taken by `stop`; a failing test's gateway is killed on drop instead of outliving it.
    child: Option<std::process::Child>,
    standin: MessageMediaStandIn,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config_text(dir: &Path, port: u16, standin: &MessageMediaStandIn, keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|key| format!("\"{key}\"")).collect();
    let carrier = format!(
        "{}public_url = \"https://sms.example.com\"\ncallback_public_keys = [{}]\n",
        standin.carrier_toml("mm"),
        keys.join(", ")
    );
    // The embedded-database gateway config the CLI tests use, with this carrier.
    let served = crate::cli::serve_config(dir, port);
    std::fs::read_to_string(served)
        .expect("the serve config")
        .replace("[carriers.console]\nkind = \"log\"\n", &carrier)
        .replace("carriers = [\"console\"]", "carriers = [\"mm\"]")
        + FAST_DISPATCH
}

impl Gateway {
    async fn start(keys: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let standin = MessageMediaStandIn::start().await;
        let port = free_port();
        let config = write_config(dir.path(), &config_text(dir.path(), port, &standin, keys));
        let child = crate::cli::spawn_serve(&config);
        let client = wait_until_healthy(port).await;
        Self {
            dir,
            port,
            client,
            child: Some(child),
            standin,
        }
    }

    async fn stop(mut self) {
        let child = self.child.take().expect("running");
        assert!(terminate(child).await.success());
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Queues one message and waits until the carrier took it; its id and carrier id.
    async fn sent_message(&self, recipient: &str) -> (String, String) {
        let token = crate::cli::stdout(&smsgate(
            &["token"],
            &self.dir.path().join("smsgate.toml"),
            &[],
        ))
        .trim()
        .to_string();
        let accepted = self
            .client
            .post(self.url("/v1/auth0/sms"))
            .bearer_auth(token)
            .json(&crate::helpers::sms(recipient))
            .send()
            .await
            .expect("sent");
        assert_eq!(accepted.status().as_u16(), 200);
        let id = accepted.json::<Value>().await.expect("JSON")["id"]
            .as_str()
            .expect("id")
            .to_string();
        let start = Instant::now();
        loop {
            let view = self.message(&id).await;
            if view["status"] == "sent" {
                let carrier_id = view["attempts"][0]["carrier_message_id"]
                    .as_str()
                    .expect("a carrier id")
                    .to_string();
                return (id, carrier_id);
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "never sent: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn message(&self, id: &str) -> Value {
        self.client
            .get(self.url(&format!("/v1/messages/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON")
    }

    async fn post_report(&self, path: &str, body: &str, headers: &[(&str, &str)]) -> u16 {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("sent").status().as_u16()
    }
}

/// A report that must be refused: what is wrong with it, where it goes, what it carries.
struct Forgery {
    what: &'static str,
    path: String,
    body: String,
    /// `Date` and the digest header first (later entries of the same name replace them),
    /// then the rest.
    headers: Vec<(&'static str, String)>,
}

impl Forgery {
    fn new(what: &'static str, body: &str, headers: &[(&'static str, &str)]) -> Self {
        let mut all = vec![
            ("date", DATE.to_string()),
            ("x-messagemedia-digest-type", "SHA224".to_string()),
        ];
        for (name, value) in headers {
            all.retain(|(existing, _)| existing != name);
            all.push((name, value.to_string()));
        }
        Self {
            what,
            path: TARGET.to_string(),
            body: body.to_string(),
            headers: all,
        }
    }

    fn without(mut self, header: &str) -> Self {
        self.headers.retain(|(name, _)| *name != header);
        self
    }

    fn at(self, path: &str) -> Self {
        Self {
            path: path.to_string(),
            ..self
        }
    }
}

fn report(message_id: &str, status: &str) -> String {
    json!({
        "callback_url": "https://sms.example.com/v1/callbacks/messagemedia/mm",
        "delivery_report_id": "01e1fa0a-6e27-4945-9cdb-18644b4de043",
        "message_id": message_id,
        "status": status,
        "date_received": "2026-11-30T01:29:58.000Z",
    })
    .to_string()
}

#[tokio::test]
async fn only_reports_signed_by_a_configured_key_change_a_message() {
    let keys_dir = tempfile::tempdir().expect("tempdir");
    let keys = keys_dir.path();
    let account = rsa_key(keys, "account", 2048);
    let rotated_out = rsa_key(keys, "old", 3072);
    rsa_key(keys, "attacker", 2048);
    let gateway = Gateway::start(&[&account, &rotated_out]).await;

    let (id, carrier_id) = gateway.sent_message("+61491570156").await;

    let asked = gateway.standin.seen()[0].fields.clone();
    assert_eq!(
        asked.get("callback_url").map(String::as_str),
        Some("https://sms.example.com/v1/callbacks/messagemedia/mm"),
        "no secret in the URL MessageMedia is given"
    );
    let body = report(&carrier_id, "delivered");
    let good = sign(keys, "account", "sha224", &signed_text(TARGET, DATE, &body));
    let signed_by =
        |key: &str, target: &str| sign(keys, key, "sha224", &signed_text(target, DATE, &body));
    let forgeries = [
        Forgery::new("unsigned", &body, &[]),
        Forgery::new("a secret in the URL instead of a signature", &body, &[])
            .at(&format!("{TARGET}?key=mm-callback-secret-0123456789")),
        Forgery::new(
            "signed by another key",
            &body,
            &[("x-messagemedia-signature", &signed_by("attacker", TARGET))],
        ),
        Forgery::new(
            "another body under a good signature",
            &report(&carrier_id, "failed"),
            &[("x-messagemedia-signature", &good)],
        ),
        Forgery::new(
            "another date",
            &body,
            &[
                ("x-messagemedia-signature", &good),
                ("date", "Mon, 30 Nov 2026 01:31:00 GMT"),
            ],
        ),
        Forgery::new(
            "signed for another path",
            &body,
            &[(
                "x-messagemedia-signature",
                &signed_by("account", "/v1/callbacks/messagemedia/other"),
            )],
        ),
        Forgery::new(
            "a digest header that is not the one signed with",
            &body,
            &[
                ("x-messagemedia-signature", &good),
                ("x-messagemedia-digest-type", "SHA256"),
            ],
        ),
        Forgery::new(
            "an unknown digest",
            &body,
            &[
                ("x-messagemedia-signature", &good),
                ("x-messagemedia-digest-type", "MD5"),
            ],
        ),
        Forgery::new(
            "another cipher",
            &body,
            &[
                ("x-messagemedia-signature", &good),
                ("x-messagemedia-cipher-type", "DSA"),
            ],
        ),
        Forgery::new(
            "no digest header (each forged report would cost a check per digest)",
            &body,
            &[("x-messagemedia-signature", &good)],
        )
        .without("x-messagemedia-digest-type"),
        Forgery::new(
            "a signature that is not base64",
            &body,
            &[("x-messagemedia-signature", "%%%not base64%%%")],
        ),
    ];
    for forgery in &forgeries {
        let headers: Vec<(&str, &str)> = forgery
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let status = gateway
            .post_report(&forgery.path, &forgery.body, &headers)
            .await;
        assert_eq!(status, 403, "{}", forgery.what);
    }
    assert_eq!(
        gateway.message(&id).await["status"],
        "sent",
        "nothing changed"
    );

    let accepted = gateway
        .post_report(
            TARGET,
            &body,
            &[
                ("date", DATE),
                ("x-messagemedia-signature", &good),
                ("x-messagemedia-digest-type", "SHA224"),
                ("x-messagemedia-cipher-type", "RSA"),
            ],
        )
        .await;
    assert_eq!(accepted, 204);
    assert_eq!(gateway.message(&id).await["status"], "delivered");

    // The key being rotated out, other digests, and a query string, which MessageMedia signs
    // as part of the request line.
    for (key, digest, header, recipient) in [
        ("old", "sha256", "SHA256", "+61491570157"),
        ("account", "sha512", "sha-512", "+61491570158"),
    ] {
        let (id, carrier_id) = gateway.sent_message(recipient).await;
        let body = report(&carrier_id, "failed");
        let target = format!("{TARGET}?attempt=2");
        let signature = sign(keys, key, digest, &signed_text(&target, DATE, &body));
        let headers = [
            ("date", DATE),
            ("x-messagemedia-signature", &signature),
            ("x-messagemedia-digest-type", header),
        ];
        assert_eq!(
            gateway.post_report(&target, &body, &headers).await,
            204,
            "{key} {digest}"
        );
        assert_eq!(gateway.message(&id).await["status"], "undelivered");
    }

    // A signed report carrying a NUL, which PostgreSQL's text refuses: cleaned and applied,
    // not a 503 the carrier would retry forever.
    let (id, carrier_id) = gateway.sent_message("+61491570159").await;
    let body = report(&format!("{carrier_id}\u{0}"), "failed");
    let signature = sign(keys, "account", "sha224", &signed_text(TARGET, DATE, &body));
    let headers = [
        ("date", DATE),
        ("x-messagemedia-signature", signature.as_str()),
        ("x-messagemedia-digest-type", "SHA224"),
    ];
    assert_eq!(gateway.post_report(TARGET, &body, &headers).await, 204);
    assert_eq!(gateway.message(&id).await["status"], "undelivered");
    gateway.stop().await;
}

/// `smsgate check-config` on one MessageMedia carrier `name` whose table ends with `extra`.
fn check_carrier(dir: &Path, name: &str, extra: &str) -> std::process::Output {
    let table = format!(
        "[carriers.\"{name}\"]\nkind = \"messagemedia\"\napi_key = \"k\"\n\
         api_secret = \"s\"\n{extra}\n"
    );
    let text = TestConfig::base().only_carrier(&table, name);
    smsgate(
        &["check-config"],
        &write_config(dir, &text.to_string()),
        &[],
    )
}

#[test]
fn callback_settings_that_cannot_work_are_refused_naming_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let small = rsa_key(dir.path(), "small", 1024);
    let large = rsa_key(dir.path(), "large", 4104);
    let public = "public_url = \"https://sms.example.com\"\n";
    let with_keys = |keys: &str| format!("{public}callback_public_keys = {keys}");
    let cases = [
        (
            "mm",
            with_keys("[\"bm90IGEga2V5\"]"),
            "carriers.mm.callback_public_keys[0]",
        ),
        (
            "mm",
            with_keys(&format!("[\"{small}\", \"!!\"]")),
            "carriers.mm.callback_public_keys[1]",
        ),
        (
            "mm",
            with_keys(&format!("[\"{large}\"]")),
            "at most 4096 bits",
        ),
        (
            "mm",
            with_keys("[\"a\", \"b\", \"c\", \"d\", \"e\"]"),
            "carriers.mm.callback_public_keys",
        ),
        ("mm", with_keys("42"), "a string or a list of strings"),
        (
            "mm",
            format!(
                "{}\ncallback_secret = \"short\"",
                with_keys(&format!("\"{small}\""))
            ),
            "carriers.mm.callback_secret",
        ),
        (
            "mm x",
            with_keys(&format!("\"{small}\"")),
            "letters, digits, '-' and '_' only",
        ),
        (
            "mm",
            format!(
                "public_url = \"https://sms.example.com/?x=1\"\ncallback_public_keys = \"{small}\""
            ),
            "carriers.mm.public_url",
        ),
        (
            "mm",
            format!(
                "public_url = \"https://sms.example.com/a/../gw\"\ncallback_public_keys = \"{small}\""
            ),
            "reads back as written",
        ),
    ];
    for (name, extra, expected) in &cases {
        let output = check_carrier(dir.path(), name, extra);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{extra}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{extra}: {}",
            stderr(&output)
        );
    }

    // Host case and a default port are rewritten by a parser but not part of what is signed.
    let loose = check_carrier(
        dir.path(),
        "mm",
        &format!(
            "public_url = \"https://SMS.example.com:443/gw/\"\ncallback_public_keys = \"{small}\""
        ),
    );
    assert_eq!(loose.status.code(), Some(0), "{}", stderr(&loose));
    let weak = check_carrier(dir.path(), "mm", &with_keys(&format!("\"{small}\"")));
    assert_eq!(weak.status.code(), Some(0), "{}", stderr(&weak));
    assert!(stderr(&weak).contains("1024-bit key"), "{}", stderr(&weak));
    let unused = check_carrier(
        dir.path(),
        "mm",
        &format!("callback_public_keys = \"{small}\""),
    );
    assert_eq!(unused.status.code(), Some(0), "{}", stderr(&unused));
    assert!(
        stderr(&unused).contains("unused without public_url"),
        "{}",
        stderr(&unused)
    );
}
