//! MessageMedia's Messages API (docs/design.md, "Carriers and failure classes"):
//! `POST /v1/messages` with JSON and Basic auth; 202 echoing the messages with `message_id`;
//! errors `{"message", "details"}`.

use std::collections::HashMap;

use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Contract, Seen, basic_credentials};

pub const API_KEY: &str = "mm-test-key";
pub const API_SECRET: &str = "mm-test-secret";

struct MessageMedia;

fn mm_error(status: StatusCode, message: &str, details: &[&str]) -> Response {
    (
        status,
        axum::Json(json!({"message": message, "details": details})),
    )
        .into_response()
}

fn invalid(detail: &str) -> Response {
    mm_error(
        StatusCode::BAD_REQUEST,
        "Request failed to parse correctly. Please ensure input is valid and try again.",
        &[detail],
    )
}

impl Contract for MessageMedia {
    fn check(&self, seen: &Seen) -> Result<HashMap<String, String>, Response> {
        if seen.method != Method::POST || seen.uri.path() != "/v1/messages" {
            return Err(mm_error(StatusCode::NOT_FOUND, "Not found", &[]));
        }
        if basic_credentials(&seen.headers) != Some(format!("{API_KEY}:{API_SECRET}")) {
            return Err(mm_error(
                StatusCode::UNAUTHORIZED,
                "Invalid authentication credentials",
                &[],
            ));
        }
        let json = seen
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(mm_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                &[],
            ));
        }
        let body: Value =
            serde_json::from_slice(&seen.body).map_err(|_| invalid("body is not JSON"))?;
        let messages = body["messages"]
            .as_array()
            .ok_or_else(|| invalid("/messages: required"))?;
        if messages.is_empty() || messages.len() > 100 {
            return Err(invalid("/messages: between 1 and 100 messages"));
        }
        let message = &messages[0];
        let content = message["content"].as_str().unwrap_or_default();
        if content.is_empty() || content.chars().count() > 5000 {
            return Err(invalid(
                "/messages/0/content: must be between 1 and 5000 characters",
            ));
        }
        // The OpenAPI's formats (SMS, MMS, TTS), and VOICE, which smsgate sends by default.
        let format = message["format"].as_str().unwrap_or("SMS");
        if !["SMS", "MMS", "TTS", "VOICE"].contains(&format) {
            return Err(invalid("/messages/0/format: must be one of SMS, MMS, TTS"));
        }
        let destination = message["destination_number"].as_str().unwrap_or_default();
        let digits = destination.trim_start_matches('+');
        if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "/messages/0/destination_number: International address must be between 8 and 15 characters excluding the first '+'",
            ));
        }
        let mut fields = HashMap::from([
            ("to".to_string(), destination.to_string()),
            ("content".to_string(), content.to_string()),
            ("messages".to_string(), messages.len().to_string()),
        ]);
        for key in [
            "source_number",
            "source_number_type",
            "format",
            "message_expiry_timestamp",
            "callback_url",
        ] {
            if let Some(value) = message[key].as_str() {
                fields.insert(key.to_string(), value.to_string());
            }
        }
        if let Some(report) = message["delivery_report"].as_bool() {
            fields.insert("delivery_report".to_string(), report.to_string());
        }
        Ok(fields)
    }

    fn success(&self, seen: &Seen) -> Response {
        let mut message: Value = serde_json::from_slice::<Value>(&seen.body)
            .map(|b| b["messages"][0].clone())
            .unwrap_or_default();
        message["message_id"] = json!(uuid::Uuid::now_v7().to_string());
        message["status"] = json!("queued");
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({"messages": [message]})),
        )
            .into_response()
    }

    /// `code = "destination"` scripts the 400 a bad number gets; anything else a plain error.
    fn error(&self, status: StatusCode, code: &str) -> Response {
        if code == "destination" {
            return invalid("/messages/0/destination_number: is not a valid phone number");
        }
        mm_error(status, "scripted failure", &[])
    }
}

carrier_standin!(MessageMediaStandIn, MessageMedia, messagemedia_toml);

pub fn messagemedia_toml(name: &str, base_url: &str) -> String {
    format!(
        "[carriers.{name}]\nkind = \"messagemedia\"\napi_key = \"{API_KEY}\"\n\
         api_secret = \"{API_SECRET}\"\nbase_url = \"{base_url}\"\n\
         timeout_ms = 2000\nconnect_timeout_ms = 1000\n"
    )
}
