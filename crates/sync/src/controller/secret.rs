//! The Secret a SecretSync writes, and whose a Secret of its name is: upstream's shape (managed label,
//! one owner reference without `controller`), and the refusal that names a foreign owner.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::{MANAGED_LABEL, SecretSync};

/// The Secret a SecretSync writes: its name, the managed label, one owner reference, type and data.
pub(super) fn desired_secret(ss: &SecretSync, data: &BTreeMap<String, Vec<u8>>) -> Secret {
    let object = &ss.spec.secret_object;
    let mut labels = object.labels.clone();
    labels.insert(MANAGED_LABEL.into(), String::new());
    Secret {
        metadata: ObjectMeta {
            name: Some(ss.name_any()),
            namespace: ss.namespace(),
            labels: Some(labels),
            annotations: Some(object.annotations.clone()).filter(|a| !a.is_empty()),
            owner_references: Some(vec![owner_reference(ss)]),
            ..Default::default()
        },
        type_: Some(object.type_.trim().to_string()),
        data: Some(data.iter().map(|(k, v)| (k.clone(), ByteString(v.clone()))).collect()),
        ..Default::default()
    }
}

/// Upstream's owner reference: no `controller`, no `blockOwnerDeletion`.
pub(super) fn owner_reference(ss: &SecretSync) -> OwnerReference {
    OwnerReference {
        api_version: SecretSync::api_version(&()).into_owned(),
        kind: SecretSync::kind(&()).into_owned(),
        name: ss.name_any(),
        uid: ss.uid().unwrap_or_default(),
        ..Default::default()
    }
}

/// Whether the Secret's owner references name this SecretSync (by uid).
pub fn owned_by(secret: &Secret, ss: &SecretSync) -> bool {
    let uid = ss.uid().unwrap_or_default();
    secret.owner_references().iter().any(|o| o.kind == "SecretSync" && o.uid == uid)
}

/// Whether the live Secret already holds what would be written.
pub(super) fn matches(live: &Secret, desired: &Secret) -> bool {
    let contains = |have: &BTreeMap<String, String>, want: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.get(k) == Some(v))
    };
    live.type_ == desired.type_
        && live.data.clone().unwrap_or_default() == desired.data.clone().unwrap_or_default()
        && contains(live.labels(), &desired.metadata.labels)
        && contains(live.annotations(), &desired.metadata.annotations)
}

/// Why a Secret of the SecretSync's name is refused: whose it is (its owners, else its field managers).
pub fn foreign(secret: &Secret, ss: &SecretSync) -> String {
    let (ns, name) = (ss.namespace().unwrap_or_default(), ss.name_any());
    let owners: Vec<String> = secret.owner_references().iter().map(|o| format!("{} {}", o.kind, o.name)).collect();
    let whose = if owners.is_empty() {
        let managers: Vec<String> = secret
            .managed_fields()
            .iter()
            .filter_map(|m| m.manager.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if managers.is_empty() {
            "not created by a SecretSync".to_string()
        } else {
            format!("written by {}", managers.join(", "))
        }
    } else {
        format!("owned by {}", owners.join(", "))
    };
    format!(
        "secret {ns}/{name} already exists and is not managed by this SecretSync ({whose}); delete it or rename the SecretSync"
    )
}

pub(super) fn reference(ss: &SecretSync) -> ObjectReference {
    ObjectReference {
        api_version: Some(SecretSync::api_version(&()).into_owned()),
        kind: Some(SecretSync::kind(&()).into_owned()),
        name: Some(ss.name_any()),
        namespace: ss.namespace(),
        uid: ss.uid(),
        resource_version: ss.resource_version(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync(uid: &str) -> SecretSync {
        let mut ss = SecretSync::new(
            "db",
            crate::api::SecretSyncSpec {
                secret_provider_class_name: "spc".into(),
                service_account_name: "sa".into(),
                secret_object: crate::api::SecretObject {
                    type_: "Opaque".into(),
                    data: vec![],
                    labels: BTreeMap::from([("team".to_string(), "a".to_string())]),
                    annotations: BTreeMap::new(),
                },
                ..Default::default()
            },
        );
        ss.metadata.namespace = Some("ns".into());
        ss.metadata.uid = Some(uid.into());
        ss
    }

    #[test]
    fn the_secret_is_upstreams_and_a_foreign_one_is_named_not_taken() {
        let ss = sync("uid-1");
        let d = desired_secret(&ss, &BTreeMap::from([("password".to_string(), b"x".to_vec())]));
        assert_eq!(d.metadata.labels.as_ref().unwrap()[MANAGED_LABEL], "");
        assert_eq!(d.metadata.labels.as_ref().unwrap()["team"], "a");
        let owners = d.metadata.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].api_version.as_str(), owners[0].kind.as_str(), owners[0].uid.as_str()),
            ("secret-sync.x-k8s.io/v1alpha1", "SecretSync", "uid-1")
        );
        assert_eq!(owners[0].controller, None, "upstream sets neither controller nor blockOwnerDeletion");
        assert!(owned_by(&d, &ss));
        assert!(!owned_by(&d, &sync("uid-2")), "a deleted and recreated SecretSync is another owner");
        assert!(matches(&d, &d));
        let mut tampered = d.clone();
        tampered.data.as_mut().unwrap().insert("password".into(), ByteString(b"y".to_vec()));
        assert!(!matches(&tampered, &d));
        let mut extra = d.clone();
        extra.data.as_mut().unwrap().insert("old-key".into(), ByteString(b"y".to_vec()));
        assert!(!matches(&extra, &d), "a key no longer listed is pruned");

        let mut theirs = Secret::default();
        theirs.metadata.managed_fields =
            Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                manager: Some("kubectl-create".into()),
                ..Default::default()
            }]);
        assert!(!owned_by(&theirs, &ss));
        assert_eq!(
            foreign(&theirs, &ss),
            "secret ns/db already exists and is not managed by this SecretSync (written by kubectl-create); \
             delete it or rename the SecretSync"
        );
        theirs.metadata.owner_references =
            Some(vec![OwnerReference { kind: "Deployment".into(), name: "web".into(), ..Default::default() }]);
        assert!(foreign(&theirs, &ss).contains("(owned by Deployment web)"));
    }
}
