//! Counts and times every ingress answer by endpoint, signer and outcome. It wraps the whole
//! public router, outside the timeout and panic layers, so a 408 and a 500 are counted too;
//! an answer the ingress never gave (the router's 405 for a wrong method, its 404) is not.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::error::Outcome;
use crate::metrics::{Metrics, NO_SIGNER};

/// What the counter needs: the metrics, and whether this process takes messages at all.
#[derive(Clone)]
pub struct IngressCounter {
    pub metrics: Metrics,
    pub accept_messages: bool,
}

/// Where the `Caller` extractor leaves the name of the signer it verified, for the counter.
#[derive(Clone, Default)]
pub struct SignerSlot(Arc<OnceLock<String>>);

impl SignerSlot {
    pub fn record(&self, signer: &str) {
        // Set once per request; a second extractor of the same request agrees with the first.
        let _ = self.0.set(signer.to_string());
    }
}

/// The `endpoint` label of an ingress path; `None` for every other route.
fn endpoint(path: &str) -> Option<&'static str> {
    match path {
        "/v1/auth0/sms" => Some("sms"),
        "/v1/auth0/phone-provider" => Some("phone_provider"),
        _ => None,
    }
}

pub async fn count_ingress(
    State(counter): State<IngressCounter>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let Some(endpoint) = endpoint(path).filter(|_| counter.accept_messages) else {
        return next.run(request).await;
    };
    let started = Instant::now();
    let slot = SignerSlot::default();
    request.extensions_mut().insert(slot.clone());
    let response = next.run(request).await;
    let (outcome, limit_scope) = match response.extensions().get::<Outcome>() {
        Some(outcome) => (outcome.outcome, outcome.limit_scope),
        None if response.status().is_success() => ("accepted", None),
        // The router's own answers (a wrong method's 405) never reached the ingress.
        None => return response,
    };
    let signer = slot.0.get().map_or(NO_SIGNER, String::as_str);
    let metrics = &counter.metrics;
    metrics
        .ingress_requests
        .with_label_values(&[endpoint, signer, outcome])
        .inc();
    metrics
        .ingress_duration
        .with_label_values(&[endpoint, outcome])
        .observe(started.elapsed().as_secs_f64());
    if let Some(scope) = limit_scope {
        metrics.rate_limited.with_label_values(&[scope]).inc();
    }
    response
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::Router;
    use axum::routing::post;

    use super::*;
    use crate::config::Config;

    /// A 408 and a 500 happen inside the layers that make them; they are counted all the same.
    #[tokio::test]
    async fn timeouts_and_panics_are_counted_as_ingress_outcomes() {
        let metrics = Metrics::new(&Config::default()).expect("metrics");
        let routes = Router::new()
            .route(
                "/v1/auth0/sms",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/v1/auth0/phone-provider",
                post(|| async {
                    panic!("a handler bug");
                    #[allow(unreachable_code)]
                    ""
                }),
            );
        let counter = IngressCounter {
            metrics: metrics.clone(),
            accept_messages: true,
        };
        let app = super::super::harden(routes, Duration::from_millis(100))
            .layer(axum::middleware::from_fn_with_state(counter, count_ingress));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let post = |path: &str| client.post(format!("http://{address}{path}")).send();

        assert_eq!(post("/v1/auth0/sms").await.expect("answer").status(), 408);
        assert_eq!(
            post("/v1/auth0/phone-provider")
                .await
                .expect("answer")
                .status(),
            500
        );
        assert_eq!(post("/v1/other").await.expect("answer").status(), 404);

        let count = |endpoint: &str, outcome: &str| {
            metrics
                .ingress_requests
                .with_label_values(&[endpoint, NO_SIGNER, outcome])
                .get()
        };
        assert_eq!(count("sms", "timeout"), 1);
        assert_eq!(count("phone_provider", "error"), 1);
        assert_eq!(
            ["sms", "phone_provider"]
                .into_iter()
                .flat_map(|endpoint| {
                    crate::metrics::INGRESS_OUTCOMES.map(|outcome| {
                        metrics
                            .ingress_duration
                            .with_label_values(&[endpoint, outcome])
                            .get_sample_count()
                    })
                })
                .sum::<u64>(),
            2,
            "the 404 is not counted"
        );
    }
}
