use super::*;

fn attrs(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = [
        ("csi.storage.k8s.io/pod.name", "web-0"),
        ("csi.storage.k8s.io/pod.namespace", "default"),
        ("keyvaultName", "kv1"),
        ("tenantID", "tenant"),
        ("objects", "array:\n  - |\n    objectName: db-password\n    objectType: secret\n"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        if v.is_empty() {
            m.remove(*k);
        } else {
            m.insert(k.to_string(), v.to_string());
        }
    }
    m
}

fn sp() -> SecretMap {
    [("ClientID".to_string(), "id".into()), ("ClientSecret".to_string(), "s".into())].into()
}

fn err(a: &[(&str, &str)], secrets: &SecretMap) -> String {
    parse(&attrs(a), secrets, 0o644, &Default::default(), false).unwrap_err().message
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

#[test]
fn a_minimal_service_principal_class_parses() {
    let p = parse(&attrs(&[]), &sp(), 0o644, &Default::default(), false).unwrap();
    assert_eq!(p.vault_name, "kv1");
    assert_eq!(p.identity, Identity::ServicePrincipal { client_id: "id".into(), secret: SecretString::from("s") });
    assert_eq!(p.objects[0].mode, 0o644);
    assert_eq!(p.objects[0].id(), "secret/db-password");
}

#[test]
fn pod_info_and_required_parameters_have_upstreams_messages() {
    assert_eq!(err(&[("csi.storage.k8s.io/pod.name", "")], &sp()), "pod name is not provided");
    assert_eq!(err(&[("csi.storage.k8s.io/pod.namespace", "")], &sp()), "pod namespace is not provided");
    assert_eq!(err(&[("keyvaultName", "")], &sp()), "keyvaultName is not provided");
    assert_eq!(err(&[("tenantID", "")], &sp()), "tenantId is not provided");
    assert!(
        parse(&attrs(&[("tenantID", ""), ("tenantId", "legacy")]), &sp(), 0o644, &Default::default(), false).is_ok()
    );
    assert_eq!(err(&[("objects", "")], &sp()), "objects is not set");
    assert_eq!(
        err(&[("keyvaultName", "kv")], &sp()),
        "failed to get vault: Invalid vault name: \"kv\", must be between 3 and 24 chars"
    );
    assert_eq!(
        err(&[("keyvaultName", "kv_1")], &sp()),
        "failed to get vault: Invalid vault name: \"kv_1\", must match [-a-zA-Z0-9]{3,24}"
    );
    assert!(err(&[("cloudName", "Mars")], &sp()).starts_with("cloudName Mars is not valid"));
}

#[test]
fn identity_flags_use_go_parse_bool_and_are_exclusive() {
    assert_eq!(
        err(&[("usePodIdentity", "yes")], &sp()),
        "failed to parse usePodIdentity flag, error: strconv.ParseBool: parsing \"yes\": invalid syntax"
    );
    assert_eq!(
        err(&[("usePodIdentity", "true"), ("useVMManagedIdentity", "T")], &sp()),
        "only one identity mode can be enabled at a time: usePodIdentity, useVMManagedIdentity, or useAzureTokenProxy"
    );
    let none = SecretMap::new();
    let p = parse(
        &attrs(&[("useVMManagedIdentity", "1"), ("userAssignedIdentityID", "uami")]),
        &none,
        0o644,
        &Default::default(),
        false,
    )
    .unwrap();
    assert_eq!(p.identity, Identity::ManagedIdentity { client_id: Some("uami".into()) });
    let p = parse(&attrs(&[("useVMManagedIdentity", "True")]), &none, 0o644, &Default::default(), false).unwrap();
    assert_eq!(p.identity, Identity::ManagedIdentity { client_id: None });
    let p = parse(&attrs(&[("usePodIdentity", "TRUE")]), &none, 0o644, &Default::default(), false).unwrap();
    assert!(matches!(p.identity, Identity::PodIdentity { .. }));
}

#[test]
fn identity_binding_needs_a_client_id_and_the_binding_audience_token() {
    let none = SecretMap::new();
    let m = "failed to build auth config for mode AzureTokenProxy: ";
    assert_eq!(err(&[("useAzureTokenProxy", "true")], &none), format!("{m}clientID is required for identity binding"));
    assert_eq!(
        err(&[("useAzureTokenProxy", "true"), ("clientID", "c")], &none),
        format!("{m}service account tokens are required for identity binding")
    );
    let live = jwt(r#"{"iss":"https://oidc/","sub":"system:serviceaccount:default:app","exp":4102444800}"#);
    let wi_only = format!(r#"{{"api://AzureADTokenExchange":{{"token":"{live}"}}}}"#);
    assert_eq!(
        err(&[("useAzureTokenProxy", "true"), ("clientID", "c"), (TOKENS_KEY, &wi_only)], &none),
        format!(
            "{m}failed to parse service account token for identity binding, error: token for audience api://AKSIdentityBinding not found"
        )
    );
    let both =
        format!(r#"{{"api://AzureADTokenExchange":{{"token":"wi"}},"api://AKSIdentityBinding":{{"token":"{live}"}}}}"#);
    let p = parse(
        &attrs(&[("useAzureTokenProxy", "true"), ("clientID", "c"), (TOKENS_KEY, &both)]),
        &none,
        0o644,
        &Default::default(),
        false,
    )
    .unwrap();
    match p.identity {
        Identity::Binding { client_id, subject, token, .. } => {
            assert_eq!((client_id.as_str(), subject.as_str()), ("c", "system:serviceaccount:default:app"));
            assert_eq!(token.expose_secret(), live, "the binding audience's token, not workload identity's");
        }
        other => panic!("{other:?}"),
    }
    let dead = jwt(r#"{"iss":"https://oidc/","sub":"system:serviceaccount:default:app","exp":1000}"#);
    let expired = format!(r#"{{"api://AKSIdentityBinding":{{"token":"{dead}"}}}}"#);
    let e = err(&[("useAzureTokenProxy", "true"), ("clientID", "c"), (TOKENS_KEY, &expired)], &none);
    assert!(e.contains("api://AKSIdentityBinding of system:serviceaccount:default:app expired"), "{e}");
}

#[test]
fn service_principal_and_workload_identity_errors() {
    let none = SecretMap::new();
    assert_eq!(
        err(&[], &none),
        "failed to build auth config for mode None: failed to get credentials, nodePublishSecretRef secret is not set"
    );
    let only_id: SecretMap = [("clientid".to_string(), "x".into())].into();
    assert_eq!(err(&[], &only_id), "failed to build auth config for mode None: could not find clientsecret in secrets");
    assert_eq!(
        err(&[("clientID", "wi")], &none),
        "failed to build auth config for mode None: failed to parse workload identity tokens, error: service account tokens not found"
    );
    assert_eq!(
        err(&[("clientID", "wi"), (TOKENS_KEY, r#"{"other":{"token":"x"}}"#)], &none),
        "failed to build auth config for mode None: failed to parse workload identity tokens, error: token for audience api://AzureADTokenExchange not found"
    );
}

fn jwt(claims: &str) -> String {
    use base64::Engine;
    let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.sig", e(r#"{"alg":"RS256"}"#), e(claims))
}

#[test]
fn workload_identity_reads_subject_and_rejects_expired_tokens() {
    let none = SecretMap::new();
    let live = jwt(r#"{"iss":"https://oidc/","sub":"system:serviceaccount:default:app","exp":4102444800}"#);
    let tokens = format!(
        r#"{{"api://AzureADTokenExchange":{{"token":"{live}","expirationTimestamp":"2100-01-01T00:00:00Z"}}}}"#
    );
    let p =
        parse(&attrs(&[("clientID", "wi"), (TOKENS_KEY, &tokens)]), &none, 0o644, &Default::default(), false).unwrap();
    match p.identity {
        Identity::Workload { subject, issuer, .. } => {
            assert_eq!((subject.as_str(), issuer.as_str()), ("system:serviceaccount:default:app", "https://oidc/"))
        }
        other => panic!("{other:?}"),
    }
    let dead = jwt(r#"{"iss":"https://oidc/","sub":"system:serviceaccount:default:app","exp":1000}"#);
    let tokens = format!(r#"{{"api://AzureADTokenExchange":{{"token":"{dead}"}}}}"#);
    let e = err(&[("clientID", "wi"), (TOKENS_KEY, &tokens)], &none);
    assert!(e.contains("expired") && !e.contains(&dead), "{e}");
}

#[test]
fn objects_parse_in_two_stages_with_upstreams_messages() {
    assert!(err(&[("objects", "- objectName: x")], &sp()).starts_with("failed to yaml unmarshal objects, error:"));
    assert!(
        err(&[("objects", "array:\n  - objectName: x\n")], &sp())
            .starts_with("failed to yaml unmarshal objects, error:")
    );
    let bad_item = "array:\n  - |\n    objectName: [unclosed\n";
    assert!(
        err(&[("objects", bad_item)], &sp()).starts_with("unmarshal failed for keyVaultObjects at index 0, error:")
    );
    assert_eq!(err(&[("objects", "array: []")], &sp()), "objects lists no object: nothing to mount");
}

#[test]
fn every_per_object_field() {
    let o = objects(&[
        "objectName: tls\nobjectType: secret\nobjectAlias: certs/tls.pfx\nobjectFormat: PFX\nobjectEncoding: Base64\nfilePermission: 0600\nobjectVersion: abc",
        "objectName: hist\nobjectType: key\nobjectVersionHistory: 3\nfilePermission: 440",
        "objectName: c\nobjectType: cert",
    ]);
    let p = parse(&attrs(&[("objects", &o)]), &sp(), 0o644, &Default::default(), false).unwrap();
    let t = &p.objects[0];
    assert_eq!(
        (t.file_name(), t.format, t.encoding, t.mode, t.version.as_str()),
        ("certs/tls.pfx", Format::Pfx, Encoding::Base64, 0o600, "abc")
    );
    assert_eq!((p.objects[1].kind, p.objects[1].history, p.objects[1].mode), (ObjectType::Key, 3, 0o440));
    assert_eq!(p.objects[2].kind, ObjectType::Cert);
}

#[test]
fn per_object_validation_messages() {
    let e = |item: &str| err(&[("objects", &objects(&[item]))], &sp());
    assert_eq!(
        e("objectName: x\nobjectType: secrets"),
        "failed to get objectType:secrets, objectName:x, objectVersion:: Invalid vaultObjectTypes. Should be secret, key, or cert"
    );
    assert_eq!(
        e("objectName: x\nobjectType: secret\nobjectFormat: der"),
        "failed to get objectType:secret, objectName:x, objectVersion:: invalid objectFormat: der, should be PEM or PFX"
    );
    assert_eq!(
        e("objectName: x\nobjectType: cert\nobjectFormat: pfx"),
        "failed to get objectType:cert, objectName:x, objectVersion:: PFX format only supported for objectType: secret"
    );
    // Upper-case `PFX` on a cert passes upstream's check (it compares lower-case `pfx` only).
    let o = objects(&["objectName: x\nobjectType: cert\nobjectFormat: PFX"]);
    let ok = parse(&attrs(&[("objects", &o)]), &sp(), 0o644, &Default::default(), false).unwrap();
    assert_eq!(ok.objects[0].kind, ObjectType::Cert);
    assert_eq!(
        e("objectName: x\nobjectType: secret\nobjectEncoding: rot13"),
        "failed to get objectType:secret, objectName:x, objectVersion:: invalid objectEncoding: rot13, should be hex, base64 or utf-8"
    );
    assert_eq!(
        e("objectName: x\nobjectType: key\nobjectEncoding: hex"),
        "failed to get objectType:key, objectName:x, objectVersion:: objectEncoding only supported for objectType: secret"
    );
    assert_eq!(
        e("objectName: x\nobjectType: secret\nobjectAlias: /etc/passwd"),
        "failed to get objectType:secret, objectName:x, objectVersion:: file name must be a relative path"
    );
    assert_eq!(
        e("objectName: x\nobjectType: secret\nobjectAlias: ../../escape"),
        "failed to get objectType:secret, objectName:x, objectVersion:: file name must not contain '..'"
    );
    assert_eq!(
        e("objectName: ''\nobjectType: secret"),
        "failed to get objectType:secret, objectName:, objectVersion:: file name must not be empty"
    );
    assert!(
        e("objectName: x\nobjectType: secret\nfilePermission: rw-r--r--")
            .contains("invalid filePermission \"rw-r--r--\"")
    );
    assert!(e("objectName: x\nobjectType: secret\nfilePermission: 0999").contains("invalid filePermission"));
}

#[test]
fn two_objects_writing_one_path_are_refused() {
    let o = objects(&["objectName: a\nobjectType: secret", "objectName: b\nobjectType: secret\nobjectAlias: a"]);
    let e = err(&[("objects", &o)], &sp());
    assert!(e.contains("file \"a\" is also written by another object"), "{e}");
    let split = objects(&[
        "objectName: tls\nobjectType: secret",
        "objectName: other\nobjectType: secret\nobjectAlias: tls.key",
    ]);
    assert!(parse(&attrs(&[("objects", &split)]), &sp(), 0o644, &Default::default(), true).is_err());
    assert!(parse(&attrs(&[("objects", &split)]), &sp(), 0o644, &Default::default(), false).is_ok());
}

#[test]
fn whitespace_is_trimmed_and_secret_keys_are_case_insensitive() {
    let p = parse(&attrs(&[("keyvaultName", "  kv1 \n")]), &sp(), 0o644, &Default::default(), false).unwrap();
    assert_eq!(p.vault_name, "kv1");
    let debug = format!("{:?}", p.identity);
    assert!(debug.contains("REDACTED") && !debug.contains("\"s\""), "{debug}");
}

#[test]
fn optional_is_a_go_boolean_and_defaults_to_false() {
    let o = objects(&["objectName: a\nobjectType: secret\noptional: \"true\"", "objectName: b\nobjectType: secret"]);
    let p = parse(&attrs(&[("objects", &o)]), &sp(), 0o644, &Default::default(), false).unwrap();
    assert_eq!((p.objects[0].optional, p.objects[1].optional), (true, false));
    assert_eq!(
        err(&[("objects", &objects(&["objectName: a\nobjectType: secret\noptional: maybe"]))], &sp()),
        "failed to get objectType:secret, objectName:a, objectVersion:: invalid optional: maybe, should be true or false"
    );
}

/// Found by `tests/fuzz.rs`: serde's message quoted the offending token into the mount's error (and
/// so into the pod's FailedMount event).
#[test]
fn a_malformed_tokens_json_never_quotes_a_token() {
    let none = SecretMap::new();
    for tokens in [
        r#"{"api://AzureADTokenExchange": "eyJhbGciOiJSUzI1NiJ9.SECRETTOKEN"}"#,
        r#"["eyJhbGciOiJSUzI1NiJ9.SECRETTOKEN"]"#,
        r#"{"api://AzureADTokenExchange": {"token": "eyJhbGciOiJSUzI1NiJ9.SECRETTOKEN"#,
    ] {
        let e = parse(&attrs(&[("clientID", "wi"), (TOKENS_KEY, tokens)]), &none, 0o644, &Default::default(), false)
            .unwrap_err()
            .message;
        assert!(!e.contains("SECRETTOKEN"), "{e}");
    }
}

#[test]
fn oversized_objects_are_refused_unread_with_the_limit_named() {
    let many = objects(&vec!["objectName: s\nobjectType: secret"; objects::MAX_OBJECTS + 1]);
    let e = err(&[("objects", &many)], &sp());
    assert!(e.contains("lists 1001 entries, more than the 1000"), "{e}");
    let big = format!("{}{}", objects(&["objectName: s\nobjectType: secret"]), "#".repeat(objects::MAX_OBJECTS_BYTES));
    let e = err(&[("objects", &big)], &sp());
    assert!(e.contains("larger than the 262144 bytes"), "{e}");
    // At the limit, still read.
    let fits = objects(&vec!["objectName: s\nobjectType: secret"; objects::MAX_OBJECTS]);
    assert!(fits.len() <= objects::MAX_OBJECTS_BYTES);
    assert!(!err(&[("objects", &fits)], &sp()).contains("entries"));
}

#[test]
fn json_keys_parse_with_their_own_alias_and_mode() {
    let o = objects(&[
        "objectName: db\nobjectType: secret\nobjectFormat: json\nfilePermission: \"0440\"\njsonKeys:\n  - key: username\n  - key: conn.host\n    objectAlias: db/host\n    filePermission: \"0400\"",
    ]);
    let p = parse(&attrs(&[("objects", &o)]), &sp(), 0o644, &Default::default(), false).unwrap();
    let db = &p.objects[0];
    assert_eq!(db.format, Format::Json);
    assert_eq!(
        db.json_keys,
        [
            JsonKey { key: "username".into(), alias: String::new(), mode: 0o440 },
            JsonKey { key: "conn.host".into(), alias: "db/host".into(), mode: 0o400 },
        ]
    );
    assert_eq!(output_paths(db, true), ["username", "db/host"], "only the keys' files, no .crt/.key");
}

#[test]
fn json_keys_validation_names_the_object_and_the_key() {
    let e = |item: &str| err(&[("objects", &objects(&[item]))], &sp());
    let prefix = "failed to get objectType:secret, objectName:db, objectVersion:: ";
    assert_eq!(
        e("objectName: db\nobjectType: secret\nobjectFormat: json"),
        format!("{prefix}objectFormat json needs jsonKeys: the members to write as files")
    );
    assert_eq!(
        e("objectName: db\nobjectType: secret\njsonKeys:\n  - key: a"),
        format!("{prefix}jsonKeys needs objectFormat: json")
    );
    assert_eq!(
        e(
            "objectName: db\nobjectType: secret\nobjectFormat: json\njsonKeys:\n  - key: a\n    objectAlias: ../../etc/x"
        ),
        format!("{prefix}jsonKeys \"a\": file name must not contain '..'")
    );
    assert_eq!(
        e("objectName: db\nobjectType: secret\nobjectFormat: json\njsonKeys:\n  - key: ''"),
        format!("{prefix}jsonKeys[0].key must be 1 to 256 characters and at most 32 dotted parts")
    );
    assert!(
        e("objectName: db\nobjectType: secret\nobjectFormat: json\nobjectVersionHistory: 3\njsonKeys:\n  - key: a")
            .ends_with("jsonKeys cannot be combined with objectVersionHistory")
    );
    assert!(
        e("objectName: db\nobjectType: key\nobjectFormat: json\njsonKeys:\n  - key: a")
            .ends_with("objectFormat json only supported for objectType: secret")
    );
    // A typo in an entry's field is refused, not ignored.
    assert!(
        e("objectName: db\nobjectType: secret\nobjectFormat: json\njsonKeys:\n  - key: a\n    alias: b")
            .contains("unmarshal failed for keyVaultObjects at index 0")
    );
    let many: String = (0..101).map(|i| format!("\n  - key: k{i}")).collect();
    assert!(
        e(&format!("objectName: db\nobjectType: secret\nobjectFormat: json\njsonKeys:{many}"))
            .ends_with("jsonKeys lists 101 keys, more than the 100 one object may")
    );
    // Two keys, or a key and another object, writing one file.
    let o = objects(&[
        "objectName: db\nobjectType: secret\nobjectFormat: json\njsonKeys:\n  - key: user\n  - key: name\n    objectAlias: user",
    ]);
    assert!(err(&[("objects", &o)], &sp()).contains("file \"user\" is also written by another object"));
}

#[test]
fn an_object_selector_replaces_or_adds_to_objects_and_is_validated() {
    let sel = |yaml: &str| attrs(&[("objectSelector", yaml), ("objects", "")]);
    let p = parse(
        &sel("namePrefix: app-\ntags: [team=payments, tier]\nmaxObjects: 20\nfilePermission: \"0440\""),
        &sp(),
        0o644,
        &Default::default(),
        false,
    )
    .unwrap();
    assert!(p.objects.is_empty(), "no objects needed with a selector");
    let s = p.selector.unwrap();
    assert_eq!(
        (s.name_prefix.as_str(), s.tags.clone(), s.all, s.max, s.mode),
        ("app-", vec![("team".into(), Some("payments".into())), ("tier".into(), None)], false, 20, 0o440)
    );
    assert!(s.admits("app-x", &[("team".to_string(), "payments".to_string()), ("tier".into(), "1".into())].into()));
    assert!(!s.admits("app-x", &[("team".to_string(), "search".to_string()), ("tier".into(), "1".into())].into()));
    assert!(!s.admits("other", &[("team".to_string(), "payments".to_string()), ("tier".into(), "1".into())].into()));
    let e = |yaml: &str| err(&[("objectSelector", yaml), ("objects", "")], &sp());
    assert_eq!(e("maxObjects: 5"), "objectSelector selects nothing: set namePrefix, tags or all: true");
    assert_eq!(
        e("all: true\nnamePrefix: a"),
        "objectSelector: all: true selects every secret, with no namePrefix or tags"
    );
    assert_eq!(e("all: true\nmaxObjects: 5000"), "objectSelector.maxObjects must be a number from 1 to 1000");
    assert!(e("namePrefix: ../x").starts_with("objectSelector.namePrefix must be letters, digits and dashes"));
    assert!(e("all: yes-please").starts_with("objectSelector.all: strconv.ParseBool"));
    assert!(e("nameprefix: a").starts_with("failed to read objectSelector, error: "), "a typo is refused");
    assert_eq!(e("tags: ['=x']"), "objectSelector.tags[0] must be key or key=value, each at most 512 characters");
    // Without a selector, objects stay required.
    assert_eq!(err(&[("objects", "")], &sp()), "objects is not set");
}

#[test]
fn max_staleness_is_an_opt_in_bounded_duration() {
    let staleness = |v: &str| parse(&attrs(&[("maxStaleness", v)]), &sp(), 0o644, &Default::default(), false);
    assert_eq!(parse(&attrs(&[]), &sp(), 0o644, &Default::default(), false).unwrap().max_staleness, None);
    assert_eq!(staleness("1h30m").unwrap().max_staleness, Some(std::time::Duration::from_secs(5400)));
    assert_eq!(staleness("90s").unwrap().max_staleness, Some(std::time::Duration::from_secs(90)));
    for bad in ["25h", "0s", "-1h", "soon", "500ms"] {
        let e = staleness(bad).unwrap_err().message;
        assert!(e.starts_with("invalid maxStaleness") && e.contains("from 1s to 24h"), "{bad}: {e}");
    }
}
