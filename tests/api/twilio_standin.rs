//! A local HTTP server that speaks Twilio's create-Message contract (shared research,
//! "carriers.md" §1): form-encoded POST with Basic auth to
//! `/2010-04-01/Accounts/{sid}/Messages.json`, 201 with the message resource, JSON errors.
//! Replies are scripted per test; every request is recorded.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "twilio-test-auth-token";
pub const FROM: &str = "+15005550006";

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    Created,
    /// A Twilio error body with this HTTP status and code, and maybe a Retry-After.
    Error {
        status: u16,
        code: u32,
        retry_after: Option<u64>,
    },
    /// Answer after this long (a slow carrier).
    Slow(Duration),
}

/// What the stand-in saw.
#[derive(Clone, Debug)]
pub struct Received {
    pub to: String,
    pub body: String,
    pub from: Option<String>,
    pub validity_period: Option<u64>,
    pub at: Instant,
    pub accepted: bool,
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    received: Vec<Received>,
    in_flight: usize,
}

#[derive(Clone)]
pub struct TwilioStandIn {
    pub address: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl TwilioStandIn {
    /// Starts answering `201 Created` to every valid request.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{sid}/Messages.json",
                post(create_message),
            )
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Self { address, inner }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The next replies, in order; afterwards the default reply applies.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().script.extend(replies);
    }

    pub fn set_default(&self, reply: Reply) {
        self.lock().default = Some(reply);
    }

    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Requests answered 201, per recipient.
    pub fn accepted_per_recipient(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for request in self.lock().received.iter().filter(|r| r.accepted) {
            *counts.entry(request.to.clone()).or_insert(0) += 1;
        }
        counts
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The `[carriers.<name>]` table pointing at this stand-in.
    pub fn carrier_toml(&self, name: &str) -> String {
        format!(
            "[carriers.{name}]\nkind = \"twilio\"\naccount_sid = \"{ACCOUNT_SID}\"\n\
             auth_token = \"{AUTH_TOKEN}\"\nfrom = \"{FROM}\"\nbase_url = \"{}\"\n\
             timeout_ms = 3000\nconnect_timeout_ms = 1000\n",
            self.base_url()
        )
    }
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

async fn create_message(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let lock = || {
        inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    // Contract checks first: what real Twilio refuses, the stand-in refuses too.
    let expected_auth = format!(
        "Basic {}",
        STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"))
    );
    if sid != ACCOUNT_SID
        || headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&expected_auth)
    {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return twilio_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            415,
            "Unsupported Media Type",
        );
    }
    let fields: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let (Some(to), Some(text)) = (fields.get("To"), fields.get("Body")) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    if !fields.contains_key("From") && !fields.contains_key("MessagingServiceSid") {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    }
    let reply = {
        let mut inner = lock();
        inner.in_flight += 1;
        inner
            .script
            .pop_front()
            .or_else(|| inner.default.clone())
            .unwrap_or(Reply::Created)
    };
    let mut record = Received {
        to: to.clone(),
        body: text.clone(),
        from: fields.get("From").cloned(),
        validity_period: fields.get("ValidityPeriod").and_then(|v| v.parse().ok()),
        at: Instant::now(),
        accepted: false,
    };
    let response = match reply {
        Reply::Created | Reply::Slow(_) => {
            if let Reply::Slow(delay) = reply {
                tokio::time::sleep(delay).await;
            }
            record.accepted = true;
            let sid = format!("SM{}", uuid::Uuid::now_v7().simple());
            let resource = json!({"sid": sid, "status": "queued", "to": to, "body": text, "num_segments": "1"});
            (StatusCode::CREATED, axum::Json(resource)).into_response()
        }
        Reply::Error {
            status,
            code,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = twilio_error(status, code, "scripted failure");
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
            }
            response
        }
    };
    let mut inner = lock();
    inner.in_flight -= 1;
    inner.received.push(record);
    response
}
