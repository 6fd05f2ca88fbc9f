//! Writes a provider's files into a volume so that readers see the old set or the new set, never a mix.
//!
//! A port of kubelet's `AtomicWriter` layout, which the upstream driver also uses:
//!
//! ```text
//! <target>/..2026_11_23_04_11_57.123456789   the generation: real files and subdirectories
//! <target>/..data -> ..2026_11_23_04_11_57.123456789
//! <target>/db-password -> ..data/db-password  one symlink per top-level payload entry
//! ```
//!
//! A new generation is written in full, then `..data_tmp` (a symlink to it) is renamed over `..data`:
//! one `rename(2)`, atomic on every Linux filesystem. Two differences from kubelet, both deliberate:
//! the previous generation is kept until the next swap (kubelet deletes it at once, so a reader that
//! resolved `..data` a moment before the swap could get `ENOENT`), and a change of file mode alone is a
//! change (kubelet ignores mode-only changes, so a corrected `filePermission` never reached the volume).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use secrets_store::provider::File;
use secrets_store::redact::ExposeSecret;

const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
const MAX_PATH: usize = 4096;
const MAX_COMPONENT: usize = 255;

/// Why a payload was refused. Nothing is written when any path is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// An empty path.
    #[error("invalid file path \"\": must not be empty")]
    Empty,
    /// `/etc/passwd`.
    #[error("invalid file path {0:?}: must be relative")]
    Absolute(String),
    /// Longer than 4096 bytes.
    #[error("invalid file path {0:?}: longer than {MAX_PATH} characters")]
    TooLong(String),
    /// A component longer than 255 bytes.
    #[error("invalid file path {0:?}: a path element is longer than {MAX_COMPONENT} characters")]
    ComponentTooLong(String),
    /// `../x`, `a/../b`.
    #[error("invalid file path {0:?}: must not contain '..'")]
    DotDot(String),
    /// `..data`, `..x`: names starting with `..` are reserved for the writer's own entries.
    #[error("invalid file path {0:?}: must not start with '..'")]
    StartsWithDotDot(String),
    /// `a//b`, `./a`, `a/`: the path is not in canonical form.
    #[error("invalid file path {0:?}: must be in canonical form (no '.', empty or trailing elements)")]
    NotClean(String),
    /// Two files at one path.
    #[error("invalid file path {0:?}: more than one file would be written there")]
    Duplicate(String),
    /// `a` and `a/b`: a path is both a file and a directory.
    #[error("invalid file path {dir:?}: it is a file and also the directory of {file:?}")]
    FileIsDirectory {
        /// The path used as a file.
        dir: String,
        /// The path beneath it.
        file: String,
    },
}

/// Checks one payload path the way kubelet's writer does, plus a canonical-form check.
pub fn validate_path(p: &str) -> Result<(), PayloadError> {
    if p.is_empty() {
        return Err(PayloadError::Empty);
    }
    if p.starts_with('/') {
        return Err(PayloadError::Absolute(p.into()));
    }
    if p.len() > MAX_PATH {
        return Err(PayloadError::TooLong(p.into()));
    }
    let mut first = true;
    for part in p.split('/') {
        if part == ".." {
            return Err(PayloadError::DotDot(p.into()));
        }
        if first && part.starts_with("..") {
            return Err(PayloadError::StartsWithDotDot(p.into()));
        }
        if part.is_empty() || part == "." {
            return Err(PayloadError::NotClean(p.into()));
        }
        if part.len() > MAX_COMPONENT {
            return Err(PayloadError::ComponentTooLong(p.into()));
        }
        first = false;
    }
    // Belt and braces: the std path parser must agree that every component is a plain name.
    if !Path::new(p).components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(PayloadError::NotClean(p.into()));
    }
    Ok(())
}

/// Validates a whole payload: every path, no duplicates, no path that is both file and directory.
pub fn validate_payload(files: &[File]) -> Result<(), PayloadError> {
    let mut seen = BTreeSet::new();
    for f in files {
        validate_path(&f.path)?;
        if !seen.insert(f.path.as_str()) {
            return Err(PayloadError::Duplicate(f.path.clone()));
        }
    }
    for f in files {
        let mut prefix = String::new();
        for part in f.path.split('/').collect::<Vec<_>>().split_last().map(|(_, d)| d).unwrap_or(&[]) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if seen.contains(prefix.as_str()) {
                return Err(PayloadError::FileIsDirectory { dir: prefix, file: f.path.clone() });
            }
        }
    }
    Ok(())
}

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Contents and modes were identical: nothing was touched.
    Unchanged,
    /// A new generation was swapped in.
    Written,
}

/// A failure while writing. The volume keeps its previous generation.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The payload was refused before anything was written.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// A filesystem operation failed.
    #[error("failed to {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io { op, path: path.to_path_buf(), source }
}

/// Writes `files` into `target` atomically. Blocking: call it from `spawn_blocking`.
pub fn write(target: &Path, files: &[File]) -> Result<WriteOutcome, WriteError> {
    validate_payload(files)?;

    let current = fs::read_link(target.join(DATA_DIR)).ok();
    if let Some(gen_name) = &current
        && generation_matches(&target.join(gen_name), files)
    {
        return Ok(WriteOutcome::Unchanged);
    }

    let gen_name = new_generation_name();
    let gen_dir = target.join(&gen_name);
    fs::create_dir(&gen_dir).map_err(io_err("create directory", &gen_dir))?;
    if let Err(e) = fill_generation(&gen_dir, files) {
        let _ = fs::remove_dir_all(&gen_dir);
        return Err(e);
    }

    let top_level: BTreeSet<&str> = files.iter().map(|f| first_component(&f.path)).collect();
    // Entries that are in the way of a top-level symlink and are not ours (a legacy provider that wrote
    // files in place) are removed, as upstream does.
    for name in &top_level {
        let p = target.join(name);
        if let Ok(meta) = fs::symlink_metadata(&p)
            && !meta.file_type().is_symlink()
        {
            remove_any(&p).map_err(io_err("remove stale entry", &p))?;
        }
    }
    for name in &top_level {
        let p = target.join(name);
        if fs::symlink_metadata(&p).is_err() {
            symlink(Path::new(DATA_DIR).join(name), &p).map_err(io_err("create symlink", &p))?;
        }
    }

    let tmp = target.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&gen_name, &tmp).map_err(io_err("create symlink", &tmp))?;
    let data = target.join(DATA_DIR);
    fs::rename(&tmp, &data).map_err(io_err("swap", &data))?;

    // From here on the new generation is live; cleanup failures are logged, not fatal.
    cleanup(target, &top_level, &gen_name, current.as_deref());
    Ok(WriteOutcome::Written)
}

fn first_component(p: &str) -> &str {
    p.split('/').next().unwrap_or(p)
}

fn new_generation_name() -> String {
    let now = jiff::Timestamp::now();
    format!(
        "..{}.{:09}{:06}",
        now.strftime("%Y_%m_%d_%H_%M_%S"),
        now.subsec_nanosecond(),
        rand::random::<u32>() % 1_000_000
    )
}

fn fill_generation(gen_dir: &Path, files: &[File]) -> Result<(), WriteError> {
    fs::set_permissions(gen_dir, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", gen_dir))?;
    for f in files {
        let path = gen_dir.join(&f.path);
        if let Some(parent) = path.parent()
            && parent != gen_dir
        {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
            // Every directory between the generation and the file must be traversable.
            let mut dir = parent;
            while dir != gen_dir {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", dir))?;
                dir = dir.parent().unwrap_or(gen_dir);
            }
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create file", &path))?;
        out.write_all(f.contents.expose_secret()).map_err(io_err("write file", &path))?;
        drop(out);
        // Permission bits only: setuid, setgid and sticky make no sense on secret data (the tmpfs is
        // nosuid anyway) and a provider must not be able to set them.
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode & 0o777)).map_err(io_err("chmod", &path))?;
    }
    Ok(())
}

/// True when `gen_dir` holds exactly `files`, with the same contents and modes.
fn generation_matches(gen_dir: &Path, files: &[File]) -> bool {
    let mut on_disk = BTreeMap::new();
    if list_files(gen_dir, gen_dir, &mut on_disk).is_err() || on_disk.len() != files.len() {
        return false;
    }
    files.iter().all(|f| match on_disk.get(&f.path) {
        Some(mode) if *mode == f.mode & 0o777 => {
            fs::read(gen_dir.join(&f.path)).map(|c| c == f.contents.expose_secret()).unwrap_or(false)
        }
        _ => false,
    })
}

fn list_files(root: &Path, dir: &Path, out: &mut BTreeMap<String, u32>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let path = entry.path();
        if meta.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).map_err(io::Error::other)?;
            out.insert(rel.to_string_lossy().into_owned(), meta.permissions().mode() & 0o777);
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn cleanup(target: &Path, top_level: &BTreeSet<&str>, live: &str, previous: Option<&Path>) {
    let Ok(entries) = fs::read_dir(target) else { return };
    let previous = previous.and_then(|p| p.to_str());
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = if name.starts_with("..") {
            // Old generations, except the live one and the one just replaced (kept for slow readers).
            name != DATA_DIR && name != DATA_TMP && name != live && Some(name) != previous
        } else {
            !top_level.contains(name)
        };
        if stale && let Err(e) = remove_any(&entry.path()) {
            tracing::warn!(path = %entry.path().display(), error = %e, "failed to remove stale entry");
        }
    }
}

/// The files of a mounted volume by relative path (`objectName`), following the atomic writer's
/// symlinks and skipping its `..` entries. Only for volumes a legacy provider wrote itself: otherwise
/// the driver syncs from the payload it just wrote.
pub fn mounted_files(target: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    fn walk(dir: &Path, rel: &str, out: &mut BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("..") {
                continue;
            }
            let path: PathBuf = entry.path();
            let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            // `metadata` follows the symlink into the current generation.
            if std::fs::metadata(&path)?.is_dir() {
                walk(&path, &key, out)?;
            } else {
                out.insert(key, std::fs::read(&path)?);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(target, "", &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn file(path: &str, mode: u32, contents: &str) -> File {
        File::new(path, mode, contents.as_bytes().to_vec())
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn rejects_every_unsafe_path() {
        for (p, want) in [
            ("", PayloadError::Empty),
            ("/abs", PayloadError::Absolute("/abs".into())),
            ("../x", PayloadError::DotDot("../x".into())),
            ("a/../b", PayloadError::DotDot("a/../b".into())),
            ("..data", PayloadError::StartsWithDotDot("..data".into())),
            ("..x/y", PayloadError::StartsWithDotDot("..x/y".into())),
            ("a//b", PayloadError::NotClean("a//b".into())),
            ("./a", PayloadError::NotClean("./a".into())),
            ("a/", PayloadError::NotClean("a/".into())),
            ("a/./b", PayloadError::NotClean("a/./b".into())),
        ] {
            assert_eq!(validate_path(p), Err(want), "{p:?}");
        }
        let long = "x".repeat(256);
        assert_eq!(validate_path(&long), Err(PayloadError::ComponentTooLong(long.clone())));
        assert!(validate_path("a/..b/c").is_ok(), "'..' inside a later component name is a plain name");
        assert!(validate_path("db/password").is_ok());
    }

    #[test]
    fn rejects_duplicate_and_file_directory_collisions() {
        let dup = [file("a", 0o644, "1"), file("a", 0o644, "2")];
        assert_eq!(validate_payload(&dup), Err(PayloadError::Duplicate("a".into())));
        let clash = [file("a/b", 0o644, "1"), file("a", 0o644, "2")];
        assert!(matches!(validate_payload(&clash), Err(PayloadError::FileIsDirectory { .. })));
    }

    #[test]
    fn invalid_payload_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(dir.path(), &[file("ok", 0o644, "v"), file("../escape", 0o644, "x")]).unwrap_err();
        assert!(matches!(err, WriteError::Payload(PayloadError::DotDot(_))));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }

    #[test]
    fn writes_files_modes_and_the_kubelet_layout() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        let out = write(t, &[file("password", 0o600, "s3cret"), file("db/user", 0o440, "admin"), file("zero", 0, "z")])
            .unwrap();
        assert_eq!(out, WriteOutcome::Written);
        assert_eq!(fs::read_to_string(t.join("password")).unwrap(), "s3cret");
        assert_eq!(fs::read_to_string(t.join("db/user")).unwrap(), "admin");
        assert_eq!(mode_of(&t.join("password")), 0o600);
        assert_eq!(mode_of(&t.join("db/user")), 0o440);
        assert_eq!(mode_of(&t.join("zero")), 0);
        write(t, &[file("suid", 0o4755, "x"), file("sticky", 0o1644, "y")]).unwrap();
        assert_eq!((mode_of(&t.join("suid")), mode_of(&t.join("sticky"))), (0o755, 0o644), "no setuid/sticky bits");
        write(t, &[file("password", 0o600, "s3cret"), file("db/user", 0o440, "admin"), file("zero", 0, "z")]).unwrap();
        assert_eq!(fs::read_link(t.join("password")).unwrap(), Path::new("..data/password"));
        assert_eq!(fs::read_link(t.join("db")).unwrap(), Path::new("..data/db"));
        let generation = fs::read_link(t.join("..data")).unwrap();
        assert!(generation.to_str().unwrap().starts_with("..20"), "{generation:?}");
        assert_eq!(mode_of(&t.join(&generation)), 0o755);
    }

    #[test]
    fn identical_payload_is_not_rewritten_but_a_mode_change_is() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        write(t, &[file("a", 0o644, "1")]).unwrap();
        let before = fs::read_link(t.join("..data")).unwrap();
        assert_eq!(write(t, &[file("a", 0o644, "1")]).unwrap(), WriteOutcome::Unchanged);
        assert_eq!(fs::read_link(t.join("..data")).unwrap(), before);
        assert_eq!(write(t, &[file("a", 0o600, "1")]).unwrap(), WriteOutcome::Written);
        assert_eq!(mode_of(&t.join("a")), 0o600);
    }

    #[test]
    fn stale_entries_and_old_generations_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        write(t, &[file("a", 0o644, "1"), file("old/x", 0o644, "x")]).unwrap();
        let g1 = fs::read_link(t.join("..data")).unwrap();
        write(t, &[file("a", 0o644, "2")]).unwrap();
        let g2 = fs::read_link(t.join("..data")).unwrap();
        write(t, &[file("a", 0o644, "3")]).unwrap();
        assert!(!t.join("old").exists() && fs::symlink_metadata(t.join("old")).is_err());
        assert!(!t.join(&g1).exists(), "generation before the previous one is removed");
        assert!(t.join(&g2).exists(), "the previous generation is kept for slow readers");
        assert_eq!(fs::read_to_string(t.join("a")).unwrap(), "3");
    }

    #[test]
    fn legacy_plain_files_in_the_way_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        fs::write(t.join("a"), "written in place by an old provider").unwrap();
        write(t, &[file("a", 0o644, "new")]).unwrap();
        assert!(fs::symlink_metadata(t.join("a")).unwrap().file_type().is_symlink());
        assert_eq!(fs::read_to_string(t.join("a")).unwrap(), "new");
    }

    /// Contents of generation `g`: large enough that a torn write would be visible.
    fn body(g: usize, salt: &str) -> String {
        format!("{salt}{g:08};").repeat(2048)
    }

    #[test]
    fn readers_never_see_a_torn_file_or_a_mix_during_1000_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let t = Arc::new(dir.path().to_path_buf());
        write(&t, &[file("a", 0o644, &body(0, "a")), file("d/b", 0o644, &body(0, "b"))]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let retired = Arc::new(AtomicUsize::new(0));
        // Swaps started and finished: a generation is kept until the swap after the one that replaced
        // it, so a read may find its generation gone only if two swaps began after it was current.
        let (started, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut readers = Vec::new();
        for _ in 0..2 {
            let (t, stop, reads, retired) = (t.clone(), stop.clone(), reads.clone(), retired.clone());
            let (started, done) = (started.clone(), done.clone());
            readers.push(std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    // Through the user-visible symlink: one complete generation per file.
                    let current = done.load(Ordering::SeqCst);
                    match fs::read_to_string(t.join("a")) {
                        Ok(a) => {
                            let g: usize = a[1..9].parse().unwrap();
                            if a != body(g, "a") {
                                failures.push(format!("torn read of a (gen {g})"));
                            }
                        }
                        // A reader stalled across two whole swaps can find its generation retired
                        // (here a swap takes well under a millisecond; real rotations are minutes apart).
                        Err(e)
                            if e.kind() == std::io::ErrorKind::NotFound
                                && started.load(Ordering::SeqCst) >= current + 2 =>
                        {
                            retired.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.push(format!("read a (within one swap): {e}")),
                    }
                    // Through one resolution of ..data: both files from the same generation.
                    if let Ok(generation) = fs::read_link(t.join("..data")) {
                        let a = fs::read_to_string(t.join(&generation).join("a"));
                        let b = fs::read_to_string(t.join(&generation).join("d/b"));
                        match (a, b) {
                            (Ok(a), Ok(b)) => {
                                let g: usize = a[1..9].parse().unwrap();
                                if a != body(g, "a") || b != body(g, "b") {
                                    failures.push(format!("mixed generation {g}"));
                                }
                            }
                            // The writer swaps far faster than any real rotation, so a snapshot can outlive
                            // its generation (retired two swaps later). That is not a mix; skip it.
                            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                            (a, b) => failures.push(format!("snapshot read: {:?} {:?}", a.err(), b.err())),
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                failures
            }));
        }
        for g in 1..=1000 {
            started.fetch_add(1, Ordering::SeqCst);
            write(&t, &[file("a", 0o644, &body(g, "a")), file("d/b", 0o644, &body(g, "b"))]).unwrap();
            done.fetch_add(1, Ordering::SeqCst);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            let failures = r.join().unwrap();
            assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
        }
        let (reads, retired) = (reads.load(Ordering::Relaxed), retired.load(Ordering::Relaxed));
        assert!(reads > 100, "readers must actually have raced the writer");
        eprintln!("{reads} reads, {retired} outlived their generation by two swaps");
        assert_eq!(fs::read_to_string(t.join("a")).unwrap(), body(1000, "a"));
    }

    #[test]
    fn mounted_files_follow_the_writers_layout() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![File::new("foo", 0o644, b"1".to_vec()), File::new("d/bar", 0o644, b"2".to_vec())];
        write(dir.path(), &files).unwrap();
        let got = mounted_files(dir.path()).unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), ["d/bar", "foo"]);
        assert_eq!(got["foo"], b"1");
    }
}
