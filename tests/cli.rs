//! The binary's command line, as an operator (or a DaemonSet) uses it.

mod support;

use std::process::Command;

use support::binary;

#[test]
fn version_prints_upstream_style_json() {
    let out = Command::new(binary()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["BuildVersion", "GitCommit", "BuildDate"] {
        assert!(v[key].is_string(), "{key} missing in {v}");
    }
}

#[test]
fn a_bad_flag_value_gets_one_clear_line_and_exit_code_2() {
    for (args, needle) in [
        (&["--rotation-poll-interval=soon"][..], "--rotation-poll-interval"),
        (&["--endpoint=http://x"][..], "invalid endpoint"),
        (&["--enable-secret-rotation=maybe"][..], "--enable-secret-rotation"),
        (&["--max-call-recv-msg-size=0"][..], "--max-call-recv-msg-size"),
        (&["--metrics-backend=statsd"][..], "only Prometheus"),
        (&["--no-such-flag"][..], "--no-such-flag"),
    ] {
        let out = Command::new(binary()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn a_stale_socket_file_is_replaced_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    std::fs::write(&sock, "stale").unwrap();
    let mut child = Command::new(binary())
        .arg(format!("--endpoint=unix://{}", sock.display()))
        .arg(format!("--metrics-addr=127.0.0.1:{}", support::free_port()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    use std::os::unix::fs::FileTypeExt;
    while !std::fs::metadata(&sock).map(|m| m.file_type().is_socket()).unwrap_or(false) {
        assert!(std::time::Instant::now() < deadline, "socket never replaced");
        assert!(child.try_wait().unwrap().is_none(), "driver exited");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn check(args: &[&str]) -> (Option<i32>, String, String) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(binary()).arg("check").args(args).current_dir(root).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_reports_the_three_classic_mistakes_precisely() {
    let (code, out, _) = check(&["tests/classes/broken-provider.yaml"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("spec.provider: \"azurekeyvault\" is not a provider; did you mean \"azure\"?"), "{out}");
    let (code, out, _) = check(&["tests/classes/broken-pod-identity.yaml"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("spec.parameters.usePodIdentity: usePodIdentity (aad-pod-identity) is deprecated"), "{out}");
    let (code, out, _) = check(&["tests/classes/broken-object-type.yaml"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("spec.parameters.objects[1].objectType: failed to get objectType:secrets, objectName:api-key, objectVersion:: Invalid vaultObjectTypes. Should be secret, key, or cert"),
        "{out}"
    );
    assert!(out.contains("fix: did you mean objectType: secret?"), "{out}");
}

#[test]
fn check_finds_every_mistake_of_the_classic_exercise_in_one_run() {
    let (code, out, _) = check(&["--output", "json", "tests/classes/classic-exercise.yaml"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = v[0]["findings"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for want in [
        "spec.provider",
        "spec.parameters.usePodIdentity",
        "spec.parameters.objects[0].objectType",
        "spec.parameters.keyvaultName",
        "spec.parameters.tenantId",
        "spec.parameters.objects[1].objectName",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
}

#[test]
fn check_exit_codes_and_json_output() {
    let (code, out, _) = check(&["--output", "json", "tests/classes/broken-object-type.yaml", "hack/demo/class.yaml"]);
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["findings"][0]["path"], "spec.parameters.objects[1].objectType");
    assert_eq!(v[1]["findings"].as_array().unwrap().len(), 0);
    let (code, _, err) = check(&["does-not-exist.yaml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot read"));
    let (code, _, err) = check(&["Cargo.toml"]);
    assert_eq!((code, err.contains("not a SecretProviderClass or SecretSync manifest")), (Some(2), true));
}

#[test]
fn every_sample_class_in_the_repository_is_clean() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let mut samples = Vec::new();
    for dir in ["hack/demo", "docs", "charts/keyvault-csi/examples"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if p.extension().is_some_and(|x| x == "yaml") && text.contains("kind: SecretProviderClass") {
                samples.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    assert!(!samples.is_empty());
    let args: Vec<&str> = samples.iter().map(String::as_str).collect();
    let (code, out, err) = check(&args);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[test]
fn check_validates_json_keys() {
    let (code, out, _) = check(&["--output", "json", "tests/classes/json-keys.yaml"]);
    assert_eq!(code, Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let findings: Vec<(String, String)> = v[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap().to_string(), f["message"].as_str().unwrap().to_string()))
        .collect();
    assert!(!findings.iter().any(|(p, _)| p.contains("objects[0]")), "the valid object: {findings:?}");
    assert!(
        findings.iter().any(
            |(p, m)| p == "spec.parameters.objects[1].jsonKeys" && m.ends_with("jsonKeys needs objectFormat: json")
        ),
        "{findings:?}"
    );
    assert!(
        findings
            .iter()
            .any(|(p, m)| p == "spec.parameters.objects[2].jsonKeys[0]"
                && m.ends_with("file name must not contain '..'")),
        "{findings:?}"
    );
}

#[test]
fn check_validates_an_object_selector() {
    let (code, out, _) = check(&["--output", "json", "tests/classes/object-selector.yaml"]);
    assert_eq!(code, Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> = v[0]["findings"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"spec.parameters.objectSelector.maxObjects"), "{paths:?}");
    assert!(paths.contains(&"spec.parameters.objectSelector"), "all with a prefix: {paths:?}");
    assert!(!paths.iter().any(|p| p.starts_with("spec.parameters.objects")), "no objects needed: {paths:?}");
}
