//! The TwiML of a verification call: the text said twice, digits one by one, in the
//! recipient's language where Twilio's `<Say>` speaks it (Twilio's TwiML `<Say>` reference).

/// Languages `<Say>` speaks (Twilio's list for its standard voices), as `language` values.
const SAY_LANGUAGES: [&str; 26] = [
    "ca-ES", "da-DK", "de-DE", "en-AU", "en-CA", "en-GB", "en-IN", "en-US", "es-ES", "es-MX",
    "fi-FI", "fr-CA", "fr-FR", "it-IT", "ja-JP", "ko-KR", "nb-NO", "nl-NL", "pl-PL", "pt-BR",
    "pt-PT", "ru-RU", "sv-SE", "zh-CN", "zh-HK", "zh-TW",
];

/// Twilio refuses a `Twiml` parameter longer than this (the Calls resource's documentation).
const MAX_TWIML_CHARS: usize = 4000;

/// The `<Response>` a call to say `text` plays: twice, or once when twice would be longer than
/// Twilio takes (a text that long is cut at a character).
pub fn verification_call(text: &str, locale: Option<&str>) -> String {
    let language = locale
        .and_then(say_language)
        .map(|language| format!(" language=\"{language}\""))
        .unwrap_or_default();
    let said = escape(&slow_digits(text));
    let say = |said: &str| format!("<Say{language}>{said}</Say>");
    let twice = format!(
        "<Response>{}<Pause length=\"1\"/>{}</Response>",
        say(&said),
        say(&said)
    );
    if twice.chars().count() <= MAX_TWIML_CHARS {
        return twice;
    }
    let room = MAX_TWIML_CHARS - format!("<Response>{}</Response>", say("")).len();
    format!("<Response>{}</Response>", say(&cut(&said, room)))
}

/// At most `room` characters of escaped text, never cutting an entity in half.
fn cut(escaped: &str, room: usize) -> String {
    let mut kept: String = escaped.chars().take(room).collect();
    if let Some(amp) = kept.rfind('&')
        && !kept[amp..].contains(';')
    {
        kept.truncate(amp);
    }
    kept
}

/// The `<Say>` language for an Auth0 locale ("fr_FR", "fr", "pt-br"): the exact one if Twilio
/// has it, else the language's main variant; `None` (Twilio's default) for others.
fn say_language(locale: &str) -> Option<&'static str> {
    let normalized = locale.replace('_', "-");
    let mut subtags = normalized.split('-');
    let language = subtags.next().unwrap_or_default();
    // The region is the two-letter subtag ("zh-Hant-TW": TW), wherever it stands.
    let region = subtags.find(|tag| tag.len() == 2).unwrap_or_default();
    let wanted = format!(
        "{}-{}",
        language.to_ascii_lowercase(),
        region.to_ascii_uppercase()
    );
    if let Some(exact) = SAY_LANGUAGES.iter().find(|l| **l == wanted) {
        return Some(exact);
    }
    let main = match language.to_ascii_lowercase().as_str() {
        "en" => "en-US",
        "es" => "es-ES",
        "fr" => "fr-FR",
        "pt" => "pt-BR",
        "zh" => "zh-CN",
        "no" | "nb" => "nb-NO",
        other => {
            return SAY_LANGUAGES
                .iter()
                .copied()
                .find(|l| l.starts_with(&format!("{other}-")));
        }
    };
    Some(main)
}

/// Runs of three or more digits (the code) read one digit at a time: "1, 2, 3, 4".
fn slow_digits(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().count() >= 3 {
            let digits: Vec<String> = run.chars().map(String::from).collect();
            out.push_str(&digits.join(", "));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// XML text: markup escaped, and the control characters XML 1.0 cannot carry dropped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            // Not characters XML 1.0 can carry: controls and the two noncharacters U+FFFE/F.
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_is_said_digit_by_digit_twice_and_markup_is_escaped() {
        let twiml = verification_call("Your <code> is 123456 & valid 5 min", Some("en_US"));
        assert_eq!(
            twiml,
            "<Response><Say language=\"en-US\">Your &lt;code&gt; is 1, 2, 3, 4, 5, 6 &amp; valid 5 \
             min</Say><Pause length=\"1\"/><Say language=\"en-US\">Your &lt;code&gt; is 1, 2, 3, \
             4, 5, 6 &amp; valid 5 min</Say></Response>"
        );
    }

    #[test]
    fn locales_map_to_the_languages_twilio_speaks() {
        assert_eq!(say_language("fr_FR"), Some("fr-FR"));
        assert_eq!(say_language("fr"), Some("fr-FR"));
        assert_eq!(say_language("fr_CA"), Some("fr-CA"));
        assert_eq!(say_language("pt-br"), Some("pt-BR"));
        assert_eq!(say_language("zh-Hant-TW"), Some("zh-TW"));
        assert_eq!(say_language("en"), Some("en-US"));
        assert_eq!(say_language("de_AT"), Some("de-DE"));
        assert_eq!(say_language("xx"), None);
        assert!(!verification_call("Code 1234", Some("xx")).contains("language"));
    }

    #[test]
    fn a_long_text_is_said_once_and_stays_within_twilios_limit() {
        let long = format!("{} 123456", "&".repeat(1590));
        let twiml = verification_call(&long, Some("en"));
        assert!(twiml.chars().count() <= MAX_TWIML_CHARS, "{}", twiml.len());
        assert_eq!(twiml.matches("<Say").count(), 1);
        assert!(twiml.ends_with("</Say></Response>"));
        assert!(!twiml.contains("&am<") && !twiml.contains("&</Say>"));
    }

    #[test]
    fn control_characters_never_reach_the_xml() {
        assert_eq!(escape("a\u{1}b\u{7f}c\nd\u{fffe}\u{ffff}"), "abc d");
    }
}
