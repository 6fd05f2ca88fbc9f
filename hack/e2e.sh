#!/usr/bin/env bash
# `make e2e`: the chart installed on a real Kubernetes cluster, driven by real pods under the real kubelet.
#
# Cluster:
#   KUBECONFIG set             -> that cluster (kind, AKS, anything); nothing is started or stopped.
#   else KUBE_BIN_DIR (default ../shared/k8s when it exists) -> the single-node kit: started with its up.sh,
#                                 stopped with its down.sh afterwards (E2E_KEEP_CLUSTER=1 keeps it).
# Images: the static release binaries (hack/release.sh, amd64), or with E2E_BUILD=test the test build's
#   binaries with their shared libraries (what CI does, right after `make test`), are packed into OCI archives without a
#   Docker daemon (hack/oci-image.py) and imported into the node's containerd with `ctr` (the kit, or any
#   node this machine is). On another cluster, push them yourself and set E2E_IMAGE_REPOSITORY /
#   E2E_EMULATOR_IMAGE (the archives are in target/e2e/).
# Scenarios: tests/e2e/e2e.py (PASS/FAIL per scenario, a summary, dumps on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/e2e
mkdir -p "$OUT"
VENV=${VENV:-.venv-tools}
TAG=e2e-$(date -u +%Y%m%d%H%M%S)

log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

. hack/cluster.sh
KEEP_CLUSTER=${E2E_KEEP_CLUSTER:-}
cluster_start e2e
if [ -n "$started_kit" ]; then export E2E_KIT=1; fi

finish() {
  local rc=$?
  cluster_stop "$OUT/down.log"
  exit $rc
}
trap finish EXIT

# `src:dst` pairs for the shared libraries (and the loader) a dynamically linked binary needs, for an
# image that has no distribution under it.
libs_of() {
  local lib
  for lib in $(ldd "$1" | awk '/=> \//{print $3} /^\t\/lib/{print $1}'); do
    echo "$(readlink -f "$lib"):$lib"
  done
}

# The binaries and their images. E2E_BUILD=release (default): the static musl binaries `make release`
# builds, as shipped. E2E_BUILD=test: the binaries `make test` has just built (target/debug, the same
# code), stripped and packed with their shared libraries, so CI compiles the workspace once for tests and
# cluster (the static build is `make release`'s; CI does not repeat it).
if [ -z "${E2E_IMAGE_REPOSITORY:-}" ]; then
  ca_bundle=/etc/ssl/certs/ca-certificates.crt
  extra=(); [ -f "$ca_bundle" ] && extra=("$ca_bundle:/etc/ssl/certs/ca-certificates.crt")
  case ${E2E_BUILD:-release} in
    release)
      log "building static release binaries (amd64)"
      RELEASE_ARCHES=amd64 RELEASE_EMULATOR=1 hack/release.sh >"$OUT/release.log" 2>&1 \
        || { tail -n 40 "$OUT/release.log"; exit 1; }
      driver_files=("target/release-static/keyvault-csi-linux-amd64:/usr/local/bin/keyvault-csi")
      emulator_files=("target/release-static/kv-emulator-linux-amd64:/usr/local/bin/kv-emulator")
      ;;
    test)
      log "packing the test build's binaries (target/debug)"
      # The test command's own build (a no-op right after `make test`; the same features, so nothing
      # is rebuilt): it leaves the binaries in target/debug.
      cargo test --workspace --locked --no-run >"$OUT/build.log" 2>&1 \
        || { tail -n 40 "$OUT/build.log"; exit 1; }
      mkdir -p "$OUT/bin"
      for b in keyvault-csi kv-emulator; do strip -o "$OUT/bin/$b" "target/debug/$b"; done
      driver_files=("$OUT/bin/keyvault-csi:/usr/local/bin/keyvault-csi" $(libs_of "$OUT/bin/keyvault-csi"))
      emulator_files=("$OUT/bin/kv-emulator:/usr/local/bin/kv-emulator" $(libs_of "$OUT/bin/kv-emulator"))
      ;;
    *) echo "e2e: E2E_BUILD is release or test" >&2; exit 2 ;;
  esac
  export E2E_IMAGE_REPOSITORY=ghcr.io/keyvault-csi/keyvault-csi E2E_IMAGE_TAG=$TAG
  export E2E_EMULATOR_IMAGE=ghcr.io/keyvault-csi/kv-emulator:$TAG
  python3 hack/oci-image.py --out "$OUT/keyvault-csi.oci.tar" --name "$E2E_IMAGE_REPOSITORY:$TAG" \
    --entrypoint /usr/local/bin/keyvault-csi "${driver_files[@]}" "${extra[@]}"
  python3 hack/oci-image.py --out "$OUT/kv-emulator.oci.tar" --name "$E2E_EMULATOR_IMAGE" \
    --entrypoint /usr/local/bin/kv-emulator "${emulator_files[@]}"
  sock=${CONTAINERD_ADDRESS:-}
  if [ -z "$sock" ]; then
    for s in "${K8S_KIT_HOME:-/var/tmp/k8s-kit}/run/containerd/containerd.sock" /run/containerd/containerd.sock; do
      [ -S "$s" ] && { sock=$s; break; }
    done
  fi
  [ -n "$sock" ] || { echo "e2e: no containerd socket on this machine to import the images into; push target/e2e/*.oci.tar and set E2E_IMAGE_REPOSITORY, E2E_IMAGE_TAG and E2E_EMULATOR_IMAGE" >&2; exit 2; }
  images=(keyvault-csi kv-emulator)
  # The upstream driver (migration scenario), when the machine has its binary: packed with the host's
  # mount and umount (its mount library runs them) and their libraries, as its own image ships them.
  upstream=${E2E_UPSTREAM_DRIVER_XZ:-$ROOT/../shared/upstream/secrets-store-csi-driver.xz}
  if [ -f "$upstream" ]; then
    xz -dc "$upstream" >"$OUT/secrets-store-csi-driver" && chmod +x "$OUT/secrets-store-csi-driver"
    files=("$OUT/secrets-store-csi-driver:/secrets-store-csi-driver")
    for bin in /usr/bin/mount /usr/bin/umount; do
      files+=("$bin:$bin" $(libs_of "$bin"))
    done
    export E2E_UPSTREAM_IMAGE=ghcr.io/keyvault-csi/upstream-secrets-store-csi-driver:$TAG
    python3 hack/oci-image.py --out "$OUT/upstream-driver.oci.tar" --name "$E2E_UPSTREAM_IMAGE" \
      --entrypoint /secrets-store-csi-driver $(printf '%s\n' "${files[@]}" | sort -u) "${extra[@]}"
    images+=(upstream-driver)
  fi
  for img in "${images[@]}"; do
    ctr --address "$sock" -n k8s.io images import "$OUT/$img.oci.tar" >/dev/null
  done
  log "images imported into containerd ($sock)"
  export E2E_PULL_POLICY=Never
fi

make -s "$VENV/.installed"
"$VENV/bin/python" -u tests/e2e/e2e.py
