//! Secret material and how it is printed.
//!
//! Tokens, node-publish secrets and file contents travel through the driver (and the Azure provider)
//! in `secrecy`'s types: a stray `{:?}` in a log line, an error or a panic message prints a redaction
//! instead of a value, every read is an auditable `expose_secret()`, and the memory is zeroed on drop.

use std::collections::BTreeMap;

pub use secrecy::{ExposeSecret, SecretSlice, SecretString};

/// Node-publish secrets: names in the clear, every value secret.
pub type SecretMap = BTreeMap<String, SecretString>;

/// Wraps every value of a plain map.
pub fn secret_map(map: BTreeMap<String, String>) -> SecretMap {
    map.into_iter().map(|(k, v)| (k, SecretString::from(v))).collect()
}

/// The values of a secret map, exposed (for the provider protocol's JSON and the provider's parser).
pub fn expose_map(map: &SecretMap) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.expose_secret().to_string())).collect()
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
    fn secrets_never_print_their_values() {
        let s = SecretString::from("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let m = secret_map([("clientsecret".to_string(), "hunter2".to_string())].into());
        assert!(!format!("{m:?}").contains("hunter2"), "{m:?}");
        assert_eq!(expose_map(&m)["clientsecret"], "hunter2");
        let bytes = SecretSlice::from(b"p@ss".to_vec());
        assert!(!format!("{bytes:?}").contains("p@ss"));
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
