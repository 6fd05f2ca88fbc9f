//! Types that hold secret material and refuse to print it.
//!
//! Tokens, node-publish secrets and file contents travel through the driver inside these wrappers so
//! that a stray `{:?}` in a log line, an error or a panic message prints `<redacted>` instead of a value.

use std::collections::BTreeMap;
use std::fmt;

/// A value that must never appear in logs, events, metrics or error messages.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// Gives access to the value. Call sites are easy to audit with `grep expose`.
    pub fn expose(&self) -> &T {
        &self.0
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The volume-context key under which kubelet passes service-account tokens (CVE-2023-2878: never log it).
pub const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// Renders a string map for a log line: keys with values, except sensitive keys, whose value is replaced.
/// Used for `volume_context` and provider attributes, where only the tokens entry is secret.
pub fn sanitized_map(map: &BTreeMap<String, String>) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        if k == TOKENS_KEY {
            out.push_str(&format!("{k:?}: \"***stripped***\""));
        } else {
            out.push_str(&format!("{k:?}: {v:?}"));
        }
    }
    out.push('}');
    out
}

/// Renders only the keys of a secret map (`secrets` of a CSI request): every value is secret.
pub fn keys_only<V>(map: &BTreeMap<String, V>) -> String {
    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
    format!("{keys:?} (values stripped)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(&s)), "Some(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn sanitized_map_strips_tokens_but_keeps_other_attributes() {
        let mut m = BTreeMap::new();
        m.insert(TOKENS_KEY.to_string(), "eyJsecret".to_string());
        m.insert("csi.storage.k8s.io/pod.name".to_string(), "web-0".to_string());
        let s = sanitized_map(&m);
        assert!(!s.contains("eyJsecret"), "{s}");
        assert!(s.contains("***stripped***"));
        assert!(s.contains("web-0"));
    }

    #[test]
    fn keys_only_prints_no_values() {
        let mut m = BTreeMap::new();
        m.insert("clientsecret".to_string(), "p@ss".to_string());
        let s = keys_only(&m);
        assert!(s.contains("clientsecret") && !s.contains("p@ss"), "{s}");
    }
}
