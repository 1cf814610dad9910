//! The checks every handler of a kind shares, as extractors that refuse with [`ApiError`]:
//! the Auth0 caller (a verified bearer token and an in-flight slot), the admin token, and a
//! bounded JSON body, parsed into a JSON object by [`json_object`]. A handler that takes one
//! cannot forget its check.

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use subtle::ConstantTimeEq;
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiError, AppState};

/// Auth0's requests are well under 1 KiB; the limit leaves room for a long template.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// The Auth0 signer whose token the request carries (`None` when unsigned requests are
/// allowed), holding one of that signer's in-flight slots until the request ends.
pub struct Caller {
    pub signer: Option<String>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let signer = if state.accept_unsigned {
            None
        } else {
            let header = parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            let name = state.verifier.verify_header(header).map_err(|reason| {
                // The reason only: the header itself may carry carrier credentials.
                tracing::warn!(%reason, "ingress refused a token");
                ApiError::Unauthorized(reason)
            })?;
            if let Some(slot) = parts.extensions.get::<super::counting::SignerSlot>() {
                slot.record(name);
            }
            Some(name.to_string())
        };
        let slot = state.in_flight.enter(signer.as_deref()).map_err(|_| {
            tracing::warn!(
                signer = signer.as_deref().unwrap_or("-"),
                "ingress refused a request: limits.max_in_flight reached"
            );
            ApiError::TooManyInFlight
        })?;
        Ok(Self {
            signer,
            _slot: slot,
        })
    }
}

/// The holder of `admin.token`, compared in constant time.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let expected = state.admin_token.as_ref().ok_or(ApiError::AdminDisabled)?;
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::AdminUnauthorized)?;
        // Constant time, so response timing does not reveal how much of a guess was right.
        let right = presented
            .trim()
            .as_bytes()
            .ct_eq(expected.expose().as_bytes());
        if bool::from(right) {
            Ok(Admin)
        } else {
            Err(ApiError::AdminUnauthorized)
        }
    }
}

/// A body declared `application/json` (parameters such as `charset` allowed), read whole up
/// to [`MAX_REQUEST_BYTES`].
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let read = read_body(&parts.headers, body);
        match parts.extensions.get::<ReceiveBy>() {
            Some(ReceiveBy(deadline)) => tokio::time::timeout_at(*deadline, read)
                .await
                .map_err(|_| ApiError::Timeout)?,
            None => read.await,
        }
        .map(JsonBytes)
    }
}

/// When an ingress request must have arrived whole: `server.request_timeout_ms` after it began.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveBy(pub tokio::time::Instant);

/// When an ingress request must be answered, whatever its write is doing: Auth0 gives up
/// after 30 s, and an answer it never reads helps nobody.
#[derive(Debug, Clone, Copy)]
pub struct AnswerBy(pub tokio::time::Instant);

/// Auth0 waits 30 s for the gateway; this leaves it time to read the answer.
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(25);

impl<S: Send + Sync> FromRequestParts<S> for AnswerBy {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<AnswerBy>()
            .copied()
            .unwrap_or_else(|| AnswerBy(tokio::time::Instant::now() + ANSWER_WITHIN)))
    }
}

/// Stamps the request with its deadlines: `ReceiveBy` for its body, `AnswerBy` for its answer
/// (never before the body's deadline, with a few seconds for the write).
pub async fn stamp_receive_by(
    axum::extract::State(request_timeout): axum::extract::State<std::time::Duration>,
    mut request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let now = tokio::time::Instant::now();
    let answer_within = ANSWER_WITHIN.max(request_timeout + std::time::Duration::from_secs(5));
    request
        .extensions_mut()
        .insert(ReceiveBy(now + request_timeout));
    request
        .extensions_mut()
        .insert(AnswerBy(now + answer_within));
    next.run(request).await
}

/// The body, whatever its type, up to [`MAX_REQUEST_BYTES`]: a declared length over it is
/// refused before a byte is read.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_REQUEST_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge(MAX_REQUEST_BYTES));
    }
    to_bytes(body, MAX_REQUEST_BYTES).await.map_err(|err| {
        let over_limit = std::error::Error::source(&err)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if over_limit {
            ApiError::PayloadTooLarge(MAX_REQUEST_BYTES)
        } else {
            ApiError::UnreadableBody
        }
    })
}

/// The body as the JSON object `T`. A refusal names the field and what it must hold, never the
/// value: serde_json's own message quotes it (``invalid type: integer `482913` ``), and a
/// one-time code can be that value.
pub fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde also reads a struct from an array; every caller sends an object, so demand one.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::MalformedJson(
            "the body must be a JSON object".into(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let field = field_path(err.path());
        ApiError::MalformedJson(describe(err.inner(), &field))
    })?;
    deserializer
        .end()
        .map_err(|err| ApiError::MalformedJson(describe(&err, "")))?;
    Ok(parsed)
}

/// What is wrong, in words of our own: only the field, the expected type (from our types) and
/// the position are taken from `err`.
fn describe(err: &serde_json::Error, field: &str) -> String {
    let (line, column) = (err.line(), err.column());
    match err.classify() {
        Category::Data => {
            // serde's message without serde_json's position suffix.
            let message = err.to_string();
            let message = message
                .strip_suffix(&format!(" at line {line} column {column}"))
                .unwrap_or(&message);
            describe_data(message, field)
        }
        Category::Eof => "the body ends inside its JSON".into(),
        Category::Syntax | Category::Io => {
            format!("the body is not valid JSON (line {line}, column {column})")
        }
    }
}

/// A value of the wrong type or form at `field`. serde writes these as ``invalid type: <the
/// value>, expected <our type>``: the part after the last ", expected " comes from our own
/// types, the rest may hold the caller's value and is never shown.
fn describe_data(message: &str, field: &str) -> String {
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return format!("`{}` is required", join(field, &field_path_segment(name)));
    }
    if let Some(name) = message
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return format!(
            "`{}` is given twice",
            join(field, &field_path_segment(name))
        );
    }
    let field = if field.is_empty() { "the body" } else { field };
    match message.rsplit_once(", expected ") {
        // Our structs' names are no business of the caller's.
        Some((_, expected)) if expected.starts_with("struct ") => {
            format!("`{field}` must be an object")
        }
        Some((_, expected)) => format!("`{field}` must be {expected}"),
        None => format!("`{field}` has a value it cannot take"),
    }
}

fn join(parent: &str, name: &str) -> String {
    match parent {
        "" => name.to_string(),
        parent => format!("{parent}.{name}"),
    }
}

/// `notification.code`, `[2]`-style indexes included; a key that is not a field name of ours
/// (the caller chose it) is shown as `…`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut joined = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => joined.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                joined = join(&joined, &field_path_segment(key));
            }
            Segment::Unknown => joined = join(&joined, "…"),
        }
    }
    joined
}

/// Field names are short ASCII words starting with a letter or `_`, and none of ours holds a
/// digit; anything else came from the caller (a map's key such as "482913" may be a code).
fn field_path_segment(name: &str) -> String {
    let ours = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-');
    match ours {
        true => name.to_string(),
        false => "…".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        code: String,
        #[serde(default)]
        labels: std::collections::BTreeMap<String, u32>,
    }

    fn refusal(body: &str) -> String {
        match json_object::<Outer>(body.as_bytes()) {
            Err(ApiError::MalformedJson(description)) => description,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_refusal_names_the_field_and_its_type_never_the_value() {
        for (body, expected) in [
            (r#"{"name": 482913}"#, "`name` must be a string"),
            (
                r#"{"name": "n", "inner": {"code": 482913}}"#,
                "`inner.code` must be a string",
            ),
            (
                r#"{"name": "n", "inner": 482913}"#,
                "`inner` must be an object",
            ),
            (r#"{"name": "n", "inner": {}}"#, "`inner.code` is required"),
            (r#"{"name": ["482913"]}"#, "`name` must be a string"),
            (
                r#"{"name": "n", "name": "482913"}"#,
                "`name` is given twice",
            ),
            (r#"{"name": "482913""#, "the body ends inside its JSON"),
            // A map's keys are the caller's: one that is a code is never named.
            (
                r#"{"name": "n", "inner": {"code": "c", "labels": {"482913": "x"}}}"#,
                "`inner.labels.…` must be u32",
            ),
            (
                r#"{"name": "n", "inner": {"code": "c", "labels": {"a482913": "x"}}}"#,
                "`inner.labels.…` must be u32",
            ),
        ] {
            let description = refusal(body);
            assert_eq!(description, expected, "{body}");
            assert!(!description.contains("482913"), "{description}");
        }
    }

    #[test]
    fn a_key_the_caller_chose_is_never_repeated() {
        let description = refusal(r#"{"name": "n", "inner": {"code": "1", "482913": 1}} x"#);
        assert!(!description.contains("482913"), "{description}");
        assert!(description.contains("not valid JSON"), "{description}");
    }
}
