//! Typed `secrets-store.csi.x-k8s.io` resources (v1 and the deprecated v1alpha1) and their
//! CustomResourceDefinitions.
//!
//! The CRDs are the upstream ones in substance (upstream's `apis/v1/*_types.go`): namespaced, `v1` served and stored,
//! `v1alpha1` served and deprecated, no subresources, no validation beyond types, every field
//! optional. They are built here from one schema per type, and `tests` check that the schema covers
//! exactly what the types serialize, so the chart's `crds/` (generated with `keyvault-csi crds`)
//! cannot drift from the code.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use secrets_store::class::SecretProviderClassSpec;

/// Warning the API server returns for v1alpha1 SecretProviderClasses (upstream's text).
pub const V1ALPHA1_DEPRECATION: &str =
    "secrets-store.csi.x-k8s.io/v1alpha1 is deprecated. Use secrets-store.csi.x-k8s.io/v1 instead.";

/// The status of one mounted volume (`SecretProviderClassPodStatus.status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatusStatus {
    /// Pod that mounted the volume.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    /// The class the volume uses.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_provider_class_name: String,
    /// Whether the volume is mounted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mounted: bool,
    /// The kubelet target path.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_path: String,
    /// Object versions, sorted by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectVersion>,
}

/// One object's version, as the provider reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectVersion {
    /// Object id (e.g. `secret/db-password`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

/// Defines a `SecretProviderClassPodStatus` type for one API version. It has no `spec`, only a
/// `status`, which `#[derive(CustomResource)]` cannot express.
macro_rules! pod_status_type {
    ($version:literal) => {
        /// A volume mounted by the driver: `<pod>-<namespace>-<class>`, labelled with the node.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct SecretProviderClassPodStatus {
            /// `secrets-store.csi.x-k8s.io/<version>`.
            pub api_version: String,
            /// `SecretProviderClassPodStatus`.
            pub kind: String,
            /// Object metadata.
            #[serde(default)]
            pub metadata: ObjectMeta,
            /// What is mounted.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<PodStatusStatus>,
        }

        impl SecretProviderClassPodStatus {
            /// An object with `apiVersion` and `kind` set.
            pub fn new(metadata: ObjectMeta, status: PodStatusStatus) -> Self {
                Self {
                    api_version: format!("{}/{}", super::super::GROUP, $version),
                    kind: "SecretProviderClassPodStatus".into(),
                    metadata,
                    status: Some(status),
                }
            }
        }

        impl kube::Resource for SecretProviderClassPodStatus {
            type DynamicType = ();
            type Scope = kube::core::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                "SecretProviderClassPodStatus".into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                super::super::GROUP.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                "secretproviderclasspodstatuses".into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// `secrets-store.csi.x-k8s.io/v1`.
pub mod v1 {
    use super::*;

    /// The spec of a v1 SecretProviderClass (the driver's [`SecretProviderClassSpec`]).
    #[derive(CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[kube(
        group = "secrets-store.csi.x-k8s.io",
        version = "v1",
        kind = "SecretProviderClass",
        namespaced,
        schema = "disabled",
        status = "SecretProviderClassStatus"
    )]
    pub struct ClassSpec {
        /// Provider, parameters and secret objects.
        #[serde(flatten)]
        pub spec: SecretProviderClassSpec,
    }

    /// v1 status: an empty object.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SecretProviderClassStatus {}

    pod_status_type!("v1");
}

/// `secrets-store.csi.x-k8s.io/v1alpha1` (deprecated; still served, as upstream).
pub mod v1alpha1 {
    use super::*;

    /// The spec of a v1alpha1 SecretProviderClass (identical to v1).
    #[derive(CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[kube(
        group = "secrets-store.csi.x-k8s.io",
        version = "v1alpha1",
        kind = "SecretProviderClass",
        namespaced,
        schema = "disabled",
        status = "SecretProviderClassStatus"
    )]
    pub struct ClassSpec {
        /// Provider, parameters and secret objects.
        #[serde(flatten)]
        pub spec: SecretProviderClassSpec,
    }

    /// v1alpha1 status: the legacy `byPod` list (written by nobody since v0.0.x).
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct SecretProviderClassStatus {
        /// Pods using the class.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub by_pod: Vec<ByPodStatus>,
    }

    /// One pod in `byPod`.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ByPodStatus {
        /// Pod id.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub id: String,
        /// Pod namespace.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pub namespace: String,
    }

    pod_status_type!("v1alpha1");
}

fn string(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn string_map(description: &str) -> Value {
    json!({ "type": "object", "additionalProperties": { "type": "string" }, "description": description })
}

fn object(description: &str, properties: Value) -> Value {
    json!({ "type": "object", "description": description, "properties": properties })
}

fn array(description: &str, items: Value) -> Value {
    json!({ "type": "array", "description": description, "items": items })
}

/// Top level of every schema: `apiVersion`, `kind`, `metadata` plus the given fields.
fn root(description: &str, fields: Value) -> Value {
    let mut properties = json!({
        "apiVersion": string("APIVersion defines the versioned schema of this representation of an object."),
        "kind": string("Kind is a string value representing the REST resource this object represents."),
        "metadata": { "type": "object" },
    });
    for (k, v) in fields.as_object().expect("fields are an object") {
        properties[k] = v.clone();
    }
    object(description, properties)
}

fn class_schema(alpha: bool) -> Value {
    let data = object(
        "A mounted file and the Secret key it fills.",
        json!({
            "objectName": string("Name of the mounted file (its path relative to the mount)."),
            "key": string("Key in the Secret's data."),
        }),
    );
    let secret_object = object(
        "A Kubernetes Secret synced from the mounted files.",
        json!({
            "secretName": string("Name of the Secret."),
            "type": string("Type of the Secret, e.g. Opaque or kubernetes.io/tls."),
            "labels": string_map("Labels of the Secret."),
            "annotations": string_map("Annotations of the Secret."),
            "data": array("Which file fills which key.", data),
        }),
    );
    let spec = object(
        "Which provider mounts what.",
        json!({
            "provider": string("Provider name (azure, or the basename of a provider's socket)."),
            "parameters": string_map("Provider parameters."),
            "secretObjects": array("Kubernetes Secrets to sync from the mounted files.", secret_object),
        }),
    );
    let status = if alpha {
        object(
            "Legacy status.",
            json!({ "byPod": array("Pods using the class.", object("A pod using the class.", json!({
                "id": string("Pod id."),
                "namespace": string("Pod namespace."),
            })))}),
        )
    } else {
        json!({ "type": "object", "description": "Unused." })
    };
    root(
        "SecretProviderClass names a provider and its parameters for Secrets Store CSI volumes.",
        json!({ "spec": spec, "status": status }),
    )
}

fn pod_status_schema() -> Value {
    let objects = array(
        "Object versions, sorted by id.",
        object("One object's version.", json!({ "id": string("Object id."), "version": string("Object version.") })),
    );
    root(
        "SecretProviderClassPodStatus records a Secrets Store CSI volume mounted for a pod.",
        json!({ "status": object("What is mounted.", json!({
            "podName": string("Pod that mounted the volume."),
            "secretProviderClassName": string("Class of the volume."),
            "mounted": { "type": "boolean", "description": "Whether the volume is mounted." },
            "targetPath": string("Kubelet target path of the volume."),
            "objects": objects,
        }))}),
    )
}

fn crd(kind: &str, plural: &str, v1: Value, v1alpha1: Value, warning: Option<&str>) -> CustomResourceDefinition {
    let mut alpha = json!({ "name": "v1alpha1", "served": true, "storage": false, "deprecated": true,
        "schema": { "openAPIV3Schema": v1alpha1 } });
    if let Some(w) = warning {
        alpha["deprecationWarning"] = json!(w);
    }
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("{plural}.{}", super::GROUP) },
        "spec": {
            "group": super::GROUP,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
            },
            "scope": "Namespaced",
            "versions": [
                { "name": "v1", "served": true, "storage": true, "schema": { "openAPIV3Schema": v1 } },
                alpha,
            ],
        },
    }))
    .expect("a valid CustomResourceDefinition")
}

/// The two CRDs, SecretProviderClass first.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        crd(
            "SecretProviderClass",
            "secretproviderclasses",
            class_schema(false),
            class_schema(true),
            Some(V1ALPHA1_DEPRECATION),
        ),
        crd(
            "SecretProviderClassPodStatus",
            "secretproviderclasspodstatuses",
            pod_status_schema(),
            pod_status_schema(),
            None,
        ),
    ]
}

/// The CRDs as one YAML stream (what `keyvault-csi crds` prints and the chart ships in `crds/`).
pub fn crds_yaml() -> String {
    let docs: Vec<String> =
        crds().iter().map(|c| serde_saphyr::to_string(c).expect("CRDs serialize to YAML")).collect();
    format!("# Generated by `keyvault-csi crds`; do not edit.\n---\n{}", docs.join("---\n"))
}

/// Every field path a schema declares, with its type (`spec.secretObjects[].data[].key` → `string`).
pub fn schema_paths(schema: &Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, s: &Value, out: &mut BTreeMap<String, String>) {
        let ty = s["type"].as_str().unwrap_or("").to_string();
        if !prefix.is_empty() {
            out.insert(prefix.to_string(), ty.clone());
        }
        if let Some(props) = s["properties"].as_object() {
            for (k, v) in props {
                let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                walk(&p, v, out);
            }
        }
        if ty == "array" {
            walk(&format!("{prefix}[]"), &s["items"], out);
        }
        if s["additionalProperties"].is_object() {
            walk(&format!("{prefix}{{}}"), &s["additionalProperties"], out);
        }
    }
    let mut out = BTreeMap::new();
    walk("", schema, &mut out);
    out
}

/// Every field path a JSON value has, with its JSON type; map values under `{}` for the given map paths.
pub fn value_paths(value: &Value, maps: &[&str]) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &Value, maps: &[&str], out: &mut BTreeMap<String, String>) {
        let ty = match v {
            Value::String(_) => "string",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
            Value::Null => "null",
        };
        if !prefix.is_empty() {
            out.insert(prefix.to_string(), ty.to_string());
        }
        match v {
            // Metadata is the API server's schema, not ours.
            Value::Object(_) if prefix == "metadata" => {}
            Value::Object(m) if maps.contains(&prefix) => {
                for v in m.values() {
                    walk(&format!("{prefix}{{}}"), v, maps, out);
                }
            }
            Value::Object(m) => {
                for (k, v) in m {
                    let p = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&p, v, maps, out);
                }
            }
            Value::Array(items) => {
                for v in items {
                    walk(&format!("{prefix}[]"), v, maps, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, maps, &mut out);
    out
}

#[cfg(test)]
mod tests;
