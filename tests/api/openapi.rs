//! The OpenAPI description: the committed file is what the code generates, and the gateway
//! serves it. (CI runs Schemathesis with it against the release binary: .ci/schemathesis.)

use crate::helpers::TestApp;

const COMMITTED: &str = "docs/openapi.json";

#[test]
fn the_committed_description_is_what_the_code_generates() {
    let committed = std::fs::read_to_string(COMMITTED).expect("docs/openapi.json");
    let generated = smsgate::http::openapi::document();
    assert!(
        committed == generated,
        "{COMMITTED} differs from the handlers' types: run \
         `cargo run -q -- openapi > {COMMITTED}` and commit it"
    );
}

#[tokio::test]
async fn the_gateway_serves_its_description_as_json() {
    let app = TestApp::spawn().await;

    let response = app.get("/openapi.json").await;

    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ASCII");
    assert_eq!(content_type, "application/json");
    let served: serde_json::Value = response.json().await.expect("JSON");
    let generated: serde_json::Value =
        serde_json::from_str(&smsgate::http::openapi::document()).expect("JSON");
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");
}

/// Every route the router answers is described: each kind's receipt route (made from the
/// registry), the ingress, the operator API and the probes.
#[test]
fn every_route_is_described() {
    let document: serde_json::Value =
        serde_json::from_str(&smsgate::http::openapi::document()).expect("JSON");
    let paths = document["paths"].as_object().expect("paths");
    let mut expected: Vec<(String, &str)> = vec![
        ("/v1/auth0/sms".into(), "post"),
        ("/v1/auth0/phone-provider".into(), "post"),
        ("/v1/verifications".into(), "post"),
        ("/livez".into(), "get"),
        ("/healthz".into(), "get"),
        ("/readyz".into(), "get"),
        ("/v1/messages".into(), "get"),
        ("/v1/messages/{id}".into(), "get"),
        ("/v1/spend".into(), "get"),
        ("/v1/carriers/stats".into(), "get"),
        ("/v1/carriers/{name}/{action}".into(), "post"),
        ("/openapi.json".into(), "get"),
    ];
    for kind in smsgate::carriers::KINDS {
        expected.push((format!("/v1/callbacks/{}/{{carrier}}", kind.name()), "post"));
    }
    for (path, method) in &expected {
        assert!(
            paths.get(path).and_then(|item| item.get(*method)).is_some(),
            "{method} {path} is not described"
        );
    }
    assert_eq!(
        paths.len(),
        expected.len(),
        "a described path the test does not know"
    );
}
