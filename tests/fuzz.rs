//! Fuzzing of everything a namespace user (or a vault, a token service, or the provider process) can
//! hand the driver, on stable Rust, inside `make test`: a mutation fuzzer over the checked-in corpora
//! in `tests/fuzz/<target>/` with a bounded budget per target (`FUZZ_SECS`, default 3; `FUZZ_SEED` to
//! replay a run). The bodies, and the marker rule they assert (a planted secret never reaches an error,
//! a gRPC status, an event, a metric label or a log line), are in `crates/fuzz-targets`; `make fuzz`
//! drives the same bodies with libFuzzer, coverage-guided.
//!
//! A failing input is saved under `target/fuzz-failures/` and printed; fix the bug, then check the
//! input into the target's corpus so it stays a regression test.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuzz_targets::DICTIONARY;

/// A small deterministic RNG (xorshift64*), so a seed replays a run exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn mutate(input: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng) {
    for _ in 0..=rng.below(6) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = [0u8, 0xff, 0x7f, 0x80, b'0', b'9', b' ', b'\n'][rng.below(8)];
            }
            2 => {
                let i = rng.below(len + 1);
                let bytes: Vec<u8> = (0..rng.below(16) + 1).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(64)) + 1;
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below((len - i).min(256)) + 1;
                let copy = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, copy);
            }
            5 | 6 => {
                let i = rng.below(len + 1);
                let word = DICTIONARY[rng.below(DICTIONARY.len())].as_bytes().to_vec();
                input.splice(i..i, word);
            }
            7 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let (i, j) = (rng.below(len + 1), rng.below(other.len() + 1));
                input.truncate(i);
                input.extend_from_slice(&other[j..]);
            }
            _ if len > 4096 => input.truncate(4096),
            _ => {}
        }
    }
    input.truncate(64 * 1024);
}

/// Runs `target` on every corpus entry, then on mutations of them until the budget is spent.
fn fuzz(name: &str) {
    let target = fuzz_targets::target(name);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz").join(name);
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!corpus.is_empty(), "corpus {} is empty", dir.display());
    corpus.sort();
    let secs: f64 = std::env::var("FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let seed: u64 = std::env::var("FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_cafe);
    let mut rng =
        Rng(seed ^ name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)));
    let run = |input: &[u8]| {
        if let Err(p) = std::panic::catch_unwind(AssertUnwindSafe(|| fuzz_targets::run(target, input))) {
            let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
            std::fs::create_dir_all(&out).unwrap();
            let file =
                out.join(format!("{name}-{:016x}", input.iter().fold(0u64, |h, b| h.rotate_left(5) ^ *b as u64)));
            std::fs::write(&file, input).unwrap();
            let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            panic!("fuzz target {name} failed on {} (seed {seed}): {}", file.display(), why.unwrap_or_default());
        }
    };
    for entry in &corpus {
        run(entry);
    }
    let started = Instant::now();
    let mut execs = 0u64;
    // Checked after every execution: one input may be slow (a PFX asking for a million PBKDF2 rounds).
    while started.elapsed() < Duration::from_secs_f64(secs) {
        let mut input = corpus[rng.below(corpus.len())].clone();
        mutate(&mut input, &corpus, &mut rng);
        run(&input);
        execs += 1;
    }
    corpus.dedup();
    let took = started.elapsed().as_secs_f64();
    println!("fuzz {name}: {execs} executions in {took:.1} s, corpus {}, seed {seed}, 0 failures", corpus.len());
}

/// One test per target, so they run in parallel and fail by name.
macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                fuzz(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_fuzzed() {
            let here = [$(stringify!($name)),*];
            for (name, _) in fuzz_targets::TARGETS {
                assert!(here.contains(name), "fuzz target {name} has no test here");
            }
        }
    };
}

targets!(
    class_parameters,
    durations,
    volume_context,
    pfx,
    responses,
    events,
    secretsync,
    secret_objects,
    grpc_frames,
    provider_wire,
    json_keys,
);
