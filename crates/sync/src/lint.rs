//! `keyvault-csi check` for SecretSync manifests: what the API server, upstream's admission policies
//! or the first reconcile would refuse, found before anything is applied.

use std::collections::BTreeSet;

use secrets_store::lint::Finding;

use crate::api::{MANAGED_LABEL, SecretSync};

/// Keys a Secret of each type must have, as the API server validates them (any one of the list).
fn required_keys(type_: &str) -> Option<&'static [&'static str]> {
    Some(match type_ {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/basic-auth" => &["username", "password"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        _ => return None,
    })
}

fn dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn secret_key(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// Lints one SecretSync. `class_files` is what its class mounts, when the class was among the
/// manifests (`None`: sourcePaths are not checked, and a warning says so).
pub fn lint_sync(ss: &SecretSync, class_files: Option<&BTreeSet<String>>) -> Vec<Finding> {
    let mut f = Vec::new();
    let spec = &ss.spec;
    if ss.metadata.name.as_deref().is_none_or(|n| !dns1123_subdomain(n)) {
        f.push(Finding::error(
            "metadata.name",
            "the name (which the Secret gets) must be a DNS-1123 subdomain",
            "use lower-case letters, digits, '-' and '.'",
        ));
    }
    for (path, value) in [
        ("spec.secretProviderClassName", &spec.secret_provider_class_name),
        ("spec.serviceAccountName", &spec.service_account_name),
    ] {
        if !dns1123_subdomain(value) {
            f.push(Finding::error(path, format!("{value:?} is not a DNS-1123 subdomain"), "name an existing object"));
        }
    }
    let object = &spec.secret_object;
    let type_ = object.type_.trim();
    if type_ == "kubernetes.io/service-account-token" {
        f.push(Finding::error(
            "spec.secretObject.type",
            "service-account-token Secrets are never written by a SecretSync (upstream's admission policy denies them)",
            "use Opaque or another type",
        ));
    }
    if object.data.is_empty() {
        f.push(Finding::error("spec.secretObject.data", "data is empty", "add at least one sourcePath/targetKey"));
    }
    let mut keys = BTreeSet::new();
    for (i, d) in object.data.iter().enumerate() {
        let at = format!("spec.secretObject.data[{i}]");
        if !secret_key(&d.target_key) {
            f.push(Finding::error(
                format!("{at}.targetKey"),
                format!(
                    "{:?} is not a valid Secret key (letters, digits, '-', '.', '_'; the API server refuses it)",
                    d.target_key
                ),
                "use a key such as password or tls.crt",
            ));
        }
        if !keys.insert(d.target_key.as_str()) {
            f.push(Finding::error(
                format!("{at}.targetKey"),
                format!("{:?} is listed twice", d.target_key),
                "keep one",
            ));
        }
        if type_ == "kubernetes.io/tls" && !["tls.crt", "tls.key"].contains(&d.target_key.as_str()) {
            f.push(Finding::error(
                format!("{at}.targetKey"),
                format!("{:?} in a kubernetes.io/tls SecretSync: only tls.crt and tls.key are built", d.target_key),
                "use tls.crt and tls.key, or type Opaque",
            ));
        }
        match class_files {
            Some(files) if !files.contains(d.source_path.trim()) => f.push(Finding::error(
                format!("{at}.sourcePath"),
                format!(
                    "{:?} is not a file the class yields (files: {})",
                    d.source_path,
                    files.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
                "use an objectName or objectAlias of the class (name/N with objectVersionHistory)",
            )),
            _ => {}
        }
    }
    if let Some(required) = required_keys(type_) {
        let ok = match type_ {
            // The API server wants one of username or password; the others every key listed.
            "kubernetes.io/basic-auth" => required.iter().any(|k| keys.contains(k)),
            _ => required.iter().all(|k| keys.contains(k)),
        };
        if !ok {
            f.push(Finding::error(
                "spec.secretObject.data",
                format!(
                    "a {type_} Secret needs the keys {} (the API server refuses it otherwise)",
                    required.join(", ")
                ),
                "add the missing targetKey",
            ));
        }
    }
    for (what, map) in [("labels", &object.labels), ("annotations", &object.annotations)] {
        for k in map.keys().filter(|k| k.starts_with(MANAGED_LABEL)) {
            f.push(Finding::error(
                format!("spec.secretObject.{what}[{k}]"),
                format!("{k:?} uses the reserved prefix {MANAGED_LABEL}"),
                "rename it",
            ));
        }
    }
    if class_files.is_none() {
        f.push(Finding::warning(
            "spec.secretProviderClassName",
            format!(
                "class {:?} is not among the checked manifests: sourcePaths not checked",
                spec.secret_provider_class_name
            ),
            "pass the class's manifest too (or use check --live)",
        ));
    }
    annotations(ss, &mut f);
    f
}

/// Our annotations on a SecretSync: names under the prefix the controller does not read (a typo would
/// silently do nothing), and a partial-sync value that is neither `true` nor `false`.
fn annotations(ss: &SecretSync, f: &mut Vec<Finding>) {
    use secrets_store::annotations::{PREFIX, REFRESH_NOW, ROTATION_INTERVAL};
    let known = [REFRESH_NOW, ROTATION_INTERVAL, crate::decide::PARTIAL_SYNC_ANNOTATION];
    let Some(annotations) = &ss.metadata.annotations else { return };
    for (key, value) in annotations.iter().filter(|(k, _)| k.starts_with(PREFIX)) {
        let path = format!("metadata.annotations[{key}]");
        if !known.contains(&key.as_str()) {
            f.push(Finding::warning(
                path,
                format!("{key:?} is not an annotation the SecretSync controller reads"),
                format!("use one of {}", known.join(", ")),
            ));
        } else if key == crate::decide::PARTIAL_SYNC_ANNOTATION && !matches!(value.trim(), "true" | "false") {
            f.push(Finding::warning(
                path,
                format!("{value:?} is neither \"true\" nor \"false\"; the controller's --partial-sync applies"),
                "write \"true\" or \"false\"",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ss(yaml_spec: &str) -> SecretSync {
        serde_saphyr::from_str(&format!(
            "apiVersion: secret-sync.x-k8s.io/v1alpha1\nkind: SecretSync\nmetadata:\n  name: app\nspec:\n{yaml_spec}"
        ))
        .unwrap()
    }

    fn files(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn unknown_annotations_and_bad_partial_sync_values_are_warnings() {
        let mut s = ss(
            "  serviceAccountName: app\n  secretProviderClassName: spc\n  secretObject:\n    data:\n    - sourcePath: a\n      targetKey: a\n",
        );
        let ann = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        s.metadata.annotations = ann(&[("keyvault-csi.io/partial-sync", "true"), ("other.io/x", "y")]);
        assert_eq!(lint_sync(&s, Some(&files(&["a"]))), vec![]);
        s.metadata.annotations =
            ann(&[("keyvault-csi.io/partial-sync", "yes"), ("keyvault-csi.io/partialsync", "true")]);
        let found = lint_sync(&s, Some(&files(&["a"])));
        let paths: Vec<&str> = found.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["metadata.annotations[keyvault-csi.io/partial-sync]", "metadata.annotations[keyvault-csi.io/partialsync]"],
            "{found:?}"
        );
        assert!(found.iter().all(|f| f.severity == "warning"));
    }

    #[test]
    fn a_clean_sync_with_its_class_has_no_findings() {
        let s = ss(
            "  serviceAccountName: app\n  secretProviderClassName: spc\n  secretObject:\n    data:\n    - sourcePath: db-password\n      targetKey: password\n",
        );
        assert_eq!(lint_sync(&s, Some(&files(&["db-password"]))), vec![]);
        let without = lint_sync(&s, None);
        assert_eq!(without.len(), 1);
        assert_eq!(without[0].severity, "warning");
    }

    #[test]
    fn paths_keys_and_types_that_will_not_validate_are_errors_with_their_paths() {
        let s = ss(
            "  serviceAccountName: app\n  secretProviderClassName: spc\n  secretObject:\n    type: kubernetes.io/tls\n    labels:\n      secrets-store.sync.x-k8s.io/x: y\n    data:\n    - sourcePath: cert\n      targetKey: tls.crt\n    - sourcePath: missing\n      targetKey: chain/0\n",
        );
        let f = lint_sync(&s, Some(&files(&["cert", "cert.key"])));
        let paths: Vec<&str> = f.iter().map(|x| x.path.as_str()).collect();
        for want in [
            "spec.secretObject.data[1].targetKey",
            "spec.secretObject.data[1].sourcePath",
            "spec.secretObject.data",
            "spec.secretObject.labels[secrets-store.sync.x-k8s.io/x]",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        assert!(f.iter().all(|x| x.severity == "error"), "{f:?}");
        assert!(f.iter().any(|x| x.message.contains("needs the keys tls.crt, tls.key")));
        assert!(
            f.iter().any(|x| x.message.contains("\"missing\" is not a file the class yields (files: cert, cert.key)"))
        );
        let token = ss(
            "  serviceAccountName: app\n  secretProviderClassName: spc\n  secretObject:\n    type: kubernetes.io/service-account-token\n    data:\n    - sourcePath: a\n      targetKey: token\n",
        );
        assert!(lint_sync(&token, Some(&files(&["a"]))).iter().any(|x| x.path == "spec.secretObject.type"));
        let basic = ss(
            "  serviceAccountName: app\n  secretProviderClassName: spc\n  secretObject:\n    type: kubernetes.io/basic-auth\n    data:\n    - sourcePath: a\n      targetKey: password\n",
        );
        assert_eq!(lint_sync(&basic, Some(&files(&["a"]))), vec![], "one of username/password is enough");
    }
}
