//! AWS SNS's Query API as the SDK speaks it (docs/design.md, "Carriers and failure classes"):
//! a form-encoded `Action=Publish` POST signed with SigV4, which this stand-in verifies with the
//! test key; XML answers.

use std::collections::HashMap;

use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::{Contract, Seen, form_fields};

pub const ACCESS_KEY_ID: &str = "AKIDSMSGATETEST";
pub const SECRET_ACCESS_KEY: &str = "sns-test-secret-access-key";
pub const REGION: &str = "eu-west-1";

struct Sns;

fn xml(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml")], body).into_response()
}

fn sns_error(status: StatusCode, code: &str, message: &str) -> Response {
    let kind = if status.is_server_error() {
        "Receiver"
    } else {
        "Sender"
    };
    xml(
        status,
        format!(
            "<ErrorResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><Error><Type>{kind}</Type>\
             <Code>{code}</Code><Message>{message}</Message></Error><RequestId>r-1</RequestId></ErrorResponse>"
        ),
    )
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Recomputes the SigV4 signature of the request with the test secret.
fn verify_sigv4(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization header")?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or("not SigV4")?;
    let parts: HashMap<&str, &str> = rest
        .split(", ")
        .filter_map(|part| part.split_once('='))
        .collect();
    let credential = parts.get("Credential").ok_or("no Credential")?;
    let signed_headers = parts.get("SignedHeaders").ok_or("no SignedHeaders")?;
    let signature = parts.get("Signature").ok_or("no Signature")?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.len() != 5 || scope[0] != ACCESS_KEY_ID || scope[2] != REGION || scope[3] != "sns" {
        return Err(format!("unexpected credential scope {credential}"));
    }
    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("no X-Amz-Date")?;
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let value = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("signed header {name} missing"))?;
        canonical_headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let payload_hash = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| hex::encode(Sha256::digest(body)));
    let canonical_request =
        format!("{method}\n{path}\n\n{canonical_headers}\n{signed_headers}\n{payload_hash}");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{}/{}/{}/{}\n{}",
        scope[1],
        scope[2],
        scope[3],
        scope[4],
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{SECRET_ACCESS_KEY}").as_bytes(), scope[1]);
    let k_region = hmac(&k_date, REGION);
    let k_service = hmac(&k_region, "sns");
    let k_signing = hmac(&k_service, "aws4_request");
    let expected = hex::encode(hmac(&k_signing, &string_to_sign));
    if &expected == signature {
        Ok(())
    } else {
        Err("signature does not match".into())
    }
}

impl Contract for Sns {
    fn check(&self, seen: &Seen) -> Result<HashMap<String, String>, Response> {
        if seen.method != Method::POST {
            return Err(sns_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "InvalidAction",
                "POST only",
            ));
        }
        verify_sigv4(&seen.method, seen.uri.path(), &seen.headers, &seen.body)
            .map_err(|reason| sns_error(StatusCode::FORBIDDEN, "SignatureDoesNotMatch", &reason))?;
        let form = form_fields(&seen.body);
        if form.get("Action").map(String::as_str) != Some("Publish") {
            return Err(sns_error(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                "only Publish",
            ));
        }
        let Some(message) = form.get("Message") else {
            return Err(sns_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                "Message is required",
            ));
        };
        let phone = form.get("PhoneNumber").cloned().unwrap_or_default();
        let digits = phone.trim_start_matches('+');
        if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(sns_error(
                StatusCode::BAD_REQUEST,
                "InvalidParameter",
                "Invalid parameter: PhoneNumber Reason: does not meet the E164 format",
            ));
        }
        let mut fields = HashMap::from([
            ("to".to_string(), phone),
            ("message".to_string(), message.clone()),
        ]);
        // MessageAttributes.entry.N.Name / .Value.DataType / .Value.StringValue
        for n in 1..=10 {
            let prefix = format!("MessageAttributes.entry.{n}");
            let Some(name) = form.get(&format!("{prefix}.Name")) else {
                break;
            };
            let data_type = form
                .get(&format!("{prefix}.Value.DataType"))
                .cloned()
                .unwrap_or_default();
            if data_type != "String" {
                return Err(sns_error(
                    StatusCode::BAD_REQUEST,
                    "InvalidParameter",
                    "attribute data type",
                ));
            }
            let value = form
                .get(&format!("{prefix}.Value.StringValue"))
                .cloned()
                .unwrap_or_default();
            fields.insert(format!("attr:{name}"), value);
        }
        Ok(fields)
    }

    fn success(&self, _seen: &Seen) -> Response {
        xml(
            StatusCode::OK,
            format!(
                "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult>\
                 <MessageId>{}</MessageId></PublishResult><ResponseMetadata><RequestId>r-1</RequestId>\
                 </ResponseMetadata></PublishResponse>",
                uuid::Uuid::now_v7()
            ),
        )
    }

    fn error(&self, status: StatusCode, code: &str) -> Response {
        let message = if code == "InvalidParameter" {
            "Invalid parameter: PhoneNumber Reason: +14155552671 is not valid to publish to"
        } else {
            "scripted failure"
        };
        sns_error(status, code, message)
    }
}

carrier_standin!(SnsStandIn, Sns, sns_toml);

pub fn sns_toml(name: &str, endpoint_url: &str) -> String {
    format!(
        "[carriers.{name}]\nkind = \"sns\"\nregion = \"{REGION}\"\nendpoint_url = \"{endpoint_url}\"\n\
         access_key_id = \"{ACCESS_KEY_ID}\"\nsecret_access_key = \"{SECRET_ACCESS_KEY}\"\n\
         sender_id = \"ACME\"\ntimeout_ms = 2000\nconnect_timeout_ms = 1000\n"
    )
}
