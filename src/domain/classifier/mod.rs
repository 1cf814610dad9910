//! A recipient's region and number type, as the `phonenumber` crate's parser would give them,
//! at a fraction of its cost: every pattern of the crate's metadata is compiled once, into our
//! own regular expressions, and matched against the national significant number in the order
//! the crate uses. Where the fast path cannot be sure of the crate's answer (a national prefix
//! the crate's parser would strip, a number it would refuse), the crate itself answers.

mod region;

use std::sync::OnceLock;

use phonenumber::Type;
use phonenumber::country;
use phonenumber::metadata::DATABASE;

use region::Region;

/// What smsgate's rules need to know about a number: where it is and what kind it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    calling_code: u16,
    region: Option<country::Id>,
    kind: Type,
}

impl Classification {
    /// The region as `phonenumber::parse(None, n)?.country().id()` gives it.
    pub fn region(&self) -> Option<country::Id> {
        self.region
    }

    /// The type as `phonenumber::parse(None, n)?.number_type(&DATABASE)` gives it.
    pub fn kind(&self) -> Type {
        self.kind
    }

    /// The ISO 3166-1 code the country limits count the number under: its region, else its
    /// calling code's main country (+1 → US, +7 → RU, +44 → GB), so that a range newer than
    /// the metadata cannot slip past that country's caps; `+882` and other international
    /// networks have none.
    pub fn country(&self) -> Option<String> {
        if let Some(id) = self.region {
            return Some(id.as_ref().to_string());
        }
        let main = table().code(self.calling_code)?.main_country?;
        Some(main.to_string())
    }
}

/// Loads the `phonenumber` metadata and builds the table of calling codes: most of a second
/// in a debug build, tens of milliseconds in a release one. Done at start, before anything is
/// claimed or served, because the first number a process classifies otherwise pays it, and a
/// worker classifies its first number while it writes its first outcomes (the route
/// measurements' country): long enough to outlast a short lease, and so send those messages
/// again. Each region's own patterns still compile on its first number (milliseconds).
pub fn warm_up() {
    let _ = table();
    crate::domain::phone::warm_up();
}

/// Classifies an E.164 number (`+` and digits); `None` when the crate's parser refuses it.
pub fn classify(e164: &str) -> Option<Classification> {
    match fast(e164) {
        Some(answer) => Some(answer),
        None => by_the_crate(e164),
    }
}

/// The crate's own answer: the reference the fast path must agree with.
fn by_the_crate(e164: &str) -> Option<Classification> {
    let parsed = phonenumber::parse(None, e164).ok()?;
    Some(Classification {
        calling_code: parsed.code().value(),
        region: parsed.country().id(),
        kind: parsed.number_type(&DATABASE),
    })
}

/// The crate's steps for a plain E.164 number (`parser::parse_with`, then `country().id()` and
/// `number_type`), from the compiled table. `None` when unsure: the crate then answers.
fn fast(e164: &str) -> Option<Classification> {
    let digits = e164.strip_prefix('+')?;
    // The crate's limits: more than two digits, no calling code starting with 0; fifteen at
    // most is E.164's, and keeps the national number in the crate's 56 bits.
    if !(3..=15).contains(&digits.len())
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.starts_with('0')
    {
        return None;
    }
    // Calling codes are prefix-free: the first of 1–3 digits the metadata knows, as the crate.
    let (calling_code, code, national) = (1..=3).find_map(|n| {
        let value: u16 = digits[..n].parse().ok()?;
        Some((value, table().code(value)?, &digits[n..]))
    })?;
    // The crate keeps leading zeros aside and matches the rest ("Italian" zeros, CI, CG);
    // a number of zeros only, or too short a number, it refuses.
    let significant = national.trim_start_matches('0');
    if national.len() < 2 || significant.is_empty() {
        return None;
    }
    let region = code.select(significant)?;
    if region.is_some_and(|r| r.may_strip_prefix(national)) {
        return None;
    }
    let kind = match region {
        Some(region) => region.number_type(significant)?,
        None => Type::Unknown,
    };
    Some(Classification {
        calling_code,
        region: region.and_then(|r| r.id),
        kind,
    })
}

/// Every calling code's regions, indexed by the code.
struct Table {
    codes: Vec<Option<CallingCode>>,
}

struct CallingCode {
    regions: Regions,
    /// The code's first region when it is a country (`country_of`'s fallback).
    main_country: Option<&'static str>,
}

/// The crate's `validator::source_for` cases.
enum Regions {
    /// One region (or one non-geographic entity, `001`): every number is its; `None` when the
    /// crate cannot name it.
    Single(Option<Region>),
    /// Shared (+1, +7, +44…): the first region, main country first, that claims the number.
    Shared(Vec<Region>),
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| Table {
        codes: (0..1000).map(CallingCode::new).collect(),
    })
}

impl Table {
    fn code(&self, value: u16) -> Option<&CallingCode> {
        self.codes.get(usize::from(value))?.as_ref()
    }
}

impl CallingCode {
    fn new(value: u16) -> Option<Self> {
        let ids = DATABASE.region(&value)?;
        let main_country = ids
            .first()
            .copied()
            .filter(|id| id.len() == 2 && id.bytes().all(|b| b.is_ascii_uppercase()));
        let regions = match ids.as_slice() {
            // A non-geographic entity is found by its code: "001" names them all.
            ["001"] => Regions::Single(
                DATABASE
                    .by_code(&value)
                    .and_then(|entries| entries.into_iter().next())
                    .map(Region::new),
            ),
            [id] => Regions::Single(
                id.parse::<country::Id>()
                    .ok()
                    .and(DATABASE.by_id(*id))
                    .map(Region::new),
            ),
            ids => Regions::Shared(
                ids.iter()
                    .filter_map(|id| DATABASE.by_id(*id))
                    .map(Region::new)
                    .collect(),
            ),
        };
        Some(Self {
            regions,
            main_country,
        })
    }

    /// The region `significant` (the national number without leading zeros) belongs to;
    /// `Some(None)` when none claims it, `None` when unsure.
    fn select(&self, significant: &str) -> Option<Option<&Region>> {
        match &self.regions {
            Regions::Single(region) => Some(region.as_ref()),
            Regions::Shared(regions) => {
                for region in regions {
                    if region.claims(significant)? {
                        // The crate cannot name it either (it would panic): let it answer.
                        region.id?;
                        return Some(Some(region));
                    }
                }
                Some(None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use phonenumber::country::Id;

    use super::*;

    /// Ours, checked against the crate's and required to come from the fast path.
    fn fast_answer(e164: &str) -> (Option<Id>, Type) {
        let ours = fast(e164).expect("an ordinary number takes the fast path");
        assert_eq!(Some(ours), by_the_crate(e164), "{e164}");
        (ours.region(), ours.kind())
    }

    #[test]
    fn known_numbers_get_the_crates_region_and_type() {
        let cases = [
            ("+12015550123", Some(Id::US), Type::FixedLineOrMobile),
            ("+16137827274", Some(Id::CA), Type::FixedLineOrMobile),
            ("+13459492311", Some(Id::KY), Type::FixedLine),
            ("+447400123456", Some(Id::GB), Type::Mobile),
            ("+441212345678", Some(Id::GB), Type::FixedLine),
            ("+61491570156", Some(Id::AU), Type::Mobile),
            ("+61298765432", Some(Id::AU), Type::FixedLine),
            ("+77012345678", Some(Id::KZ), Type::Mobile),
            // An international network: no region, a type all the same.
            ("+88216123456", None, Type::Voip),
        ];
        for (e164, region, kind) in cases {
            assert_eq!(fast_answer(e164), (region, kind), "{e164}");
        }
    }

    #[test]
    fn a_leading_zero_kept_in_the_national_number_is_set_aside_as_the_crate_does() {
        // Côte d'Ivoire's ten-digit numbers start with 0; the crate matches the digits after
        // it, which fit no pattern of its, so their type is unknown (mobile_only refuses them).
        assert_eq!(fast_answer("+2250701234567"), (Some(Id::CI), Type::Unknown));
        assert_eq!(fast_answer("+2290190123456"), (Some(Id::BJ), Type::Unknown));
        // Italy shares +39 with the Vatican; the crate places no zero-led fixed line.
        assert_eq!(fast_answer("+390612345678"), (None, Type::Unknown));
        let italy = classify("+390612345678").expect("parses");
        assert_eq!(italy.country().as_deref(), Some("IT"));
    }

    #[test]
    fn a_national_prefix_after_the_calling_code_is_left_to_the_crate() {
        // The crate strips the trunk 0; the fast path does not guess how.
        assert_eq!(fast("+4407911123456"), None);
        assert_eq!(classify("+4407911123456"), by_the_crate("+4407911123456"));
    }

    #[test]
    fn what_the_crate_refuses_is_refused() {
        for e164 in [
            "+1",
            "+12",
            "+0441234567",
            "+44",
            "+4400",
            "+999123456",
            "447400123456",
        ] {
            assert_eq!(classify(e164), None, "{e164}");
        }
    }

    #[test]
    fn nearly_every_example_number_is_answered_without_the_crates_parser() {
        let examples: Vec<String> = DATABASE
            .iter()
            .flat_map(|meta| {
                let d = meta.descriptors();
                let code = meta.country_code();
                [d.general(), d.mobile().unwrap_or(d.general())]
                    .into_iter()
                    .filter_map(|descriptor| descriptor.example())
                    .map(move |example| format!("+{code}{example}"))
            })
            .collect();
        let slow = examples.iter().filter(|e164| fast(e164).is_none()).count();
        assert!(
            slow * 100 <= examples.len(),
            "{slow} of {} example numbers need the crate",
            examples.len()
        );
    }

    #[test]
    fn every_region_sharing_a_calling_code_has_an_id() {
        // The crate unwraps these ids; the fast path hands an unnamed one to the crate.
        for code in 0..1000u16 {
            let ids = DATABASE.region(&code).unwrap_or_default();
            if ids.len() > 1 {
                for id in ids {
                    assert!(id.parse::<Id>().is_ok(), "+{code}: {id}");
                }
            }
        }
    }
}
