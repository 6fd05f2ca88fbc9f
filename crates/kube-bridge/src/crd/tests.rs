use super::*;
use secrets_store::class::{SecretObject, SecretObjectData};

fn full_spec() -> SecretProviderClassSpec {
    SecretProviderClassSpec {
        provider: "azure".into(),
        parameters: [("keyvaultName".to_string(), "kv".to_string())].into(),
        secret_objects: vec![SecretObject {
            secret_name: "s".into(),
            type_: "Opaque".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
            annotations: [("c".to_string(), "d".to_string())].into(),
            data: vec![SecretObjectData { object_name: "f".into(), key: "k".into() }],
        }],
    }
}

const MAPS: &[&str] = &["spec.parameters", "spec.secretObjects[].labels", "spec.secretObjects[].annotations"];

fn schema_of(crd: &CustomResourceDefinition, version: &str) -> Value {
    let v = crd.spec.versions.iter().find(|v| v.name == version).unwrap();
    serde_json::to_value(&v.schema.as_ref().unwrap().open_api_v3_schema).unwrap()
}

/// The schema declares exactly the fields the type serializes, with the same JSON types.
fn assert_covers(schema: &Value, value: &Value) {
    let declared = schema_paths(schema);
    let declared: BTreeMap<_, _> = declared.into_iter().filter(|(k, _)| !k.starts_with("metadata.")).collect();
    let used = value_paths(value, MAPS);
    assert_eq!(declared, used, "schema and type disagree");
}

#[test]
fn class_schemas_cover_exactly_the_typed_fields() {
    let crds = crds();
    let v1 = v1::SecretProviderClass {
        metadata: ObjectMeta { name: Some("c".into()), ..Default::default() },
        spec: v1::ClassSpec { spec: full_spec() },
        status: Some(v1::SecretProviderClassStatus {}),
    };
    assert_covers(&schema_of(&crds[0], "v1"), &serde_json::to_value(&v1).unwrap());
    let alpha = v1alpha1::SecretProviderClass {
        metadata: ObjectMeta { name: Some("c".into()), ..Default::default() },
        spec: v1alpha1::ClassSpec { spec: full_spec() },
        status: Some(v1alpha1::SecretProviderClassStatus {
            by_pod: vec![v1alpha1::ByPodStatus { id: "p".into(), namespace: "n".into() }],
        }),
    };
    assert_covers(&schema_of(&crds[0], "v1alpha1"), &serde_json::to_value(&alpha).unwrap());
}

#[test]
fn pod_status_schema_covers_exactly_the_typed_fields() {
    let crds = crds();
    let status = PodStatusStatus {
        pod_name: "p".into(),
        secret_provider_class_name: "c".into(),
        mounted: true,
        target_path: "/t".into(),
        objects: vec![ObjectVersion { id: "secret/a".into(), version: "1".into() }],
    };
    let meta = ObjectMeta { name: Some("x".into()), ..Default::default() };
    let v1 = v1::SecretProviderClassPodStatus::new(meta.clone(), status.clone());
    assert_covers(&schema_of(&crds[1], "v1"), &serde_json::to_value(&v1).unwrap());
    let alpha = v1alpha1::SecretProviderClassPodStatus::new(meta, status);
    assert_covers(&schema_of(&crds[1], "v1alpha1"), &serde_json::to_value(&alpha).unwrap());
    assert_eq!(serde_json::to_value(&alpha).unwrap()["apiVersion"], "secrets-store.csi.x-k8s.io/v1alpha1");
}

/// The upstream CRD schema (`config/crd` of the upstream driver), as facts (path → type), for both versions of both CRDs.
#[test]
fn schemas_match_upstreams_fields_and_types() {
    let class_fields = [
        ("spec", "object"),
        ("spec.provider", "string"),
        ("spec.parameters", "object"),
        ("spec.parameters{}", "string"),
        ("spec.secretObjects", "array"),
        ("spec.secretObjects[]", "object"),
        ("spec.secretObjects[].secretName", "string"),
        ("spec.secretObjects[].type", "string"),
        ("spec.secretObjects[].labels", "object"),
        ("spec.secretObjects[].labels{}", "string"),
        ("spec.secretObjects[].annotations", "object"),
        ("spec.secretObjects[].annotations{}", "string"),
        ("spec.secretObjects[].data", "array"),
        ("spec.secretObjects[].data[]", "object"),
        ("spec.secretObjects[].data[].objectName", "string"),
        ("spec.secretObjects[].data[].key", "string"),
        ("status", "object"),
    ];
    let crds = crds();
    for version in ["v1", "v1alpha1"] {
        let paths = schema_paths(&schema_of(&crds[0], version));
        for (p, t) in class_fields {
            assert_eq!(paths.get(p).map(String::as_str), Some(t), "{version} {p}");
        }
    }
    let alpha = schema_paths(&schema_of(&crds[0], "v1alpha1"));
    assert_eq!(alpha.get("status.byPod[].id").map(String::as_str), Some("string"));
    for version in ["v1", "v1alpha1"] {
        let paths = schema_paths(&schema_of(&crds[1], version));
        for (p, t) in [
            ("status.podName", "string"),
            ("status.secretProviderClassName", "string"),
            ("status.mounted", "boolean"),
            ("status.targetPath", "string"),
            ("status.objects[].id", "string"),
            ("status.objects[].version", "string"),
        ] {
            assert_eq!(paths.get(p).map(String::as_str), Some(t), "{version} {p}");
        }
        assert!(!paths.contains_key("spec"), "pod statuses have no spec");
    }
    for c in &crds {
        assert_eq!(c.spec.scope, "Namespaced");
        let v: Vec<_> = c.spec.versions.iter().map(|v| (v.name.as_str(), v.served, v.storage)).collect();
        assert_eq!(v, [("v1", true, true), ("v1alpha1", true, false)]);
        assert!(c.spec.versions.iter().all(|v| v.subresources.is_none() && v.additional_printer_columns.is_none()));
        assert_eq!(c.spec.versions[1].deprecated, Some(true));
    }
    assert_eq!(crds[0].spec.versions[1].deprecation_warning.as_deref(), Some(V1ALPHA1_DEPRECATION));
    assert_eq!(crds[1].spec.versions[1].deprecation_warning, None);
}

/// The chart ships exactly what the code generates (`make crds` regenerates it).
#[test]
fn chart_crds_are_generated_from_the_types() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../charts/keyvault-csi/crds/crds.yaml");
    let shipped = std::fs::read_to_string(path).unwrap_or_default();
    assert!(shipped == crds_yaml(), "{path} is stale or missing: run `make crds`");
}

#[test]
fn typed_objects_read_upstream_manifests() {
    let yaml = "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: azure\n  namespace: default\nspec:\n  provider: azure\n  parameters:\n    keyvaultName: kv\n  secretObjects:\n  - secretName: foosecret\n    type: Opaque\n    data:\n    - objectName: foo\n      key: username\n";
    let c: v1::SecretProviderClass = serde_saphyr::from_str(yaml).unwrap();
    assert_eq!(c.spec.spec.provider, "azure");
    assert_eq!(c.spec.spec.secret_objects[0].data[0].key, "username");
    assert_eq!(c.metadata.namespace.as_deref(), Some("default"));
}
