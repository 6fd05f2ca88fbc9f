//! Records the git commit and build date for `--version`.
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=KEYVAULT_CSI_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=KEYVAULT_CSI_BUILD_DATE={date}");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
}
