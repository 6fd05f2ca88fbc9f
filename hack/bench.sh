#!/usr/bin/env bash
# `make bench`: performance figures, printed.
#   1. the provider's mount latency against the emulator (20 ms per Key Vault request), in process;
#   2. rotation at node scale: the real binary with 1,000 tmpfs volumes;
#   3. side by side with the upstream driver (v1.6) and its mock provider on a real kube-apiserver
#      (KUBECONFIG, or the kit: see hack/cluster.sh), then tables and an SVG (hack/bench-report.py).
#   4. SecretSync: 1,000 SecretSyncs over 10 objects and 5 identities, the real sync-controller on the
#      same API server (crates/keyvault-csi/benches/secretsync.rs).
#   5. cluster: N = 10, 25, 50 driver processes (own node names, sockets, kubelet directories, metrics
#      ports) on the same API server, change events off and on (crates/keyvault-csi/benches/cluster.rs),
#      then docs/scale-report.html (hack/scale-report.py), checked in headless Chromium.
#   6. soak: `make soak` (200 volumes for 10 minutes under constant secret changes, SOAK_VOLUMES and
#      SOAK_SECS), which fails the bench on a torn read, a file left behind the vault, or a growing RSS
#      or descriptor count; its report is kept in target/bench/soak.txt.
# BENCH_ONLY=soak runs only part 6, BENCH_ONLY=sidebyside runs only part 3, BENCH_ONLY=secretsync only part 4, BENCH_ONLY=cluster only part 5 (CLUSTER_NODES=10,25 narrows it). BENCH_REPEATS, BENCH_VOLUMES tune it; BENCH_README=1 rewrites
# docs/performance.md's comparison from the run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CARGO=${CARGO:-cargo}
OUT=$ROOT/target/bench
mkdir -p "$OUT"
log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = soak ]; then
  log "soak: ${SOAK_VOLUMES:-200} volumes for ${SOAK_SECS:-600} s"
  make --no-print-directory soak CARGO="$CARGO" 2>&1 | tee "$OUT/soak.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "bench: the soak failed (target/bench/soak.txt)" >&2; exit 1; }
  [ "${BENCH_ONLY:-}" = soak ] && exit 0
fi

if [ -z "${BENCH_ONLY:-}" ]; then
  $CARGO bench --locked -p keyvault --bench mount
  $CARGO bench --locked -p keyvault --bench hostile
  $CARGO bench --locked -p keyvault-csi --bench rotation --no-run
  hack/in-mount-ns.sh $CARGO bench --locked -p keyvault-csi --bench rotation
fi

. hack/cluster.sh
KEEP_CLUSTER=${BENCH_KEEP_CLUSTER:-}
cluster_start bench
trap 'cluster_stop "$OUT/down.log"' EXIT

if [ "${BENCH_ONLY:-}" != cluster ]; then
command -v xz >/dev/null || { apt-get update -qq && apt-get install -y -qq xz-utils; }
UPSTREAM_DIR=${UPSTREAM_DIR:-$ROOT/../shared/upstream}
for f in secrets-store-csi-driver e2e-provider; do
  [ -f "$UPSTREAM_DIR/$f.xz" ] || { echo "bench: $UPSTREAM_DIR/$f.xz not found: set UPSTREAM_DIR to the upstream binaries" >&2; exit 2; }
  if [ ! -x "$OUT/upstream/$f" ] || [ "$UPSTREAM_DIR/$f.xz" -nt "$OUT/upstream/$f" ]; then
    mkdir -p "$OUT/upstream"
    xz -dc "$UPSTREAM_DIR/$f.xz" >"$OUT/upstream/$f.tmp" && chmod +x "$OUT/upstream/$f.tmp" && mv "$OUT/upstream/$f.tmp" "$OUT/upstream/$f"
  fi
done
export UPSTREAM_DRIVER=$OUT/upstream/secrets-store-csi-driver UPSTREAM_PROVIDER=$OUT/upstream/e2e-provider


# Our column runs the binary the image ships (static musl); elsewhere than amd64, the bench's own build.
if [ "$(uname -m)" = x86_64 ] && [ -z "${KEYVAULT_CSI_BIN:-}" ]; then
  log "building the static release binary (hack/release.sh, amd64)"
  RELEASE_ARCHES=amd64 hack/release.sh >"$OUT/release.log" 2>&1 || { tail -n 40 "$OUT/release.log"; exit 1; }
  export KEYVAULT_CSI_BIN=$ROOT/target/release-static/keyvault-csi-linux-amd64
fi
fi
if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = sidebyside ]; then
  $CARGO bench --locked -p keyvault-csi --bench sidebyside --no-run
  log "side by side: upstream v1.6 + mock provider, keyvault-csi + the same provider, keyvault-csi + Azure (emulated)"
  hack/in-mount-ns.sh $CARGO bench --locked -p keyvault-csi --bench sidebyside
  args=(--svg docs/bench.svg)
  [ -n "${BENCH_README:-}" ] && args+=(--readme docs/performance.md)
  python3 hack/bench-report.py "$OUT/sidebyside.json" "${args[@]}"
fi
if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = secretsync ]; then
  $CARGO bench --locked -p keyvault-csi --bench secretsync --no-run
  log "SecretSync: 1,000 SecretSyncs, 10 objects, 5 identities, the real sync-controller"
  $CARGO bench --locked -p keyvault-csi --bench secretsync
fi
if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = cluster ]; then
  $CARGO bench --locked -p keyvault-csi --bench cluster --no-run
  log "cluster: 10, 25 and 50 nodes on one API server, change events off and on"
  hack/in-mount-ns.sh $CARGO bench --locked -p keyvault-csi --bench cluster
  # The scale report: one HTML page, checked in a real headless browser against the run's JSON.
  command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq chromium-headless-shell; }
  python3 hack/scale-report.py "$OUT/cluster.json" --html docs/scale-report.html --check --screenshot "$OUT/scale-report.png"
fi
