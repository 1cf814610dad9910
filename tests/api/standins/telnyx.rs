//! Telnyx's Messaging API v2 (docs/research/telnyx-messaging.md): `POST /v2/messages` with
//! JSON and `Authorization: Bearer <API key>`; 200 `{"data": {"id", "to": [{…}], …}}`;
//! errors `{"errors": [{"code": "<digits>", "title", "detail"}]}`, 429 with code 10011.

use std::collections::HashMap;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Contract, Seen};

pub const API_TOKEN: &str = "KEY0123456789ABCDEF_telnyx-test";
pub const PROFILE_ID: &str = "4000eba1-a0c0-4563-9925-b25e842a7cb6";

struct Telnyx;

fn telnyx_error(status: StatusCode, code: &str, title: &str, detail: &str) -> Response {
    let body = json!({"errors": [{"code": code, "title": title, "detail": detail}]});
    (status, axum::Json(body)).into_response()
}

fn invalid(code: &str, title: &str, pointer: &str) -> Response {
    let body = json!({"errors": [{"code": code, "title": title, "source": {"pointer": pointer}}]});
    (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(body)).into_response()
}

impl Contract for Telnyx {
    fn check(&self, seen: &Seen) -> Result<HashMap<String, String>, Response> {
        if seen.method != Method::POST || seen.uri.path() != "/v2/messages" {
            return Err(telnyx_error(
                StatusCode::NOT_FOUND,
                "10005",
                "Resource not found",
                "",
            ));
        }
        let bearer = seen
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer != Some(API_TOKEN) {
            return Err(telnyx_error(
                StatusCode::UNAUTHORIZED,
                "10009",
                "Authentication failed",
                "The API key is missing or invalid.",
            ));
        }
        let json = seen
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(invalid("10015", "Bad Request", "/"));
        }
        let body: Value =
            serde_json::from_slice(&seen.body).map_err(|_| invalid("10015", "Bad Request", "/"))?;
        // `to` is a string on the way in (an array only in answers).
        let to = body["to"]
            .as_str()
            .ok_or_else(|| invalid("10004", "Missing required parameter", "/to"))?;
        let digits = to.trim_start_matches('+');
        if !to.starts_with('+') || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(invalid("40310", "Invalid 'to' address", "/to"));
        }
        let text = body["text"].as_str().unwrap_or_default();
        if text.is_empty() {
            return Err(invalid("40316", "No content provided", "/text"));
        }
        let from = body["from"].as_str();
        let profile = body["messaging_profile_id"].as_str();
        let alphanumeric = from.is_some_and(|f| !f.starts_with('+'));
        if (from.is_none() || alphanumeric) && profile.is_none() {
            return Err(invalid(
                "10004",
                "Missing required parameter",
                "/messaging_profile_id",
            ));
        }
        if profile.is_some_and(|p| p != PROFILE_ID) {
            return Err(invalid(
                "10005",
                "Resource not found",
                "/messaging_profile_id",
            ));
        }
        let mut fields = HashMap::from([
            ("to".to_string(), to.to_string()),
            ("text".to_string(), text.to_string()),
        ]);
        for key in ["from", "messaging_profile_id", "type", "webhook_url"] {
            if let Some(value) = body[key].as_str() {
                fields.insert(key.to_string(), value.to_string());
            }
        }
        Ok(fields)
    }

    fn success(&self, seen: &Seen) -> Response {
        let body: Value = serde_json::from_slice(&seen.body).unwrap_or_default();
        let data = json!({
            "record_type": "message",
            "direction": "outbound",
            "id": uuid::Uuid::now_v7().to_string(),
            "type": "SMS",
            "messaging_profile_id": body["messaging_profile_id"],
            "from": {"phone_number": body["from"], "carrier": "TELNYX LLC", "line_type": "VoIP"},
            "to": [{"phone_number": body["to"], "status": "queued", "carrier": "", "line_type": "Wireless"}],
            "text": body["text"],
            "parts": 1,
            "errors": [],
        });
        (StatusCode::OK, axum::Json(json!({"data": data}))).into_response()
    }

    /// `code` is Telnyx's error code (`"40300"`, `"10011"`, …) with this status.
    fn error(&self, status: StatusCode, code: &str) -> Response {
        telnyx_error(status, code, "scripted failure", "a scripted Telnyx error")
    }
}

carrier_standin!(TelnyxStandIn, Telnyx, telnyx_toml);

pub fn telnyx_toml(name: &str, base_url: &str) -> String {
    format!(
        "[carriers.{name}]\nkind = \"telnyx\"\napi_token = \"{API_TOKEN}\"\n\
         messaging_profile_id = \"{PROFILE_ID}\"\nbase_url = \"{base_url}\"\n\
         timeout_ms = 2000\nconnect_timeout_ms = 1000\n"
    )
}
