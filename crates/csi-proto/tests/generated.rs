//! The checked-in code in `src/generated/` is exactly what the code generator makes of `proto/`.
//! `UPDATE_PROTO=1` rewrites it instead of comparing.

use std::path::Path;

#[test]
fn generated_code_matches_the_protos() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = crate_dir.join("../../proto");
    let out = tempfile_dir();
    let fds = protox::compile([root.join("csi.proto"), root.join("provider.proto")], [&root]).unwrap();
    tonic_prost_build::configure().build_server(true).build_client(true).out_dir(&out).compile_fds(fds).unwrap();
    let update = std::env::var_os("UPDATE_PROTO").is_some();
    for file in ["csi.v1.rs", "v1alpha1.rs"] {
        let fresh = std::fs::read_to_string(out.join(file)).unwrap();
        let checked_in = crate_dir.join("src/generated").join(file);
        if update {
            std::fs::write(&checked_in, &fresh).unwrap();
            continue;
        }
        let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
        assert!(
            current == fresh,
            "src/generated/{file} does not match proto/: run `UPDATE_PROTO=1 cargo test -p csi-proto` and commit the result"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("csi-proto-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
