//! Twilio's create-Message and create-Call contracts (docs/design.md, "Carriers and failure
//! classes"): form-encoded POST with Basic auth to `/2010-04-01/Accounts/{sid}/Messages.json`
//! or `…/Calls.json`, 201 with the resource, JSON errors `{code, message, more_info, status}`.
//! A call must name `To` and `From` and its instructions (`Url`, `Twiml` or `ApplicationSid`),
//! and only parameters of Twilio's OpenAPI description are accepted.

use std::collections::HashMap;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Contract, Seen, basic_credentials, form_fields};

pub use super::Reply;

pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "twilio-test-auth-token";
pub const FROM: &str = "+15005550006";

struct Twilio;

fn twilio_error(status: StatusCode, code: &str, message: &str) -> Response {
    let code: u64 = code.parse().unwrap_or_default();
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

impl Contract for Twilio {
    fn check(&self, seen: &Seen) -> Result<HashMap<String, String>, Response> {
        let messages = format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json");
        let calls = format!("/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json");
        let path = seen.uri.path();
        if seen.method != Method::POST || (path != messages && path != calls) {
            return Err(twilio_error(StatusCode::NOT_FOUND, "20404", "not found"));
        }
        if basic_credentials(&seen.headers) != Some(format!("{ACCOUNT_SID}:{AUTH_TOKEN}")) {
            return Err(twilio_error(
                StatusCode::UNAUTHORIZED,
                "20003",
                "Authenticate",
            ));
        }
        let form = seen
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !form {
            return Err(twilio_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "415",
                "Unsupported Media Type",
            ));
        }
        let mut fields = form_fields(&seen.body);
        if path == calls {
            return check_call(fields);
        }
        if !fields.contains_key("To") || !fields.contains_key("Body") {
            return Err(twilio_error(
                StatusCode::BAD_REQUEST,
                "21604",
                "A 'To' phone number is required.",
            ));
        }
        if !fields.contains_key("From") && !fields.contains_key("MessagingServiceSid") {
            return Err(twilio_error(
                StatusCode::BAD_REQUEST,
                "21603",
                "A 'From' phone number is required.",
            ));
        }
        if let Some(to) = fields.get("To").cloned() {
            fields.insert("to".into(), to);
        }
        Ok(fields)
    }

    fn success(&self, seen: &Seen) -> Response {
        if seen.uri.path().ends_with("/Calls.json") {
            let sid = format!("CA{}", uuid::Uuid::now_v7().simple());
            let resource = json!({
                "sid": sid, "status": "queued", "to": seen.fields.get("To"),
                "from": seen.fields.get("From"), "direction": "outbound-api",
            });
            return (StatusCode::CREATED, axum::Json(resource)).into_response();
        }
        let sid = format!("SM{}", uuid::Uuid::now_v7().simple());
        let resource = json!({
            "sid": sid, "status": "queued", "to": seen.fields.get("To"),
            "body": seen.fields.get("Body"), "num_segments": "1", "direction": "outbound-api",
        });
        (StatusCode::CREATED, axum::Json(resource)).into_response()
    }

    fn error(&self, status: StatusCode, code: &str) -> Response {
        twilio_error(status, code, "scripted failure")
    }
}

/// The create-Call parameters of Twilio's OpenAPI description (api_v2010, `CreateCall`) that
/// smsgate may use; anything else is refused as the real API would not know it.
const CALL_PARAMETERS: [&str; 6] = [
    "To",
    "From",
    "Twiml",
    "Url",
    "ApplicationSid",
    "StatusCallback",
];

fn check_call(mut fields: HashMap<String, String>) -> Result<HashMap<String, String>, Response> {
    if let Some(unknown) = fields
        .keys()
        .find(|k| !CALL_PARAMETERS.contains(&k.as_str()))
    {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            "21201",
            &format!("unknown parameter {unknown}"),
        ));
    }
    if !fields.contains_key("To") || !fields.contains_key("From") {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            "21201",
            "No 'To' or 'From' number is specified",
        ));
    }
    if !["Url", "Twiml", "ApplicationSid"]
        .iter()
        .any(|k| fields.contains_key(*k))
    {
        return Err(twilio_error(
            StatusCode::BAD_REQUEST,
            "21205",
            "Url parameter is required.",
        ));
    }
    if let Some(to) = fields.get("To").cloned() {
        fields.insert("to".into(), to);
    }
    fields.insert("call".into(), "true".into());
    Ok(fields)
}

/// A request Twilio took or refused, in Twilio's terms.
#[derive(Clone, Debug)]
pub struct Received {
    pub to: String,
    pub body: String,
    pub from: Option<String>,
    pub validity_period: Option<u64>,
    pub at: std::time::Instant,
}

carrier_standin!(TwilioStandIn, Twilio, twilio_toml);

impl TwilioStandIn {
    /// Requests that passed the contract check.
    pub fn received(&self) -> Vec<Received> {
        self.seen()
            .into_iter()
            .filter(|s| s.fields.contains_key("to"))
            .map(|s| Received {
                to: s.fields.get("To").cloned().unwrap_or_default(),
                body: s.fields.get("Body").cloned().unwrap_or_default(),
                from: s.fields.get("From").cloned(),
                validity_period: s.fields.get("ValidityPeriod").and_then(|v| v.parse().ok()),
                at: s.at,
            })
            .collect()
    }
}

pub fn twilio_toml(name: &str, base_url: &str) -> String {
    format!(
        "[carriers.{name}]\nkind = \"twilio\"\naccount_sid = \"{ACCOUNT_SID}\"\n\
         auth_token = \"{AUTH_TOKEN}\"\nfrom = \"{FROM}\"\nbase_url = \"{base_url}\"\n\
         timeout_ms = 3000\nconnect_timeout_ms = 1000\n"
    )
}
