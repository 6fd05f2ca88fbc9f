//! `keyvault-csi check`: finds everything wrong with SecretProviderClass manifests before a pod gets
//! stuck in ContainerCreating, and reports every problem with its field path and the fix. The rules
//! live with what they describe (`secrets_store::lint`, `keyvault::lint`, the latter on the mount's own
//! parameter reader); this module reads files, prints and sets the exit code: 0 clean, 1 problems
//! found, 2 unreadable input. The binary adds the Azure provider's flags (for `--live`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use secrets_store::class::SecretProviderClass;

pub mod live;

/// Flags of `keyvault-csi check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// SecretProviderClass and SecretSync manifests (YAML); a SecretSync is checked against its
    /// class when the class is among them.
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

pub use secrets_store::lint::Finding;

/// Lints one manifest: the driver's part and the Azure provider's parameters.
pub fn check_class(spc: &SecretProviderClass) -> Vec<Finding> {
    secrets_store::lint::lint_class(spc, &[&crate::lint::AzureLint])
}

/// A manifest `check` understands.
#[derive(Debug)]
pub enum Manifest {
    /// A SecretProviderClass.
    Class(SecretProviderClass),
    /// A SecretSync (`secret-sync.x-k8s.io/v1alpha1`).
    Sync(Box<sync::api::SecretSync>),
}

/// Reads a SecretProviderClass or SecretSync manifest.
pub fn parse(text: &str) -> Result<Manifest, String> {
    let head: serde_json::Value =
        serde_saphyr::from_str(text).map_err(|e| format!("not a SecretProviderClass or SecretSync manifest: {e}"))?;
    if head.get("kind").and_then(|k| k.as_str()) == Some("SecretSync") {
        return serde_saphyr::from_str(text)
            .map(|s| Manifest::Sync(Box::new(s)))
            .map_err(|e| format!("not a SecretSync manifest: {e}"));
    }
    secrets_store::class::parse_manifest(text)
        .map(Manifest::Class)
        .map_err(|e| format!("not a SecretProviderClass or SecretSync manifest: {e}"))
}

/// Findings per manifest; a SecretSync's sourcePaths are checked against its class when the class is
/// among the manifests (same namespace and name).
pub fn check_manifests(manifests: &[(String, Manifest)]) -> Vec<(String, Vec<Finding>)> {
    use secrets_store::lint::ParametersLint;
    let ns = |n: &Option<String>| n.clone().unwrap_or_else(|| "default".into());
    let files: std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>> = manifests
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::Class(c) => Some((
                (ns(&c.metadata.namespace), c.metadata.name.clone()),
                crate::lint::AzureLint.lint(&c.spec).files.unwrap_or_default(),
            )),
            Manifest::Sync(_) => None,
        })
        .collect();
    manifests
        .iter()
        .map(|(file, m)| {
            let findings = match m {
                Manifest::Class(c) => check_class(c),
                Manifest::Sync(s) => {
                    let key = (ns(&s.metadata.namespace), s.spec.secret_provider_class_name.clone());
                    sync::lint::lint_sync(s, files.get(&key))
                }
            };
            (file.clone(), findings)
        })
        .collect()
}

/// Runs `keyvault-csi check` and returns the exit code; `azure` is the Azure provider's configuration
/// from the driver's flags, asked for only by `--live`.
pub fn run(args: &CheckArgs, azure: impl FnOnce() -> Result<keyvault::Config, String>) -> u8 {
    if args.live {
        return match azure() {
            Ok(config) => run_live(args, config),
            Err(e) => {
                eprintln!("check --live: Azure provider: {e}");
                2
            }
        };
    }
    let mut manifests = Vec::new();
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
        match parse(&text) {
            Ok(m) => manifests.push((file.display().to_string(), m)),
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                unreadable = true;
            }
        }
    }
    let report = check_manifests(&manifests);
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

fn run_live(args: &CheckArgs, azure: keyvault::Config) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 2;
        }
    };
    let report = match runtime.block_on(async {
        let client = kube_bridge::client(args.target.kubeconfig.as_deref()).await?;
        live::run(&client, &args.target, &azure).await
    }) {
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
                    live::Status::Warn => "WARN",
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
        secrets_store::class::parse_manifest(&yaml).unwrap()
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
        assert_eq!(f.len(), 1, "{f:?}");
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
        assert!(f[0].message.ends_with("Invalid vaultObjectTypes. Should be secret, key, or cert"), "{f:?}");
        assert_eq!(f[0].fix, "did you mean objectType: secret?");
    }

    /// The classic troubleshooting exercise, all three mistakes and the tutorial's placeholders in one
    /// class: one run names every one of them.
    #[test]
    fn the_classic_exercise_gets_every_finding_in_one_run() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/classes/classic-exercise.yaml"))
                .unwrap();
        let f = check_class(&secrets_store::class::parse_manifest(&text).unwrap());
        let got: Vec<(&str, &str)> = f.iter().map(|x| (x.path.as_str(), x.severity)).collect();
        assert_eq!(
            got,
            [
                ("spec.provider", "error"),
                ("spec.parameters.keyvaultName", "error"),
                ("spec.parameters.tenantId", "error"),
                ("spec.parameters.objects[0].objectType", "error"),
                ("spec.parameters.objects[1].objectName", "error"),
                ("spec.parameters.usePodIdentity", "warning"),
            ],
            "{f:#?}"
        );
        assert!(f[1].message.contains("\"<KEY_VAULT_NAME>\" is an unfilled placeholder"));
    }

    #[test]
    fn a_wrong_provider_with_azure_parameters_or_none_at_all_still_gets_them_linted() {
        let bad = [("keyvaultName", "kv1"), ("tenantId", "t"), ("clientID", "c"), ("objects", "nope")];
        for provider in ["\"\"", "azur", "my/provider", "vault"] {
            let f = check_class(&class(provider, &bad));
            assert!(f.iter().any(|x| x.path == "spec.parameters.objects"), "{provider}: {f:?}");
            assert_eq!(f[0].path, "spec.provider", "{provider}: {f:?}");
        }
        let f = check_class(&class("vault", &clean()));
        assert_eq!((f.len(), f[0].severity), (1, "warning"), "{f:?}");
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
        let f = check_class(&secrets_store::class::parse_manifest(&yaml).unwrap());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].path, "spec.secretObjects[0].data[1].objectName");
        assert!(f[0].message.contains("\"nope\" is not a file this class mounts (files: secret1)"));
    }

    #[test]
    fn our_annotations_are_checked_and_a_valid_one_is_clean() {
        let mut spc = class("azure", &clean());
        let annotate = |spc: &mut SecretProviderClass, k: &str, v: &str| {
            spc.metadata.annotations.insert(k.into(), v.into());
        };
        annotate(&mut spc, "keyvault-csi.io/rotation-poll-interval", "24h");
        annotate(&mut spc, "keyvault-csi.io/refresh-now", "2026-12-01T10:00:00Z");
        annotate(&mut spc, "kubectl.kubernetes.io/last-applied-configuration", "{}");
        assert_eq!(check_class(&spc), vec![]);
        annotate(&mut spc, "keyvault-csi.io/rotation-poll-interval", "5s");
        annotate(&mut spc, "keyvault-csi.io/refresh", "1");
        let f = check_class(&spc);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f.iter().all(|x| x.severity == "warning"));
        assert!(f.iter().any(|x| x.path == "metadata.annotations[keyvault-csi.io/refresh]"
            && x.message.contains("not an annotation keyvault-csi reads")));
        assert!(f.iter().any(|x| x.message.contains("below the driver's --min-rotation-poll-interval")));
        annotate(&mut spc, "keyvault-csi.io/rotation-poll-interval", "often");
        let f = check_class(&spc);
        assert!(
            f.iter().any(|x| x.path == "metadata.annotations[keyvault-csi.io/rotation-poll-interval]"
                && x.message.contains("invalid duration \"often\"")),
            "{f:?}"
        );
    }

    #[test]
    fn a_secret_sync_is_checked_against_the_class_beside_it() {
        let class = format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: spc\nspec:\n  provider: azure\n  parameters:\n    keyvaultName: kv1\n    tenantId: t\n    clientID: c\n    objects: {}\n",
            serde_json::to_string(OBJECTS).unwrap()
        );
        let sync = "apiVersion: secret-sync.x-k8s.io/v1alpha1\nkind: SecretSync\nmetadata:\n  name: app\nspec:\n  serviceAccountName: app\n  secretProviderClassName: spc\n  secretObject:\n    data:\n    - sourcePath: secret1\n      targetKey: a\n    - sourcePath: secret2\n      targetKey: b\n";
        let manifests =
            vec![("spc.yaml".to_string(), parse(&class).unwrap()), ("ss.yaml".to_string(), parse(sync).unwrap())];
        let report = check_manifests(&manifests);
        assert_eq!(report[0].1, vec![]);
        assert_eq!(report[1].1.len(), 1, "{:?}", report[1].1);
        assert_eq!(report[1].1[0].path, "spec.secretObject.data[1].sourcePath");
        assert!(report[1].1[0].message.contains("(files: secret1)"));
        assert!(parse("kind: Deployment\n").unwrap_err().contains("not a SecretProviderClass or SecretSync manifest"));
    }
}
