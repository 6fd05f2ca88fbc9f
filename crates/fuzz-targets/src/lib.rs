//! The fuzz targets: everything a namespace user, a vault, a token service or the provider process
//! hands the driver, each with the **marker rule**.
//!
//! Every target plants [`MARKER`] in each secret-bearing field its input reaches (a service-account
//! token, a client secret, an object's value, a PFX password, a file the provider returns) and
//! asserts that the marker never appears, raw, base64 or hex, in
//! - an error message, and the gRPC status kubelet turns into the pod's `FailedMount` event;
//! - an event message the driver or the SecretSync controller writes (built from the same errors);
//! - a metric label (the error is recorded in the driver's and the provider's metric families and the
//!   registry rendered);
//! - a log line: every target runs under a `tracing` subscriber at TRACE that captures what the code
//!   logs on this thread.
//!
//! A target's input also carries the word `TOKEN` wherever the mutator (or libFuzzer's dictionary)
//! splices it; it is replaced by the marker in the secret-bearing fields only, so a field a tenant owns
//! and may see echoed (an alias, a class name) never trips the rule.
//!
//! One body per target, driven two ways: the stable mutation fuzzer in `make test` (`tests/fuzz.rs`,
//! time-boxed) and libFuzzer, coverage-guided, in `make fuzz` (`fuzz/`).

use std::cell::RefCell;
use std::io;
use std::sync::Once;

mod boundary;
mod targets;

/// The value planted wherever a secret can go.
pub const MARKER: &str = "CANARYsecretVALUE";

/// Where the input asks for a planted secret.
pub const PLANT: &str = "TOKEN";

/// A target's body: one input, the marker rule applied inside.
pub type Body = fn(&[u8]);

/// Every target: its name (the corpus directory under `tests/fuzz/` and the libFuzzer binary) and body.
pub const TARGETS: &[(&str, Body)] = &[
    ("class_parameters", targets::class_parameters),
    ("durations", targets::durations),
    ("volume_context", targets::volume_context),
    ("pfx", targets::pfx),
    ("responses", targets::responses),
    ("events", targets::events),
    ("secretsync", targets::secretsync),
    ("secret_objects", targets::secret_objects),
    ("grpc_frames", targets::grpc_frames),
    ("provider_wire", boundary::provider_wire),
    ("json_keys", targets::json_keys),
];

/// The body of target `name`.
pub fn target(name: &str) -> Body {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f).unwrap_or_else(|| panic!("no fuzz target {name:?}"))
}

/// Tokens the mutators splice in: the syntax of every format the targets read, and [`PLANT`].
pub const DICTIONARY: &[&str] = &[
    PLANT,
    "array:",
    "- |",
    "objectName:",
    "objectType:",
    "objectFormat: json",
    "jsonKeys:",
    "- key:",
    "objectSelector:",
    "namePrefix:",
    "tags:",
    "all: true",
    "maxObjects:",
    "objectAlias:",
    "objectVersion:",
    "objectVersionHistory:",
    "objectEncoding:",
    "objectFormat:",
    "filePermission:",
    "secret",
    "key",
    "cert",
    "pfx",
    "pem",
    "base64",
    "hex",
    "utf-8",
    "../",
    "/",
    "..",
    "\0",
    "\n",
    "\"",
    "'",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "0777",
    "99999999999999999999",
    "-1",
    "NaN",
    "1e400",
    "2562047h",
    "9999999h",
    "1.5s",
    "ms",
    "µs",
    "h",
    "true",
    "false",
    "null",
    "AzureStackCloud",
    "cloudEnvFileName",
    "/etc/passwd",
    "clientID",
    "tenantId",
    "keyvaultName",
    "usePodIdentity",
    "useVMManagedIdentity",
    "userAssignedIdentityID",
    "token",
    "expirationTimestamp",
    "api://AzureADTokenExchange",
    "\u{202e}",
    "\u{feff}",
    "value",
    "contentType",
    "application/x-pkcs12",
    "application/x-pem-file",
    "kid",
    "kty",
    "RSA",
    "EC",
    "crv",
    "P-256",
    "n",
    "e",
    "x",
    "y",
    "access_token",
    "expires_in",
    "Bearer authorization=\"",
    "resource=\"",
    "scope=\"",
    "&",
    "secretObjects:",
    "secretName:",
    "kubernetes.io/tls",
    "tls.crt",
    "tls.key",
    "sourcePath:",
    "targetKey:",
    "-----BEGIN CERTIFICATE-----",
    "-----BEGIN PRIVATE KEY-----",
];

/// [`DICTIONARY`] in libFuzzer's format (`fuzz/dict`, which a test keeps equal to this).
pub fn libfuzzer_dict() -> String {
    let mut out =
        String::from("# Generated from fuzz_targets::DICTIONARY (crates/fuzz-targets); a test keeps it equal.\n");
    for word in DICTIONARY {
        out.push('"');
        for b in word.bytes() {
            match b {
                b'"' | b'\\' => out.push_str(&format!("\\{}", b as char)),
                0x20..=0x7e => out.push(b as char),
                _ => out.push_str(&format!("\\x{b:02X}")),
            }
        }
        out.push_str("\"\n");
    }
    out
}

thread_local! {
    /// What `tracing` wrote on this thread since the last [`run`].
    static LOG: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A writer into [`LOG`]: the fmt layer writes on the thread that logs, so each fuzzing thread sees its
/// own lines only.
struct ThreadLog;

impl io::Write for ThreadLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        LOG.with(|l| {
            let mut l = l.borrow_mut();
            // Bounded: a target that logs without end fails on its marker check, not on memory.
            if l.len() < 1 << 20 {
                l.extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once per process; a no-op if another is installed first, which
/// the check in [`run`] then reports as an empty capture it cannot vouch for).
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| ThreadLog)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the fuzz harness owns the global subscriber");
    });
}

/// Runs one target on one input and applies the marker rule to what it logged.
pub fn run(target: Body, input: &[u8]) {
    init();
    LOG.with(|l| l.borrow_mut().clear());
    target(input);
    let log = LOG.with(|l| std::mem::take(&mut *l.borrow_mut()));
    no_marker("a log line", &String::from_utf8_lossy(&log));
}

/// Whether the harness sees log lines at all (so an empty capture proves something): logs one line
/// and reads it back.
pub fn capture_works() -> bool {
    init();
    LOG.with(|l| l.borrow_mut().clear());
    tracing::trace!(probe = PLANT, "fuzz harness capture probe");
    let log = LOG.with(|l| std::mem::take(&mut *l.borrow_mut()));
    String::from_utf8_lossy(&log).contains("capture probe")
}

/// The marker's forms the rule looks for: raw, hex, and base64 (standard and URL-safe) at each of the
/// three alignments.
fn forms() -> &'static [String] {
    use base64::Engine;
    use std::sync::OnceLock;
    static FORMS: OnceLock<Vec<String>> = OnceLock::new();
    FORMS.get_or_init(|| {
        let mut forms = vec![MARKER.to_string(), MARKER.bytes().map(|b| format!("{b:02x}")).collect()];
        for skip in 0..3 {
            // The base64 of a string that contains the marker contains one of these, whatever precedes it.
            for engine in [&base64::engine::general_purpose::STANDARD, &base64::engine::general_purpose::URL_SAFE] {
                let enc = engine.encode(format!("{}{MARKER}", "a".repeat(skip)));
                let start = (skip * 4).div_ceil(3) + 1;
                forms.push(enc[start..enc.len() - 4].to_string());
            }
        }
        forms
    })
}

/// The marker rule: `text` holds no planted secret, raw, base64 (at every alignment) or hex.
pub fn no_marker(what: &str, text: &str) {
    for form in forms() {
        assert!(!text.contains(form.as_str()), "{what} carries a planted secret ({form}): {text}");
    }
}

/// `input` as text, with every [`PLANT`] replaced by the marker: for a secret-bearing field.
pub fn planted(input: &[u8]) -> String {
    String::from_utf8_lossy(&planted_bytes(input)).into_owned()
}

/// `input` as bytes, with every [`PLANT`] replaced by the marker (non-UTF-8 bytes kept).
pub fn planted_bytes(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.windows(PLANT.len()).position(|w| w == PLANT.as_bytes()) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(MARKER.as_bytes());
        rest = &rest[at + PLANT.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// `input` as text, unplanted: for fields a tenant (or the provider) owns and may see quoted. Any form of
/// the marker already in it is scrubbed: a coverage-guided fuzzer learns the marker from the checks'
/// comparisons and writes it into every field, and only a secret-bearing field may carry it.
pub fn text(input: &[u8]) -> String {
    scrub(&String::from_utf8_lossy(input))
}

/// `s` without any form of the marker (see [`text`]). Each form is matched without its first and last
/// character: a `Debug` escape next to it (`\0` before, `\n` after) supplies one character, which would
/// complete a form the raw text only nearly held (libFuzzer found `\0` + the rest of a base64 form).
pub fn scrub(s: &str) -> String {
    let mut s = s.to_string();
    for form in forms() {
        let core = &form[1..form.len() - 1];
        if s.contains(core) {
            s = s.replace(core, "scrubbed");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_sees_the_marker_raw_encoded_and_in_logs() {
        use base64::Engine;
        for prefix in ["", "x", "xy", "xyz"] {
            let leaked = format!("{prefix}{MARKER}tail");
            for text in [
                leaked.clone(),
                base64::engine::general_purpose::STANDARD.encode(&leaked),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&leaked),
                leaked.bytes().map(|b| format!("{b:02x}")).collect(),
            ] {
                assert!(std::panic::catch_unwind(|| no_marker("t", &text)).is_err(), "missed in {text}");
            }
        }
        no_marker("t", "CANARY secret VALUE, a near miss");
        assert!(capture_works(), "the harness does not see log lines");
        let leak = |_: &[u8]| tracing::warn!(value = planted(b"TOKEN"), "oops");
        assert!(std::panic::catch_unwind(|| run(leak, b"")).is_err(), "a logged marker passed");
        assert_eq!(
            planted_bytes(b"\xffTOKEN\x00TOKEN"),
            [b"\xff".as_slice(), MARKER.as_bytes(), b"\0", MARKER.as_bytes()].concat()
        );
    }

    #[test]
    fn the_libfuzzer_dictionary_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/dict");
        let want = libfuzzer_dict();
        if std::env::var_os("UPDATE_FUZZ_DICT").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == want, "fuzz/dict is stale: UPDATE_FUZZ_DICT=1 cargo test -p fuzz-targets");
    }

    /// Every target's checked-in corpus runs clean (the mutation fuzzer in tests/fuzz.rs goes further).
    #[test]
    fn every_target_has_a_corpus_that_runs_clean() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz");
        for (name, body) in TARGETS {
            let dir = root.join(name);
            let entries: Vec<_> =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).collect();
            assert!(!entries.is_empty(), "{name}: empty corpus");
            for e in entries {
                run(*body, &std::fs::read(e.unwrap().path()).unwrap());
            }
        }
    }
}
