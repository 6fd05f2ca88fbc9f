#!/usr/bin/env bash
# `make e2e`: the chart installed on a real Kubernetes cluster, driven by real pods under the real kubelet.
#
# Cluster:
#   KUBECONFIG set             -> that cluster (kind, AKS, anything); nothing is started or stopped.
#   else KUBE_BIN_DIR (default ../shared/k8s when it exists) -> the single-node kit: started with its up.sh,
#                                 stopped with its down.sh afterwards (E2E_KEEP_CLUSTER=1 keeps it).
# Images: the static release binaries (hack/release.sh, amd64) are packed into OCI archives without a
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

# The binaries (static musl; the same build `make release` makes) and their images.
if [ -z "${E2E_IMAGE_REPOSITORY:-}" ]; then
  log "building static release binaries (amd64)"
  RELEASE_ARCHES=amd64 RELEASE_EMULATOR=1 hack/release.sh >"$OUT/release.log" 2>&1 \
    || { tail -n 40 "$OUT/release.log"; exit 1; }
  export E2E_IMAGE_REPOSITORY=ghcr.io/keyvault-csi/keyvault-csi E2E_IMAGE_TAG=$TAG
  export E2E_EMULATOR_IMAGE=ghcr.io/keyvault-csi/kv-emulator:$TAG
  ca_bundle=/etc/ssl/certs/ca-certificates.crt
  extra=(); [ -f "$ca_bundle" ] && extra=("$ca_bundle:/etc/ssl/certs/ca-certificates.crt")
  python3 hack/oci-image.py --out "$OUT/keyvault-csi.oci.tar" --name "$E2E_IMAGE_REPOSITORY:$TAG" \
    --entrypoint /usr/local/bin/keyvault-csi \
    target/release-static/keyvault-csi-linux-amd64:/usr/local/bin/keyvault-csi "${extra[@]}"
  python3 hack/oci-image.py --out "$OUT/kv-emulator.oci.tar" --name "$E2E_EMULATOR_IMAGE" \
    --entrypoint /usr/local/bin/kv-emulator target/release-static/kv-emulator-linux-amd64:/usr/local/bin/kv-emulator
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
      files+=("$bin:$bin")
      for lib in $(ldd "$bin" | awk '/=> \//{print $3} /^\t\/lib/{print $1}'); do
        files+=("$(readlink -f "$lib"):$lib")
      done
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
