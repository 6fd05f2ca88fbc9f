//! SecretProviderClass: the types, and where the node service gets them from.
//!
//! In a cluster the class comes from the Kubernetes API. Without one (`--class-dir`, tests, standalone
//! use on a VM) it comes from YAML manifests in a directory. Both implement [`ClassSource`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The `spec` of a SecretProviderClass (`secrets-store.csi.x-k8s.io/v1`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClassSpec {
    /// Provider name: `azure`, or the basename of an external provider's socket.
    #[serde(default)]
    pub provider: String,
    /// Provider parameters, opaque to the driver.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    /// Kubernetes Secrets to sync from the mounted files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_objects: Vec<SecretObject>,
}

/// One Kubernetes Secret to create from mounted files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObject {
    /// Name of the Secret.
    #[serde(default)]
    pub secret_name: String,
    /// Secret type, e.g. `Opaque` or `kubernetes.io/tls`.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// Labels for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations for the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Which file goes to which key.
    #[serde(default)]
    pub data: Vec<SecretObjectData>,
}

/// A file (`objectName`, a path in the mount) and the Secret key it fills.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectData {
    /// Relative path of the mounted file.
    #[serde(default)]
    pub object_name: String,
    /// Key in the Secret's `data`.
    #[serde(default)]
    pub key: String,
}

/// A SecretProviderClass manifest, as far as the driver reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderClass {
    /// `secrets-store.csi.x-k8s.io/v1` (or `v1alpha1`).
    #[serde(default)]
    pub api_version: String,
    /// `SecretProviderClass`.
    #[serde(default)]
    pub kind: String,
    /// Name and namespace.
    pub metadata: Metadata,
    /// The spec.
    #[serde(default)]
    pub spec: SecretProviderClassSpec,
}

/// The part of `metadata` the driver needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Namespace (`default` when absent, as `kubectl apply` would do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Annotations (the driver reads its own, see [`crate::annotations`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Why a class could not be resolved. Messages follow upstream's, which e2e suites and runbooks grep.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClassError {
    /// The class does not exist in the pod's namespace.
    #[error(
        "failed to get secretproviderclass {namespace}/{name}, error: SecretProviderClass.secrets-store.csi.x-k8s.io \"{name}\" not found"
    )]
    NotFound {
        /// Pod namespace.
        namespace: String,
        /// Class name.
        name: String,
    },
    /// The source could not answer (API unreachable, unreadable file).
    #[error("failed to get secretproviderclass {namespace}/{name}, error: {message}")]
    Unavailable {
        /// Pod namespace.
        namespace: String,
        /// Class name.
        name: String,
        /// What went wrong.
        message: String,
    },
}

/// Resolves a SecretProviderClass by namespace and name.
#[async_trait]
pub trait ClassSource: Send + Sync + 'static {
    /// Returns the class's spec. The caller owns the copy (a cache must never be mutated by a mount).
    async fn get(&self, namespace: &str, name: &str) -> Result<SecretProviderClassSpec, ClassError>;
}

/// No source of classes (no cluster and no class directory): every lookup is `Unavailable`, with why.
/// The node keeps serving (Probe answers, mounts fail naming the reason) rather than crash-loop.
#[derive(Debug, Clone)]
pub struct NoClassSource(pub String);

#[async_trait]
impl ClassSource for NoClassSource {
    async fn get(&self, namespace: &str, name: &str) -> Result<SecretProviderClassSpec, ClassError> {
        Err(ClassError::Unavailable {
            namespace: namespace.into(),
            name: name.into(),
            message: format!("no SecretProviderClass source: {} (or pass --class-dir)", self.0),
        })
    }
}

/// Classes from `*.yaml`/`*.yml` manifests in a directory, re-read on every lookup so edits apply at once.
#[derive(Debug, Clone)]
pub struct DirClassSource {
    dir: PathBuf,
}

impl DirClassSource {
    /// Serves the manifests found in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

/// Parses one SecretProviderClass manifest.
pub fn parse_manifest(text: &str) -> Result<SecretProviderClass, String> {
    let spc: SecretProviderClass = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    if spc.kind != "SecretProviderClass" {
        return Err(format!("kind is {:?}, not \"SecretProviderClass\"", spc.kind));
    }
    Ok(spc)
}

fn read_dir_classes(dir: &Path) -> std::io::Result<Vec<(PathBuf, Result<SecretProviderClass, String>)>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        if yaml && path.is_file() {
            let parsed = std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| parse_manifest(&t));
            out.push((path, parsed));
        }
    }
    Ok(out)
}

#[async_trait]
impl ClassSource for DirClassSource {
    async fn get(&self, namespace: &str, name: &str) -> Result<SecretProviderClassSpec, ClassError> {
        let dir = self.dir.clone();
        let found = tokio::task::spawn_blocking(move || read_dir_classes(&dir))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let classes = found.map_err(|message| ClassError::Unavailable {
            namespace: namespace.into(),
            name: name.into(),
            message: format!("reading class directory {}: {message}", self.dir.display()),
        })?;
        let mut broken = Vec::new();
        for (path, parsed) in classes {
            match parsed {
                Ok(spc)
                    if spc.metadata.name == name
                        && spc.metadata.namespace.as_deref().unwrap_or("default") == namespace =>
                {
                    return Ok(spc.spec);
                }
                Ok(_) => {}
                Err(e) => broken.push(format!("{}: {e}", path.display())),
            }
        }
        if broken.is_empty() {
            Err(ClassError::NotFound { namespace: namespace.into(), name: name.into() })
        } else {
            // The class may be in a file we could not parse: say so instead of a bare "not found".
            Err(ClassError::Unavailable {
                namespace: namespace.into(),
                name: name.into(),
                message: format!("not found, and these manifests could not be parsed: {}", broken.join("; ")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPC: &str = r#"
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: azure-kvname
  namespace: team-a
spec:
  provider: azure
  parameters:
    keyvaultName: kv
    objects: |
      array:
        - |
          objectName: secret1
          objectType: secret
  secretObjects:
  - secretName: foosecret
    type: Opaque
    data:
    - objectName: secret1
      key: username
"#;

    #[test]
    fn parses_an_upstream_manifest() {
        let spc = parse_manifest(SPC).unwrap();
        assert_eq!(spc.metadata.name, "azure-kvname");
        assert_eq!(spc.spec.provider, "azure");
        assert!(spc.spec.parameters["objects"].contains("objectName: secret1"));
        assert_eq!(spc.spec.secret_objects[0].data[0].key, "username");
    }

    #[tokio::test]
    async fn directory_source_matches_namespace_and_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spc.yaml"), SPC).unwrap();
        let src = DirClassSource::new(dir.path());
        assert_eq!(src.get("team-a", "azure-kvname").await.unwrap().provider, "azure");
        let err = src.get("default", "azure-kvname").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to get secretproviderclass default/azure-kvname, error: SecretProviderClass.secrets-store.csi.x-k8s.io \"azure-kvname\" not found"
        );
    }

    #[tokio::test]
    async fn an_unparsable_manifest_is_named_instead_of_a_bare_not_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "kind: [").unwrap();
        let err = DirClassSource::new(dir.path()).get("default", "x").await.unwrap_err();
        assert!(err.to_string().contains("broken.yaml"), "{err}");
    }
}
