//! Recipients as E.164 numbers, normalised with the `phonenumber` crate's metadata.

use std::fmt;

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
}

impl PhoneNumber {
    /// Accepts what Auth0 sends (`"+1 399 999"`-style spacing and punctuation included) and
    /// keeps only numbers whose length is possible for their country.
    pub fn parse(input: &str) -> Result<Self, PhoneError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(PhoneError::Empty);
        }
        if !input.starts_with('+') {
            return Err(PhoneError::NotInternational);
        }
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
        Ok(Self(e164))
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
    fn national_format_without_country_code_is_refused() {
        assert_eq!(
            PhoneNumber::parse("07911 123456"),
            Err(PhoneError::NotInternational)
        );
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
