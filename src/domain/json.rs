//! Reading a JSON object from a caller (Auth0, a carrier's receipt) so that a refusal names
//! the field and what it must hold, never the value: serde_json's own message quotes it
//! (``invalid type: integer `482913` ``), and a one-time code can be that value.

use serde::de::DeserializeOwned;
use serde_json::error::Category;

/// The body as the JSON object `T`. A refusal names the field and what it must hold, never the
/// value: serde_json's own message quotes it (``invalid type: integer `482913` ``), and a
/// one-time code can be that value.
pub fn object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    // serde also reads a struct from an array; every caller sends an object, so demand one.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err("the body must be a JSON object".into());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let field = field_path(err.path());
        describe(err.inner(), &field)
    })?;
    deserializer.end().map_err(|err| describe(&err, ""))?;
    Ok(parsed)
}

/// What is wrong, in words of our own: only the field, the expected type (from our types) and
/// the position are taken from `err`.
fn describe(err: &serde_json::Error, field: &str) -> String {
    let (line, column) = (err.line(), err.column());
    match err.classify() {
        Category::Data => {
            // serde's message without serde_json's position suffix.
            let message = err.to_string();
            let message = message
                .strip_suffix(&format!(" at line {line} column {column}"))
                .unwrap_or(&message);
            describe_data(message, field)
        }
        Category::Eof => "the body ends inside its JSON".into(),
        Category::Syntax | Category::Io => {
            format!("the body is not valid JSON (line {line}, column {column})")
        }
    }
}

/// A value of the wrong type or form at `field`. serde writes these as ``invalid type: <the
/// value>, expected <our type>``: the part after the last ", expected " comes from our own
/// types, the rest may hold the caller's value and is never shown.
fn describe_data(message: &str, field: &str) -> String {
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return format!("`{}` is required", join(field, &field_path_segment(name)));
    }
    if let Some(name) = message
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return format!(
            "`{}` is given twice",
            join(field, &field_path_segment(name))
        );
    }
    let field = if field.is_empty() { "the body" } else { field };
    match message.rsplit_once(", expected ") {
        // Our structs' names are no business of the caller's.
        Some((_, expected)) if expected.starts_with("struct ") => {
            format!("`{field}` must be an object")
        }
        Some((_, expected)) => format!("`{field}` must be {expected}"),
        None => format!("`{field}` has a value it cannot take"),
    }
}

fn join(parent: &str, name: &str) -> String {
    match parent {
        "" => name.to_string(),
        parent => format!("{parent}.{name}"),
    }
}

/// `notification.code`, `[2]`-style indexes included; a key that is not a field name of ours
/// (the caller chose it) is shown as `…`.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut joined = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => joined.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                joined = join(&joined, &field_path_segment(key));
            }
            Segment::Unknown => joined = join(&joined, "…"),
        }
    }
    joined
}

/// Field names are short ASCII words starting with a letter or `_`, and none of ours holds a
/// digit; anything else came from the caller (a map's key such as "482913" may be a code).
fn field_path_segment(name: &str) -> String {
    let ours = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'-');
    match ours {
        true => name.to_string(),
        false => "…".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        inner: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        code: String,
        #[serde(default)]
        labels: std::collections::BTreeMap<String, u32>,
    }

    fn refusal(body: &str) -> String {
        match object::<Outer>(body.as_bytes()) {
            Err(description) => description,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_refusal_names_the_field_and_its_type_never_the_value() {
        for (body, expected) in [
            (r#"{"name": 482913}"#, "`name` must be a string"),
            (
                r#"{"name": "n", "inner": {"code": 482913}}"#,
                "`inner.code` must be a string",
            ),
            (
                r#"{"name": "n", "inner": 482913}"#,
                "`inner` must be an object",
            ),
            (r#"{"name": "n", "inner": {}}"#, "`inner.code` is required"),
            (r#"{"name": ["482913"]}"#, "`name` must be a string"),
            (
                r#"{"name": "n", "name": "482913"}"#,
                "`name` is given twice",
            ),
            (r#"{"name": "482913""#, "the body ends inside its JSON"),
            // A map's keys are the caller's: one that is a code is never named.
            (
                r#"{"name": "n", "inner": {"code": "c", "labels": {"482913": "x"}}}"#,
                "`inner.labels.…` must be u32",
            ),
            (
                r#"{"name": "n", "inner": {"code": "c", "labels": {"a482913": "x"}}}"#,
                "`inner.labels.…` must be u32",
            ),
        ] {
            let description = refusal(body);
            assert_eq!(description, expected, "{body}");
            assert!(!description.contains("482913"), "{description}");
        }
    }

    #[test]
    fn a_key_the_caller_chose_is_never_repeated() {
        let description = refusal(r#"{"name": "n", "inner": {"code": "1", "482913": 1}} x"#);
        assert!(!description.contains("482913"), "{description}");
        assert!(description.contains("not valid JSON"), "{description}");
    }
}
