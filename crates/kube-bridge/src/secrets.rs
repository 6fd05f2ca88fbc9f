//! Sync of `secretObjects` into Kubernetes Secrets (upstream's `pkg/util/secretutil` and the pod status controller).
//!
//! Like upstream: the data comes from the mounted files, the Secret carries
//! `secrets-store.csi.k8s.io/managed=true` and the class's labels and annotations, and it is owned by
//! the pod's owners (or by the pod status for a bare pod), so it is garbage-collected when the last
//! owner goes. Unlike upstream (#2051, #499): an update is a read-modify-write with optimistic locking
//! that keeps existing owner references and foreign labels and annotations, and a same-named Secret
//! without the managed label is never taken over.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::api::PostParams;

use secrets_store::class::SecretObject;

/// Label on every Secret the driver manages.
pub const MANAGED_LABEL: &str = "secrets-store.csi.k8s.io/managed";
/// Optimistic-lock retries (upstream retries five times).
const ATTEMPTS: usize = 5;

/// Why one Secret was not synced. Messages name the Secret and the cause, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The class entry or the files do not give the data.
    #[error("failed to get data in spc {namespace}/{class} for secret {secret}, err: {message}")]
    Data {
        /// Namespace.
        namespace: String,
        /// Class name.
        class: String,
        /// Secret name.
        secret: String,
        /// Cause.
        message: String,
    },
    /// A Secret of that name exists and is not ours.
    #[error(
        "secret {namespace}/{secret} already exists and is not managed by the Secrets Store CSI driver (it has no label {MANAGED_LABEL}=true); refusing to overwrite it: rename secretObjects[].secretName or delete the Secret"
    )]
    NotManaged {
        /// Namespace.
        namespace: String,
        /// Secret name.
        secret: String,
    },
    /// The existing Secret has another type, which Kubernetes does not allow to change.
    #[error(
        "secret {namespace}/{secret} has type {existing:?}, the class wants {wanted:?}; Secret types are immutable: delete the Secret to let the driver recreate it"
    )]
    TypeChanged {
        /// Namespace.
        namespace: String,
        /// Secret name.
        secret: String,
        /// Type on the cluster.
        existing: String,
        /// Type in the class.
        wanted: String,
    },
    /// The API refused or failed.
    #[error("failed to create or update secret {namespace}/{secret}, err: {message}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Secret name.
        secret: String,
        /// API server's message.
        message: String,
        /// HTTP status, if any.
        code: Option<u16>,
    },
}

/// What happened to one Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// Created.
    Created,
    /// Data, metadata or owners changed.
    Updated,
    /// Already as wanted.
    Unchanged,
}

/// The Secret's `data` for one class entry (upstream's `secretutil.GetSecretData`).
pub fn secret_data(
    object: &SecretObject,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, ByteString>, String> {
    if object.type_.trim().is_empty() {
        return Err("secret type is empty".into());
    }
    if object.data.is_empty() {
        return Err("data is empty".into());
    }
    let tls = object.type_.trim() == "kubernetes.io/tls";
    let mut data = BTreeMap::new();
    for d in &object.data {
        let (name, key) = (d.object_name.trim(), d.key.trim());
        if name.is_empty() || key.is_empty() {
            return Err("objectName and key are required in every data entry".into());
        }
        let file = files.get(name).ok_or_else(|| format!("file matching objectName {name} not found in the pod"))?;
        let value = if tls { super::tls::tls_value(key, file)? } else { file.clone() };
        data.insert(key.to_string(), ByteString(value));
    }
    Ok(data)
}

/// Adds `owners` to `existing` (matched by uid, then by kind and name); returns whether it changed.
fn add_owners(existing: &mut Vec<OwnerReference>, owners: &[OwnerReference]) -> bool {
    let mut changed = false;
    for o in owners {
        let present = existing.iter().any(|e| e.uid == o.uid || (e.kind == o.kind && e.name == o.name));
        if !present {
            existing.push(o.clone());
            changed = true;
        }
    }
    changed
}

/// Creates or updates Secrets.
#[derive(Clone)]
pub struct SecretWriter {
    client: kube::Client,
}

impl SecretWriter {
    /// Uses `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// Brings one Secret to the wanted state, keeping what others put on it.
    pub async fn apply(
        &self,
        namespace: &str,
        object: &SecretObject,
        data: BTreeMap<String, ByteString>,
        owners: &[OwnerReference],
    ) -> Result<Synced, SyncError> {
        let name = object.secret_name.trim().to_string();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let api_err = |e: kube::Error| SyncError::Api {
            namespace: namespace.into(),
            secret: name.clone(),
            code: super::api_code(&e),
            message: super::describe(&e),
        };
        let mut labels = object.labels.clone();
        labels.insert(MANAGED_LABEL.into(), "true".into());
        let wanted_type = object.type_.trim().to_string();
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let existing = api.get_opt(&name).await.map_err(api_err)?;
            let result = match existing {
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            namespace: Some(namespace.into()),
                            labels: Some(labels.clone()),
                            annotations: Some(object.annotations.clone()).filter(|a| !a.is_empty()),
                            owner_references: Some(owners.to_vec()).filter(|o| !o.is_empty()),
                            ..Default::default()
                        },
                        type_: Some(wanted_type.clone()),
                        data: Some(data.clone()),
                        ..Default::default()
                    };
                    api.create(&PostParams::default(), &secret).await.map(|_| Synced::Created)
                }
                Some(current) => {
                    let meta = &current.metadata;
                    if meta.labels.as_ref().and_then(|l| l.get(MANAGED_LABEL)).map(String::as_str) != Some("true") {
                        return Err(SyncError::NotManaged { namespace: namespace.into(), secret: name });
                    }
                    let existing_type = current.type_.clone().unwrap_or_else(|| "Opaque".into());
                    if existing_type != wanted_type {
                        return Err(SyncError::TypeChanged {
                            namespace: namespace.into(),
                            secret: name,
                            existing: existing_type,
                            wanted: wanted_type,
                        });
                    }
                    let mut next = current.clone();
                    let m = &mut next.metadata;
                    m.labels.get_or_insert_with(Default::default).extend(labels.clone());
                    if !object.annotations.is_empty() {
                        m.annotations.get_or_insert_with(Default::default).extend(object.annotations.clone());
                    }
                    add_owners(m.owner_references.get_or_insert_with(Vec::new), owners);
                    if m.owner_references.as_ref().is_some_and(Vec::is_empty) {
                        m.owner_references = None;
                    }
                    next.data = Some(data.clone());
                    if next == current {
                        return Ok(Synced::Unchanged);
                    }
                    // `replace` carries the resourceVersion read above: a concurrent writer makes it 409.
                    api.replace(&name, &PostParams::default(), &next).await.map(|_| Synced::Updated)
                }
            };
            match result {
                Ok(s) => return Ok(s),
                Err(e) if matches!(super::api_code(&e), Some(409)) => last = Some(e),
                Err(e) => return Err(api_err(e)),
            }
        }
        Err(api_err(last.expect("a conflict was recorded")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrets_store::class::SecretObjectData;

    fn object(ty: &str, data: &[(&str, &str)]) -> SecretObject {
        SecretObject {
            secret_name: "s".into(),
            type_: ty.into(),
            data: data.iter().map(|(o, k)| SecretObjectData { object_name: (*o).into(), key: (*k).into() }).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn data_is_the_raw_files_by_object_name() {
        let files: BTreeMap<_, _> =
            [("foo".to_string(), b"secret".to_vec()), ("dir/bar".to_string(), b"x".to_vec())].into();
        let data = secret_data(&object("Opaque", &[("foo", "username"), ("dir/bar", "bar")]), &files).unwrap();
        assert_eq!(data["username"].0, b"secret");
        assert_eq!(data["bar"].0, b"x");
        assert_eq!(
            secret_data(&object("Opaque", &[("missing", "k")]), &files).unwrap_err(),
            "file matching objectName missing not found in the pod"
        );
        assert_eq!(secret_data(&object("", &[("foo", "k")]), &files).unwrap_err(), "secret type is empty");
        assert_eq!(
            secret_data(&object("kubernetes.io/tls", &[("foo", "ca.crt")]), &files).unwrap_err(),
            "key 'ca.crt' is not supported. Only 'tls.key' and 'tls.crt' are supported"
        );
    }

    #[test]
    fn owners_are_added_once_and_foreign_owners_kept() {
        let r = |kind: &str, name: &str, uid: &str| OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            ..Default::default()
        };
        let mut existing = vec![r("ConfigMap", "theirs", "u0"), r("ReplicaSet", "a", "u1")];
        assert!(!add_owners(&mut existing, &[r("ReplicaSet", "a", "u1")]));
        assert!(add_owners(&mut existing, &[r("ReplicaSet", "b", "u2")]));
        assert_eq!(existing.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["theirs", "a", "b"]);
    }
}
