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
