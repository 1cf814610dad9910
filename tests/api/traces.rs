//! W3C Trace Context: the ingress joins the caller's trace (or starts one), stores its place
//! with the message, and every carrier call carries a child of it as `traceparent`.

use std::time::Duration;

use smsgate::Role;
use smsgate::domain::TraceContext;

use crate::dispatch::{config_with, wait_final};
use crate::helpers::{TestApp, sms, token};
use crate::standins::messagemedia::MessageMediaStandIn;
use crate::standins::twilio::{Reply, TwilioStandIn};
use crate::test_config::TestConfig;

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn post_traced(app: &TestApp, traceparent: Option<&str>, to: &str) -> String {
    let mut request = app
        .client
        .post(app.url("/v1/auth0/sms"))
        .bearer_auth(token())
        .json(&sms(to));
    if let Some(value) = traceparent {
        request = request.header("traceparent", value);
    }
    let response = request.send().await.expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("JSON");
    body["id"].as_str().expect("id").to_string()
}

async fn stored(app: &TestApp, id: &str) -> TraceContext {
    let text: Option<String> =
        sqlx::query_scalar("SELECT traceparent FROM messages WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .expect("row");
    TraceContext::parse(&text.expect("a traceparent is stored")).expect("a valid one")
}

/// What each carrier call of the stand-in carried.
fn carried(headers: impl IntoIterator<Item = axum::http::HeaderMap>) -> Vec<TraceContext> {
    headers
        .into_iter()
        .map(|h| {
            let value = h
                .get("traceparent")
                .expect("traceparent sent")
                .to_str()
                .expect("ASCII");
            TraceContext::parse(value).expect("a valid traceparent")
        })
        .collect()
}

#[tokio::test]
async fn a_callers_trace_runs_through_the_message_to_each_carrier_call() {
    let failing = TwilioStandIn::start().await;
    failing.set_default(Reply::error(500, "20500"));
    let good = MessageMediaStandIn::start().await;
    let tables = failing.carrier_toml("failing") + &good.carrier_toml("good");
    let config = TestConfig::base().only_carriers(&tables, &["failing", "good"]);
    let app = TestApp::spawn_role(&config, Role::All).await;
    let caller = TraceContext::parse(CALLER).expect("valid");

    let id = post_traced(&app, Some(CALLER), "+14155550100").await;
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;

    assert_eq!(view["status"], "sent");
    let ingress = stored(&app, &id).await;
    assert_eq!(
        ingress.trace_id, caller.trace_id,
        "the caller's trace is joined"
    );
    assert_ne!(
        ingress.span_id, caller.span_id,
        "the ingress is a span of its own"
    );
    let calls = carried(
        failing
            .seen()
            .into_iter()
            .chain(good.seen())
            .map(|seen| seen.headers),
    );
    assert_eq!(calls.len(), 2, "a failed call, then the next carrier");
    for call in &calls {
        assert_eq!(call.trace_id, caller.trace_id);
        assert_ne!(
            call.span_id, ingress.span_id,
            "each call is a span of its own"
        );
    }
    assert_ne!(calls[0].span_id, calls[1].span_id);
}

#[tokio::test]
async fn without_a_valid_traceparent_the_ingress_starts_a_trace_and_still_answers() {
    let standin = TwilioStandIn::start().await;
    let app = TestApp::spawn_role(&config_with(&standin, ""), Role::All).await;
    let invalid = [
        None,
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        Some("garbage"),
        Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
    ];
    let mut traces = Vec::new();
    for (i, header) in invalid.into_iter().enumerate() {
        let id = post_traced(&app, header, &format!("+1415555{:04}", 200 + i)).await;
        wait_final(&app, &id, Duration::from_secs(10)).await;
        let ingress = stored(&app, &id).await;
        assert_ne!(ingress.trace_id, [0; 16]);
        traces.push(ingress.trace_id);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 4, "a new trace each time");
    let calls = carried(standin.seen().into_iter().map(|seen| seen.headers));
    let mut called: Vec<[u8; 16]> = calls.iter().map(|c| c.trace_id).collect();
    called.sort();
    assert_eq!(called, traces, "each call carries its message's trace");
}

/// One post to the collector: its content type and body.
type Post = (String, Vec<u8>);

/// What an OTLP/HTTP collector received.
#[derive(Clone, Default)]
struct Collector(std::sync::Arc<std::sync::Mutex<Vec<Post>>>);

impl Collector {
    async fn start() -> (Self, String) {
        Self::answering(axum::http::StatusCode::OK).await
    }

    /// A collector that keeps every post and answers each with `status`.
    async fn answering(status: axum::http::StatusCode) -> (Self, String) {
        let collector = Self::default();
        let kept = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let kept = kept.clone();
                    async move {
                        let kind = headers
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        kept.0.lock().expect("lock").push((kind, body.to_vec()));
                        status
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        (collector, format!("http://{address}"))
    }

    fn posts(&self) -> Vec<Post> {
        self.0.lock().expect("lock").clone()
    }
}

/// Every span of the JSON posts, as (name, trace id, span id, parent span id).
fn spans_of(posts: &[Post]) -> Vec<(String, String, String, String)> {
    let mut spans = Vec::new();
    for (kind, body) in posts {
        assert!(kind.starts_with("application/json"), "{kind}");
        let document: serde_json::Value = serde_json::from_slice(body).expect("OTLP JSON");
        for resource in document["resourceSpans"].as_array().expect("resourceSpans") {
            let attributes = resource["resource"]["attributes"]
                .as_array()
                .expect("resource");
            assert!(
                attributes
                    .iter()
                    .any(|a| a["key"] == "service.name" && a["value"]["stringValue"] == "smsgate"),
                "{resource}"
            );
            for scope in resource["scopeSpans"].as_array().expect("scopeSpans") {
                for span in scope["spans"].as_array().expect("spans") {
                    let text = |key: &str| span[key].as_str().unwrap_or_default().to_string();
                    spans.push((
                        text("name"),
                        text("traceId").to_lowercase(),
                        text("spanId").to_lowercase(),
                        text("parentSpanId").to_lowercase(),
                    ));
                }
            }
        }
    }
    spans
}

/// One message with the caller's `traceparent`, through the real binary exporting its spans
/// (`telemetry`: more `[telemetry]` keys past the endpoint); returns what the collector got,
/// the database, the carrier stand-in and the message's id, after a clean stop (which exports
/// what is left).
async fn traced_through_the_binary(
    telemetry: &str,
    to: &str,
) -> (Collector, TestApp, TwilioStandIn, String) {
    let (collector, endpoint) = Collector::start().await;
    let standin = TwilioStandIn::start().await;
    let config = config_with(
        &standin,
        &format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\n{telemetry}"),
    );
    let db = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = crate::process::spawn_binary(&db, &config, dir.path());
    let client = crate::cli::wait_until_healthy(port).await;
    let response = client
        .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
        .bearer_auth(token())
        .header("traceparent", CALLER)
        .json(&sms(to))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("JSON");
    let id = body["id"].as_str().expect("id").to_string();
    crate::dispatch::wait_until_drained(&db.pool, Duration::from_secs(10)).await;
    assert!(crate::cli::terminate(child).await.success());
    (collector, db, standin, id)
}

/// With `[telemetry] otlp_endpoint`, the real binary exports one trace per message to a
/// collector: the request (a child of the caller's span), the send (a child of the request,
/// through the stored context), and the carrier call (a child of the send), whose id is the
/// `traceparent` the carrier got. Nothing secret in any of it.
#[tokio::test]
async fn spans_go_to_an_otlp_collector_as_one_trace_from_the_request_to_the_carrier() {
    let (collector, db, standin, id) =
        traced_through_the_binary("otlp_protocol = \"http/json\"\n", "+14155550177").await;

    let caller = TraceContext::parse(CALLER).expect("valid");
    let spans = spans_of(&collector.posts());
    let named = |name: &str| {
        spans
            .iter()
            .find(|s| s.0 == name)
            .unwrap_or_else(|| panic!("no {name:?} span in {spans:#?}"))
            .clone()
    };
    let (ingress, message, call) = (named("ingress"), named("message"), named("carrier call"));
    for span in [&ingress, &message, &call] {
        assert_eq!(span.1, caller.trace_id_hex(), "one trace: {span:?}");
    }
    assert_eq!(
        ingress.3,
        hex::encode(caller.span_id),
        "the caller's span is the parent"
    );
    assert_eq!(message.3, ingress.2, "the send is a child of the request");
    assert_eq!(call.3, message.2, "the call is a child of the send");
    let stored = stored(&db, &id).await;
    assert_eq!(
        hex::encode(stored.span_id),
        ingress.2,
        "the stored context is the request's"
    );
    let carried = carried(standin.seen().into_iter().map(|seen| seen.headers));
    assert_eq!(carried.len(), 1);
    assert_eq!(
        hex::encode(carried[0].span_id),
        call.2,
        "the carrier got the call's span"
    );
    let everything: Vec<u8> = collector.posts().into_iter().flat_map(|(_, b)| b).collect();
    let text = String::from_utf8_lossy(&everything);
    for secret in ["14155550177", "123456", crate::helpers::SECRET] {
        assert!(!text.contains(secret), "{secret:?} exported");
    }
}

/// The default encoding is OTLP's protocol buffers: the post says so and carries the trace.
#[tokio::test]
async fn spans_are_protocol_buffers_unless_json_is_asked_for() {
    let (collector, ..) = traced_through_the_binary("", "+14155550178").await;

    let posts = collector.posts();
    assert!(!posts.is_empty(), "spans were exported");
    let caller = TraceContext::parse(CALLER).expect("valid");
    for (kind, body) in &posts {
        assert_eq!(kind, "application/x-protobuf");
        // Ids are raw bytes in the protocol buffer encoding.
        assert!(
            body.windows(16).any(|w| w == caller.trace_id),
            "the caller's trace id is in the export"
        );
    }
}

/// A collector that refuses every export costs its spans, never a request or a send, and each
/// batch it refused is counted where an alert can read it.
#[tokio::test]
async fn batches_a_collector_refuses_are_counted_and_the_messages_still_go() {
    let (collector, endpoint) =
        Collector::answering(axum::http::StatusCode::SERVICE_UNAVAILABLE).await;
    let standin = TwilioStandIn::start().await;
    let config = config_with(
        &standin,
        &format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\n"),
    );
    let db = TestApp::spawn_role(&config, Role::Ingress).await;
    let metrics_port = crate::cli::free_port();
    let binary = config
        .clone()
        .set("metrics.listen", format!("127.0.0.1:{metrics_port}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = crate::process::spawn_binary(&db, &binary, dir.path());
    let client = crate::cli::wait_until_healthy(port).await;
    let scrape = async || {
        let text = client
            .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .send()
            .await
            .expect("scraped")
            .text()
            .await
            .expect("text");
        crate::observability::sample(&text, "smsgate_trace_export_failures_total")
    };
    assert_eq!(scrape().await, Some(0.0), "nothing refused yet");

    let response = client
        .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
        .bearer_auth(token())
        .json(&sms("+14155550179"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    crate::dispatch::wait_until_drained(&db.pool, Duration::from_secs(10)).await;
    assert_eq!(standin.seen().len(), 1, "the message went out");
    // The batch processor exports every few seconds.
    crate::dispatch::wait_until(
        "a refused batch counted",
        Duration::from_secs(20),
        async || scrape().await.is_some_and(|failures| failures >= 1.0),
    )
    .await;

    assert!(!collector.posts().is_empty(), "the collector was asked");
    assert!(crate::cli::terminate(child).await.success());
}

/// An endpoint that would lose every span, or print a credential, is refused by name.
#[test]
fn an_otlp_endpoint_that_would_lose_spans_or_show_a_credential_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("smsgate.toml");
    for endpoint in [
        " http://collector:4318",
        "http://collector:4318 ",
        "http://collector:4318#part",
        "http://collector:4318?x=1",
        "http://user:secret@collector:4318",
        "ftp://collector:4318",
        "collector:4318",
    ] {
        let text = format!(
            "{}[telemetry]\notlp_endpoint = \"{endpoint}\"\n",
            crate::helpers::base_config()
        );
        std::fs::write(&path, text).expect("config");
        let refused = smsgate::config::Config::load(&path).expect_err(endpoint);
        assert!(
            refused
                .problems
                .iter()
                .any(|p| p.key == "telemetry.otlp_endpoint"),
            "{endpoint:?}: {refused:?}"
        );
        assert!(!format!("{refused:?}").contains("secret"), "{endpoint:?}");
    }
    let good = format!(
        "{}[telemetry]\notlp_endpoint = \"https://collector.example:4318/\"\n",
        crate::helpers::base_config()
    );
    std::fs::write(&path, good).expect("config");
    assert!(smsgate::config::Config::load(&path).is_ok());
}

/// Two `traceparent` headers make the caller's context invalid (W3C): a trace starts.
#[tokio::test]
async fn two_traceparent_headers_start_a_trace_of_their_own() {
    let standin = TwilioStandIn::start().await;
    let app = TestApp::spawn_role(&config_with(&standin, ""), Role::All).await;
    let response = app
        .client
        .post(app.url("/v1/auth0/sms"))
        .bearer_auth(token())
        .header("traceparent", CALLER)
        .header("traceparent", CALLER)
        .json(&sms("+14155550190"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.expect("JSON");
    let ingress = stored(&app, body["id"].as_str().expect("id")).await;
    assert_ne!(
        ingress.trace_id,
        TraceContext::parse(CALLER).expect("valid").trace_id
    );
}
