//! `[telemetry]`: traces sent to an OpenTelemetry collector over OTLP/HTTP, with its checks.

use serde::{Deserialize, Serialize};

use super::Config;

/// `[telemetry]`: off unless `otlp_endpoint` is set.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP address (e.g. "http://otel-collector:4318"); spans are
    /// posted to its `/v1/traces`. No traces are exported when unset.
    pub otlp_endpoint: Option<String>,
    /// How spans are encoded on the wire.
    pub otlp_protocol: OtlpProtocol,
    /// The `service.name` resource attribute of every span.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            service_name: "smsgate".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// Protocol buffers, OTLP's default encoding.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP's JSON encoding.
    #[serde(rename = "http/json")]
    HttpJson,
}

/// The longest endpoint accepted: an address, not a document.
const MAX_ENDPOINT_CHARS: usize = 2048;

impl Config {
    pub(super) fn validate_telemetry(&self, problem: &mut impl FnMut(String, String)) {
        let telemetry = &self.telemetry;
        if let Some(endpoint) = &telemetry.otlp_endpoint {
            let parsed = reqwest::Url::parse(endpoint);
            // Exactly as written: a space or a fragment would lose every span, and
            // credentials in the address would be printed by check-config.
            let usable = endpoint.len() <= MAX_ENDPOINT_CHARS
                && endpoint.trim() == endpoint
                && parsed.as_ref().is_ok_and(|url| {
                    matches!(url.scheme(), "http" | "https")
                        && url.host_str().is_some()
                        && url.query().is_none()
                        && url.fragment().is_none()
                        && url.username().is_empty()
                        && url.password().is_none()
                });
            if !usable {
                problem(
                    "telemetry.otlp_endpoint".into(),
                    "must be an http:// or https:// address without spaces, query, fragment \
                     or credentials, e.g. http://otel-collector:4318"
                        .into(),
                );
            }
        }
        let name = telemetry.service_name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            problem(
                "telemetry.service_name".into(),
                "must be 1 to 128 printable characters".into(),
            );
        }
    }
}
