//! `POST /v1/auth0/phone-provider`: what Auth0 Actions forward. Tenants created since March
//! 2025 send SMS through a tenant-level custom phone provider (the `custom-phone-provider`
//! Action, `event.notification`), and MFA through the `send-phone-message` Action
//! (`event.message_options`); docs/design.md, "The path of a request". Both are told apart by
//! their keys and mapped to the same message as the legacy body, then validated by the same rules.
//!
//! The custom phone provider may run its Action again (`api.notification.retry`, up to five
//! times), so a request is idempotent: on the caller's `Idempotency-Key` header, or else on a
//! key derived from the notification when it carries a code.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ApiError;
use super::ingress::{DERIVED_PREFIX, ForwardedRequest, LegacySmsRequest, invalid, validate};
use crate::domain::{Channel, NewMessage};

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ActionRequest {
    #[serde(default)]
    notification: Option<Notification>,
    #[serde(default)]
    message_options: Option<MessageOptions>,
    #[serde(default)]
    request: Option<ActionRequestInfo>,
}

/// `event.notification` of the custom-phone-provider Action.
#[derive(Deserialize, utoipa::ToSchema)]
struct Notification {
    recipient: String,
    #[serde(default)]
    as_text: Option<String>,
    #[serde(default)]
    as_voice: Option<String>,
    #[serde(default)]
    delivery_method: Option<String>,
    #[serde(default)]
    locale: Option<String>,
    #[serde(default)]
    message_type: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    from: Option<String>,
}

/// `event.message_options` of the send-phone-message Action.
#[derive(Deserialize, utoipa::ToSchema)]
struct MessageOptions {
    recipient: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message_type: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

/// `event.request` as Actions have it (`user_agent`, not the legacy `user-agent`).
#[derive(Deserialize, utoipa::ToSchema)]
struct ActionRequestInfo {
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
}

/// The parts both shapes share, before validation.
struct Mapped {
    recipient: String,
    text: Option<String>,
    sender: Option<String>,
    voice: bool,
    locale: Option<String>,
    /// What the notification is for (its type or MFA action) and its code: with the
    /// recipient and text, they identify one notification across the Action's retries.
    kind: Option<String>,
    code: Option<String>,
}

/// Parses either Action shape into the message it asks for.
#[utoipa::path(
    post, path = "/v1/auth0/phone-provider", tag = "ingress",
    summary = "What an Auth0 Action forwards (custom phone provider, or send-phone-message)",
    description = "Either `notification` (the custom phone provider) or `message_options` \
                   (send-phone-message), not both.",
    security(("auth0" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Up to 255 visible ASCII characters; without one, a notification's code \
                        gives the key"),
        ("traceparent" = Option<String>, Header,
         description = "W3C Trace Context: the message joins the caller's trace (an invalid one is ignored)"),
    ),
    request_body(content = ActionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed to the database; it will be sent",
         body = super::ingress::Accepted),
        super::error::IngressRefusals,
    )
)]
pub fn parse_action_request(bytes: &[u8], signer: Option<String>) -> Result<NewMessage, ApiError> {
    let parsed: ActionRequest = super::extract::json_object(bytes)?;
    let mapped = match (parsed.notification, parsed.message_options) {
        (Some(n), None) => {
            let voice = n.delivery_method.as_deref() == Some("voice");
            Mapped {
                voice,
                kind: n.message_type,
                code: n.code,
                recipient: n.recipient,
                // A call speaks `as_voice` (Auth0 writes it for the ear); `as_text` if absent.
                text: match voice {
                    true => n.as_voice.filter(|t| !t.trim().is_empty()).or(n.as_text),
                    false => n.as_text,
                },
                sender: n.from,
                locale: n.locale,
            }
        }
        (None, Some(o)) => Mapped {
            voice: o.message_type.as_deref() == Some("voice"),
            kind: o.action,
            code: o.code,
            recipient: o.recipient,
            text: o.text,
            sender: None,
            locale: None,
        },
        (Some(_), Some(_)) => {
            return Err(ApiError::MalformedJson(
                "send either notification or message_options, not both".into(),
            ));
        }
        (None, None) => {
            return Err(ApiError::MalformedJson(
                "expected notification (custom phone provider) or message_options \
                 (send-phone-message)"
                    .into(),
            ));
        }
    };
    let text = mapped
        .text
        .ok_or_else(|| invalid("invalid_body", "the message text is missing"))?;
    // A call and a text of one notification are two messages: the channel is in the key.
    let kind = match (mapped.voice, mapped.kind.as_deref().unwrap_or("")) {
        (true, kind) => format!("voice:{kind}"),
        (false, kind) => kind.to_string(),
    };
    let key = mapped
        .code
        .as_deref()
        .map(|code| derived_key(&[&mapped.recipient, &kind, code, &text]));
    let legacy = LegacySmsRequest {
        recipient: mapped.recipient,
        body: text,
        sender: mapped.sender,
        req: parsed.request.map(|r| ForwardedRequest {
            ip: r.ip,
            user_agent: r.user_agent,
        }),
    };
    let mut message = validate(legacy, signer)?;
    message.idempotency_key = key;
    if mapped.voice {
        message.channel = Channel::Voice;
    }
    message.locale = mapped.locale.filter(|l| is_locale(l));
    Ok(message)
}

/// A BCP 47-like tag as Auth0 sends it ("en_US", "fr", "pt-BR"): letters, `_` and `-`, short.
fn is_locale(tag: &str) -> bool {
    (2..=16).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A retried notification carries the same recipient, type, code and text: their digest is
/// its key. The code never leaves the process in clear.
fn derived_key(parts: &[&str; 4]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    format!("{DERIVED_PREFIX}{}", hex::encode(digest.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: serde_json::Value) -> Result<NewMessage, ApiError> {
        parse_action_request(json.to_string().as_bytes(), Some("a".into()))
    }

    #[test]
    fn both_shapes_map_to_the_same_message() {
        let notification = parse(serde_json::json!({
            "notification": {"recipient": "+14155552671", "as_text": "Code 123456",
                             "delivery_method": "text", "message_type": "otp_verify",
                             "code": "123456", "from": "+15005550006"},
            "request": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}
        }))
        .expect("valid");
        let options = parse(serde_json::json!({
            "message_options": {"recipient": "+14155552671", "text": "Code 123456",
                                "message_type": "sms", "code": "123456", "action": "enrollment"}
        }))
        .expect("valid");
        assert_eq!(notification.recipient, options.recipient);
        assert_eq!(notification.body.as_str(), options.body.as_str());
        assert_eq!(notification.sender.as_deref(), Some("+15005550006"));
        assert_eq!(
            notification.request.user_agent.as_deref(),
            Some("Mozilla/5.0")
        );
        assert!(notification.idempotency_key.is_some() && options.idempotency_key.is_some());
        assert_ne!(notification.idempotency_key, options.idempotency_key);
    }

    #[test]
    fn the_derived_key_follows_the_code_and_hides_it() {
        let with_code = |code: &str| {
            parse(
                serde_json::json!({"notification": {"recipient": "+14155552671",
                "as_text": "Code", "message_type": "otp_verify", "code": code}}),
            )
            .expect("valid")
            .idempotency_key
            .expect("derived")
        };
        assert_eq!(with_code("111111"), with_code("111111"));
        assert_ne!(with_code("111111"), with_code("222222"));
        assert!(!with_code("111111").contains("111111"));
        let without_code = parse(
            serde_json::json!({"notification": {"recipient": "+14155552671",
            "as_text": "Your account was blocked", "message_type": "blocked_account"}}),
        )
        .expect("valid");
        assert_eq!(without_code.idempotency_key, None);
    }
}
