# Sourced by hack/e2e.sh and hack/bench.sh: find or start a cluster, and stop what was started.
#   KUBECONFIG set -> that cluster; nothing is started or stopped.
#   else KUBE_BIN_DIR (default ../shared/k8s when it exists) -> the single-node kit: started with its up.sh,
#        stopped with `WIPE=1 down.sh` by cluster_stop unless KEEP_CLUSTER is set.
# Sets KUBECONFIG and PATH (kubectl) and started_kit (the kit directory, or empty).
started_kit=""

cluster_start() {  # $1: the caller's name, for messages
  local who=$1
  if [ -z "${KUBECONFIG:-}" ]; then
    KUBE_BIN_DIR=${KUBE_BIN_DIR:-}
    if [ -z "$KUBE_BIN_DIR" ] && [ -d "$ROOT/../shared/k8s" ]; then KUBE_BIN_DIR=$ROOT/../shared/k8s; fi
    if [ -z "$KUBE_BIN_DIR" ]; then
      echo "$who: no cluster: set KUBECONFIG, or KUBE_BIN_DIR to the k8s kit (../shared/k8s)" >&2
      exit 2
    fi
    [ "$(id -u)" = 0 ] || { echo "$who: the kit runs kubelet and containerd and needs root" >&2; exit 2; }
    log "starting the k8s kit from $KUBE_BIN_DIR"
    KUBECONFIG=$("$KUBE_BIN_DIR/up.sh" | tail -n 1)
    K8S_KIT_HOME=${K8S_KIT_HOME:-/var/tmp/k8s-kit}
    export PATH=$K8S_KIT_HOME/bin:$PATH
    started_kit=$KUBE_BIN_DIR
  fi
  export KUBECONFIG
  command -v kubectl >/dev/null || { echo "$who: kubectl not found on PATH" >&2; exit 2; }
}

cluster_stop() {  # $1: where down.sh logs go
  if [ -n "$started_kit" ] && [ -z "${KEEP_CLUSTER:-}" ]; then
    log "stopping the k8s kit"
    WIPE=1 "$started_kit/down.sh" >"$1" 2>&1 || { log "down.sh failed:"; tail -n 20 "$1"; }
  fi
}
