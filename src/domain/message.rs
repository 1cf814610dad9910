//! A message as the ingress accepted it, and the states it moves through.

use std::fmt;
use std::net::IpAddr;

use uuid::Uuid;

use super::PhoneNumber;

/// Longest body accepted, in characters: ten concatenated GSM-7 segments.
pub const MAX_BODY_CHARS: usize = 1600;

/// Time-ordered (UUIDv7) so new rows land at the right edge of the primary key index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(text: &str) -> Option<Self> {
        Uuid::try_parse(text).ok().map(Self)
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The text to send. It holds a one-time code, so `Debug` shows it with digits masked.
#[derive(Clone, PartialEq, Eq)]
pub struct MessageBody(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body is empty")]
    Empty,
    #[error("body is longer than {MAX_BODY_CHARS} characters")]
    TooLong,
    #[error("body contains a NUL character")]
    Nul,
}

impl MessageBody {
    pub fn parse(text: String) -> Result<Self, BodyError> {
        if text.trim().is_empty() {
            return Err(BodyError::Empty);
        }
        if text.chars().count() > MAX_BODY_CHARS {
            return Err(BodyError::TooLong);
        }
        // PostgreSQL text cannot hold NUL; refusing it here keeps it a 400, not a 503.
        if text.contains('\0') {
            return Err(BodyError::Nul);
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The body with every digit replaced by `*`, safe for logs and for retention.
    pub fn redacted(&self) -> String {
        redact_digits(&self.0)
    }
}

impl fmt::Debug for MessageBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageBody({:?})", self.redacted())
    }
}

/// Masks every numeral, which is where one-time codes live: every character Unicode calls a
/// number (decimal digits of any script, fullwidth, circled, Roman and other numeral forms),
/// and the Chinese and Japanese numeral ideographs, which Unicode files as letters.
///
/// ```
/// assert_eq!(smsgate::domain::redact_digits("Your code is 123456"), "Your code is ******");
/// ```
pub fn redact_digits(text: &str) -> String {
    text.chars()
        .map(|c| if is_numeral(c) { '*' } else { c })
        .collect()
}

/// CJK ideographs used as numerals: the common forms (〇 is already a number to Unicode), 幺 (one,
/// as phone numbers are read aloud) and the financial forms (simplified and traditional) a code
/// can be written in. Masking them blanks
/// some ordinary words too (一 is also "one" in 一起): a log line loses meaning, a code does not
/// leak.
const CJK_NUMERALS: &str = "零一二三四五六七八九十百千万萬两兩幺壹贰貳叁參肆伍陆陸柒捌玖拾佰仟";

fn is_numeral(c: char) -> bool {
    c.is_numeric() || CJK_NUMERALS.contains(c)
}

/// Characters that reorder or hide the text around them (Unicode's bidirectional formatting
/// characters: embeddings and overrides, isolates, the directional marks). In a sender a
/// right-to-left override shows the recipient another name than the one sent.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// What Auth0 forwards about the end user's request when `forward_req_info` is on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

/// A validated message, ready to be queued.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: MessageId,
    pub recipient: PhoneNumber,
    pub body: MessageBody,
    pub sender: Option<String>,
    pub request: RequestInfo,
    /// The `[auth0.<name>]` signer that authenticated the request, if any.
    pub signer: Option<String>,
    /// A retried request with the same key (scoped to its signer) gets the same message.
    pub idempotency_key: Option<String>,
    /// With a key: a keyed digest of what the request asked for (recipient, body, sender), so a
    /// key reused for another message is told apart without storing anything a code can be
    /// recovered from.
    pub fingerprint: Option<String>,
    /// What the fraud and cost guard learned about it at the ingress.
    pub guard: Assessment,
    /// A text message, or a call that speaks the body.
    pub channel: Channel,
    /// BCP 47 locale of the text (Auth0's `locale`), for the voice a call speaks in.
    pub locale: Option<String>,
    /// The ingress's place in the request's trace (W3C Trace Context), stored with it.
    pub trace: Option<super::TraceContext>,
}

/// How a message reaches its recipient.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    #[default]
    Sms,
    Voice,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Voice => "voice",
        }
    }

    /// A stored value; anything unknown is read as SMS (rows older than the column).
    pub fn parse(text: &str) -> Self {
        match text {
            "voice" => Channel::Voice,
            _ => Channel::Sms,
        }
    }
}

/// A message's destination country and estimated cost, when the guard needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// ISO 3166-1 alpha-2; `None` when not needed or the number has no country.
    pub country: Option<String>,
    /// In millionths of `[spend] currency`; `None` when no price applies.
    pub estimated_cost: Option<i64>,
}

/// Why a report says a message was not delivered: whether another carrier may do better.
/// Each kind classifies its own published codes (docs/carriers.md, "Why a message was not
/// delivered"); a code it does not know is a route failure, since only a failure the number
/// itself causes makes another carrier pointless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFailure {
    /// The carrier or the network failed it (unreachable, filtered, expired in a queue,
    /// unknown): another carrier may deliver it.
    Route,
    /// The number cannot take it (invalid, unallocated, a landline, opted out): no carrier
    /// will.
    Recipient,
}

impl DeliveryFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryFailure::Route => "route",
            DeliveryFailure::Recipient => "recipient",
        }
    }

    /// The class of an undelivered report whose code is among `recipient_codes`, or not.
    /// The code is read as it is stored: without control characters or spaces.
    pub fn of_code(code: Option<&str>, recipient_codes: &[&str]) -> Self {
        let cleaned: Option<String> = code.map(|code| {
            code.chars()
                .filter(|c| !c.is_control() && !c.is_whitespace())
                .collect()
        });
        match cleaned {
            Some(code) if recipient_codes.contains(&code.as_str()) => DeliveryFailure::Recipient,
            _ => DeliveryFailure::Route,
        }
    }
}

/// Where a message stands. The strings are stored in the database and shown by the API.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Queued,
    Sending,
    Sent,
    Failed,
    Expired,
    RateLimited,
    /// A delivery receipt said it reached the handset.
    Delivered,
    /// A delivery receipt said it did not (failed, expired or rejected downstream).
    Undelivered,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Sending,
        Status::Sent,
        Status::Failed,
        Status::Expired,
        Status::RateLimited,
        Status::Delivered,
        Status::Undelivered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Expired => "expired",
            Status::RateLimited => "rate_limited",
            Status::Delivered => "delivered",
            Status::Undelivered => "undelivered",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_limits_are_enforced_in_characters() {
        assert_eq!(MessageBody::parse("  ".into()), Err(BodyError::Empty));
        assert!(MessageBody::parse("é".repeat(MAX_BODY_CHARS)).is_ok());
        assert_eq!(
            MessageBody::parse("a".repeat(MAX_BODY_CHARS + 1)),
            Err(BodyError::TooLong)
        );
        assert_eq!(MessageBody::parse("a\0b".into()), Err(BodyError::Nul));
    }

    #[test]
    fn debug_of_a_body_masks_the_code() {
        let body = MessageBody::parse("Your code is 123456".into()).expect("valid");
        let shown = format!("{body:?}");
        assert!(shown.contains("******"));
        assert!(!shown.contains("123456"));
    }

    #[test]
    fn numerals_of_every_script_are_masked() {
        for (script, code) in [
            ("ASCII", "482913"),
            ("Arabic-Indic", "٤٨٢٩١٣"),
            ("Extended Arabic-Indic (Persian)", "۴۸۲۹۱۳"),
            ("Devanagari", "४८२९१३"),
            ("Bengali", "৪৮২৯১৩"),
            ("Thai", "๔๘๒๙๑๓"),
            ("fullwidth", "４８２９１３"),
            ("mathematical bold", "𝟒𝟖𝟐𝟗𝟏𝟑"),
            ("circled", "④⑧②⑨①③"),
            ("superscript", "⁴⁸²⁹¹³"),
            ("Roman numerals", "ⅣⅧⅡⅨⅠⅢ"),
            ("CJK", "四八二九一三"),
            ("CJK with zero", "〇零十百千万"),
            ("CJK as read aloud", "四八二九幺三"),
            ("CJK financial, simplified", "肆捌贰玖壹叁"),
            ("CJK financial, traditional", "肆捌貳玖壹參"),
        ] {
            let masked = redact_digits(&format!("Code: {code}."));
            assert_eq!(masked, "Code: ******.", "{script}");
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("bogus"), None);
    }
}
