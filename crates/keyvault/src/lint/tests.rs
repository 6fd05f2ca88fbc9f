use super::*;

fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn objects(items: &[&str]) -> String {
    let mut s = String::from("array:\n");
    for i in items {
        s.push_str("  - |\n");
        for line in i.lines() {
            s.push_str(&format!("    {line}\n"));
        }
    }
    s
}

fn fields(l: &Lint) -> Vec<(&str, Severity)> {
    l.findings.iter().map(|f| (f.field.as_str(), f.severity)).collect()
}

#[test]
fn a_clean_class_has_no_findings_and_lists_its_files() {
    let o = objects(&["objectName: a\nobjectType: secret", "objectName: b\nobjectType: cert\nobjectAlias: tls"]);
    let l = lint(&params(&[("keyvaultName", "kv1"), ("tenantId", "t"), ("clientID", "c"), ("objects", &o)]), false);
    assert_eq!(l.findings, vec![]);
    assert_eq!(l.files().unwrap().iter().collect::<Vec<_>>(), ["a", "tls"]);
    assert_eq!(l.class.unwrap().identity, IdentityMode::Workload { client_id: "c".into() });
}

#[test]
fn every_problem_is_reported_in_one_run_with_the_mounts_own_messages() {
    let o = objects(&[
        "objectName: a\nobjectType: secret\nobjectAlias: ../escape\nfilePermission: rwx",
        "objectName: b\nobjectType: secrets",
        "objectName: c\nobjectType: secret\nobjectAlias: b",
    ]);
    let p = params(&[
        ("keyvaultName", "k"),
        ("useVMManagedIdentity", "yes"),
        ("keyVaultname", "x"),
        ("enableSecretRotation", "true"),
        ("cloudName", "Mars"),
        ("objects", &o),
    ]);
    let l = lint(&p, false);
    let got = fields(&l);
    for want in [
        ("useVMManagedIdentity", Severity::Error),
        ("tenantId", Severity::Error),
        ("cloudName", Severity::Error),
        ("objects[0].objectAlias", Severity::Error),
        ("objects[0].filePermission", Severity::Error),
        ("objects[1].objectType", Severity::Error),
        ("keyvaultName", Severity::Error),
        ("objects[2].objectAlias", Severity::Error),
        ("keyVaultname", Severity::Warning),
        ("enableSecretRotation", Severity::Warning),
    ] {
        assert!(got.contains(&want), "{want:?} missing from {got:?}");
    }
    let by = |field: &str| l.findings.iter().find(|f| f.field == field).unwrap();
    // The message is exactly what a mount of this class would fail with.
    assert_eq!(
        by("objects[1].objectType").message,
        "failed to get objectType:secrets, objectName:b, objectVersion:: Invalid vaultObjectTypes. Should be secret, key, or cert"
    );
    assert_eq!(by("objects[1].objectType").fix, "did you mean objectType: secret?");
    assert!(by("keyVaultname").message.contains("did you mean \"keyvaultName\""));
    assert!(
        l.findings.iter().position(|f| f.severity == Severity::Warning)
            > l.findings.iter().rposition(|f| f.severity == Severity::Error),
        "errors first"
    );
}

#[test]
fn the_mount_fails_with_the_first_error_the_linter_lists() {
    let o = objects(&["objectName: b\nobjectType: secrets"]);
    let mut p = params(&[("keyvaultName", "kv1"), ("tenantId", "t"), ("objects", &o)]);
    let first = lint(&p, false).findings.into_iter().find(|f| f.severity == Severity::Error).unwrap();
    p.insert("csi.storage.k8s.io/pod.name".into(), "p".into());
    p.insert("csi.storage.k8s.io/pod.namespace".into(), "ns".into());
    let secrets: crate::params::SecretMap =
        [("clientid".to_string(), "i".into()), ("clientsecret".to_string(), "s".into())].into();
    let mount = crate::params::parse(&p, &secrets, 0o644, &Default::default(), false).unwrap_err();
    assert_eq!(mount.message, first.message);
}

#[test]
fn placeholders_are_named_and_explain_the_errors_they_cause() {
    let o = objects(&["objectName: <SECRET_NAME>\nobjectType: secret"]);
    let p = params(&[
        ("keyvaultName", "<KEY_VAULT_NAME>"),
        ("tenantId", "<TENANT_ID>"),
        ("clientID", "${CLIENT_ID}"),
        ("objects", &o),
    ]);
    let l = lint(&p, false);
    assert_eq!(
        fields(&l),
        [
            ("keyvaultName", Severity::Error),
            ("tenantId", Severity::Error),
            ("clientID", Severity::Error),
            ("objects[0].objectName", Severity::Error)
        ],
        "{:#?}",
        l.findings
    );
    assert_eq!(l.findings[0].message, "\"<KEY_VAULT_NAME>\" is an unfilled placeholder");
}

#[test]
fn identity_settings_that_do_nothing_or_are_gone_are_flagged() {
    let o = objects(&["objectName: a\nobjectType: secret"]);
    let base = [("keyvaultName", "kv1"), ("tenantId", "t"), ("objects", o.as_str())];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut p = params(&base);
        p.extend(params(extra));
        fields(&lint(&p, false)).into_iter().map(|(f, s)| (f.to_string(), s)).collect::<Vec<_>>()
    };
    assert_eq!(with(&[("usePodIdentity", "true")]), [("usePodIdentity".into(), Severity::Warning)]);
    assert_eq!(with(&[("useAzureTokenProxy", "true")]), [("clientID".into(), Severity::Error)]);
    assert_eq!(with(&[("useAzureTokenProxy", "true"), ("clientID", "c")]), []);
    assert_eq!(with(&[("useVMManagedIdentity", "true"), ("clientID", "c")]), [("clientID".into(), Severity::Warning)]);
    assert_eq!(with(&[("userAssignedIdentityID", "u")]), [("userAssignedIdentityID".into(), Severity::Warning)]);
    assert_eq!(
        with(&[("usePodIdentity", "true"), ("useVMManagedIdentity", "1")]),
        [("useVMManagedIdentity".into(), Severity::Error), ("usePodIdentity".into(), Severity::Warning)]
    );
    assert_eq!(with(&[("csi.storage.k8s.io/pod.namespace", "kube-system")]).len(), 1);
}

#[test]
fn parameters_that_look_like_azures_are_recognised() {
    assert!(looks_like_azure(&params(&[("keyvaultName", "kv")])));
    assert!(!looks_like_azure(&params(&[("roleName", "r")])));
}

#[test]
fn version_policies_and_failover_vaults_are_checked_in_one_run() {
    let o = objects(&[
        "objectName: a\nobjectType: secret\nobjectVersionPolicy: latestEnabled",
        "objectName: b\nobjectType: secret\nobjectNotAfter: \"2026-11-30T18:00:00Z\"",
        "objectName: c\nobjectType: secret\nobjectVersionPolicy: newest\nobjectNotAfter: soon",
        "objectName: d\nobjectType: secret\nobjectVersion: 0123\nobjectVersionPolicy: latestEnabled",
    ]);
    let p = params(&[
        ("keyvaultName", "kv1"),
        ("failoverKeyvaultNames", "kv-west, kv_east"),
        ("tenantId", "t"),
        ("clientID", "c"),
        ("objects", &o),
    ]);
    let l = lint(&p, false);
    assert_eq!(
        fields(&l),
        [
            ("objects[2].objectVersionPolicy", Severity::Error),
            ("objects[2].objectNotAfter", Severity::Error),
            ("objects[3].objectVersionPolicy", Severity::Error),
            ("failoverKeyvaultNames", Severity::Error),
        ]
    );
    let class = l.class.unwrap();
    assert_eq!(class.failover_vaults, ["kv-west", "kv_east"]);
    assert!(class.objects[0].spec.policy.latest_enabled);
    assert_eq!(class.objects[1].spec.policy.not_after, Some(1_796_061_600));
}
