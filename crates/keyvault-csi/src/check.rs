//! `keyvault-csi check`: finds everything wrong with SecretProviderClass manifests before a pod gets
//! stuck in ContainerCreating, using the same parsers as the mount path, and reports every problem
//! with its field path and the fix. Exit codes: 0 clean, 1 problems found, 2 unreadable input.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use driver::class::SecretProviderClass;
use keyvault::params;
use serde::Serialize;

mod live;

/// Flags of `keyvault-csi check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// SecretProviderClass manifests (YAML).
    #[arg(required_unless_present = "live")]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
    /// Check the class in the cluster instead of files: it exists, the driver is registered, the
    /// identity works and every object can be fetched (values are never printed), synced Secrets
    /// are ours to write. Needs `--class` and `--namespace`.
    #[arg(long)]
    pub live: bool,
    /// Where and what `--live` checks.
    #[command(flatten)]
    pub target: live::LiveArgs,
}

/// Output formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// Human-readable lines.
    Text,
    /// JSON for CI.
    Json,
}

/// One finding.
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

fn err(path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { path: path.into(), severity: "error", message: message.into(), fix: fix.into() }
}

fn warn(path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { path: path.into(), severity: "warning", message: message.into(), fix: fix.into() }
}

/// Levenshtein distance, case-insensitive (typo detection).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.to_lowercase().chars().collect(), b.to_lowercase().chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

const KNOWN: &[&str] = &[
    "keyvaultName",
    "tenantID",
    "tenantId",
    "cloudName",
    "cloudEnvFileName",
    "usePodIdentity",
    "useVMManagedIdentity",
    "useAzureTokenProxy",
    "userAssignedIdentityID",
    "clientID",
    "objects",
    "resourceGroup",
    "subscriptionId",
];
const DRIVER_SETTINGS: &[&str] =
    &["enableSecretRotation", "rotationPollInterval", "syncSecret", "syncSecretEnabled", "filteredWatchSecret"];
const AZURE_ALIASES: &[&str] =
    &["azurekeyvault", "azure-keyvault", "azure_keyvault", "azure-key-vault", "keyvault", "akv", "azurekv"];

/// Checks one manifest.
pub fn check_class(spc: &SecretProviderClass) -> Vec<Finding> {
    let mut f = Vec::new();
    if spc.kind != "SecretProviderClass" {
        f.push(err("kind", format!("{:?} is not SecretProviderClass", spc.kind), "set kind: SecretProviderClass"));
    }
    match spc.api_version.as_str() {
        "secrets-store.csi.x-k8s.io/v1" => {}
        "secrets-store.csi.x-k8s.io/v1alpha1" => f.push(warn(
            "apiVersion",
            "secrets-store.csi.x-k8s.io/v1alpha1 is deprecated",
            "use apiVersion: secrets-store.csi.x-k8s.io/v1",
        )),
        other => f.push(err(
            "apiVersion",
            format!("{other:?} is not a SecretProviderClass API version"),
            "use apiVersion: secrets-store.csi.x-k8s.io/v1",
        )),
    }
    if spc.metadata.name.is_empty() {
        f.push(err("metadata.name", "the class has no name", "set metadata.name"));
    }
    let provider = spc.spec.provider.as_str();
    if provider.is_empty() {
        f.push(err(
            "spec.provider",
            "provider not set (mounts fail with \"provider not set in <ns>/<name>\")",
            "set spec.provider: azure",
        ));
    } else if provider != "azure"
        && (AZURE_ALIASES.contains(&provider.to_ascii_lowercase().as_str()) || distance(provider, "azure") <= 2)
    {
        f.push(err(
            "spec.provider",
            format!("{provider:?} is not a provider; did you mean \"azure\"?"),
            "set spec.provider: azure",
        ));
    } else if !driver::external::valid_provider_name(provider) {
        f.push(err(
            "spec.provider",
            format!("{provider:?} is not a valid provider name (letters, digits, - and _, at most 30)"),
            "use the provider's socket name, e.g. azure",
        ));
    }
    if spc.spec.parameters.is_empty() {
        f.push(err(
            "spec.parameters",
            "parameters not set (mounts fail with \"parameters not set in <ns>/<name>\")",
            "add the provider's parameters",
        ));
    }
    let mut files: Option<BTreeSet<String>> = None;
    if provider == "azure" && !spc.spec.parameters.is_empty() {
        files = Some(check_azure(spc, &mut f));
    }
    for (i, so) in spc.spec.secret_objects.iter().enumerate() {
        let base = format!("spec.secretObjects[{i}]");
        if so.secret_name.trim().is_empty() {
            f.push(err(format!("{base}.secretName"), "secretName is empty", "name the Kubernetes Secret to create"));
        }
        if so.type_.trim().is_empty() {
            f.push(err(format!("{base}.type"), "secret type is empty", "set type: Opaque (or kubernetes.io/tls, ...)"));
        }
        for (j, d) in so.data.iter().enumerate() {
            let p = format!("{base}.data[{j}]");
            if d.key.trim().is_empty() {
                f.push(err(format!("{p}.key"), "key is empty", "name the key in the Secret's data"));
            }
            let name = d.object_name.trim();
            if name.is_empty() {
                f.push(err(format!("{p}.objectName"), "objectName is empty", "name a file this class mounts"));
            } else if let Some(files) = &files {
                let split = name.strip_suffix(".crt").or_else(|| name.strip_suffix(".key"));
                if !files.contains(name) {
                    if split.is_some_and(|s| files.contains(s)) {
                        f.push(warn(
                            format!("{p}.objectName"),
                            format!("{name:?} exists only with --write-cert-and-key-in-separate-files"),
                            "enable writeCertAndKeyInSeparateFiles, or sync the combined file",
                        ));
                    } else {
                        let list: Vec<&str> = files.iter().map(String::as_str).collect();
                        f.push(err(
                            format!("{p}.objectName"),
                            format!("{name:?} is not a file this class mounts (files: {})", list.join(", ")),
                            "use an objectName or objectAlias of spec.parameters.objects",
                        ));
                    }
                }
            }
        }
    }
    f
}

/// The Azure parameters; returns the file paths the class mounts.
fn check_azure(spc: &SecretProviderClass, f: &mut Vec<Finding>) -> BTreeSet<String> {
    let params = &spc.spec.parameters;
    let get = |k: &str| params.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let p = |k: &str| format!("spec.parameters.{k}");
    for key in params.keys() {
        if KNOWN.contains(&key.as_str()) {
            continue;
        }
        if key.starts_with("csi.storage.k8s.io/") {
            f.push(err(p(key), "reserved for kubelet's pod attributes; the driver drops it", "remove it"));
        } else if let Some(s) = DRIVER_SETTINGS.iter().find(|s| s.eq_ignore_ascii_case(key)) {
            f.push(warn(
                p(key),
                format!("{s} is a driver setting (Helm value or flag), not a class parameter; it has no effect here"),
                "remove it and set it on the driver",
            ));
        } else if let Some(k) = KNOWN.iter().find(|k| distance(key, k) <= 2) {
            f.push(warn(p(key), format!("unknown parameter; did you mean {k:?}?"), format!("rename it to {k}")));
        } else {
            f.push(warn(p(key), "unknown parameter, ignored by the Azure provider", "remove it"));
        }
    }
    let vault = get("keyvaultName");
    if vault.is_empty() {
        f.push(err(
            p("keyvaultName"),
            "keyvaultName is not provided",
            "set keyvaultName to the vault's name (not its URL)",
        ));
    } else if let Err(e) = params::validate_vault_name(&vault) {
        f.push(err(p("keyvaultName"), e.message, "use the vault's name: 3-24 letters, digits and dashes"));
    }
    if get("tenantID").is_empty() && get("tenantId").is_empty() {
        f.push(err(p("tenantId"), "tenantId is not provided", "set tenantId to the vault's Entra ID tenant"));
    }
    if let Err(e) = keyvault::cloud::resolve(&get("cloudName"), &get("cloudEnvFileName"), "AzurePublicCloud") {
        f.push(err(
            p("cloudName"),
            e.message,
            "use AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud or AzureStackCloud",
        ));
    }
    let mut enabled = Vec::new();
    for flag in ["usePodIdentity", "useVMManagedIdentity", "useAzureTokenProxy"] {
        match params::parse_bool(&get(flag)) {
            Ok(true) => enabled.push(flag),
            Ok(false) => {}
            Err(e) => {
                f.push(err(p(flag), format!("failed to parse {flag} flag, error: {e}"), "use \"true\" or \"false\""))
            }
        }
    }
    if enabled.len() > 1 {
        f.push(err(
            p(enabled[1]),
            format!("only one identity mode can be enabled at a time; {} are", enabled.join(" and ")),
            "keep one",
        ));
    }
    if enabled.contains(&"usePodIdentity") {
        f.push(warn(
            p("usePodIdentity"),
            "usePodIdentity (aad-pod-identity) is deprecated and fails on clusters without NMI",
            "use workload identity: remove usePodIdentity, set clientID and a service account federated with it",
        ));
    }
    if enabled.contains(&"useAzureTokenProxy") {
        f.push(err(
            p("useAzureTokenProxy"),
            "identity binding is not supported by keyvault-csi",
            "use workload identity (clientID)",
        ));
    }
    if !get("userAssignedIdentityID").is_empty() && !enabled.contains(&"useVMManagedIdentity") {
        f.push(warn(
            p("userAssignedIdentityID"),
            "ignored unless useVMManagedIdentity is \"true\"",
            "set useVMManagedIdentity: \"true\", or use clientID for workload identity",
        ));
    }
    if !get("clientID").is_empty() && enabled.contains(&"useVMManagedIdentity") {
        f.push(warn(
            p("clientID"),
            "with clientID set, the provider also requires a workload identity token",
            "remove clientID (use userAssignedIdentityID) or useVMManagedIdentity",
        ));
    }
    let mut files = BTreeSet::new();
    let objects = get("objects");
    if objects.is_empty() {
        f.push(err(p("objects"), "objects is not set", "list the objects under objects: array:"));
        return files;
    }
    let checked = match params::check_objects(&objects) {
        Ok(c) => c,
        Err(e) => {
            f.push(err(p("objects"), e.message, "write objects as `array:` followed by `- |` blocks, one per object"));
            return files;
        }
    };
    if checked.is_empty() {
        f.push(err(p("objects"), "the array lists no object", "add objects"));
    }
    for (i, (spec, type_text, problems)) in checked.iter().enumerate() {
        for prob in problems {
            let path = format!("{}[{i}].{}", p("objects"), prob.field);
            if prob.field == "objectType" {
                let guess = ["secret", "key", "cert"]
                    .into_iter()
                    .find(|t| distance(type_text, t) <= 2 || type_text.to_lowercase().starts_with(t));
                let fix = guess
                    .map(|g| format!("did you mean objectType: {g}?"))
                    .unwrap_or_else(|| "use secret, key or cert".into());
                f.push(err(path, format!("{type_text:?} is not one of secret, key, cert"), fix));
            } else {
                f.push(err(path, prob.message.clone(), "see the Azure provider's object fields"));
            }
        }
        for out in params::output_paths(spec, false) {
            if !files.insert(out.clone()) {
                f.push(err(
                    format!("{}[{i}].objectAlias", p("objects")),
                    format!("file {out:?} is also written by another object"),
                    "give one of them a different objectAlias",
                ));
            }
        }
    }
    files
}

/// Runs `keyvault-csi check` and returns the exit code.
pub fn run(args: CheckArgs) -> u8 {
    if args.live {
        return run_live(&args);
    }
    let mut report = Vec::new();
    let mut unreadable = false;
    for file in &args.files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", file.display());
                unreadable = true;
                continue;
            }
        };
        match driver::class::parse_manifest(&text) {
            Ok(spc) => report.push((file.display().to_string(), check_class(&spc))),
            Err(e) => {
                eprintln!("{}: not a SecretProviderClass manifest: {e}", file.display());
                unreadable = true;
            }
        }
    }
    match args.output {
        Output::Json => {
            let v: Vec<_> = report.iter().map(|(file, f)| serde_json::json!({ "file": file, "findings": f })).collect();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Text => {
            for (file, findings) in &report {
                if findings.is_empty() {
                    println!("{file}: no problems found");
                }
                for x in findings {
                    println!("{file}: {}: {}: {}\n    fix: {}", x.severity, x.path, x.message, x.fix);
                }
            }
        }
    }
    if unreadable {
        2
    } else if report.iter().any(|(_, f)| !f.is_empty()) {
        1
    } else {
        0
    }
}

fn run_live(args: &CheckArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 2;
        }
    };
    let report = match runtime.block_on(live::run(&args.target)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("check --live: {e}");
            return 2;
        }
    };
    let where_ = format!("{}/{}", args.target.namespace, args.target.class.as_deref().unwrap_or(""));
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default()),
        Output::Text => {
            for x in &report.findings {
                println!("{where_}: {}: {}: {}\n    fix: {}", x.severity, x.path, x.message, x.fix);
            }
            for c in &report.checks {
                let tag = match c.status {
                    live::Status::Pass => "PASS",
                    live::Status::Fail => "FAIL",
                    live::Status::Skip => "SKIP",
                };
                println!("{tag} {}: {}", c.check, c.detail);
                if let Some(p) = &c.prevents {
                    println!("     prevents: {p}");
                }
            }
        }
    }
    let failed = report.checks.iter().any(|c| c.status == live::Status::Fail)
        || report.findings.iter().any(|f| f.severity == "error");
    u8::from(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(provider: &str, params: &[(&str, &str)]) -> SecretProviderClass {
        let mut yaml = format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: c\nspec:\n  provider: {provider}\n  parameters:\n"
        );
        for (k, v) in params {
            yaml.push_str(&format!("    {k}: {}\n", serde_json::to_string(v).unwrap()));
        }
        driver::class::parse_manifest(&yaml).unwrap()
    }

    const OBJECTS: &str = "array:\n  - |\n    objectName: secret1\n    objectType: secret\n";

    fn clean() -> Vec<(&'static str, &'static str)> {
        vec![("keyvaultName", "kv1"), ("tenantId", "t"), ("clientID", "c"), ("objects", OBJECTS)]
    }

    #[test]
    fn a_clean_class_has_no_findings() {
        assert_eq!(check_class(&class("azure", &clean())), vec![]);
    }

    #[test]
    fn the_three_classic_mistakes_get_precise_messages() {
        let f = check_class(&class("azurekeyvault", &clean()));
        assert_eq!(f[0].path, "spec.provider");
        assert_eq!(f[0].message, "\"azurekeyvault\" is not a provider; did you mean \"azure\"?");

        let mut p = clean();
        p.push(("usePodIdentity", "true"));
        let f = check_class(&class("azure", &p));
        assert!(
            f.iter().any(|x| x.path == "spec.parameters.usePodIdentity" && x.message.contains("deprecated")),
            "{f:?}"
        );

        let mut p = clean();
        p[3] = (
            "objects",
            "array:\n  - |\n    objectName: a\n    objectType: secret\n  - |\n    objectName: b\n    objectType: secrets\n",
        );
        let f = check_class(&class("azure", &p));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].path, "spec.parameters.objects[1].objectType");
        assert_eq!(f[0].message, "\"secrets\" is not one of secret, key, cert");
        assert_eq!(f[0].fix, "did you mean objectType: secret?");
    }

    #[test]
    fn every_problem_is_reported_not_just_the_first() {
        let objects = "array:\n  - |\n    objectName: a\n    objectType: secret\n    objectAlias: ../escape\n    filePermission: rwx\n  - |\n    objectName: b\n    objectType: secret\n  - |\n    objectName: c\n    objectType: secret\n    objectAlias: b\n";
        let p = [
            ("keyvaultName", "k"),
            ("tenantId", ""),
            ("useVMManagedIdentity", "yes"),
            ("keyVaultname", "x"),
            ("enableSecretRotation", "true"),
            ("objects", objects),
        ];
        let f = check_class(&class("azure", &p));
        let paths: Vec<&str> = f.iter().map(|x| x.path.as_str()).collect();
        for want in [
            "spec.parameters.keyvaultName",
            "spec.parameters.tenantId",
            "spec.parameters.useVMManagedIdentity",
            "spec.parameters.keyVaultname",
            "spec.parameters.enableSecretRotation",
            "spec.parameters.objects[0].objectAlias",
            "spec.parameters.objects[0].filePermission",
            "spec.parameters.objects[2].objectAlias",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
        assert!(f.iter().any(|x| x.message.contains("did you mean \"keyvaultName\"")));
    }

    #[test]
    fn secret_objects_must_name_mounted_files() {
        let yaml = format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: c\nspec:\n  provider: azure\n  parameters:\n    keyvaultName: kv1\n    tenantId: t\n    clientID: c\n    objects: {}\n  secretObjects:\n  - secretName: s\n    type: Opaque\n    data:\n    - objectName: secret1\n      key: a\n    - objectName: nope\n      key: b\n",
            serde_json::to_string(OBJECTS).unwrap()
        );
        let f = check_class(&driver::class::parse_manifest(&yaml).unwrap());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].path, "spec.secretObjects[0].data[1].objectName");
        assert!(f[0].message.contains("\"nope\" is not a file this class mounts (files: secret1)"));
    }
}
