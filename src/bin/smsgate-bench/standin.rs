//! The carrier for the benchmark: answers like Twilio's create-Message (201 with a `sid`) at
//! once, and notes when each recipient's message arrived.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;

#[derive(Default)]
pub struct Received {
    pub count: AtomicU64,
    /// Arrival time per recipient, only while `track` is on (the latency phase).
    pub arrivals: Mutex<HashMap<String, Instant>>,
    pub track: std::sync::atomic::AtomicBool,
}

pub async fn start() -> anyhow::Result<(SocketAddr, Arc<Received>)> {
    let received = Arc::new(Received::default());
    let app = Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(create))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    Ok((address, received))
}

async fn create(State(received): State<Arc<Received>>, body: Bytes) -> impl IntoResponse {
    let now = Instant::now();
    received.count.fetch_add(1, Ordering::Relaxed);
    if received.track.load(Ordering::Relaxed) {
        let to = url_decoded_field(&body, "To").unwrap_or_default();
        if let Ok(mut arrivals) = received.arrivals.lock() {
            arrivals.entry(to).or_insert(now);
        }
    }
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        r#"{"sid":"SM00000000000000000000000000000000","status":"queued"}"#,
    )
}

/// The value of `name` in a form body (numbers only need `%2B` → `+`).
fn url_decoded_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .map(|value| value.replace("%2B", "+"))
}
