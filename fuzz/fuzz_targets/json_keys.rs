#![no_main]
//! libFuzzer on the `json_keys` body of crates/fuzz-targets (`make fuzz`).

libfuzzer_sys::fuzz_target!(|input: &[u8]| fuzz_targets::run(fuzz_targets::target("json_keys"), input));
