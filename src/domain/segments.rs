//! How many SMS segments a text takes, which is what carriers bill (docs/design.md, "Segments").
//!
//! A text made only of the GSM 7-bit default alphabet (3GPP TS 23.038, the successor of GSM
//! 03.38) travels as 7-bit septets: 160 in a single message, 153 per part once it is
//! concatenated (the user data header takes the rest). Characters of the alphabet's extension
//! table are sent as an escape plus a septet, so they count twice. Any other character makes
//! the whole text UCS-2: 70 UTF-16 code units alone, 67 per part; a character outside the
//! Basic Multilingual Plane (most emoji) is a surrogate pair, two units. Parts are filled
//! without splitting an escape pair or a surrogate pair, as carriers split them.

/// The encoding a text travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Encoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "GSM-7" => Some(Encoding::Gsm7),
            "UCS-2" => Some(Encoding::Ucs2),
            _ => None,
        }
    }

    /// Units in a message of one part, and per part of a concatenated one.
    fn capacity(self) -> (u32, u32) {
        match self {
            Encoding::Gsm7 => (160, 153),
            Encoding::Ucs2 => (70, 67),
        }
    }
}

/// A text's encoding and the number of parts it is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    pub count: u32,
}

/// The default alphabet, in table order (0x1B, the escape to the extension table, left out:
/// it is not a character a text can contain).
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
                     ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The extension table: form feed, ^ { } \ [ ~ ] | and the euro sign.
const EXTENSION: &str = "\u{0C}^{}\\[~]|€";

/// Septets of each ASCII character (0 when it has no GSM-7 form): most texts are ASCII, and
/// a table spares a search of the alphabet per character.
const ASCII_SEPTETS: [u8; 128] = ascii_septets();

const fn ascii_septets() -> [u8; 128] {
    let mut table = [0u8; 128];
    let (basic, extension) = (BASIC.as_bytes(), EXTENSION.as_bytes());
    let mut i = 0;
    while i < basic.len() {
        if basic[i] < 128 {
            table[basic[i] as usize] = 1;
        }
        i += 1;
    }
    let mut i = 0;
    while i < extension.len() {
        if extension[i] < 128 {
            table[extension[i] as usize] = 2;
        }
        i += 1;
    }
    table
}

/// Septets a character takes in GSM-7, or `None` when it has no GSM-7 form.
fn septets(c: char) -> Option<u32> {
    if c.is_ascii() {
        return match ASCII_SEPTETS[c as usize] {
            0 => None,
            n => Some(u32::from(n)),
        };
    }
    if BASIC.contains(c) {
        Some(1)
    } else if EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// How `text` is encoded and in how many parts it is sent.
pub fn segments(text: &str) -> Segments {
    let gsm: Option<Vec<u32>> = text.chars().map(septets).collect();
    let (encoding, units) = match gsm {
        Some(units) => (Encoding::Gsm7, units),
        None => (
            Encoding::Ucs2,
            text.chars().map(|c| c.len_utf16() as u32).collect(),
        ),
    };
    Segments {
        encoding,
        count: parts(&units, encoding.capacity()),
    }
}

/// Parts needed for characters of `units` each, none split across two parts.
fn parts(units: &[u32], (single, per_part): (u32, u32)) -> u32 {
    if units.iter().sum::<u32>() <= single {
        return 1;
    }
    let (mut count, mut used) = (1, 0);
    for &unit in units {
        if used + unit > per_part {
            count += 1;
            used = 0;
        }
        used += unit;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, encoding: Encoding, count: u32) {
        assert_eq!(
            segments(text),
            Segments { encoding, count },
            "{} characters",
            text.chars().count()
        );
    }

    #[test]
    fn the_ascii_table_agrees_with_the_alphabets() {
        for c in (0u8..128).map(char::from) {
            let searched = if BASIC.contains(c) {
                Some(1)
            } else if EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            };
            assert_eq!(septets(c), searched, "{c:?}");
        }
    }

    #[test]
    fn the_default_alphabet_has_127_characters_and_the_extension_table_ten() {
        assert_eq!(BASIC.chars().count(), 127);
        assert_eq!(EXTENSION.chars().count(), 10);
        assert!(BASIC.chars().all(|c| !EXTENSION.contains(c)));
    }

    #[test]
    fn gsm7_fits_160_in_one_part_then_153_per_part() {
        check("Your code is 123456", Encoding::Gsm7, 1);
        check(&"a".repeat(160), Encoding::Gsm7, 1);
        check(&"a".repeat(161), Encoding::Gsm7, 2);
        check(&"a".repeat(306), Encoding::Gsm7, 2);
        check(&"a".repeat(307), Encoding::Gsm7, 3);
        check(&"a".repeat(1530), Encoding::Gsm7, 10);
        // Accented letters of the table stay GSM-7: é, ü, Ñ, and Greek capitals.
        check("Code für Zoë: 1234 ÑΔΩ", Encoding::Ucs2, 1);
        check("Grüße für Ñoño Ångström: 1234 ΔΩ", Encoding::Gsm7, 1);
    }

    #[test]
    fn extension_characters_count_twice() {
        // 158 + one euro sign (2) = 160: still one part.
        check(&format!("{}€", "a".repeat(158)), Encoding::Gsm7, 1);
        // 159 + 2 = 161: two parts.
        check(&format!("{}€", "a".repeat(159)), Encoding::Gsm7, 2);
        // 80 braces are 160 septets.
        check(&"{".repeat(80), Encoding::Gsm7, 1);
        check(&"[]".repeat(41), Encoding::Gsm7, 2);
    }

    #[test]
    fn an_escape_pair_is_not_split_across_parts() {
        // 152 + '^' would straddle the 153rd septet: the pair moves to the second part, which
        // then holds 2 + 151 = 153; one more character needs a third.
        let text = format!("{}^{}", "a".repeat(152), "a".repeat(151));
        assert_eq!(
            text.chars().map(|c| septets(c).unwrap_or(0)).sum::<u32>(),
            305
        );
        check(&text, Encoding::Gsm7, 2);
        check(&format!("{text}a"), Encoding::Gsm7, 3);
    }

    #[test]
    fn any_other_character_makes_the_whole_text_ucs2() {
        check("Ваш код 1234", Encoding::Ucs2, 1);
        check(&"ж".repeat(70), Encoding::Ucs2, 1);
        check(&"ж".repeat(71), Encoding::Ucs2, 2);
        check(&"ж".repeat(134), Encoding::Ucs2, 2);
        check(&"ж".repeat(135), Encoding::Ucs2, 3);
        // One non-GSM character among 150 GSM ones: 151 units in UCS-2, three parts.
        check(&format!("{}ç", "a".repeat(150)), Encoding::Ucs2, 3);
        // ESC itself is not a character a text can carry in GSM-7.
        check("\u{1B}", Encoding::Ucs2, 1);
    }

    #[test]
    fn characters_outside_the_bmp_take_two_units_and_are_not_split() {
        // 35 emoji are 70 UTF-16 units: one part; 36 are 72: two.
        check(&"😀".repeat(35), Encoding::Ucs2, 1);
        check(&"😀".repeat(36), Encoding::Ucs2, 2);
        // 66 units then a pair would straddle unit 67: the pair opens the second part.
        let text = format!("{}😀{}", "ж".repeat(66), "ж".repeat(65));
        check(&text, Encoding::Ucs2, 2);
        check(&format!("{text}ж"), Encoding::Ucs2, 3);
    }
}
