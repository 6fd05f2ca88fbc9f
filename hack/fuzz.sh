#!/usr/bin/env bash
# `make fuzz`: every target of crates/fuzz-targets under libFuzzer, coverage-guided, on stable Rust.
#
# cargo-fuzz needs nightly only for its sanitizers; with none (`-s none`) what it passes rustc is
# sanitizer coverage (stable `-C passes` / `-C llvm-args`) and `--cfg fuzzing`. This script passes the
# same flags itself, so no extra tool is installed. `--target` keeps the instrumentation off build
# scripts and proc macros.
#
#   FUZZ_RUNS     executions per target (default 10^7)
#   FUZZ_TARGETS  space-separated subset (default: all)
#   FUZZ_JOBS     targets run at once (default 1)
#
# Corpora grow in fuzz/corpus/<target>/ (kept between runs; seeded from tests/fuzz/<target>/, the
# checked-in regression corpora `make test` replays). A crash is written to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
RUNS=${FUZZ_RUNS:-10000000}
JOBS=${FUZZ_JOBS:-1}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
TARGETS=${FUZZ_TARGETS:-$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^keyvault-csi-fuzz$')}
export CARGO_TARGET_DIR=$PWD/target/fuzz
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares -Cforce-frame-pointers"
echo "fuzz: building $(echo $TARGETS | wc -w) targets (instrumented, $TRIPLE)"
$CARGO build --locked --release --manifest-path fuzz/Cargo.toml --target "$TRIPLE" --bins

run() {
  local t=$1 bin=$CARGO_TARGET_DIR/$TRIPLE/release/$1 log=target/fuzz/$1.log
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  local started=$SECONDS status=0
  "$bin" -runs="$RUNS" -dict=fuzz/dict -print_final_stats=1 -rss_limit_mb=2048 -timeout=20 -max_len=65536 \
    -artifact_prefix="fuzz/artifacts/$t/" "fuzz/corpus/$t" "tests/fuzz/$t" >"$log" 2>&1 || status=$?
  local execs rate corpus
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    echo "fuzz $t: FAILED after ${execs:-?} executions (exit $status); the end of $log:"
    tail -40 "$log"
    return 1
  fi
  printf 'fuzz %s: %s executions in %d s (%s/s), corpus %s, 0 failures\n' "$t" "$execs" $((SECONDS - started)) "$rate" "$corpus"
}

failed=0
if [ "$JOBS" -le 1 ]; then
  for t in $TARGETS; do run "$t" || failed=1; done
else
  export -f run; export RUNS TRIPLE
  printf '%s\n' $TARGETS | xargs -P "$JOBS" -I{} bash -c 'run {}' || failed=1
fi
exit $failed
