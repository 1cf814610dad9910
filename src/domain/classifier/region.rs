//! One region's metadata with its patterns compiled once into our own regular expressions.
//! The `phonenumber` crate keeps its compiled patterns in a shared, locked cache keyed by the
//! pattern's text, so each of its matches hashes the text, and a cache too small for the
//! regions in play compiles them again and again.

use std::sync::OnceLock;

use phonenumber::Type;
use phonenumber::country;
use phonenumber::metadata::{Descriptor, Metadata};
use regex::{Regex, RegexBuilder};

/// A region (or a non-geographic entity, `001`) as the crate's `Metadata` describes it.
pub(super) struct Region {
    meta: &'static Metadata,
    /// `None` for `001` and any id the crate cannot name.
    pub id: Option<country::Id>,
    /// Compiled on first use: most deployments see a handful of regions.
    patterns: OnceLock<Option<Box<Patterns>>>,
}

/// A descriptor's possible lengths and its national-number pattern.
struct Pattern {
    lengths: &'static [u16],
    regex: Regex,
}

struct Patterns {
    general: Pattern,
    /// Checked in this order, the crate's (`validator::number_type`), before the fixed line.
    special: Vec<(Type, Pattern)>,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    /// The same pattern text for both: the crate then calls any fixed line "fixed or mobile".
    fixed_is_mobile: bool,
    leading_digits: Option<Regex>,
    prefix_for_parsing: Option<Regex>,
}

impl Region {
    pub fn new(meta: &'static Metadata) -> Self {
        Self {
            meta,
            id: meta.id().parse().ok(),
            patterns: OnceLock::new(),
        }
    }

    /// `None` when a pattern would not compile (the crate compiled it, so this is not
    /// expected): the caller then asks the crate.
    fn patterns(&self) -> Option<&Patterns> {
        self.patterns
            .get_or_init(|| Patterns::compile(self.meta).map(Box::new))
            .as_deref()
    }

    /// Whether `national` belongs to this region among those sharing its calling code (the
    /// crate's `validator::source_for`): its leading digits when the region lists them, else
    /// any known type. `None` when unsure.
    pub fn claims(&self, national: &str) -> Option<bool> {
        let patterns = self.patterns()?;
        Some(match &patterns.leading_digits {
            Some(regex) => regex.is_match(national),
            None => patterns.number_type(national) != Type::Unknown,
        })
    }

    /// The crate's `validator::number_type`, from our compiled patterns.
    pub fn number_type(&self, national: &str) -> Option<Type> {
        let patterns = self.patterns()?;
        Some(patterns.number_type(national))
    }

    /// Whether the crate's parser might strip or rewrite a national prefix at the start of
    /// `national` (`parser::helper::national_number`, then the `national_prefix` strip in
    /// `parse_with`). Answers `true` when unsure, so the caller asks the crate.
    pub fn may_strip_prefix(&self, national: &str) -> bool {
        if self
            .meta
            .national_prefix()
            .is_some_and(|prefix| national.starts_with(prefix))
        {
            return true;
        }
        let Some(patterns) = self.patterns() else {
            return true;
        };
        let Some(regex) = &patterns.prefix_for_parsing else {
            return false;
        };
        let Some(captures) = regex.captures(national) else {
            return false;
        };
        // The crate's rule: without a transform rule or a last group, it cuts the match off
        // (nothing when it is empty); otherwise it rewrites the number.
        let last = captures.get(captures.len() - 1);
        let cut = captures.get(0).is_some_and(|m| !m.is_empty());
        match self.meta.national_prefix_transform_rule() {
            Some(_) if last.is_some() => true,
            _ => cut,
        }
    }
}

impl Patterns {
    fn compile(meta: &'static Metadata) -> Option<Self> {
        let d = meta.descriptors();
        let special = [
            (Type::PremiumRate, d.premium_rate()),
            (Type::TollFree, d.toll_free()),
            (Type::SharedCost, d.shared_cost()),
            (Type::Voip, d.voip()),
            (Type::PersonalNumber, d.personal_number()),
            (Type::Pager, d.pager()),
            (Type::Uan, d.uan()),
            (Type::Voicemail, d.voicemail()),
        ];
        let special = special
            .into_iter()
            .filter_map(|(kind, descriptor)| Some((kind, descriptor?)))
            .map(|(kind, descriptor)| Some((kind, Pattern::compile(descriptor)?)))
            .collect::<Option<Vec<_>>>()?;
        let optional = |descriptor: Option<&'static Descriptor>| match descriptor {
            Some(descriptor) => Pattern::compile(descriptor).map(Some),
            None => Some(None),
        };
        let text = |descriptor: Option<&'static Descriptor>| {
            descriptor.map(|d| d.national_number().as_str())
        };
        let anchored = |pattern: Option<&str>| match pattern {
            Some(pattern) => at_start(pattern).map(Some),
            None => Some(None),
        };
        Some(Self {
            general: Pattern::compile(d.general())?,
            special,
            fixed_line: optional(d.fixed_line())?,
            mobile: optional(d.mobile())?,
            fixed_is_mobile: text(d.fixed_line()) == text(d.mobile()),
            leading_digits: anchored(meta.leading_digits().map(|r| r.as_str()))?,
            prefix_for_parsing: anchored(meta.national_prefix_for_parsing().map(|r| r.as_str()))?,
        })
    }

    /// The crate's order of checks, kept exactly: the general pattern, then the special
    /// kinds, then fixed line (or fixed line or mobile), then mobile.
    fn number_type(&self, national: &str) -> Type {
        if !self.general.is_match(national) {
            return Type::Unknown;
        }
        if let Some((kind, _)) = self
            .special
            .iter()
            .find(|(_, pattern)| pattern.is_match(national))
        {
            return *kind;
        }
        let matches =
            |pattern: &Option<Pattern>| pattern.as_ref().is_some_and(|p| p.is_match(national));
        if matches(&self.fixed_line) {
            if self.fixed_is_mobile || matches(&self.mobile) {
                return Type::FixedLineOrMobile;
            }
            return Type::FixedLine;
        }
        if matches(&self.mobile) {
            return Type::Mobile;
        }
        Type::Unknown
    }
}

impl Pattern {
    fn compile(descriptor: &'static Descriptor) -> Option<Self> {
        Some(Self {
            lengths: descriptor.possible_length(),
            regex: at_start(descriptor.national_number().as_str())?,
        })
    }

    /// The crate's `Descriptor::is_match`: a possible length, and a match that starts at the
    /// first digit. It need not reach the last digit: the crate takes the leftmost match.
    fn is_match(&self, national: &str) -> bool {
        let length = national.len() as u16;
        (self.lengths.is_empty() || self.lengths.contains(&length)) && self.regex.is_match(national)
    }
}

/// `pattern` matched at the start only, with the crate's flags (whitespace ignored). A match
/// that starts at 0 is what the crate's unanchored `find(..).start() == 0` finds: the leftmost
/// match starts at 0 exactly when some match does. The newline ends a trailing `#` comment.
fn at_start(pattern: &str) -> Option<Regex> {
    RegexBuilder::new(&format!("^(?:{pattern}\n)"))
        .ignore_whitespace(true)
        .build()
        .ok()
}
