//! `objectFormat: json` with `jsonKeys` (ours; Azure provider #885): a secret whose value is a JSON
//! document becomes one file per listed key, like AWS's `jmesPath` and External Secrets' `property`.
//!
//! A key is a top-level member name or a dotted path through nested objects (`db.host`); a member
//! whose name is the whole key, dots included, wins over the path. Only string values are written
//! (as their UTF-8 text): a number, a boolean, an object or null is refused, because its text form is
//! a guess. Every error names the key and says what was found, never the value: the document is a
//! secret, and serde_json's own messages are not used (they may quote it).

use crate::params::JsonKey;

/// The largest document read (Key Vault secrets are at most 25 KiB).
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The most keys one object may list.
pub const MAX_KEYS: usize = 100;
/// The deepest dotted path.
pub const MAX_DEPTH: usize = 32;

/// One extracted file.
pub struct Extracted {
    /// The file name (the key's alias, else the key).
    pub file: String,
    /// Its mode.
    pub mode: u32,
    /// The value's bytes.
    pub value: Vec<u8>,
}

/// What kind of JSON value a key found, for messages.
fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `s` quoted for an error, at most about 100 characters: a key is the class author's text, but one of
/// control characters quotes at six times its length, and a message names the key and its parts.
fn quoted(s: &str) -> String {
    let q = format!("{s:?}");
    if q.len() <= 100 {
        return q;
    }
    let (mut cut, mut shown) = (0, 0);
    for (i, c) in s.char_indices() {
        shown += c.escape_debug().count();
        if shown > 60 {
            break;
        }
        cut = i + c.len_utf8();
    }
    format!("{:?}… ({} bytes)", &s[..cut], s.len())
}

fn lookup<'a>(doc: &'a serde_json::Value, key: &str) -> Result<&'a serde_json::Value, String> {
    if let Some(v) = doc.as_object().and_then(|m| m.get(key)) {
        return Ok(v);
    }
    let mut at = doc;
    let mut walked = String::new();
    for segment in key.split('.') {
        let Some(members) = at.as_object() else {
            let what = if walked.is_empty() { "the document".to_string() } else { quoted(&walked) };
            return Err(format!("{what} is {}, not an object", kind(at)));
        };
        at = members.get(segment).ok_or_else(|| {
            if walked.is_empty() {
                "not in the document".to_string()
            } else {
                format!("no member {} in {}", quoted(segment), quoted(&walked))
            }
        })?;
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(segment);
    }
    Ok(at)
}

/// The files of `keys` from the document `value`. The error names the key and what was wrong.
pub fn extract(value: &[u8], keys: &[JsonKey]) -> Result<Vec<Extracted>, String> {
    if value.len() > MAX_DOCUMENT_BYTES {
        return Err(format!(
            "objectFormat json: the value is {} bytes, larger than the {MAX_DOCUMENT_BYTES} bytes read",
            value.len()
        ));
    }
    let doc: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "it ends early",
            serde_json::error::Category::Io | serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "not a JSON document",
        };
        format!("objectFormat json: the value is {what} (line {}, column {})", e.line(), e.column())
    })?;
    keys.iter()
        .map(|k| {
            let found = lookup(&doc, &k.key).map_err(|why| format!("jsonKeys {}: {why}", quoted(&k.key)))?;
            let serde_json::Value::String(text) = found else {
                return Err(format!(
                    "jsonKeys {}: the value is {}, only strings are written",
                    quoted(&k.key),
                    kind(found)
                ));
            };
            Ok(Extracted { file: k.file_name().to_string(), mode: k.mode, value: text.as_bytes().to_vec() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str, alias: &str) -> JsonKey {
        JsonKey { key: k.into(), alias: alias.into(), mode: 0o644 }
    }

    fn files(doc: &str, keys: &[JsonKey]) -> Result<Vec<(String, String)>, String> {
        extract(doc.as_bytes(), keys)
            .map(|v| v.into_iter().map(|e| (e.file, String::from_utf8(e.value).unwrap())).collect())
    }

    #[test]
    fn an_error_about_a_long_key_stays_short() {
        let key = format!("{}.{}", "\u{11}".repeat(128), "\u{11}".repeat(127));
        let keys = [JsonKey { key: key.clone(), alias: String::new(), mode: 0o644 }];
        let doc = format!(r#"{{"{}": {{}}}}"#, "\\u0011".repeat(128));
        let Err(e) = extract(doc.as_bytes(), &keys) else { panic!("a missing member is refused") };
        assert!(e.len() < 300, "{} bytes: {e}", e.len());
        assert!(e.starts_with("jsonKeys \"\\u{11}") && e.contains("(256 bytes)"), "{e}");
    }

    #[test]
    fn top_level_nested_and_literal_dotted_keys() {
        let doc = r#"{"user":"app","db":{"host":"h1","port":"5432"},"a.b":"literal","a":{"b":"nested"}}"#;
        let got = files(doc, &[key("user", ""), key("db.host", "host"), key("a.b", "")]).unwrap();
        assert_eq!(
            got,
            [("user".into(), "app".into()), ("host".into(), "h1".into()), ("a.b".into(), "literal".into())]
        );
    }

    #[test]
    fn errors_name_the_key_and_never_the_value() {
        let doc = r#"{"user":"s3cr3t-user","n":5,"db":{"host":"s3cr3t-host"},"list":["s3cr3t"]}"#;
        let cases = [
            (key("pass", ""), r#"jsonKeys "pass": not in the document"#),
            (key("db.port", ""), r#"jsonKeys "db.port": no member "port" in "db""#),
            (key("user.name", ""), r#"jsonKeys "user.name": "user" is a string, not an object"#),
            (key("n", ""), r#"jsonKeys "n": the value is a number, only strings are written"#),
            (key("db", ""), r#"jsonKeys "db": the value is an object, only strings are written"#),
            (key("list", ""), r#"jsonKeys "list": the value is an array, only strings are written"#),
        ];
        for (k, want) in cases {
            let err = files(doc, &[k]).unwrap_err();
            assert_eq!(err, want);
            assert!(!err.contains("s3cr3t"));
        }
        for bad in [r#"{"user": "s3cr3t"#, "s3cr3t", r#"["s3cr3t"]"#, "{\"s3cr3t\u{1}\":1}"] {
            let err = files(bad, &[key("user", "")]).unwrap_err();
            assert!(err.starts_with("objectFormat json: the value is ") || err.contains("not an object"), "{err}");
            assert!(!err.contains("s3cr3t"), "{err}");
        }
        let huge = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_DOCUMENT_BYTES));
        assert!(files(&huge, &[key("k", "")]).unwrap_err().contains("larger than the 262144 bytes"));
    }

    #[test]
    fn deep_documents_are_refused_not_overflowed() {
        let deep = format!("{}\"v\"{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        let err = files(&deep, &[key("a", "")]).unwrap_err();
        assert!(err.starts_with("objectFormat json: the value is "), "{err}");
    }
}
