//! Recipients as E.164 numbers, normalised with the `phonenumber` crate's metadata.

use std::fmt;
use std::sync::OnceLock;

use phonenumber::metadata::{DATABASE, Descriptors};

/// A possible phone number in E.164 form (`+` and digits only).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

/// Why a recipient was refused; the text is shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("recipient is empty")]
    Empty,
    #[error("recipient must be in international format: a + and the country calling code")]
    NotInternational,
    #[error("recipient is not a phone number")]
    Unparseable,
    #[error("recipient has an unknown country calling code")]
    UnknownCountryCode,
    #[error("recipient has a length no number of its country has")]
    ImpossibleLength,
    #[error("recipient must not carry an extension")]
    Extension,
    #[error(
        "recipient may hold only digits after its leading +, with spaces, dashes, dots and \
         parentheses in pairs between them"
    )]
    Character,
    #[error(
        "recipient carries its country's trunk prefix 0 after the calling code: leave it out, \
         or write it as (0)"
    )]
    TrunkPrefix,
}

impl PhoneNumber {
    /// Accepts what Auth0 sends (`"+1 (415) 555-2671"`-style spacing and punctuation included)
    /// and keeps only numbers whose length is possible for their country.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(PhoneError::Empty);
        }
        // The full parser skips characters it does not know, control characters included;
        // a recipient carrying them is not what the caller meant to send.
        if input.chars().any(char::is_control) {
            return Err(PhoneError::Unparseable);
        }
        let Some(rest) = input.strip_prefix('+') else {
            return Err(PhoneError::NotInternational);
        };
        // Before the character check, which would refuse the marker with a vaguer message.
        if carries_extension(rest) {
            return Err(PhoneError::Extension);
        }
        // The full parser also skips invisible and stray characters (a zero-width space, a
        // right-to-left override, an emoji): what a number may hold is decided here instead.
        if !has_only_number_characters(rest) {
            return Err(PhoneError::Character);
        }
        // Auth0 sends plain E.164, maybe spaced: decide those from the metadata tables alone.
        // The full parser (regular expressions behind a shared cache) took a fifth of the
        // ingress's CPU in the benchmark's profile.
        if rest
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b' ' || b == b'-' || b == b'.')
        {
            return Self::from_plain_digits(rest);
        }
        Self::parse_full(input)
    }

    /// libphonenumber's rules through the crate's parser (regular expressions).
    fn parse_full(input: &str) -> Result<Self, PhoneError> {
        let number = phonenumber::parse(None, input).map_err(|_| PhoneError::Unparseable)?;
        if number.extension().is_some() {
            return Err(PhoneError::Extension);
        }
        // A number no region's pattern matches still has its calling code's metadata, which is
        // all a length check needs.
        let metadata = number
            .metadata(&DATABASE)
            .or_else(|| {
                DATABASE
                    .by_code(&number.code().value())
                    .and_then(|regions| regions.into_iter().next())
            })
            .ok_or(PhoneError::UnknownCountryCode)?;
        let national = number.national().to_string();
        let length = u16::try_from(national.len()).map_err(|_| PhoneError::ImpossibleLength)?;
        if !is_possible_length(metadata.descriptors(), length) {
            return Err(PhoneError::ImpossibleLength);
        }
        let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
        // E.164 allows 15 digits at most, whatever a national pattern would take.
        if e164.len() > 16 {
            return Err(PhoneError::ImpossibleLength);
        }
        // The parser drops zeros it reads as prefixes ("+43 000…1" became another number in
        // the property tests); only the written trunk prefix "(0)" may go.
        let written: String = input
            .replace("(0)", "")
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        if e164[1..] != written {
            // "+44 0 7911…" as people write it at home: say so, rather than "not a number".
            let code = number.code().value().to_string();
            let trunk = written
                .strip_prefix(code.as_str())
                .and_then(|national| national.strip_prefix('0'));
            if trunk.is_some_and(|national| e164[1..] == format!("{code}{national}")) {
                return Err(PhoneError::TrunkPrefix);
            }
            return Err(PhoneError::Unparseable);
        }
        Ok(Self(e164))
    }

    /// `digits` is everything after the `+`, with only spaces, dashes and dots between digits.
    fn from_plain_digits(digits: &str) -> Result<Self, PhoneError> {
        let mut e164 = String::with_capacity(16);
        e164.push('+');
        e164.extend(digits.chars().filter(char::is_ascii_digit));
        let significant = &e164[1..];
        if significant.is_empty() || significant.len() > 15 {
            return Err(PhoneError::ImpossibleLength);
        }
        // No calling code starts with 0 (and "064" must not be read as 64).
        if significant.starts_with('0') {
            return Err(PhoneError::UnknownCountryCode);
        }
        // Calling codes are prefix-free: at most one of the first 1–3 digits is assigned.
        let lengths = (1..=3.min(significant.len()))
            .find_map(|n| {
                let code: usize = significant[..n].parse().ok()?;
                possible_lengths_by_code()
                    .get(code)?
                    .as_deref()
                    .map(|lengths| (n, lengths))
            })
            .ok_or(PhoneError::UnknownCountryCode)?;
        let (code_digits, lengths) = lengths;
        // A national number starting with 0 is a trunk prefix or one of the few countries
        // (Italy) that keep the zero: the full parser knows which.
        if significant[code_digits..].starts_with('0') {
            return Self::parse_full(&e164);
        }
        let national = (significant.len() - code_digits) as u16;
        if lengths.contains(&national) {
            Ok(Self(e164))
        } else {
            Err(PhoneError::ImpossibleLength)
        }
    }

    /// Wraps a number already stored in E.164 form (read back from the database).
    pub fn from_e164_unchecked(e164: String) -> Self {
        Self(e164)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For logs: every digit but the last three hidden.
    pub fn masked(&self) -> String {
        // E.164 is ASCII, so byte positions are character positions.
        let keep_from = self.0.len().saturating_sub(3);
        self.0
            .chars()
            .enumerate()
            .map(|(i, c)| if i > 0 && i < keep_from { '*' } else { c })
            .collect()
    }
}

/// A number followed by an extension marker and the extension (`ext. 12`, `x12`, `#12`,
/// `;ext=12`, or `,12`: a pause, then the digits), which a text message cannot dial.
fn carries_extension(rest: &str) -> bool {
    let Some(at) = rest.find(['x', 'X', '#', ';', ',']) else {
        return false;
    };
    let has_digit = |part: &str| part.chars().any(|c| c.is_ascii_digit());
    has_digit(&rest[..at]) && has_digit(&rest[at..])
}

/// What may follow a number's `+`: digits, and spaces, `-`, `.` and unnested parentheses in
/// pairs (`+1 (415) 555-2671`, `+44 (0)7911 123456`). Anything else is no part of a number.
fn has_only_number_characters(rest: &str) -> bool {
    let mut open = false;
    for c in rest.chars() {
        match c {
            '0'..='9' | ' ' | '-' | '.' => {}
            '(' if !open => open = true,
            ')' if open => open = false,
            _ => return false,
        }
    }
    !open
}

/// Builds what parsing a number needs once (see `classifier::warm_up`).
pub(crate) fn warm_up() {
    let _ = possible_lengths_by_code();
}

/// For each calling code (index), the national lengths some region using it allows; `None` for
/// unassigned codes. Built once from the `phonenumber` metadata.
fn possible_lengths_by_code() -> &'static [Option<Vec<u16>>] {
    static TABLE: OnceLock<Vec<Option<Vec<u16>>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..1000u16)
            .map(|code| {
                let regions = DATABASE.by_code(&code)?;
                let mut lengths: Vec<u16> = (1..=17)
                    .filter(|&len| {
                        regions
                            .iter()
                            .any(|region| is_possible_length(region.descriptors(), len))
                    })
                    .collect();
                lengths.dedup();
                Some(lengths)
            })
            .collect()
    })
}

/// libphonenumber's "possible number" test: the national number's length is one that some
/// kind of number in that country has. The general descriptor often lists no lengths of its
/// own in this metadata, so the lengths of every number type are considered.
fn is_possible_length(descriptors: &Descriptors, length: u16) -> bool {
    let general = descriptors.general();
    let kinds = [
        descriptors.fixed_line(),
        descriptors.mobile(),
        descriptors.toll_free(),
        descriptors.premium_rate(),
        descriptors.shared_cost(),
        descriptors.personal_number(),
        descriptors.voip(),
        descriptors.pager(),
        descriptors.uan(),
        descriptors.voicemail(),
    ];
    std::iter::once(general)
        .chain(kinds.into_iter().flatten())
        .any(|descriptor| descriptor.possible_length().contains(&length))
}

/// `Debug` masks too, so a stray `{:?}` never leaks a full number into a log.
impl fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneNumber({})", self.masked())
    }
}

/// Parses an ISO 3166-1 alpha-2 code as `phonenumber` knows it ("GB", not "UK").
pub fn parse_country(code: &str) -> Option<phonenumber::country::Id> {
    use std::str::FromStr;
    phonenumber::country::Id::from_str(&code.trim().to_ascii_uppercase()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaced_international_numbers_are_normalised_to_e164() {
        let number = PhoneNumber::parse(" +44 7911 123456 ").expect("valid UK mobile");
        assert_eq!(number.as_str(), "+447911123456");
        let number = PhoneNumber::parse("+1 (415) 555-2671").expect("valid US number");
        assert_eq!(number.as_str(), "+14155552671");
    }

    #[test]
    fn the_plain_digit_path_agrees_with_the_full_parser() {
        let mut agreed_valid = 0;
        for input in [
            "+447911123456",
            "+44 7911 123456",
            "+14155552671",
            "+1-415-555-2671",
            "+33612345678",
            "+61491570156",
            "+4915123456789",
            "+390612345678",
            "+819012345678",
            "+12345",
            "+1399999",
            "+999123456",
            "+4479111234567890",
        ] {
            let fast = PhoneNumber::parse(input);
            agreed_valid += usize::from(fast.is_ok());
            let spaced = format!("+({})", &input[1..]);
            let full = PhoneNumber::parse(&spaced);
            assert_eq!(fast.is_ok(), full.is_ok(), "{input}: {fast:?} vs {full:?}");
            if let (Ok(a), Ok(b)) = (fast, full) {
                assert_eq!(a.as_str(), b.as_str());
            }
        }
        assert_eq!(
            agreed_valid, 9,
            "the nine real numbers are valid on both paths"
        );
    }

    #[test]
    fn national_format_without_country_code_is_refused() {
        assert_eq!(
            PhoneNumber::parse("07911 123456"),
            Err(PhoneError::NotInternational)
        );
    }

    #[test]
    fn the_full_parser_may_not_change_the_digits() {
        // Found by the property tests: the parser read these zeros as a prefix and dropped them.
        assert_eq!(
            PhoneNumber::parse("+(4300000000000001)"),
            Err(PhoneError::Unparseable)
        );
        assert_eq!(
            PhoneNumber::parse("+44 (0)7911 123456").map(|n| n.as_str().to_string()),
            Ok("+447911123456".to_string())
        );
    }

    #[test]
    fn a_leading_zero_is_no_calling_code() {
        // Found by the property tests: "064" was read as New Zealand's 64.
        assert_eq!(
            PhoneNumber::parse("+06400000"),
            Err(PhoneError::UnknownCountryCode)
        );
    }

    #[test]
    fn control_characters_are_refused_wherever_they_are() {
        for input in ["+14155552671\u{0}", "+1415\u{7}5552671", "+44 7911\t123456"] {
            assert_eq!(
                PhoneNumber::parse(input),
                Err(PhoneError::Unparseable),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_number_holds_digits_and_plain_punctuation_only() {
        for input in [
            "+44 7911 123456",
            "+44-7911-123456",
            "+44.7911.123456",
            "+44 (7911) 123456",
            "+44 (0)7911 123456",
            "+(44) 7911 123456",
        ] {
            assert_eq!(
                PhoneNumber::parse(input).map(|n| n.as_str().to_string()),
                Ok("+447911123456".to_string()),
                "{input:?}"
            );
        }
        for input in [
            "+44 7911\u{200b}123456",
            "+44 7911\u{202e}123456",
            "+44 7911 123456\u{feff}",
            "\u{feff}+44 7911 123456",
            "+44 7911 123456 \u{1f600}",
            "+44 7911*123456",
            "+44 7911 123456)",
            "+44 (7911 123456",
            "+44 ((7911)) 123456",
            "+44 7911 123456 ext. 12",
            "+44\u{a0}7911\u{a0}123456",
            "+44 7911 １２３456",
            "++44 7911 123456",
        ] {
            assert!(PhoneNumber::parse(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn an_extension_is_named_as_such() {
        for input in [
            "+44 7911 123456 ext. 12",
            "+44 7911 123456 Ext 12",
            "+44 7911 123456 x12",
            "+44 7911 123456#12",
            "+44 7911 123456;ext=12",
            "+44 7911 123456,12",
        ] {
            assert_eq!(
                PhoneNumber::parse(input),
                Err(PhoneError::Extension),
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_written_trunk_prefix_is_named_as_such() {
        assert_eq!(
            PhoneNumber::parse("+440 7911123456"),
            Err(PhoneError::TrunkPrefix)
        );
        // Italy keeps its zero: no trunk prefix there.
        assert!(PhoneNumber::parse("+39 06 1234 5678").is_ok());
    }

    #[test]
    fn impossible_numbers_are_refused() {
        assert_eq!(PhoneNumber::parse(""), Err(PhoneError::Empty));
        assert_eq!(
            PhoneNumber::parse("+1 399 999"),
            Err(PhoneError::ImpossibleLength)
        );
        assert!(PhoneNumber::parse("+999 1234567").is_err());
        assert!(PhoneNumber::parse("+hello").is_err());
        assert!(PhoneNumber::parse("+44 7911 123456789012345").is_err());
    }

    #[test]
    fn masking_keeps_only_the_last_three_digits() {
        let number = PhoneNumber::parse("+447911123456").expect("valid");
        assert_eq!(number.masked(), "+*********456");
        assert!(!format!("{number:?}").contains("7911"));
    }
}
