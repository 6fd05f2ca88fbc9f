//! The `SecretSync` resource, field for field as upstream's `api/v1alpha1/secretsync_types.go`
//! (HEAD), with `status.observedGeneration` added, and its CRD.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `secret-sync.x-k8s.io`.
pub const GROUP: &str = "secret-sync.x-k8s.io";
/// The label on every Secret a SecretSync writes (upstream's; empty value).
pub const MANAGED_LABEL: &str = "secrets-store.sync.x-k8s.io";
/// `Opaque`, the default Secret type.
pub const OPAQUE: &str = "Opaque";

/// What to sync, from which class, with which identity. The Secret has the SecretSync's name.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "secret-sync.x-k8s.io",
    version = "v1alpha1",
    kind = "SecretSync",
    namespaced,
    schema = "disabled",
    status = "SecretSyncStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct SecretSyncSpec {
    /// The SecretProviderClass, in the SecretSync's namespace.
    pub secret_provider_class_name: String,
    /// The service account whose identity fetches the objects (it must opt in).
    pub service_account_name: String,
    /// Unused (upstream reserved it for sharding).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_sync_controller_name: String,
    /// Any change forces a fetch and a write.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub force_synchronization: String,
    /// The Secret to write.
    pub secret_object: SecretObject,
}

/// The Secret a SecretSync writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObject {
    /// Secret type (default `Opaque`).
    #[serde(rename = "type", default = "opaque")]
    pub type_: String,
    /// Which file fills which key.
    pub data: Vec<SecretObjectData>,
    /// Labels of the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for SecretObject {
    fn default() -> Self {
        Self { type_: opaque(), data: Vec::new(), labels: BTreeMap::new(), annotations: BTreeMap::new() }
    }
}

fn opaque() -> String {
    OPAQUE.into()
}

/// One key of the Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectData {
    /// A file path in the provider's answer (`name`, or `name/0` with version history).
    pub source_path: String,
    /// The key in the Secret's data.
    pub target_key: String,
}

/// What the controller last did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretSyncStatus {
    /// A keyed hash of what was last written (reveals nothing about the values).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sync_hash: String,
    /// When a sync last succeeded (written, or found up to date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_sync_time: Option<Time>,
    /// `SecretCreated`, `SecretUpdated` (upstream's) and `Ready` (ours).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the status describes (ours).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// DNS-1123 subdomain, as upstream's CRD checks names.
const DNS1123_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// `sourcePath`/`targetKey`: a file name, optionally followed by `/<digits>` segments.
const PATH: &str = r"^[A-Za-z0-9.\-_]+(/[0-9]+)*$";

fn name_field(description: &str) -> Value {
    json!({ "type": "string", "description": description, "minLength": 1, "maxLength": 253,
            "pattern": DNS1123_SUBDOMAIN })
}

fn reserved_prefix_rule() -> Value {
    json!({ "rule": format!("self.all(k, !k.startsWith('{MANAGED_LABEL}'))"),
            "message": format!("keys must not start with {MANAGED_LABEL}") })
}

/// The `secretsyncs.secret-sync.x-k8s.io` CRD: upstream's schema (HEAD), plus
/// `status.observedGeneration`.
pub fn crd() -> CustomResourceDefinition {
    let data_item = json!({
        "type": "object",
        "required": ["sourcePath", "targetKey"],
        "properties": {
            "sourcePath": { "type": "string", "minLength": 1, "maxLength": 253, "pattern": PATH,
                "description": "A file path in the provider's answer (name, or name/N with version history)." },
            "targetKey": { "type": "string", "minLength": 1, "maxLength": 253, "pattern": PATH,
                "description": "The key in the Secret's data." },
        },
    });
    let secret_object = json!({
        "type": "object",
        "description": "The Secret to write; it has the SecretSync's name.",
        "required": ["data"],
        "properties": {
            "type": { "type": "string", "maxLength": 253, "default": OPAQUE, "description": "Secret type." },
            "data": { "type": "array", "minItems": 1, "items": data_item,
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["targetKey"],
                "description": "Which file fills which key." },
            "labels": { "type": "object", "additionalProperties": { "type": "string" },
                "description": "Labels of the Secret.",
                "x-kubernetes-validations": [
                    { "rule": "self.all(k, size(k) <= 317 && size(self[k]) <= 63)",
                      "message": "label keys must be at most 317 characters and values at most 63" },
                    reserved_prefix_rule(),
                ] },
            "annotations": { "type": "object", "additionalProperties": { "type": "string" },
                "description": "Annotations of the Secret.",
                "x-kubernetes-validations": [
                    { "rule": "self.all(k, size(k) < 317 && size(self[k]) <= 262144)",
                      "message": "annotation keys must be under 317 characters and values at most 256 KiB" },
                    reserved_prefix_rule(),
                ] },
        },
    });
    let spec = json!({
        "type": "object",
        "required": ["secretProviderClassName", "serviceAccountName", "secretObject"],
        "properties": {
            "secretProviderClassName": name_field("The SecretProviderClass, in this namespace."),
            "serviceAccountName": name_field("The service account whose identity fetches the objects."),
            "secretSyncControllerName": { "type": "string", "default": "", "description": "Unused." },
            "forceSynchronization": { "type": "string", "maxLength": 253,
                "pattern": r"^[A-Za-z0-9]([-A-Za-z0-9_.]*)?$",
                "description": "Any change forces a fetch and a write." },
            "secretObject": secret_object,
        },
    });
    let condition = json!({
        "type": "object",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": { "type": "string", "maxLength": 316 },
            "status": { "type": "string", "enum": ["True", "False", "Unknown"] },
            "observedGeneration": { "type": "integer", "format": "int64", "minimum": 0 },
            "lastTransitionTime": { "type": "string", "format": "date-time" },
            "reason": { "type": "string", "maxLength": 1024, "minLength": 1 },
            "message": { "type": "string", "maxLength": 32768 },
        },
    });
    let status = json!({
        "type": "object",
        "properties": {
            "syncHash": { "type": "string", "description": "A keyed hash of what was last written." },
            "lastSuccessfulSyncTime": { "type": "string", "format": "date-time" },
            "conditions": { "type": "array", "maxItems": 16, "items": condition,
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"] },
            "observedGeneration": { "type": "integer", "format": "int64" },
        },
    });
    let schema = json!({
        "type": "object",
        "description": "SecretSync keeps a Kubernetes Secret in step with a provider's objects, without a pod mount.",
        "required": ["spec"],
        "properties": {
            "apiVersion": { "type": "string" },
            "kind": { "type": "string" },
            "metadata": { "type": "object" },
            "spec": spec,
            "status": status,
        },
    });
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("secretsyncs.{GROUP}") },
        "spec": {
            "group": GROUP,
            "names": { "kind": "SecretSync", "listKind": "SecretSyncList", "plural": "secretsyncs",
                       "singular": "secretsync" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": schema },
                "subresources": { "status": {} },
            }],
        },
    }))
    .expect("the CRD is well-formed")
}

/// The CRD as YAML (what `keyvault-csi crds` appends and the chart ships in `crds/secretsync.yaml`).
pub fn crd_yaml() -> String {
    let doc = serde_saphyr::to_string(&crd()).expect("the CRD serializes to YAML");
    format!("# Generated by `keyvault-csi crds`; do not edit.\n---\n{doc}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart ships exactly what the code generates (`make crds` regenerates it).
    #[test]
    fn the_chart_ships_the_generated_crd() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/keyvault-csi/crds/secretsync.yaml");
        let shipped = std::fs::read_to_string(path).unwrap_or_default();
        assert!(shipped == crd_yaml(), "{path} is stale or missing: run `make crds`");
    }

    /// Upstream's sample manifest (its README), unchanged.
    const UPSTREAM: &str = r#"
apiVersion: secret-sync.x-k8s.io/v1alpha1
kind: SecretSync
metadata:
  name: sse-secret
  namespace: default
spec:
  serviceAccountName: default
  secretProviderClassName: basic-test-mount-spc
  secretObject:
    type: Opaque
    data:
    - sourcePath: foo
      targetKey: bar
"#;

    #[test]
    fn an_upstream_manifest_reads_and_the_type_defaults_to_opaque() {
        let s: SecretSync = serde_saphyr::from_str(UPSTREAM).unwrap();
        assert_eq!(s.spec.secret_provider_class_name, "basic-test-mount-spc");
        assert_eq!(
            s.spec.secret_object.data[0],
            SecretObjectData { source_path: "foo".into(), target_key: "bar".into() }
        );
        let no_type: SecretSync = serde_saphyr::from_str(&UPSTREAM.replace("    type: Opaque\n", "")).unwrap();
        assert_eq!(no_type.spec.secret_object.type_, OPAQUE);
    }

    #[test]
    fn the_crd_carries_upstreams_validations_and_a_status_subresource() {
        let crd = serde_json::to_value(crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["subresources"]["status"], json!({}));
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], json!(["secretProviderClassName", "serviceAccountName", "secretObject"]));
        let obj = &spec["properties"]["secretObject"]["properties"];
        assert_eq!(obj["type"]["default"], "Opaque");
        assert_eq!(obj["data"]["x-kubernetes-list-map-keys"], json!(["targetKey"]));
        let rules: Vec<&str> = obj["labels"]["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap())
            .collect();
        assert!(rules.iter().any(|r| r.contains("!k.startsWith('secrets-store.sync.x-k8s.io')")));
        let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert_eq!(status["conditions"]["maxItems"], 16);
        assert_eq!(status["observedGeneration"]["type"], "integer");
        // The typed resource and the CRD agree on what a status serializes to.
        let st = SecretSyncStatus { sync_hash: "v1:ab".into(), observed_generation: Some(2), ..Default::default() };
        for key in serde_json::to_value(&st).unwrap().as_object().unwrap().keys() {
            assert!(status.get(key).is_some(), "{key} missing from the CRD");
        }
    }
}
