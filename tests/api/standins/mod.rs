//! Local HTTP servers that reproduce each carrier's documented wire contract: they refuse what
//! the real API refuses, answer with the real success and error shapes, follow a per-test
//! script, and record every request for assertions.

// A refusal is a whole HTTP response; boxing it would only add noise to test code.
#![allow(clippy::result_large_err)]

/// A carrier's stand-in type: the shared server speaking that carrier's contract, and the
/// `[carriers.<name>]` table (from `$table`) that points smsgate at it.
macro_rules! carrier_standin {
    ($standin:ident, $contract:expr, $table:ident) => {
        #[derive(Clone)]
        pub struct $standin(super::StandIn);

        impl std::ops::Deref for $standin {
            type Target = super::StandIn;
            fn deref(&self) -> &super::StandIn {
                &self.0
            }
        }

        impl $standin {
            pub async fn start() -> Self {
                Self(super::StandIn::start($contract).await)
            }

            /// The `[carriers.<name>]` table pointing at this stand-in.
            pub fn carrier_toml(&self, name: &str) -> String {
                $table(name, &self.base_url())
            }
        }
    };
}

pub mod messagemedia;
pub mod sns;
pub mod telnyx;
pub mod twilio;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    /// The carrier's success answer.
    Created,
    /// Success, after this long (a slow carrier).
    Slow(Duration),
    /// The carrier's error shape with this HTTP status and carrier error code.
    Error {
        status: u16,
        code: &'static str,
        retry_after: Option<u64>,
    },
    /// A 200 whose body is not what the carrier documents.
    Garbage,
    /// This status and JSON body, exactly (hostile or odd carrier answers).
    Raw(u16, &'static str),
    /// An error status with an HTML page instead of the carrier's error shape (a proxy's).
    GarbageError(u16),
    /// The success status and headers, then the connection breaks off mid-body.
    ResetMidBody,
    /// The success status at once, then the body one byte per interval.
    Trickle(Duration),
    /// 429 with `Retry-After` as an HTTP-date this far ahead of the stand-in's own clock,
    /// which its `Date` header gives (RFC 9110 §10.2.3, §6.6.1).
    ThrottledUntil(Duration),
}

impl Reply {
    /// The carrier's error shape, without a `Retry-After`.
    pub fn error(status: u16, code: &'static str) -> Self {
        Reply::Error {
            status,
            code,
            retry_after: None,
        }
    }
}

/// A request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    /// The same moment on the wall clock (to compare with the database's times).
    pub wall: std::time::SystemTime,
    /// Answered with a 2xx success.
    pub accepted: bool,
    /// The scripted answer it got (`None` when the contract check refused it).
    pub reply: Option<Reply>,
    /// Carrier-specific fields decoded by the contract check (recipient under "to").
    pub fields: HashMap<String, String>,
}

/// What makes a stand-in one carrier's: its contract and its answers.
pub trait Contract: Send + Sync + 'static {
    /// Checks the request as the real API would; `Err` is the real API's refusal.
    fn check(&self, seen: &Seen) -> Result<HashMap<String, String>, Response>;
    fn success(&self, seen: &Seen) -> Response;
    fn error(&self, status: StatusCode, code: &str) -> Response;
}

#[derive(Default)]
struct Script {
    next: VecDeque<Reply>,
    default: Option<Reply>,
    seen: Vec<Seen>,
    in_flight: usize,
}

struct Shared {
    contract: Box<dyn Contract>,
    script: Mutex<Script>,
}

/// A running stand-in.
#[derive(Clone)]
pub struct StandIn {
    pub address: SocketAddr,
    shared: Arc<Shared>,
}

impl StandIn {
    pub async fn start(contract: impl Contract) -> Self {
        let shared = Arc::new(Shared {
            contract: Box::new(contract),
            script: Mutex::new(Script::default()),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Self { address, shared }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.address)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        lock(&self.shared)
    }

    /// The next replies, in order; afterwards the default reply applies.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().next.extend(replies);
    }

    pub fn set_default(&self, reply: Reply) {
        self.lock().default = Some(reply);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Requests answered with success, per recipient.
    pub fn accepted_per_recipient(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for seen in self.lock().seen.iter().filter(|s| s.accepted) {
            let to = seen.fields.get("to").cloned().unwrap_or_default();
            *counts.entry(to).or_insert(0) += 1;
        }
        counts
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Script> {
    shared
        .script
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut seen = Seen {
        method,
        uri,
        headers,
        body,
        at: Instant::now(),
        wall: std::time::SystemTime::now(),
        accepted: false,
        reply: None,
        fields: HashMap::new(),
    };
    let fields = match shared.contract.check(&seen) {
        Ok(fields) => fields,
        Err(refusal) => {
            lock(&shared).seen.push(seen);
            return refusal;
        }
    };
    seen.fields = fields;
    let reply = {
        let mut script = lock(&shared);
        script.in_flight += 1;
        script
            .next
            .pop_front()
            .or_else(|| script.default.clone())
            .unwrap_or(Reply::Created)
    };
    seen.reply = Some(reply.clone());
    // Recorded on arrival: a real carrier has the message once the request is in, even when
    // the client gives up before the answer (then this handler is dropped mid-way).
    seen.accepted = match &reply {
        Reply::Error { status, .. } | Reply::Raw(status, _) => (200..300).contains(status),
        Reply::GarbageError(_) | Reply::ThrottledUntil(_) => false,
        Reply::Created | Reply::Slow(_) | Reply::Garbage => true,
        Reply::ResetMidBody | Reply::Trickle(_) => true,
    };
    lock(&shared).seen.push(seen.clone());
    let _in_flight = InFlight(shared.clone());
    match reply {
        Reply::Created => shared.contract.success(&seen),
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            shared.contract.success(&seen)
        }
        Reply::Error {
            status,
            code,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = shared.contract.error(status, code);
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, seconds.into());
            }
            response
        }
        Reply::Garbage => (StatusCode::OK, "<html>not the API</html>").into_response(),
        Reply::ThrottledUntil(after) => {
            let now = std::time::SystemTime::now();
            let mut response = shared
                .contract
                .error(StatusCode::TOO_MANY_REQUESTS, "throttled");
            let headers = response.headers_mut();
            for (name, at) in [(header::RETRY_AFTER, now + after), (header::DATE, now)] {
                let value = httpdate::fmt_http_date(at);
                headers.insert(name, value.parse().expect("an HTTP-date"));
            }
            response
        }
        Reply::Raw(status, body) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Reply::GarbageError(status) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            "<html><body>502 Bad Gateway</body></html>",
        )
            .into_response(),
        Reply::ResetMidBody => {
            // The first part goes out (and is flushed) before the connection breaks.
            let chunks = futures_util::stream::unfold(0u8, |step| async move {
                match step {
                    0 => Some((Ok(Bytes::from_static(b"{\"sid\": \"SM")), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("connection lost")), 2))
                    }
                    _ => None,
                }
            });
            let mut response = axum::body::Body::from_stream(chunks).into_response();
            *response.status_mut() = StatusCode::CREATED;
            response
        }
        Reply::Trickle(interval) => {
            let body = shared.contract.success(&seen).into_body();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            let chunks = futures_util::stream::unfold(0usize, move |at| {
                let bytes = bytes.clone();
                async move {
                    if at >= bytes.len() {
                        return None;
                    }
                    tokio::time::sleep(interval).await;
                    Some((Ok::<_, std::io::Error>(bytes.slice(at..at + 1)), at + 1))
                }
            });
            let mut response = axum::body::Body::from_stream(chunks).into_response();
            *response.status_mut() = StatusCode::CREATED;
            response
        }
    }
}

/// Counts a request in flight until its handler ends, finished or dropped.
struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn form_fields(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The value of `Authorization: Basic …` as `user:password`.
pub fn basic_credentials(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(decoded).ok()
}

/// A TCP port on which nothing listens: connections are refused.
pub fn refused_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    format!("http://127.0.0.1:{port}")
}
