//! `keyvault-csi check`, the driver's part: everything about a SecretProviderClass except its
//! provider's parameters (kind, API version, name, provider, `secretObjects`). A provider's parameters
//! are linted by the provider ([`ParametersLint`]); the binary wires the Azure one in.
//!
//! Every problem is reported in one run: a wrong provider name does not hide the parameters' problems
//! (they are linted by the provider the class was most likely meant for).

use std::collections::BTreeSet;

use serde::Serialize;

use crate::class::{SecretProviderClass, SecretProviderClassSpec};

/// One finding, with its field path in the manifest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// Field path, e.g. `spec.parameters.objects[1].objectType`.
    pub path: String,
    /// `error` (the mount will fail) or `warning` (it will not do what you expect).
    pub severity: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl Finding {
    /// An error: a mount of the class fails.
    pub fn error(path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { path: path.into(), severity: "error", message: message.into(), fix: fix.into() }
    }

    /// A warning: the mount works, but not as the author expects.
    pub fn warning(path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { path: path.into(), severity: "warning", message: message.into(), fix: fix.into() }
    }
}

/// What a provider's linter says about a class's parameters.
#[derive(Debug, Default)]
pub struct ParametersReport {
    /// Findings; paths relative to `spec.parameters` (e.g. `objects[1].objectType`).
    pub findings: Vec<Finding>,
    /// The files a mount writes, when the objects could be read (for `secretObjects`).
    pub files: Option<BTreeSet<String>>,
}

/// A provider's linter for its parameters.
pub trait ParametersLint {
    /// The provider's name in `spec.provider`.
    fn provider(&self) -> &str;
    /// Names people give the provider that are not its name.
    fn aliases(&self) -> &[&str];
    /// Whether parameters look like this provider's.
    fn recognises(&self, spec: &SecretProviderClassSpec) -> bool;
    /// Lints the parameters.
    fn lint(&self, spec: &SecretProviderClassSpec) -> ParametersReport;
}

/// Lints one manifest with the providers' linters.
pub fn lint_class(spc: &SecretProviderClass, linters: &[&dyn ParametersLint]) -> Vec<Finding> {
    let mut f = Vec::new();
    if spc.kind != "SecretProviderClass" {
        f.push(Finding::error(
            "kind",
            format!("{:?} is not SecretProviderClass", spc.kind),
            "set kind: SecretProviderClass",
        ));
    }
    match spc.api_version.as_str() {
        "secrets-store.csi.x-k8s.io/v1" => {}
        "secrets-store.csi.x-k8s.io/v1alpha1" => f.push(Finding::warning(
            "apiVersion",
            "secrets-store.csi.x-k8s.io/v1alpha1 is deprecated",
            "use apiVersion: secrets-store.csi.x-k8s.io/v1",
        )),
        other => f.push(Finding::error(
            "apiVersion",
            format!("{other:?} is not a SecretProviderClass API version"),
            "use apiVersion: secrets-store.csi.x-k8s.io/v1",
        )),
    }
    if spc.metadata.name.is_empty() {
        f.push(Finding::error("metadata.name", "the class has no name", "set metadata.name"));
    }
    annotations(&spc.metadata.annotations, &mut f);
    let spec = &spc.spec;
    let linter = provider(spec, linters, &mut f);
    if spec.parameters.is_empty() {
        f.push(Finding::error(
            "spec.parameters",
            "parameters not set (mounts fail with \"parameters not set in <ns>/<name>\")",
            "add the provider's parameters",
        ));
    }
    let mut files = None;
    if let Some(linter) = linter.filter(|_| !spec.parameters.is_empty()) {
        let report = linter.lint(spec);
        f.extend(report.findings.into_iter().map(|x| Finding { path: format!("spec.parameters.{}", x.path), ..x }));
        files = report.files;
    }
    secret_objects(spec, files.as_ref(), &mut f);
    f
}

/// Checks the driver's own annotations: a rotation interval it cannot use, and names under its
/// prefix that it does not know (a typo would silently do nothing).
fn annotations(annotations: &std::collections::BTreeMap<String, String>, f: &mut Vec<Finding>) {
    use crate::annotations::{PREFIX, REFRESH_NOW, ROTATION_INTERVAL, class_interval};
    for key in annotations.keys().filter(|k| k.starts_with(PREFIX)) {
        if key != REFRESH_NOW && key != ROTATION_INTERVAL {
            f.push(Finding::warning(
                format!("metadata.annotations[{key}]"),
                format!("{key:?} is not an annotation keyvault-csi reads"),
                format!("use {ROTATION_INTERVAL} or {REFRESH_NOW}"),
            ));
        }
    }
    let Some(raw) = annotations.get(ROTATION_INTERVAL) else { return };
    let path = format!("metadata.annotations[{ROTATION_INTERVAL}]");
    let floor = crate::annotations::DEFAULT_MIN_CLASS_INTERVAL;
    match class_interval(Some(raw), floor) {
        Err(message) => f.push(Finding::warning(
            path,
            format!("{message}; the node's --rotation-poll-interval applies"),
            "use a positive Go duration such as 10m or 24h",
        )),
        Ok(Some(c)) if c.capped.is_some() => f.push(Finding::warning(
            path,
            c.capped.unwrap_or_default(),
            "ask for 720h or less; rotation longer than 30 days is not supported",
        )),
        Ok(Some(c)) if crate::duration::parse_go_duration(raw.trim()).is_ok_and(|asked| asked < c.interval) => {
            f.push(Finding::warning(
                path,
                format!(
                    "{raw:?} is below the driver's --min-rotation-poll-interval (default {floor:?}) and is raised to it"
                ),
                format!("ask for {floor:?} or more"),
            ))
        }
        Ok(_) => {}
    }
}

/// Checks `spec.provider`; returns the linter of the provider the class is (or most likely was meant) for.
fn provider<'a>(
    spec: &SecretProviderClassSpec,
    linters: &[&'a dyn ParametersLint],
    f: &mut Vec<Finding>,
) -> Option<&'a dyn ParametersLint> {
    let name = spec.provider.as_str();
    if let Some(l) = linters.iter().find(|l| l.provider() == name) {
        return Some(*l);
    }
    let meant = linters.iter().find(|l| {
        l.aliases().contains(&name.to_ascii_lowercase().as_str())
            || strsim::levenshtein(&name.to_lowercase(), l.provider()) <= 2
    });
    let by_parameters = || linters.iter().find(|l| l.recognises(spec));
    if name.is_empty() {
        let fix =
            by_parameters().map_or("set spec.provider".into(), |l| format!("set spec.provider: {}", l.provider()));
        f.push(Finding::error(
            "spec.provider",
            "provider not set (mounts fail with \"provider not set in <ns>/<name>\")",
            fix,
        ));
        return by_parameters().copied();
    }
    if let Some(l) = meant {
        f.push(Finding::error(
            "spec.provider",
            format!("{name:?} is not a provider; did you mean {:?}?", l.provider()),
            format!("set spec.provider: {}", l.provider()),
        ));
        return Some(*l);
    }
    if !crate::external::valid_provider_name(name) {
        f.push(Finding::error(
            "spec.provider",
            format!("{name:?} is not a valid provider name (letters, digits, - and _, at most 30)"),
            "use the provider's socket name, e.g. azure",
        ));
        return by_parameters().copied();
    }
    if let Some(l) = by_parameters() {
        f.push(Finding::warning(
            "spec.provider",
            format!("the parameters are the {:?} provider's, but the class names provider {name:?}", l.provider()),
            format!("set spec.provider: {} unless {name} is a provider you installed", l.provider()),
        ));
        return Some(*l);
    }
    None
}

/// `secretObjects`: every Secret named and typed, every key filled from a file the class mounts.
fn secret_objects(spec: &SecretProviderClassSpec, files: Option<&BTreeSet<String>>, f: &mut Vec<Finding>) {
    for (i, so) in spec.secret_objects.iter().enumerate() {
        let base = format!("spec.secretObjects[{i}]");
        if so.secret_name.trim().is_empty() {
            f.push(Finding::error(
                format!("{base}.secretName"),
                "secretName is empty",
                "name the Kubernetes Secret to create",
            ));
        }
        if so.type_.trim().is_empty() {
            f.push(Finding::error(
                format!("{base}.type"),
                "secret type is empty",
                "set type: Opaque (or kubernetes.io/tls, ...)",
            ));
        }
        for (j, d) in so.data.iter().enumerate() {
            let p = format!("{base}.data[{j}]");
            if d.key.trim().is_empty() {
                f.push(Finding::error(format!("{p}.key"), "key is empty", "name the key in the Secret's data"));
            }
            let name = d.object_name.trim();
            if name.is_empty() {
                f.push(Finding::error(
                    format!("{p}.objectName"),
                    "objectName is empty",
                    "name a file this class mounts",
                ));
                continue;
            }
            let Some(files) = files.filter(|files| !files.contains(name)) else { continue };
            let split = name.strip_suffix(".crt").or_else(|| name.strip_suffix(".key"));
            if split.is_some_and(|s| files.contains(s)) {
                f.push(Finding::warning(
                    format!("{p}.objectName"),
                    format!("{name:?} exists only with --write-cert-and-key-in-separate-files"),
                    "enable writeCertAndKeyInSeparateFiles, or sync the combined file",
                ));
            } else {
                let list: Vec<&str> = files.iter().map(String::as_str).collect();
                f.push(Finding::error(
                    format!("{p}.objectName"),
                    format!("{name:?} is not a file this class mounts (files: {})", list.join(", ")),
                    "use an objectName or objectAlias of the provider's objects",
                ));
            }
        }
    }
}
