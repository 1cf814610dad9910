//! What the HTTP carriers share: one connection pool per distinct connect timeout (so, with
//! the defaults, one pool for all), and the mapping of transport errors and `Retry-After`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{DATE, HeaderMap, RETRY_AFTER};

use super::{FailureClass, SendError};

/// reqwest sets the connect timeout per client, so carriers with equal timeouts share one.
#[derive(Default)]
pub struct HttpClients {
    by_connect_timeout: HashMap<Duration, reqwest::Client>,
}

impl HttpClients {
    pub fn get(&mut self, connect_timeout: Duration) -> anyhow::Result<reqwest::Client> {
        if let Some(client) = self.by_connect_timeout.get(&connect_timeout) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .user_agent(concat!("smsgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the carriers' HTTP client")?;
        self.by_connect_timeout
            .insert(connect_timeout, client.clone());
        Ok(client)
    }
}

/// Timeouts and transport failures (refused, reset, TLS) never reached a verdict. Only a
/// failure to connect says the carrier cannot have the message; after connecting, the
/// request may have reached it (`unanswered`).
pub fn transport_error(err: reqwest::Error) -> SendError {
    let unanswered = !err.is_connect();
    let class = if err.is_timeout() {
        FailureClass::Timeout
    } else {
        FailureClass::Carrier
    };
    // Without the URL: it may hold an account id, and the cause chain says enough.
    let err = err.without_url();
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    SendError {
        unanswered,
        ..SendError::new(class, message)
    }
}

/// A carrier's answer, read whole: its status, `Retry-After` and body.
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub retry_after: Option<Duration>,
    pub body: axum::body::Bytes,
}

/// Sends `request` within `timeout` and reads the answer; transport failures are classified.
/// With `trace`, the request carries it as W3C `traceparent` (a carrier that traces may join
/// the message's trace; one that does not ignores the header).
pub async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
    trace: Option<&crate::domain::TraceContext>,
) -> Result<Answer, SendError> {
    let request = match trace {
        Some(trace) => request.header("traceparent", trace.to_string()),
        None => request,
    };
    let response = request
        .timeout(timeout)
        .send()
        .await
        .map_err(transport_error)?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = match response.bytes().await {
        Ok(body) => body,
        // A success status is the carrier's verdict even when its body then breaks off or
        // trickles past the timeout: failing over would send the code twice.
        Err(err) if status.is_success() => {
            tracing::warn!(
                status = status.as_u16(),
                error = %transport_error(err).message,
                "the carrier accepted but its answer broke off; taken as sent without an id"
            );
            axum::body::Bytes::new()
        }
        Err(err) => return Err(transport_error(err)),
    };
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

/// The `Retry-After` of an HTTP answer: see [`retry_after_of`].
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    retry_after_of(header(RETRY_AFTER), header(DATE))
}

/// Every carrier's `Retry-After` (through `reqwest` or an SDK alike): delay-seconds or an HTTP-date
/// (RFC 9110 §10.2.3), at most [`super::MAX_RETRY_AFTER`] so a carrier's number never
/// overflows a clock. A date is measured against the answer's own `Date` header, the
/// carrier's clock (§6.6.1), never the gateway's: a gateway clock that is off would retry
/// early or late by its skew. Without a `Date`, a date form gives no delay (the retry policy
/// decides). A date at or before `Date` means now.
pub fn retry_after_of(value: Option<&str>, date: Option<&str>) -> Option<Duration> {
    let value = value?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            let sent = httpdate::parse_http_date(date?.trim()).ok()?;
            at.duration_since(sent).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(super::MAX_RETRY_AFTER))
}

/// The class every HTTP carrier gives a status it has no more specific code for.
pub fn class_of_status(status: reqwest::StatusCode) -> FailureClass {
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        FailureClass::Throttled
    } else {
        FailureClass::Carrier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, value.parse().expect("a header value"));
        headers.insert(
            DATE,
            "Mon, 30 Nov 2026 01:00:00 GMT".parse().expect("a date"),
        );
        headers
    }

    #[test]
    fn an_http_date_is_measured_against_the_answers_date_not_our_clock() {
        let later = Some("Mon, 30 Nov 2026 01:00:05 GMT");
        assert_eq!(
            retry_after_of(later, Some("Mon, 30 Nov 2026 01:00:00 GMT")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(retry_after_of(later, None), None, "no reference, no delay");
        assert_eq!(
            retry_after_of(Some("7"), None),
            Some(Duration::from_secs(7))
        );
        assert_eq!(retry_after_of(later, Some("garbage")), None);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates_and_caps_both() {
        let at = |value: &str| retry_after(&headers(value));
        assert_eq!(at("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            at("Mon, 30 Nov 2026 01:02:30 GMT"),
            Some(Duration::from_secs(150))
        );
        assert_eq!(at("Sun, 29 Nov 2026 23:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(at("99999999999999"), Some(super::super::MAX_RETRY_AFTER));
        assert_eq!(
            at("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(super::super::MAX_RETRY_AFTER)
        );
        assert_eq!(at("soon"), None);
        assert_eq!(at("-5"), None);
    }
}
