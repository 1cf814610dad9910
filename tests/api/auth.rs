//! The bearer token: HS256 only, strict on signature, `aud` and `sub`, tolerant of what Auth0
//! does not document. A refused token never creates a row.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use crate::helpers::{
    AUDIENCE, SECRET, SUBJECT, TestApp, assert_error, auth0_claims, now, sign_with, sms, token,
};
use crate::test_config::TestConfig;

/// Expects 401 with `code` for `authorization` (a whole header value), and nothing stored.
async fn assert_unauthorized(app: &TestApp, authorization: Option<String>, code: &str) {
    let mut request = app
        .client
        .post(app.url("/v1/auth0/sms"))
        .header("content-type", "application/json")
        .body(sms("+14155552671").to_string());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.expect("sent");
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    assert_error(response, 401, code).await;
    assert_eq!(app.stored_rows().await, 0, "a refused token stored nothing");
}

fn with_claims(change: impl FnOnce(&mut Value)) -> String {
    let mut claims = auth0_claims();
    change(&mut claims);
    sign_with(&claims, SECRET.as_bytes(), Algorithm::HS256)
}

async fn assert_accepted(app: &TestApp, token: &str) {
    let response = app.post_sms(Some(token), &sms("+14155552671")).await;
    assert_eq!(
        response.status().as_u16(),
        200,
        "{:?}",
        response.text().await
    );
}

#[tokio::test]
async fn a_missing_or_non_bearer_authorization_is_refused() {
    let app = TestApp::spawn().await;
    assert_unauthorized(&app, None, "unauthorized").await;
    assert_unauthorized(&app, Some(format!("Basic {}", token())), "unauthorized").await;
    assert_unauthorized(&app, Some("Bearer".into()), "unauthorized").await;
    assert_unauthorized(&app, Some("Bearer not.a.jwt".into()), "invalid_token").await;
    assert_unauthorized(&app, Some("Bearer abc".into()), "invalid_token").await;
}

#[tokio::test]
async fn a_tampered_token_is_refused() {
    let app = TestApp::spawn().await;
    let good = token();
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = URL_SAFE_NO_PAD.encode(
        json!({"iss": "Auth0", "sub": SUBJECT, "aud": AUDIENCE, "exp": now() + 99_999}).to_string(),
    );
    let tampered_payload = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    let mut signature = parts[2].to_string();
    let last = if signature.ends_with('A') { "B" } else { "A" };
    signature.replace_range(signature.len() - 1.., last);
    let tampered_signature = format!("{}.{}.{}", parts[0], parts[1], signature);

    assert_unauthorized(
        &app,
        Some(format!("Bearer {tampered_payload}")),
        "invalid_token",
    )
    .await;
    assert_unauthorized(
        &app,
        Some(format!("Bearer {tampered_signature}")),
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused() {
    let app = TestApp::spawn().await;
    let other = sign_with(&auth0_claims(), b"some-other-secret", Algorithm::HS256);
    assert_unauthorized(&app, Some(format!("Bearer {other}")), "invalid_token").await;
    // The admin token is no signing key either.
    let admin = sign_with(
        &auth0_claims(),
        crate::helpers::ADMIN_TOKEN.as_bytes(),
        Algorithm::HS256,
    );
    assert_unauthorized(&app, Some(format!("Bearer {admin}")), "invalid_token").await;
}

#[tokio::test]
async fn only_hs256_is_accepted() {
    let app = TestApp::spawn().await;
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        let token = sign_with(&auth0_claims(), SECRET.as_bytes(), alg);
        assert_unauthorized(&app, Some(format!("Bearer {token}")), "invalid_token").await;
    }
    let payload = URL_SAFE_NO_PAD.encode(auth0_claims().to_string());
    let unsigned_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{unsigned_header}.{payload}.");
    assert_unauthorized(&app, Some(format!("Bearer {unsigned}")), "invalid_token").await;
    let rs_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let rs256 = format!(
        "{rs_header}.{payload}.{}",
        URL_SAFE_NO_PAD.encode([7u8; 256])
    );
    assert_unauthorized(&app, Some(format!("Bearer {rs256}")), "invalid_token").await;
}

#[tokio::test]
async fn the_audience_must_match_as_a_string_or_within_an_array() {
    let app = TestApp::spawn().await;
    let wrong = with_claims(|c| c["aud"] = json!("urn:SomeoneElse"));
    assert_unauthorized(&app, Some(format!("Bearer {wrong}")), "invalid_token").await;
    let missing = with_claims(|c| {
        c.as_object_mut().map(|o| o.remove("aud"));
    });
    assert_unauthorized(&app, Some(format!("Bearer {missing}")), "invalid_token").await;

    assert_accepted(
        &app,
        &with_claims(|c| c["aud"] = json!([AUDIENCE, "urn:other"])),
    )
    .await;
}

#[tokio::test]
async fn the_subject_must_match_when_one_is_configured() {
    let app = TestApp::spawn().await;
    let wrong = with_claims(|c| c["sub"] = json!("urn:NotAuth0"));
    assert_unauthorized(&app, Some(format!("Bearer {wrong}")), "invalid_token").await;
    let missing = with_claims(|c| {
        c.as_object_mut().map(|o| o.remove("sub"));
    });
    assert_unauthorized(&app, Some(format!("Bearer {missing}")), "invalid_token").await;
}

#[tokio::test]
async fn without_a_configured_subject_any_or_no_sub_is_accepted() {
    let config = TestConfig::base().without("auth0.primary.subject");
    let app = TestApp::spawn_with(&config).await;
    assert_accepted(
        &app,
        &with_claims(|c| {
            c.as_object_mut().map(|o| o.remove("sub"));
        }),
    )
    .await;
    assert_accepted(&app, &with_claims(|c| c["sub"] = json!("anything"))).await;
}

#[tokio::test]
async fn the_issuer_is_checked_only_when_present() {
    let app = TestApp::spawn().await;
    let wrong = with_claims(|c| c["iss"] = json!("https://evil.example"));
    assert_unauthorized(&app, Some(format!("Bearer {wrong}")), "invalid_token").await;
    assert_accepted(
        &app,
        &with_claims(|c| {
            c.as_object_mut().map(|o| o.remove("iss"));
        }),
    )
    .await;
}

#[tokio::test]
async fn another_issuer_is_refused_by_default_and_accepted_once_configured() {
    let tenant_url = "https://tenant.auth0.com/";
    let from_tenant = with_claims(|c| c["iss"] = json!(tenant_url));
    let by_default = TestApp::spawn().await;
    assert_unauthorized(
        &by_default,
        Some(format!("Bearer {from_tenant}")),
        "invalid_token",
    )
    .await;

    let config = TestConfig::base().set("auth0.primary.issuers", vec![tenant_url]);
    let app = TestApp::spawn_with(&config).await;

    // The list replaces the default; a non-string `iss` is still refused, no `iss` accepted.
    let auth0 = with_claims(|c| c["iss"] = json!("Auth0"));
    assert_unauthorized(&app, Some(format!("Bearer {auth0}")), "invalid_token").await;
    let listed = with_claims(|c| c["iss"] = json!([tenant_url]));
    assert_unauthorized(&app, Some(format!("Bearer {listed}")), "invalid_token").await;
    assert_accepted(&app, &from_tenant).await;
    assert_accepted(
        &app,
        &with_claims(|c| {
            c.as_object_mut().map(|o| o.remove("iss"));
        }),
    )
    .await;
}

#[tokio::test]
async fn exp_and_nbf_are_enforced_with_60_seconds_of_leeway_but_not_required() {
    let app = TestApp::spawn().await;
    let expired = with_claims(|c| c["exp"] = json!(now() - 120));
    assert_unauthorized(&app, Some(format!("Bearer {expired}")), "invalid_token").await;
    let future = with_claims(|c| c["nbf"] = json!(now() + 120));
    assert_unauthorized(&app, Some(format!("Bearer {future}")), "invalid_token").await;

    assert_accepted(&app, &with_claims(|c| c["exp"] = json!(now() - 30))).await;
    assert_accepted(&app, &with_claims(|c| c["nbf"] = json!(now() + 30))).await;
    assert_accepted(
        &app,
        &with_claims(|c| {
            let claims = c.as_object_mut().expect("object");
            claims.remove("exp");
            claims.remove("iat");
        }),
    )
    .await;
}

#[tokio::test]
async fn a_base64url_secret_is_decoded_before_use() {
    let key = [0xfbu8, 0xff, 0x10, 0x42, 0x99, 0x00, 0xfe, 0x7f];
    let encoded = URL_SAFE_NO_PAD.encode(key);
    let config = TestConfig::base()
        .set("auth0.primary.secret", encoded.as_str())
        .set("auth0.primary.secret_base64_encoded", true);
    let app = TestApp::spawn_with(&config).await;

    let literal = sign_with(&auth0_claims(), encoded.as_bytes(), Algorithm::HS256);
    assert_unauthorized(&app, Some(format!("Bearer {literal}")), "invalid_token").await;
    assert_accepted(&app, &sign_with(&auth0_claims(), &key, Algorithm::HS256)).await;
}

#[tokio::test]
async fn any_configured_signer_is_accepted_and_recorded() {
    let config =
        TestConfig::with("[auth0.rotated]\nsecret = \"second-secret\"\naudience = \"urn:Other\"\n");
    let app = TestApp::spawn_with(&config).await;
    let mut claims = auth0_claims();
    claims["aud"] = json!("urn:Other");
    let second = sign_with(&claims, b"second-secret", Algorithm::HS256);

    assert_accepted(&app, &second).await;
    let signer: String = sqlx::query_scalar("SELECT signer FROM messages")
        .fetch_one(&app.pool)
        .await
        .expect("stored");
    assert_eq!(signer, "rotated");
}

#[tokio::test]
async fn unsigned_requests_are_accepted_only_when_explicitly_allowed() {
    let without_signers = TestConfig::base()
        .without("auth0")
        .set("server.allow_unauthenticated", true);
    let app = TestApp::spawn_with(&without_signers).await;

    let response = app.post_sms(None, &sms("+14155552671")).await;

    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn the_admin_token_is_not_an_ingress_token() {
    let app = TestApp::spawn().await;
    let admin = format!("Bearer {}", crate::helpers::ADMIN_TOKEN);
    assert_unauthorized(&app, Some(admin), "invalid_token").await;
}

#[tokio::test]
async fn one_signers_claims_with_another_signers_secret_are_refused() {
    let config = TestConfig::with(
        "[auth0.tenant_b]\nsecret = \"tenant-b-secret-0123456789\"\naudience = \"urn:TenantB\"\n",
    );
    let app = TestApp::spawn_with(&config).await;
    // Tenant A's audience and subject, signed with tenant B's secret.
    let crossed = sign_with(
        &auth0_claims(),
        b"tenant-b-secret-0123456789",
        Algorithm::HS256,
    );
    assert_unauthorized(&app, Some(format!("Bearer {crossed}")), "invalid_token").await;
    // And tenant B's audience signed with tenant A's secret.
    let mut claims = auth0_claims();
    claims["aud"] = json!("urn:TenantB");
    let crossed = sign_with(&claims, SECRET.as_bytes(), Algorithm::HS256);
    assert_unauthorized(&app, Some(format!("Bearer {crossed}")), "invalid_token").await;
}

#[tokio::test]
async fn an_oversized_token_is_refused_even_when_its_signature_is_valid() {
    let app = TestApp::spawn().await;
    // 8 KiB is far beyond any Auth0 token; the signature is valid, the size is not.
    let oversized = with_claims(|c| c["padding"] = json!("x".repeat(8 * 1024)));
    assert!(oversized.len() > 8 * 1024);
    assert_unauthorized(&app, Some(format!("Bearer {oversized}")), "invalid_token").await;
    let large_but_allowed = with_claims(|c| c["padding"] = json!("x".repeat(4 * 1024)));
    assert_accepted(&app, &large_but_allowed).await;
}

/// A token over `auth0_claims()` with `header` as its protected header, correctly signed.
fn signed_with_header(header: &Value) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(auth0_claims().to_string())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("signs");
    format!("{message}.{signature}")
}

#[tokio::test]
async fn a_token_with_critical_header_parameters_is_refused() {
    let app = TestApp::spawn().await;
    // RFC 7515 §4.1.11: a recipient refuses a `crit` it does not process, and smsgate
    // processes no extension; an empty or non-list `crit` is invalid in itself.
    for crit in [
        json!(["exp"]),
        json!(["b64"]),
        json!([]),
        json!(null),
        json!("exp"),
    ] {
        let header = json!({"alg": "HS256", "typ": "JWT", "crit": crit, "b64": true});
        let token = signed_with_header(&header);
        assert_unauthorized(&app, Some(format!("Bearer {token}")), "invalid_token").await;
    }

    // The same header without `crit` is a good token: the refusals above were for `crit`.
    assert_accepted(
        &app,
        &signed_with_header(&json!({"alg": "HS256", "typ": "JWT", "b64": true})),
    )
    .await;
}

#[tokio::test]
async fn claims_of_the_wrong_type_are_refused() {
    let app = TestApp::spawn().await;
    for change in [
        json!({"exp": "tomorrow"}),
        json!({"aud": 42}),
        json!({"sub": ["urn:Auth0"]}),
        json!({"nbf": {"at": 1}}),
    ] {
        let token = with_claims(|c| {
            for (key, value) in change.as_object().expect("object") {
                c[key] = value.clone();
            }
        });
        assert_unauthorized(&app, Some(format!("Bearer {token}")), "invalid_token").await;
    }
}

/// Sends raw bytes as one HTTP/1.1 request and returns the status line's code.
async fn raw_status(app: &TestApp, request: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.address)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = vec![0; 256];
    let read = stream.read(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer[..read]).to_string();
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test]
async fn non_utf8_and_control_bytes_in_the_authorization_header_are_refused() {
    let app = TestApp::spawn().await;
    let body = sms("+14155552671").to_string();
    for authorization in [
        b"Bearer \xff\xfe.\xfd".as_slice(),
        b"Bearer abc\x01def".as_slice(),
        format!("Bearer {}\x7f", token()).into_bytes().leak(),
    ] {
        let mut request = b"POST /v1/auth0/sms HTTP/1.1\r\nhost: x\r\nauthorization: ".to_vec();
        request.extend_from_slice(authorization);
        request.extend_from_slice(
            format!(
                "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        let status = raw_status(&app, &request).await;
        assert!(
            status == 400 || status == 401,
            "{status} for {authorization:?}"
        );
    }
    assert_eq!(app.stored_rows().await, 0);
}
