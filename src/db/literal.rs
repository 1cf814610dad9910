//! SQL literals, for the few statements that must go as text (the simple protocol, which
//! carries a statement and its COMMIT in one message but no parameters). Escape strings
//! (`E'…'`) are read the same whatever `standard_conforming_strings` says.

/// `template` with each `$n` (n from 1 to 9) replaced by `values[n - 1]`, in one pass: a
/// value holding `$2` is never filled in again.
pub fn fill(template: &str, values: &[&str]) -> String {
    let extra: usize = values.iter().map(|v| v.len()).sum();
    let mut out = String::with_capacity(template.len() + extra);
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        let slot = match (c, chars.peek()) {
            ('$', Some(d)) => d
                .to_digit(10)
                .filter(|&n| n >= 1 && n as usize <= values.len()),
            _ => None,
        };
        match slot {
            Some(n) => {
                chars.next();
                out.push_str(values[n as usize - 1]);
            }
            None => out.push(c),
        }
    }
    out
}

/// `values` as a `text[]` literal.
pub fn text_array(values: &[&str]) -> String {
    let items: Vec<String> = values.iter().map(|v| text(v)).collect();
    format!("ARRAY[{}]::text[]", items.join(","))
}

/// `value` as an escape string: its quotes and backslashes doubled, and any NUL (which no
/// PostgreSQL text can hold) refused by the server rather than cutting the statement.
pub fn text(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    out.push_str("E'");
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\x00"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_backslashes_cannot_end_the_literal() {
        assert_eq!(text("to:+44"), "E'to:+44'");
        assert_eq!(text("a'b"), "E'a''b'");
        assert_eq!(text("a\\b"), "E'a\\\\b'");
        assert_eq!(text("a\0b"), "E'a\\x00b'");
        assert_eq!(text_array(&[]), "ARRAY[]::text[]");
        assert_eq!(text_array(&["x", "y'"]), "ARRAY[E'x',E'y''']::text[]");
    }

    #[test]
    fn a_filled_value_is_never_filled_again() {
        assert_eq!(
            fill("a = $1 AND b = $2", &["'$2'", "x"]),
            "a = '$2' AND b = x"
        );
        assert_eq!(fill("$3 $1", &["one", "two"]), "$3 one");
    }
}
