#![no_main]
//! libFuzzer on the `volume_context` body of crates/fuzz-targets (`make fuzz`).

libfuzzer_sys::fuzz_target!(|input: &[u8]| fuzz_targets::run(fuzz_targets::target("volume_context"), input));
