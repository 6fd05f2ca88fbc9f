"""`make e2e`: the chart installed with Helm v4 on a real cluster, kv-emulator in the cluster as the
vault and Entra ID, and real pods under the real kubelet. One line per scenario (PASS/FAIL with its
seconds), a summary, and on failure the driver's logs, events and `describe` of the pods involved.

Run through hack/e2e.sh, which provides the cluster and the images. Environment:
  E2E_IMAGE_REPOSITORY, E2E_IMAGE_TAG   the driver's image
  E2E_EMULATOR_IMAGE                    kv-emulator's image
  E2E_PULL_POLICY                       Never (imported into the node) or IfNotPresent
  E2E_KIT=1                             the single-node kit: host networking, API server on 127.0.0.1:6443
  E2E_ONLY=name,name                    run only these scenarios (setup and teardown always run)
  E2E_KEEP=1                            leave the release, the emulator and the pods (debugging)
"""

import base64
import datetime
import hashlib
import json
import os
import pathlib
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from kube import (  # noqa: E402
    Failure, NotYet, apply, create, delete, dump, env_flag, events, exec_, exists, get, kubectl, pod_ready, pod_state,
    raw, wait_for,
)

import helm_python  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "keyvault-csi"
KIT = env_flag("E2E_KIT")
RELEASE, DRIVER_NS = "kvcsi", "kube-system"
DS = "kvcsi-keyvault-csi"
EMU_NS, NS, NS2 = "kv-emulator", "e2e", "e2e-other"
ATTACKER = "e2e-attacker"  # the hostile tenant
SLOW_VAULT = "e2eslow"  # a second vault, made to hang
STORM_VAULT = "e2estorm"  # a third, throttled alone: no other scenario's rotation lands in its counts
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
VAULT = "e2ekv"
HTTPS_PORT, HTTP_PORT, PROXY_PORT = 18443, 18080, 18444
# Identity binding: the emulated AKS cluster id the token proxy serves (the binding's SNI name is
# derived from it, as AKS derives it).
CLUSTER_ID = "e2ekit"
POLL = 15  # rotationPollInterval, seconds
SYNC_SA = f"{RELEASE}-keyvault-csi-sync-controller"
EVENTS_ACCOUNT, EVENTS_QUEUE = "e2eevents", "kv-events"
BUSYBOX = "registry.k8s.io/e2e-test-images/busybox:1.29-4"
PULL = os.environ.get("E2E_PULL_POLICY", "IfNotPresent")
TMP = pathlib.Path(tempfile.mkdtemp(prefix="kvcsi-e2e-"))
FIGURES = {}


# ----------------------------------------------------------------------------------------------------
# Test CA and the emulator


def make_ca():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyvault-csi e2e test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return pem, key_pem


def binding_sni_name(cluster_id):
    """The TLS server name of AKS's identity-binding token proxy for a cluster (the provider computes
    it from the API server's certificate, whose hcp-kubernetes SAN the kit's certificate lacks)."""
    digest = hashlib.sha256(f"identity-binding{cluster_id}".encode()).digest()
    return "a" + base64.b32hexencode(digest).decode().rstrip("=").lower() + ".ests.aks"


def seed(issuer, jwks):
    """The vault, the identities and the cluster's own service-account issuer (its JWKS, as Entra ID
    fetches it for a federated credential); an identity binding of a managed identity to one
    service account, as AKS's token proxy holds it."""
    return {
        "managedIdentities": [{"tenant": TENANT, "clientId": "bound-uami", "objectId": "bound-object"}],
        "identityBindings": [{"clusterId": CLUSTER_ID, "issuer": issuer, "tenant": TENANT, "clientId": "bound-uami",
                              "serviceAccounts": [f"system:serviceaccount:{NS}:workload"]}],
        "tenants": [{
            "id": TENANT,
            "applications": [
                {"clientId": "sp-client", "objectId": "sp-object", "clientSecret": "sp-secret-value"},
                {"clientId": "wi-client", "objectId": "wi-object", "federatedCredentials": [
                    {"issuer": issuer, "subject": f"system:serviceaccount:{NS}:workload",
                     "audience": "api://AzureADTokenExchange"}]},
                # The change-event consumer: the controller's own service account, federated.
                {"clientId": "events-client", "objectId": "events-object", "federatedCredentials": [
                    {"issuer": issuer, "subject": f"system:serviceaccount:{DRIVER_NS}:{SYNC_SA}",
                     "audience": "api://AzureADTokenExchange"}]},
            ],
        }],
        "issuers": [{"url": issuer, "jwks": jwks}],
        # Event Grid's system topic on the vault, delivering to a Storage queue.
        "storageAccounts": [{"name": EVENTS_ACCOUNT, "tenant": TENANT, "queues": [
            {"name": EVENTS_QUEUE, "subscriptions": [{"vault": VAULT}], "processors": ["events-object"]}]}],
        "vaults": [{
            "name": VAULT,
            "tenant": TENANT,
            "access": [
                {"principal": p, "secrets": ["get", "list"], "keys": ["get"], "certificates": ["get"]}
                for p in ("sp-object", "wi-object", "bound-object")
            ],
            "secrets": [
                {"name": "db-password", "value": "Pa55w0rd-e2e"},
                {"name": "api-key", "value": "ak_live_e2e_123"},
                {"name": "rotating", "value": "v1-value"},
                {"name": "other-ns-secret", "value": "only-in-e2e-other"},
            ],
            "keys": [{"name": "my-key", "kty": "RSA", "size": 2048}],
            "certificates": [{"name": "my-cert", "subject": "CN=e2e.example.com"},
                             {"name": "short-lived", "subject": "CN=short.example.com", "validDays": 10}],
        }, {
            "name": STORM_VAULT,
            "tenant": TENANT,
            "access": [{"principal": "wi-object", "secrets": ["get", "list"]}],
            "secrets": [],
        }, {
            "name": SLOW_VAULT,
            "tenant": TENANT,
            "access": [{"principal": "sp-object", "secrets": ["get", "list"]}],
            "secrets": [{"name": "slow-secret", "value": "slow-value"},
                        {"name": "db-password", "value": "Pa55w0rd-replica"}],
        }],
    }


class Emulator:
    """kv-emulator as a Deployment in the cluster; the test reaches its control endpoint directly (host
    network on the kit) or through `kubectl port-forward`."""

    def __init__(self):
        self.ca_pem, self.ca_key = make_ca()
        (TMP / "ca.pem").write_text(self.ca_pem)
        self.forward = None
        self.base = None
        self.address = None  # what the driver resolves Azure names to

    def start(self):
        disco = json.loads(raw("/.well-known/openid-configuration"))
        jwks = raw("/openid/v1/jwks")
        kubectl("create", "namespace", EMU_NS)
        apply(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-emulator-ca", "namespace": EMU_NS},
             "stringData": {"ca.pem": self.ca_pem, "ca.key": self.ca_key}},
            # The seed holds the test identities' client secrets: a Secret, not a ConfigMap.
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kv-emulator-seed", "namespace": EMU_NS},
             "stringData": {"seed.yaml": json.dumps(seed(disco["issuer"], jwks))}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kv-emulator-ca", "namespace": DRIVER_NS},
             "data": {"ca.pem": self.ca_pem}},
        )
        bind = "0.0.0.0"
        labels = {"app": "kv-emulator"}
        apply(
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kv-emulator", "namespace": EMU_NS},
             "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
                 "metadata": {"labels": labels},
                 "spec": {
                     "hostNetwork": KIT,
                     "containers": [{
                         "name": "kv-emulator", "image": os.environ["E2E_EMULATOR_IMAGE"], "imagePullPolicy": PULL,
                         "args": ["--seed=/seed/seed.yaml", f"--https-addr={bind}:{HTTPS_PORT}",
                                  f"--http-addr={bind}:{HTTP_PORT}", f"--token-proxy-addr={bind}:{PROXY_PORT}",
                                  "--ca-file=/tmp/ca.pem",
                                  "--ca-cert=/tls/ca.pem", "--ca-key=/tls/ca.key"],
                         "volumeMounts": [{"name": "seed", "mountPath": "/seed"}, {"name": "tls", "mountPath": "/tls"},
                                          {"name": "tmp", "mountPath": "/tmp"}],
                         "readinessProbe": {"tcpSocket": {"port": HTTPS_PORT}, "periodSeconds": 1},
                     }],
                     "volumes": [{"name": "seed", "secret": {"secretName": "kv-emulator-seed"}},
                                 {"name": "tls", "secret": {"secretName": "kv-emulator-ca"}},
                                 {"name": "tmp", "emptyDir": {}}],
                 }}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kv-emulator", "namespace": EMU_NS},
             "spec": {"selector": labels, "ports": [{"name": "https", "port": HTTPS_PORT},
                                                     {"name": "http", "port": HTTP_PORT},
                                                     {"name": "token-proxy", "port": PROXY_PORT}]}},
        )
        kubectl("rollout", "status", "deploy/kv-emulator", "-n", EMU_NS, "--timeout=120s", timeout=150)
        if KIT:
            self.address, port = "127.0.0.1", HTTPS_PORT
        else:
            self.address = get("service", "kv-emulator", EMU_NS)["spec"]["clusterIP"]
            port = 28443
            self.forward = subprocess.Popen(
                ["kubectl", "port-forward", "-n", EMU_NS, "svc/kv-emulator", f"{port}:{HTTPS_PORT}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"https://localhost:{port}/_emulator"
        wait_for("kv-emulator's control endpoint", lambda: self.call("GET", "/stats") is not None, 30)

    def call(self, method, path, body=None):
        ctx = ssl.create_default_context(cafile=str(TMP / "ca.pem"))
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return json.loads(r.read() or b"{}")
        except OSError as e:
            raise Failure(f"kv-emulator {method} {path}: {e}")

    def set_secret(self, name, value):
        return self.call("PUT", f"/vaults/{VAULT}/secrets/{name}", {"value": value})

    def stop(self):
        if self.forward:
            self.forward.send_signal(signal.SIGTERM)


# ----------------------------------------------------------------------------------------------------
# The chart


def chart_values(emu, **extra):
    repo = os.environ["E2E_IMAGE_REPOSITORY"]
    tag = os.environ.get("E2E_IMAGE_TAG", "")
    port = HTTPS_PORT
    values = {
        # The AKS add-on's settings.
        "enableSecretRotation": True,
        "rotationPollInterval": f"{POLL}s",
        "syncSecret": {"enabled": True},
        "linux": {
            "image": {"repository": repo, "tag": tag, "pullPolicy": PULL},
            "registrar": {"image": {"pullPolicy": "IfNotPresent"}},
            "livenessProbeImage": {"pullPolicy": "IfNotPresent"},
            "hostNetwork": KIT,
            # The emulator stands in for Azure: trusted through its CA and reached by address; nothing
            # here is a test code path, only the driver's documented network flags.
            "extraArgs": [
                "--azure-extra-ca-file=/etc/kv-emulator/ca.pem",
                f"--azure-resolve-to={emu.address}",
                f"--azure-vault-port={port}",
                f"--azure-authority-host=https://login.microsoftonline.com:{port}",
            ],
            "volumes": [{"name": "emulator-ca", "configMap": {"name": "kv-emulator-ca"}}],
            "volumeMounts": [{"name": "emulator-ca", "mountPath": "/etc/kv-emulator", "readOnly": True}],
            "env": [],
        },
        # Identity binding: the emulated token proxy, trusted through the emulator's CA (on AKS: the
        # defaults, i.e. the API server and the service-account CA).
        "provider": {
            "tokenProxyURL": f"https://kubernetes.default.svc.cluster.local:{PROXY_PORT}",
            "sniName": binding_sni_name(CLUSTER_ID),
            "tokenProxyCAFile": "/etc/kv-emulator/ca.pem",
        },
    }
    # The Azure provider runs in its own container (provider.isolation=process): the emulator's
    # network flags are its flags.
    values["provider"]["extraArgs"] = values["linux"].pop("extraArgs")
    values["linux"]["extraArgs"] = []
    # The SecretSync controller, with the same emulator flags and a short round.
    values["syncController"] = {
        "enabled": True, "rotationPollInterval": f"{POLL}s", "jitter": "2s", "hostNetwork": KIT,
        "extraArgs": values["provider"]["extraArgs"], "volumes": values["linux"]["volumes"],
        "volumeMounts": values["linux"]["volumeMounts"], "env": [],
    }
    if KIT:
        values["linux"]["env"] = [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                                  {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}]
        values["syncController"]["env"] = values["linux"]["env"]
    for k, v in extra.items():
        values[k] = v
    return values


def helm():
    return helm_python.Config(namespace=DRIVER_NS)


def driver_pods(terminating=False):
    """The release's driver pods; with `terminating`, also those on their way out (whose process
    still runs and holds its sockets and ports)."""
    pods = get("pods", ns=DRIVER_NS)["items"]
    return [p for p in pods if p["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == RELEASE
            and p["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "keyvault-csi"
            and (terminating or p["metadata"].get("deletionTimestamp") is None)]


def release_pods_gone():
    """Every pod of the release (driver, sync controller) gone, terminating ones included."""
    left = [f"{p['metadata']['name']} ({pod_state(p)}{', terminating' if p['metadata'].get('deletionTimestamp') else ''})"
            for p in get("pods", ns=DRIVER_NS)["items"]
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == RELEASE]
    return NotYet("still there: " + ", ".join(left)) if left else True


def driver_pod():
    pods = driver_pods()
    if len(pods) != 1:
        raise Failure(f"expected one driver pod, found {len(pods)}")
    return pods[0]["metadata"]["name"]


def driver_ready():
    """The DaemonSet is Ready: its pod Ready (readiness = /readyz), the registrar registered in CSINode,
    the liveness probe answering through the kubelet's health checks."""
    ds = get("daemonset", DS, DRIVER_NS, check=False)
    if not ds:
        return NotYet(f"no DaemonSet {DRIVER_NS}/{DS}")
    st = ds.get("status", {})
    if st.get("observedGeneration") != ds["metadata"]["generation"]:
        return NotYet(f"DaemonSet generation {ds['metadata']['generation']} not observed yet")
    if not (st.get("desiredNumberScheduled", 0) > 0 and st.get("numberReady") == st.get("desiredNumberScheduled")
            and st.get("updatedNumberScheduled") == st.get("desiredNumberScheduled")):
        pods = "; ".join(pod_state(p) for p in driver_pods(terminating=True))
        return NotYet(f"desired {st.get('desiredNumberScheduled', 0)}, ready {st.get('numberReady', 0)}, "
                      f"updated {st.get('updatedNumberScheduled', 0)} (pods: {pods or 'none'})")
    for node in get("nodes")["items"]:
        csinode = get("csinode", node["metadata"]["name"], check=False) or {}
        drivers = [d["name"] for d in (csinode.get("spec", {}).get("drivers") or [])]
        if "secrets-store.csi.k8s.io" not in drivers:
            return NotYet(f"secrets-store.csi.k8s.io not registered in CSINode {node['metadata']['name']}")
    return True


def pod_proxy(pod, port, path):
    return raw(f"/api/v1/namespaces/{DRIVER_NS}/pods/{pod}:{port}/proxy{path}")


def metrics(pod=None, port=8095):
    text = pod_proxy(pod or driver_pod(), port, "/metrics")
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, _, value = line.rpartition(" ")
        out[name_labels] = float(value)
    return out


def metric_sum(m, name):
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


# ----------------------------------------------------------------------------------------------------
# Objects


def spc(name, ns, objects, *, client_id=None, secret_objects=None):
    params = {
        "keyvaultName": VAULT,
        "tenantId": TENANT,
        "objects": "array:\n" + "".join(
            "  - |\n" + "".join(f"    {k}: {v}\n" for k, v in o.items()) for o in objects),
    }
    if client_id:
        params["clientID"] = client_id
    spec = {"provider": "azure", "parameters": params}
    if secret_objects:
        spec["secretObjects"] = secret_objects
    return {"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def sp_creds(ns):
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "secrets-store-creds", "namespace": ns,
                         "labels": {"secrets-store.csi.k8s.io/used": "true"}},
            "stringData": {"clientid": "sp-client", "clientsecret": "sp-secret-value"}}


def csi_volume(name, cls, creds=True):
    v = {"name": name, "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                               "volumeAttributes": {"secretProviderClass": cls}}}
    if creds:
        v["csi"]["nodePublishSecretRef"] = {"name": "secrets-store-creds"}
    return v


def pod_spec(volumes, command=None, sa=None, env=None):
    spec = {
        "hostNetwork": KIT,
        "terminationGracePeriodSeconds": 2,
        "containers": [{
            "name": "app", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", command or "sleep 100000"],
            "volumeMounts": [{"name": v["name"], "mountPath": f"/mnt/{v['name']}", "readOnly": True} for v in volumes],
        }],
        "volumes": volumes,
    }
    if sa:
        spec["serviceAccountName"] = sa
    if env:
        spec["containers"][0]["env"] = env
    return spec


def pod(name, ns, volumes, **kw):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"e2e": name}},
            "spec": pod_spec(volumes, **kw)}


def deployment(name, ns, replicas, volumes, **kw):
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": pod_spec(volumes, **kw)}}}


def labels(obj):
    return obj["metadata"].get("labels") or {}


def read(podname, ns, path):
    return exec_(podname, ns, "cat", path)


def wait_pod(name, ns, timeout=90):
    wait_for(f"pod {ns}/{name} Ready", lambda: pod_ready(name, ns), timeout)


def pod_status(name, cond=None, ns=NS, timeout=30):
    """The SecretProviderClassPodStatus `name` once it exists (and satisfies `cond`): the node's background
    writer records it moments after kubelet's mount returned."""
    def seen():
        st = get("secretproviderclasspodstatus", name, ns, check=False)
        return st if st and (cond is None or cond(st)) else None
    return wait_for(f"pod status {ns}/{name}" + (" as expected" if cond else ""), seen, timeout)


def failed_mount(pod_name, ns, contains, timeout=60):
    def seen():
        for e in events(ns, pod_name, "FailedMount"):
            if contains in e.get("message", ""):
                return e["message"]
        return None
    return wait_for(f"FailedMount event on {ns}/{pod_name} containing {contains!r}", seen, timeout)


class Inspector:
    """A privileged busybox pod that sees the node: its mount table under kubelet's pods directory (host
    path with HostToContainer propagation) and its processes (host PID namespace)."""

    name = "node-inspector"

    def start(self):
        apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": self.name, "namespace": NS},
               "spec": {"hostNetwork": KIT, "hostPID": True, "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "sh", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent",
                                        "command": ["sleep", "100000"], "securityContext": {"privileged": True},
                                        "volumeMounts": [{"name": "pods", "mountPath": "/host-pods",
                                                          "mountPropagation": "HostToContainer"}]}],
                        "volumes": [{"name": "pods", "hostPath": {"path": "/var/lib/kubelet/pods"}}]}})
        wait_pod(self.name, NS)

    def tmpfs_mounts(self, pod_uid):
        out = exec_(self.name, NS, "cat", "/proc/self/mountinfo")
        return [line for line in out.splitlines() if pod_uid in line and "kubernetes.io~csi" in line
                and " tmpfs " in line]

    def driver_process(self, provider=False):
        """RSS (MiB) and CPU seconds of the driver's process on the node (with `provider`: of the Azure
        provider's process, the same binary in the provider-azure container)."""
        wanted = "--endpoint=unix:///run/keyvault-csi/provider/azure.sock" if provider else "--endpoint=unix:///csi/csi.sock"
        pid = next((p for p in exec_(self.name, NS, "pidof", "keyvault-csi").split()
                    if wanted in exec_(self.name, NS, "cat", f"/proc/{p}/cmdline", check=False)), None)
        if pid is None:
            raise Failure(f"no {'provider' if provider else 'driver'} process of keyvault-csi on the node")
        status = exec_(self.name, NS, "cat", f"/proc/{pid}/status")
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
        stat = exec_(self.name, NS, "cat", f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
        cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return rss, cpu


# ----------------------------------------------------------------------------------------------------
# Scenarios (in order: later ones build on what earlier ones leave)


def s_classic(ctx):
    """The tutorial exactly as users write it: class azure-kv-secrets, a busybox pod printing both."""
    apply(spc("azure-kv-secrets", NS, [{"objectName": "db-password", "objectType": "secret"},
                                       {"objectName": "api-key", "objectType": "secret"}]))
    apply(pod("busybox-secrets-store", NS, [csi_volume("secrets-store-inline", "azure-kv-secrets")],
              command="cat /mnt/secrets-store-inline/db-password; echo; cat /mnt/secrets-store-inline/api-key; echo; "
                      "sleep 100000"))
    wait_pod("busybox-secrets-store", NS)
    logs = wait_for("the pod's log", lambda: kubectl("logs", "busybox-secrets-store", "-n", NS).strip(), 20)
    if logs.split() != ["Pa55w0rd-e2e", "ak_live_e2e_123"]:
        raise Failure(f"kubectl logs printed {logs!r}")
    got = read("busybox-secrets-store", NS, "/mnt/secrets-store-inline/db-password")
    if got != "Pa55w0rd-e2e":
        raise Failure(f"kubectl exec cat db-password: {got!r}")
    # The pod status, as upstream records it, in the pod's namespace.
    uid = get("pod", "busybox-secrets-store", NS)["metadata"]["uid"]
    st = pod_status(f"busybox-secrets-store-{NS}-azure-kv-secrets")
    s = st["status"]
    node = get("pod", "busybox-secrets-store", NS)["spec"]["nodeName"]
    expect = {"podName": "busybox-secrets-store", "secretProviderClassName": "azure-kv-secrets", "mounted": True}
    if any(s.get(k) != v for k, v in expect.items()) or uid not in s.get("targetPath", ""):
        raise Failure(f"pod status {s}")
    if st["metadata"]["labels"].get("internal.secrets-store.csi.k8s.io/node-name") != node:
        raise Failure(f"pod status labels {st['metadata']['labels']}")
    # Object ids as the Azure provider reports them: <objectType>/<objectName>, with their versions.
    names = sorted(o["id"] for o in s.get("objects", []) if o.get("version"))
    if names != ["secret/api-key", "secret/db-password"]:
        raise Failure(f"pod status objects {s.get('objects')}")
    owners = st["metadata"].get("ownerReferences", [])
    if [(o["kind"], o["uid"]) for o in owners] != [("Pod", uid)]:
        raise Failure(f"pod status owners {owners}")


def s_workload_identity(ctx):
    """Kubelet mints service-account tokens for api://AzureADTokenExchange (the CSIDriver's
    tokenRequests); the emulated Entra ID checks them against the cluster's own JWKS."""
    for sa in ("workload", "stranger"):
        apply({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": sa, "namespace": NS, "annotations": {"azure.workload.identity/client-id": "wi-client"}}})
    apply(spc("wi-class", NS, [{"objectName": "api-key", "objectType": "secret"}], client_id="wi-client"))
    apply(pod("wi-pod", NS, [csi_volume("kv", "wi-class", creds=False)], sa="workload"))
    wait_pod("wi-pod", NS)
    if read("wi-pod", NS, "/mnt/kv/api-key") != "ak_live_e2e_123":
        raise Failure("wi-pod: wrong api-key")
    apply(pod("wi-stranger", NS, [csi_volume("kv", "wi-class", creds=False)], sa="stranger"))
    msg = failed_mount("wi-stranger", NS, "AADSTS")
    if f"system:serviceaccount:{NS}:stranger" not in msg:
        raise Failure(f"the AADSTS message does not name the subject: {msg}")
    if "eyJ" in msg:
        raise Failure("a token appears in the event")
    delete("pod", "wi-stranger", NS, wait=False, grace=0)


def s_identity_binding(ctx):
    """useAzureTokenProxy: kubelet mints api://AKSIdentityBinding tokens (the chart's tokenRequests),
    the driver sends the token request to the token proxy with the binding's SNI name, the proxy
    checks the token against the cluster's JWKS and the binding's service accounts."""
    for sa in ("workload", "stranger"):
        apply({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": sa, "namespace": NS, "annotations": {"azure.workload.identity/client-id": "wi-client"}}})
    cls = spc("bound-class", NS, [{"objectName": "api-key", "objectType": "secret"}], client_id="bound-uami")
    cls["spec"]["parameters"]["useAzureTokenProxy"] = "true"
    apply(cls)
    ctx["emu"].call("DELETE", "/stats")
    apply(pod("bound-pod", NS, [csi_volume("kv", "bound-class", creds=False)], sa="workload"))
    wait_pod("bound-pod", NS)
    if read("bound-pod", NS, "/mnt/kv/api-key") != "ak_live_e2e_123":
        raise Failure("bound-pod: wrong api-key")
    exchanged = [r for r in ctx["emu"].call("GET", "/stats")["requests"]
                 if r["kind"] == "binding-token" and r["status"] == 200]
    if not exchanged:
        raise Failure("the token did not come through the token proxy")
    apply(pod("bound-stranger", NS, [csi_volume("kv", "bound-class", creds=False)], sa="stranger"))
    msg = failed_mount("bound-stranger", NS, "not allowed to use managed identity")
    if f"system:serviceaccount:{NS}:stranger" not in msg or "eyJ" in msg:
        raise Failure(f"the refusal does not name the subject, or carries a token: {msg}")
    delete("pod", "bound-stranger", NS, wait=False, grace=0)


def s_keys_certs_alias(ctx):
    """Service principal through nodePublishSecretRef; a key, a certificate and an objectAlias."""
    apply(spc("kinds", NS, [
        {"objectName": "db-password", "objectType": "secret", "objectAlias": "db/password", "filePermission": "0440"},
        {"objectName": "my-key", "objectType": "key"},
        {"objectName": "my-cert", "objectType": "cert"},
        {"objectName": "my-cert", "objectType": "secret", "objectAlias": "my-cert-bundle.pem"},
    ]))
    apply(pod("kinds", NS, [csi_volume("kv", "kinds")]))
    wait_pod("kinds", NS)
    if read("kinds", NS, "/mnt/kv/db/password") != "Pa55w0rd-e2e":
        raise Failure("alias db/password")
    key = read("kinds", NS, "/mnt/kv/my-key")
    if not key.startswith("-----BEGIN PUBLIC KEY-----"):
        raise Failure(f"my-key: {key[:40]!r}")
    cert = read("kinds", NS, "/mnt/kv/my-cert")
    if not cert.startswith("-----BEGIN CERTIFICATE-----"):
        raise Failure(f"my-cert: {cert[:40]!r}")
    bundle = read("kinds", NS, "/mnt/kv/my-cert-bundle.pem")
    if "PRIVATE KEY-----" not in bundle or "BEGIN CERTIFICATE" not in bundle:
        raise Failure("my-cert-bundle.pem lacks the key or the certificate")
    mode = exec_("kinds", NS, "stat", "-L", "-c", "%a", "/mnt/kv/db/password").strip()
    if mode != "440":
        raise Failure(f"filePermission 0440 -> {mode}")


def s_json_keys(ctx):
    """Ours (Azure provider #885): a JSON secret as one file per listed member, each with its alias
    and mode, one of them synced into a Kubernetes Secret. Rotation: a change to a member no one lists
    rewrites nothing (same generation), a change to a listed one rewrites its file and the Secret. A
    missing member fails the mount naming it, never the value."""
    emu = ctx["emu"]
    doc = lambda pw, other: json.dumps({"username": "app", "db": {"password": pw}, "other": other})
    emu.set_secret("json-db", doc("jp1", "o1"))
    keys = "[{key: username}, {key: db.password, objectAlias: db-pass, filePermission: '0400'}]"
    apply(spc("json-keys", NS, [{"objectName": "json-db", "objectType": "secret", "objectFormat": "json",
                                 "jsonKeys": keys}],
              secret_objects=[{"secretName": "e2e-json", "type": "Opaque",
                               "data": [{"objectName": "db-pass", "key": "password"}]}]))
    apply(pod("json-keys", NS, [csi_volume("kv", "json-keys")]))
    wait_pod("json-keys", NS)
    files = sorted(exec_("json-keys", NS, "ls", "/mnt/kv").split())
    if files != ["db-pass", "username"]:
        raise Failure(f"files {files}: one per listed member, nothing else")
    if read("json-keys", NS, "/mnt/kv/username") != "app" or read("json-keys", NS, "/mnt/kv/db-pass") != "jp1":
        raise Failure("member values")
    mode = exec_("json-keys", NS, "stat", "-L", "-c", "%a", "/mnt/kv/db-pass").strip()
    if mode != "400":
        raise Failure(f"the key's filePermission 0400 -> {mode}")
    secret = lambda: base64.b64decode((get("secret", "e2e-json", NS, check=False) or {}).get("data", {}).get("password", "")).decode()
    wait_for("the synced Secret has the member", lambda: secret() == "jp1", 30)
    uid = get("pod", "json-keys", NS)["metadata"]["uid"]
    link = pathlib.Path(f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/kv/mount/..data")
    generation = os.readlink(link) if KIT else None
    status = f"json-keys-{NS}-json-keys"
    version = lambda st: next(o["version"] for o in st["status"]["objects"] if o["id"] == "secret/json-db")
    before = version(pod_status(status))
    emu.set_secret("json-db", doc("jp1", "o2"))
    pod_status(status, lambda st: version(st) != before, timeout=POLL + 30)
    if KIT and os.readlink(link) != generation:
        raise Failure("a change to an unlisted member rewrote the volume")
    emu.set_secret("json-db", doc("jp2", "o2"))
    wait_for("the member's file rotated", lambda: read("json-keys", NS, "/mnt/kv/db-pass") == "jp2", POLL + 30)
    wait_for("the synced Secret rotated", lambda: secret() == "jp2", POLL + 30)
    if read("json-keys", NS, "/mnt/kv/username") != "app":
        raise Failure("the unchanged member's file changed")
    apply(spc("json-missing", NS, [{"objectName": "json-db", "objectType": "secret", "objectFormat": "json",
                                    "jsonKeys": "[{key: db.token}]"}]))
    apply(pod("json-missing", NS, [csi_volume("kv", "json-missing")]))
    event = failed_mount("json-missing", NS, "no member")
    if "db.token" not in event or "json-db" not in event:
        raise Failure(f"the FailedMount event names neither the object nor the key: {event}")
    if "jp2" in event:
        raise Failure("the event quotes the value")
    delete("pod", "json-missing", NS, wait=False)
    delete("pod", "json-keys", NS, wait=False)


def s_selector(ctx):
    """Ours (Azure provider #1405, #477, #357): a class with no objects list, only an objectSelector;
    the vault's matching secrets are its files, each round: a new matching secret appears, a disabled
    one disappears, an untagged one never shows, and the pod status lists what is mounted."""
    emu = ctx["emu"]
    put = lambda name, value, **kw: emu.call("PUT", f"/vaults/{VAULT}/secrets/{name}", {"value": value, **kw})
    put("sel-a", "a1", tags={"app": "web"})
    put("sel-b", "b1", tags={"app": "web"})
    put("sel-untagged", "u1")
    cls = spc("selector", NS, [])
    del cls["spec"]["parameters"]["objects"]
    cls["spec"]["parameters"]["objectSelector"] = "namePrefix: sel-\ntags: [app=web]\nfilePermission: \"0440\""
    apply(cls)
    apply(pod("selector", NS, [csi_volume("kv", "selector")]))
    wait_pod("selector", NS)
    files = lambda: sorted(exec_("selector", NS, "ls", "/mnt/kv").split())
    if files() != ["sel-a", "sel-b"] or read("selector", NS, "/mnt/kv/sel-b") != "b1":
        raise Failure(f"selected files {files()}")
    status = f"selector-{NS}-selector"
    ids = lambda st: sorted(o["id"] for o in st["status"].get("objects", []))
    pod_status(status, lambda st: ids(st) == ["secret/sel-a", "secret/sel-b"])
    put("sel-c", "c1", tags={"app": "web"})
    put("sel-a", "a1", tags={"app": "web"}, enabled=False)
    wait_for("the next round: sel-c in, the disabled sel-a out",
             lambda: files() == ["sel-b", "sel-c"] or NotYet(files()), POLL + 30)
    pod_status(status, lambda st: ids(st) == ["secret/sel-b", "secret/sel-c"], timeout=30)
    delete("pod", "selector", NS, wait=False)


def s_last_known_good(ctx):
    """Ours (Azure provider #1240, driver #1229), opt-in per class with maxStaleness: while the vault is
    down, a new pod on the node mounts what another pod fetched with the same identity, and its pod
    status, an event and a metric say it is stale; a class without it fails the mount as before; the
    next successful round clears the mark."""
    if not KIT:
        print("SKIP last-known-good: it reads the provider's metrics on the node")
        return
    emu = ctx["emu"]
    emu.set_secret("lkg-secret", "lkg-v1")
    params_stale = {"maxStaleness": "1h"}
    cls = spc("lkg", NS, [{"objectName": "lkg-secret", "objectType": "secret"}])
    cls["spec"]["parameters"].update(params_stale)
    apply(cls, spc("lkg-off", NS, [{"objectName": "lkg-secret", "objectType": "secret"}]))
    apply(pod("lkg-a", NS, [csi_volume("kv", "lkg")]))
    wait_pod("lkg-a", NS)
    before = local_metric("keyvault_stale_objects_total", port=8096)
    emu.call("PUT", f"/faults/{VAULT}", {"outage": True})
    try:
        # Past the node's dedup window (at most 5 s): lkg-a's fetch is no longer shared as fresh.
        time.sleep(6)
        apply(pod("lkg-b", NS, [csi_volume("kv", "lkg")]), pod("lkg-off", NS, [csi_volume("kv", "lkg-off")]))
        wait_pod("lkg-b", NS)
        if read("lkg-b", NS, "/mnt/kv/lkg-secret") != "lkg-v1":
            raise Failure("the stale value")
        st = pod_status(f"lkg-b-{NS}-lkg", lambda s: "keyvault-csi.io/stale-objects" in (s["metadata"].get("annotations") or {}))
        marked = json.loads(st["metadata"]["annotations"]["keyvault-csi.io/stale-objects"])
        if list(marked) != ["secret/lkg-secret"] or marked["secret/lkg-secret"]["vault"] != VAULT:
            raise Failure(f"stale-objects annotation {marked}")
        wait_for("Warning StaleObjectServed on lkg-b", lambda: [
            e for e in events(NS, "lkg-b", "StaleObjectServed") if "secret/lkg-secret" in e["message"]
            and e["type"] == "Warning" and "lkg-v1" not in e["message"]], 30)
        if local_metric("keyvault_stale_objects_total", port=8096) <= before:
            raise Failure("keyvault_stale_objects_total did not count it")
        failed_mount("lkg-off", NS, "503")
        if pod_ready("lkg-off", NS):
            raise Failure("a class without maxStaleness mounted during the outage")
    finally:
        emu.call("DELETE", f"/faults/{VAULT}")
    pod_status(f"lkg-b-{NS}-lkg", lambda s: "keyvault-csi.io/stale-objects" not in (s["metadata"].get("annotations") or {}),
               timeout=POLL + 40)
    wait_pod("lkg-off", NS, timeout=120)
    for name in ("lkg-a", "lkg-b", "lkg-off"):
        delete("pod", name, NS, wait=False)


def s_optional(ctx):
    """Ours: an optional object missing from the vault lets the pod start without its file; the pod
    status lists it without a version and the pod gets a Warning event naming it."""
    apply(spc("optional", NS, [
        {"objectName": "db-password", "objectType": "secret"},
        {"objectName": "not-created-yet", "objectType": "secret", "optional": '"true"'},
    ]))
    apply(pod("optional", NS, [csi_volume("kv", "optional")]))
    wait_pod("optional", NS)
    if read("optional", NS, "/mnt/kv/db-password") != "Pa55w0rd-e2e":
        raise Failure("the present object is mounted")
    files = exec_("optional", NS, "ls", "/mnt/kv").split()
    if "not-created-yet" in files:
        raise Failure(f"a missing optional object has a file: {files}")
    st = pod_status(f"optional-{NS}-optional")
    listed = [o for o in st["status"].get("objects", []) if o["id"] == "secret/not-created-yet"]
    if not listed or listed[0].get("version"):
        raise Failure(f"pod status objects {st['status'].get('objects')}")
    wait_for("Warning OptionalObjectNotFound naming the object", lambda: [
        e for e in events(NS, "optional", "OptionalObjectNotFound")
        if "secret/not-created-yet" in e["message"] and e["type"] == "Warning"], 30)


def s_sync(ctx):
    """secretObjects synced and used from env by two Deployments; owners 2 -> 1 -> deleted by the real
    garbage collector; a same-named unmanaged Secret left untouched with a Warning event."""
    apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "e2e-unmanaged", "namespace": NS},
           "stringData": {"password": "mine"}})
    apply(spc("synced", NS, [{"objectName": "db-password", "objectType": "secret"},
                             {"objectName": "rotating", "objectType": "secret"}],
              secret_objects=[
                  {"secretName": "e2e-synced", "type": "Opaque", "labels": {"team": "e2e"},
                   "data": [{"objectName": "db-password", "key": "password"},
                            {"objectName": "rotating", "key": "rotating"}]},
                  {"secretName": "e2e-unmanaged", "type": "Opaque",
                   "data": [{"objectName": "db-password", "key": "password"}]},
              ]))
    env = [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "e2e-synced", "key": "password"}}}]
    for name in ("sync-a", "sync-b"):
        apply(deployment(name, NS, 1, [csi_volume("kv", "synced")], env=env))
    for name in ("sync-a", "sync-b"):
        kubectl("rollout", "status", f"deploy/{name}", "-n", NS, "--timeout=120s", timeout=150)
    sec = get("secret", "e2e-synced", NS)
    if base64.b64decode(sec["data"]["password"]).decode() != "Pa55w0rd-e2e":
        raise Failure("synced Secret has the wrong value")
    if sec["metadata"]["labels"].get("secrets-store.csi.k8s.io/managed") != "true" or \
            sec["metadata"]["labels"].get("team") != "e2e":
        raise Failure(f"synced Secret labels {sec['metadata']['labels']}")
    pods = get("pods", ns=NS)["items"]
    a = next(p["metadata"]["name"] for p in pods if labels(p).get("app") == "sync-a")
    if exec_(a, NS, "printenv", "DB_PASSWORD").strip() != "Pa55w0rd-e2e":
        raise Failure("env from the synced Secret")
    owners = wait_for("two owners on e2e-synced", lambda: (
        lambda o: o if len(o) == 2 else None)(get("secret", "e2e-synced", NS)["metadata"].get("ownerReferences", [])), 30)
    if {o["kind"] for o in owners} != {"ReplicaSet"}:
        raise Failure(f"owners {owners}")
    un = get("secret", "e2e-unmanaged", NS)
    if base64.b64decode(un["data"]["password"]).decode() != "mine" or un["metadata"].get("ownerReferences"):
        raise Failure("the unmanaged Secret was changed")
    wait_for("Warning FailedToCreateSecret naming e2e-unmanaged", lambda: [
        e for e in events(NS, a, "FailedToCreateSecret") if "e2e-unmanaged" in e["message"]
        and e["type"] == "Warning"], 30)
    ctx["sync_pod"] = a
    # Owners 2 -> 1 -> none: the real garbage collector does the rest.
    delete("deployment", "sync-a", NS)
    wait_for("one owner left on e2e-synced", lambda: len(
        get("secret", "e2e-synced", NS)["metadata"].get("ownerReferences", [])) == 1, 90)
    delete("deployment", "sync-b", NS)
    wait_for("e2e-synced deleted by the garbage collector", lambda: not exists("secret", "e2e-synced", NS), 90)
    ctx.pop("sync_pod")


def s_namespaces(ctx):
    """Namespaced classes (same name, two namespaces), a missing class, two classes in one pod."""
    kubectl("create", "namespace", NS2, check=False)
    apply(sp_creds(NS2))
    apply(spc("same-name", NS, [{"objectName": "db-password", "objectType": "secret"}]),
          spc("same-name", NS2, [{"objectName": "other-ns-secret", "objectType": "secret"}]))
    apply(pod("ns-a", NS, [csi_volume("kv", "same-name")]), pod("ns-b", NS2, [csi_volume("kv", "same-name")]))
    wait_pod("ns-a", NS)
    wait_pod("ns-b", NS2)
    if exec_("ns-a", NS, "ls", "/mnt/kv").split() != ["db-password"]:
        raise Failure("ns-a got the other namespace's class")
    if read("ns-b", NS2, "/mnt/kv/other-ns-secret") != "only-in-e2e-other":
        raise Failure("ns-b content")
    apply(pod("missing-class", NS, [csi_volume("kv", "no-such-class")]))
    msg = failed_mount("missing-class", NS, "failed to get secretproviderclass")
    want = (f"failed to get secretproviderclass {NS}/no-such-class, error: SecretProviderClass.secrets-store.csi.x-k8s.io"
            f" \"no-such-class\" not found")
    if want not in msg:
        raise Failure(f"FailedMount text {msg!r}, want it to contain {want!r}")
    delete("pod", "missing-class", NS, wait=False, grace=0)
    apply(pod("two-classes", NS, [csi_volume("one", "azure-kv-secrets"), csi_volume("two", "kinds")]))
    wait_pod("two-classes", NS)
    if read("two-classes", NS, "/mnt/one/api-key") != "ak_live_e2e_123" or \
            read("two-classes", NS, "/mnt/two/db/password") != "Pa55w0rd-e2e":
        raise Failure("two classes in one pod")
    for p, ns in (("ns-a", NS), ("ns-b", NS2)):
        delete("pod", p, ns, wait=False)


def s_takeover(ctx):
    """A pod status left by another node for the same pod (a StatefulSet pod that moved): taken over."""
    name = f"moved-{NS}-azure-kv-secrets"
    create({"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClassPodStatus",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"internal.secrets-store.csi.k8s.io/node-name": "old-node"}},
            "status": {"podName": "moved", "secretProviderClassName": "azure-kv-secrets", "mounted": True,
                       "targetPath": "/var/lib/kubelet/pods/old/volumes/x", "objects": []}})
    apply(pod("moved", NS, [csi_volume("kv", "azure-kv-secrets")]))
    wait_pod("moved", NS)
    uid = get("pod", "moved", NS)["metadata"]["uid"]
    st = pod_status(name, lambda s: uid in s["status"].get("targetPath", ""))
    node = get("pod", "moved", NS)["spec"]["nodeName"]
    if st["metadata"]["labels"].get("internal.secrets-store.csi.k8s.io/node-name") != node or \
            uid not in st["status"]["targetPath"]:
        raise Failure(f"not taken over: {st['metadata']['labels']} {st['status']['targetPath']}")
    delete("pod", "moved", NS, wait=False)


def s_rotation(ctx):
    """The secret changed in the vault: the file and the synced Secret follow within one interval, with
    MountRotationComplete and SecretRotationComplete events."""
    apply(deployment("rot", NS, 1, [csi_volume("kv", "synced")]))
    kubectl("rollout", "status", "deploy/rot", "-n", NS, "--timeout=120s", timeout=150)
    p = next(x["metadata"]["name"] for x in get("pods", ns=NS)["items"]
             if labels(x).get("app") == "rot" and not x["metadata"].get("deletionTimestamp"))
    ctx["rot_pod"] = p
    # Someone else's label and annotation on the synced Secret: the rotation's read-modify-write
    # (optimistic locking on resourceVersion) must keep them.
    wait_for("e2e-synced re-created", lambda: exists("secret", "e2e-synced", NS), 30)
    kubectl("label", "secret", "e2e-synced", "-n", NS, "owner-team=platform")
    kubectl("annotate", "secret", "e2e-synced", "-n", NS, "example.com/audit=kept")
    value = f"rotated-{int(time.time())}"
    emu = ctx["emu"]
    emu.set_secret("rotating", value)
    t0 = time.time()
    wait_for("the mounted file rotated", lambda: read(p, NS, "/mnt/kv/rotating") == value, POLL + 10)
    file_s = time.time() - t0
    wait_for("the synced Secret rotated", lambda: base64.b64decode(
        get("secret", "e2e-synced", NS)["data"]["rotating"]).decode() == value, POLL + 10)
    secret_s = time.time() - t0
    meta = get("secret", "e2e-synced", NS)["metadata"]
    if labels({"metadata": meta}).get("owner-team") != "platform" or \
            (meta.get("annotations") or {}).get("example.com/audit") != "kept":
        raise Failure(f"the rotation's update dropped foreign metadata: {meta.get('labels')} {meta.get('annotations')}")
    wait_for("MountRotationComplete event", lambda: events(NS, p, "MountRotationComplete"), 20)
    wait_for("SecretRotationComplete event", lambda: events(NS, p, "SecretRotationComplete"), 20)
    FIGURES["rotation"] = f"file after {file_s:.1f} s, synced Secret after {secret_s:.1f} s (interval {POLL} s)"


def apiserver_pid():
    """The kit's kube-apiserver (https://127.0.0.1:6443), a process on this machine."""
    for pid in subprocess.run(["pgrep", "-x", "kube-apiserver"], capture_output=True).stdout.decode().split():
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"--secure-port=6443" in cmdline:
            return int(pid)
    raise Failure("the kit's kube-apiserver process (--secure-port=6443) was not found")


def host_file(uid, volume, name):
    """A file of a pod's CSI volume as the node sees it (the kit's node is this machine)."""
    path = pathlib.Path(f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/{volume}/mount/{name}")
    try:
        return path.read_text()
    except OSError:
        return None


def local_metric(name, port=8095):
    """A metric of the driver on this node, read on its host-network port (no API server involved)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"))


def s_api_outage(ctx):
    """Publish off the API server: with kube-apiserver stopped (SIGSTOP: it accepts connections and never
    answers), kubelet's retry of a mount that failed on a Key Vault error (now fixed) succeeds from the
    driver's caches and kubelet's tokens, and three pods sharing a class rotate. The driver is not
    restarted. Once the API server answers again, every pod status is written at the served versions
    although no file changed since."""
    if not KIT:
        print("SKIP api-outage: it stops the kit's API server, which runs on this machine")
        return
    emu = ctx["emu"]
    emu.set_secret("outage-rotating", "before")
    apply(spc("outage-rot", NS, [{"objectName": "outage-rotating", "objectType": "secret"}], client_id="wi-client"),
          spc("outage-retry", NS, [{"objectName": "outage-late", "objectType": "secret"}], client_id="wi-client"))
    apply(deployment("outage-rot", NS, 3, [csi_volume("kv", "outage-rot", creds=False)], sa="workload"))
    kubectl("rollout", "status", "deploy/outage-rot", "-n", NS, "--timeout=120s", timeout=150)
    pods = {x["metadata"]["name"]: x["metadata"]["uid"] for x in get("pods", ns=NS)["items"]
            if labels(x).get("app") == "outage-rot" and not x["metadata"].get("deletionTimestamp")}
    if len(pods) != 3:
        raise Failure(f"outage-rot pods: {sorted(pods)}")

    def version(pod_name, cls):
        st = get("secretproviderclasspodstatus", f"{pod_name}-{NS}-{cls}", NS, check=False)
        objects = (st or {}).get("status", {}).get("objects") or []
        return objects[0].get("version") if objects else None

    before = {p: pod_status(f"{p}-{NS}-outage-rot", lambda st: st["status"].get("objects")) for p in pods}
    old = {p: st["status"]["objects"][0]["version"] for p, st in before.items()}
    apply(pod("outage-retry", NS, [csi_volume("kv", "outage-retry", creds=False)], sa="workload"))
    failed_mount("outage-retry", NS, "outage-late")
    retry_uid = get("pod", "outage-retry", NS)["metadata"]["uid"]
    driver_uid, driver_restarts = restarts(driver_pod(), DRIVER_NS)
    pid = apiserver_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        # The fix and the change land in the vault (reached directly: the emulator is on this host's
        # network) only once the API server is stopped: whatever follows happened without it.
        emu.set_secret("outage-late", "arrived")
        emu.set_secret("outage-rotating", "during-outage")
        t0 = time.time()
        wait_for("kubelet's retried mount served with the API server stopped",
                 lambda: host_file(retry_uid, "kv", "outage-late") == "arrived", 150)
        mount_s = time.time() - t0
        wait_for("the three pods' files rotated with the API server stopped",
                 lambda: all(host_file(uid, "kv", "outage-rotating") == "during-outage" for uid in pods.values()),
                 2 * POLL + 30)
        rotate_s = time.time() - t0
        owed = local_metric("api_writes_pending")
        if owed < 4:
            raise Failure(f"api_writes_pending {owed} while the API server is stopped: the statuses are not owed")
        # An outage long enough for the driver's API calls to time out and its watches to break.
        time.sleep(max(0.0, t0 + 45 - time.time()))
        failures = local_metric("api_write_failures_total")
        if failures < 4:
            raise Failure(f"api_write_failures_total {failures}: the owed writes were not tried during the outage")
    finally:
        os.kill(pid, signal.SIGCONT)
    t1 = time.time()
    # Nothing changes in the vault from here on: the statuses catch up on what was owed.
    wait_for("every outage-rot pod status at the rotated version",
             lambda: all(version(p, "outage-rot") not in (None, old[p]) for p in pods), 90)
    new = {version(p, "outage-rot") for p in pods}
    if len(new) != 1:
        raise Failure(f"the pod statuses disagree on the served version: {new}")
    wait_for("outage-retry's pod status", lambda: version("outage-retry", "outage-retry"), 90)
    caught_up_s = time.time() - t1
    wait_pod("outage-retry", NS, 120)
    if read("outage-retry", NS, "/mnt/kv/outage-late") != "arrived":
        raise Failure("outage-retry: wrong outage-late")
    if restarts(driver_pod(), DRIVER_NS) != (driver_uid, driver_restarts):
        raise Failure("the driver was restarted during the API server outage")
    FIGURES["api-outage"] = (f"API server stopped 45 s: retried mount served after {mount_s:.1f} s, 3 pods rotated "
                             f"after {rotate_s:.1f} s; statuses caught up {caught_up_s:.1f} s after it answered")
    delete("deployment", "outage-rot", NS, wait=False)
    delete("pod", "outage-retry", NS, wait=False)


PROVIDER_METRICS_PORT = 8096  # the chart's provider.metricsPort
PROVIDER_ENDPOINT = b"provider\0--endpoint=unix:///run/keyvault-csi/provider/azure.sock"


def provider_pid():
    """The chart's provider-azure process on this node (the kit's node is this machine)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if PROVIDER_ENDPOINT in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        except OSError:
            continue
    return None


def container_restarts(pod_name, ns, container):
    st = get("pod", pod_name, ns)["status"].get("containerStatuses", [])
    return next((c.get("restartCount", 0) for c in st if c["name"] == container), None)


def s_provider_isolation(ctx):
    """Privilege separation (issue 33): the Azure provider runs in its own container, seen from the node.
    Its process is not root, holds no capability (effective, permitted, bounding, ambient), cannot gain
    any (no_new_privs), runs under seccomp, and its filesystem view has no kubelet pods directory: a
    class's cloudEnvFileName aimed at another pod's mounted file finds nothing there even before the
    path check. Killed mid-rotation: the mounted file stays whole, kubelet restarts only that
    container, and rotation resumes."""
    if not KIT:
        print("SKIP provider-isolation: it reads the provider's process on this machine")
        return
    pid = wait_for("the provider-azure process", provider_pid, 30)
    status = dict(line.split(":", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    uids = status["Uid"].split()
    if "0" in uids:
        raise Failure(f"the provider runs with uid {uids}")
    caps = {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    if any(int(v, 16) for v in caps.values()):
        raise Failure(f"the provider holds capabilities: {caps}")
    if status["NoNewPrivs"].strip() != "1" or status["Seccomp"].strip() != "2":
        raise Failure(f"NoNewPrivs {status['NoNewPrivs'].strip()}, Seccomp {status['Seccomp'].strip()}")
    root = pathlib.Path(f"/proc/{pid}/root")
    if (root / "var/lib/kubelet/pods").exists() or (root / "var/lib/kubelet").exists():
        raise Failure("the provider's filesystem shows the kubelet's directory")
    if not (root / "run/keyvault-csi/provider/azure.sock").exists():
        raise Failure("the provider's socket is not in its view")
    if (root / "var/run/secrets/kubernetes.io/serviceaccount/token").exists():
        raise Failure("the provider holds the node's Kubernetes API token")

    emu = ctx["emu"]
    emu.set_secret("iso-rotating", "iso-v1")
    apply(spc("iso", NS, [{"objectName": "iso-rotating", "objectType": "secret"}]))
    apply(pod("iso-rot", NS, [csi_volume("kv", "iso")]))
    wait_pod("iso-rot", NS)
    uid = get("pod", "iso-rot", NS)["metadata"]["uid"]
    # A pod's mounted file (this scenario's own, at least) is not in the provider's view.
    victim = next(iter(pathlib.Path("/var/lib/kubelet/pods").glob("*/volumes/kubernetes.io~csi/*/mount/*")), None)
    if victim is None or (root / str(victim).lstrip("/")).exists():
        raise Failure(f"another pod's mounted file {victim} is visible to the provider (or none is mounted)")
    dpod = driver_pod()
    provider_restarts = container_restarts(dpod, DRIVER_NS, "provider-azure")
    driver_restarts = container_restarts(dpod, DRIVER_NS, "secrets-store")
    emu.set_secret("iso-rotating", "iso-v2")
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    seen = set()
    while time.time() - t0 < 3:
        seen.add(host_file(uid, "kv", "iso-rotating"))
        time.sleep(0.05)
    if not seen <= {"iso-v1", "iso-v2"}:
        raise Failure(f"a reader saw {seen - {'iso-v1', 'iso-v2'}} while the provider was down")
    wait_for("kubelet restarted the provider container",
             lambda: (container_restarts(dpod, DRIVER_NS, "provider-azure") or 0) > provider_restarts, 60)
    wait_for("the driver pod Ready again", driver_ready, 60)
    wait_for("rotation resumed after the provider came back",
             lambda: host_file(uid, "kv", "iso-rotating") == "iso-v2", 2 * POLL + 40)
    back_s = time.time() - t0
    if container_restarts(dpod, DRIVER_NS, "secrets-store") != driver_restarts:
        raise Failure("the privileged container was restarted with the provider")
    if read("iso-rot", NS, "/mnt/kv/iso-rotating") != "iso-v2":
        raise Failure("the pod does not read the rotated value")
    FIGURES["provider-isolation"] = (f"provider uid {uids[0]}, no capabilities, seccomp; killed mid-rotation: "
                                     f"file whole throughout, rotated {back_s:.1f} s after the kill")
    delete("pod", "iso-rot", NS, wait=False)


def s_refresh_now(ctx):
    """Ours: a class annotated with a 24 h rotation interval is not rotated on the node's 15 s interval;
    `kubectl annotate pod ... keyvault-csi.io/refresh-now=<ts>` refreshes its file and synced Secret
    within seconds, with a Normal RefreshedOnRequest event; annotating the class does the same."""
    emu = ctx["emu"]
    emu.set_secret("refreshable", "before")
    cls = spc("refreshable", NS, [{"objectName": "refreshable", "objectType": "secret"}],
              secret_objects=[{"secretName": "e2e-refreshed", "type": "Opaque",
                               "data": [{"objectName": "refreshable", "key": "value"}]}])
    cls["metadata"]["annotations"] = {"keyvault-csi.io/rotation-poll-interval": "24h"}
    apply(cls)
    apply(pod("refresh", NS, [csi_volume("kv", "refreshable")]))
    wait_pod("refresh", NS)
    if read("refresh", NS, "/mnt/kv/refreshable") != "before":
        raise Failure("first mount")
    emu.set_secret("refreshable", "after-pod")
    # Two of the node's intervals and then some: the class's own (24 h) holds the rotation back.
    time.sleep(2 * POLL + 5)
    if read("refresh", NS, "/mnt/kv/refreshable") != "before":
        raise Failure("the class's 24 h rotation interval was not honoured: rotated on the node's interval")

    def synced():
        return base64.b64decode(get("secret", "e2e-refreshed", NS)["data"]["value"]).decode()

    t0 = time.time()
    kubectl("annotate", "--overwrite", "pod", "refresh", "-n", NS, f"keyvault-csi.io/refresh-now={int(t0)}")
    wait_for("the file refreshed on the pod's request", lambda: read("refresh", NS, "/mnt/kv/refreshable") == "after-pod", 15)
    file_s = time.time() - t0
    wait_for("the synced Secret refreshed", lambda: synced() == "after-pod", 15)
    secret_s = time.time() - t0
    ev = wait_for("a Normal RefreshedOnRequest event", lambda: [
        e for e in events(NS, "refresh", "RefreshedOnRequest")
        if e["type"] == "Normal" and f'refresh-now="{int(t0)}" on the pod' in e["message"]], 20)
    if "after-pod" in ev[0]["message"]:
        raise Failure("a secret value in an event")
    emu.set_secret("refreshable", "after-class")
    t1 = time.time()
    kubectl("annotate", "--overwrite", "secretproviderclass", "refreshable", "-n", NS,
            f"keyvault-csi.io/refresh-now={int(t1)}")
    wait_for("the file refreshed on the class's request",
             lambda: read("refresh", NS, "/mnt/kv/refreshable") == "after-class", 15)
    class_s = time.time() - t1
    wait_for("the synced Secret refreshed again", lambda: synced() == "after-class", 15)
    wait_for("an event naming the class's request", lambda: [
        e for e in events(NS, "refresh", "RefreshedOnRequest")
        if "on the SecretProviderClass" in e["message"]], 20)
    delete("pod", "refresh", NS)
    FIGURES["refresh-now"] = (f"pod annotation to new file in {file_s:.1f} s, to synced Secret in {secret_s:.1f} s; "
                              f"class annotation to new file in {class_s:.1f} s")


def s_cert_expiry(ctx):
    """Ours: a mounted certificate 10 days from expiry (inside the default 30-day window) is a
    certificate_expiry_timestamp_seconds series with bounded labels and a Warning CertificateExpiring
    event on the pod naming the file; the long-lived certificate beside it is a series and no event."""
    apply(spc("certs", NS, [{"objectName": "short-lived", "objectType": "cert"},
                            {"objectName": "my-cert", "objectType": "cert", "objectAlias": "long-lived"}]))
    apply(pod("certs", NS, [csi_volume("kv", "certs")]))
    wait_pod("certs", NS)
    ev = wait_for("a Warning CertificateExpiring naming the file", lambda: [
        e for e in events(NS, "certs", "CertificateExpiring")
        if e["type"] == "Warning" and 'file "short-lived" expires at' in e["message"]], 30)
    if "BEGIN" in ev[0]["message"] or any('"long-lived"' in e["message"] for e in events(NS, "certs", "CertificateExpiring")):
        raise Failure(f"events {[e['message'] for e in events(NS, 'certs', 'CertificateExpiring')]}")
    m = metrics()
    short = m.get(f'certificate_expiry_timestamp_seconds{{namespace="{NS}",class="certs",object="short-lived"}}')
    long_ = m.get(f'certificate_expiry_timestamp_seconds{{namespace="{NS}",class="certs",object="long-lived"}}')
    now = time.time()
    if not short or not (now + 9 * 86400 < short < now + 11 * 86400):
        raise Failure(f"short-lived gauge {short}")
    if not long_ or long_ < now + 365 * 86400:
        raise Failure(f"long-lived gauge {long_}")
    delete("pod", "certs", NS)
    FIGURES["cert-expiry"] = f"warning event for a certificate expiring in {(short - now) / 86400:.1f} days"


def s_unmount(ctx, inspector):
    """Pod deleted: gone within 60 s, its tmpfs gone from the node's mount table, no error logged."""
    since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    apply(pod("unmount-me", NS, [csi_volume("kv", "azure-kv-secrets")]))
    wait_pod("unmount-me", NS)
    uid = get("pod", "unmount-me", NS)["metadata"]["uid"]
    if not inspector.tmpfs_mounts(uid):
        raise Failure("the pod's tmpfs is not in the node's mount table")
    t0 = time.time()
    delete("pod", "unmount-me", NS, wait=False)
    wait_for("pod gone", lambda: not exists("pod", "unmount-me", NS), 60)
    wait_for("tmpfs gone from the node", lambda: not inspector.tmpfs_mounts(uid), 10)
    if exists("secretproviderclasspodstatus", f"unmount-me-{NS}-azure-kv-secrets", NS):
        wait_for("pod status deleted", lambda: not exists(
            "secretproviderclasspodstatus", f"unmount-me-{NS}-azure-kv-secrets", NS), 30)
    FIGURES["unmount"] = f"pod deleted and its tmpfs gone in {time.time() - t0:.1f} s"
    logs = kubectl("logs", driver_pod(), "-n", DRIVER_NS, "-c", "secrets-store", f"--since-time={since}")
    bad = [line for line in logs.splitlines() if re.search(r"\bERROR\b", line)]
    if bad:
        raise Failure(f"errors in the driver's log: {bad[:3]}")


def s_driver_restart(ctx, inspector):
    """The driver pod deleted mid-rotation: the DaemonSet brings it back, mounted pods keep reading,
    rotation resumes, and a volume of a pod deleted meanwhile still unmounts."""
    p = ctx["rot_pod"]
    apply(pod("restart-victim", NS, [csi_volume("kv", "azure-kv-secrets")]))
    wait_pod("restart-victim", NS)
    victim_uid = get("pod", "restart-victim", NS)["metadata"]["uid"]
    value = f"during-restart-{int(time.time())}"
    ctx["emu"].set_secret("rotating", value)
    old = driver_pod()
    kubectl("delete", "pod", old, "-n", DRIVER_NS, "--wait=false")
    delete("pod", "restart-victim", NS, wait=False)
    # Files stay readable while the driver is away (the tmpfs is the kernel's, not ours).
    end = time.time() + 5
    while time.time() < end:
        if read(p, NS, "/mnt/kv/db-password") != "Pa55w0rd-e2e":
            raise Failure("a mounted file was unreadable while the driver restarted")
        time.sleep(0.5)
    wait_for("a new driver pod Ready", lambda: driver_ready() and driver_pod() != old, 120)
    wait_for("rotation resumed after the restart", lambda: read(p, NS, "/mnt/kv/rotating") == value, POLL * 2 + 15)
    wait_for("the deleted pod gone", lambda: not exists("pod", "restart-victim", NS), 90)
    wait_for("its tmpfs gone", lambda: not inspector.tmpfs_mounts(victim_uid), 15)


def s_metrics(ctx):
    """The driver's /metrics (through the API server's pod proxy) carries upstream's names. A pod is
    mounted and deleted first: the driver may have restarted (counters start at zero)."""
    apply(pod("metrics-probe", NS, [csi_volume("kv", "azure-kv-secrets")]))
    wait_pod("metrics-probe", NS)
    delete("pod", "metrics-probe", NS)
    m = metrics()
    for name in ("node_publish_total", "node_unpublish_total", "rotation_reconcile_total"):
        if metric_sum(m, name) <= 0:
            raise Failure(f"{name} missing or zero")
    ready = pod_proxy(driver_pod(), 8095, "/readyz")
    if "ok" not in ready.lower():
        raise Failure(f"/readyz answered {ready!r}")


def s_metrics_auth(ctx):
    """metrics.auth on the real API server: every /metrics of the release over HTTPS, served only to a
    token whose user the API server authenticates (TokenReview) and authorizes for the path
    (SubjectAccessReview, the chart's metrics-reader ClusterRole): no token or a forged one 401, a
    valid token without the role 403, with it 200, the provider's metrics relayed as
    /metrics/provider; the probes stay open and the pods Ready. Off again: plain HTTP, as upstream."""
    if not KIT:
        print("SKIP metrics-auth: it scrapes the host-network ports")
        return
    import ssl
    import urllib.error
    emu = ctx["emu"]
    ds = next(d for d in get("daemonsets", ns=DRIVER_NS)["items"]
              if d["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == RELEASE)
    node_sa = f"system:serviceaccount:{DRIVER_NS}:{ds['spec']['template']['spec']['serviceAccountName']}"

    def can(verb, resource, subresource=None):
        args = ["auth", "can-i", verb, resource, "-n", NS, f"--as={node_sa}"]
        if subresource:
            args.append(f"--subresource={subresource}")
        return kubectl(*args, check=False).strip() == "yes"

    # Least privilege, asked of the real authorizer: the node cannot mint workload tokens
    # (restartTokenRequests off) and, without metrics.auth, cannot review tokens either.
    if can("create", "serviceaccounts", "token"):
        raise Failure(f"{node_sa} may create service-account tokens without restartTokenRequests")
    if can("create", "tokenreviews.authentication.k8s.io"):
        raise Failure(f"{node_sa} may create TokenReviews without metrics.auth")
    helm().upgrade(str(CHART), RELEASE, chart_values(emu, metrics={"auth": {"enabled": True}}),
                   namespace=DRIVER_NS, timeout=180, wait="watcher")
    try:
        if not (can("create", "tokenreviews.authentication.k8s.io")
                and can("create", "subjectaccessreviews.authorization.k8s.io")):
            raise Failure(f"{node_sa} may not review tokens with metrics.auth on")
        wait_for("the DaemonSet Ready with HTTPS probes", driver_ready, 120)
        # A mount, so the restarted driver and provider have series to show.
        emu.set_secret("mauth-secret", "m1")
        apply(spc("mauth", NS, [{"objectName": "mauth-secret", "objectType": "secret"}]))
        apply(pod("mauth", NS, [csi_volume("kv", "mauth")]))
        wait_pod("mauth", NS)
        unverified = ssl._create_unverified_context()

        def scrape(port, path, token=None):
            request = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=10, context=unverified) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        reader_role = next(r["metadata"]["name"] for r in get("clusterroles")["items"]
                           if r["metadata"]["name"].endswith("-metrics-reader")
                           and r["metadata"].get("labels", {}).get("app.kubernetes.io/instance") == RELEASE)
        for sa in ("metrics-reader", "metrics-nobody"):
            apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": NS}})
        apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "e2e-metrics-reader"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": reader_role},
               "subjects": [{"kind": "ServiceAccount", "name": "metrics-reader", "namespace": NS}]})
        reader = kubectl("create", "token", "metrics-reader", "-n", NS).strip()
        nobody = kubectl("create", "token", "metrics-nobody", "-n", NS).strip()
        forged = reader[:-8] + ("A" * 8 if not reader.endswith("A" * 8) else "B" * 8)
        seen = {}
        for port, path, expect in ((8095, "/metrics", "node_publish_total"),
                                   (8095, "/metrics/provider", "keyvault_request"),
                                   (8085, "/metrics", "# EOF")):
            status, body = scrape(port, path)
            if status != 401:
                raise Failure(f"{port}{path} without a token answered {status}: {body[:200]!r}")
            status, body = scrape(port, path, forged)
            if status != 401:
                raise Failure(f"{port}{path} with a forged token answered {status}: {body[:200]!r}")
            status, body = scrape(port, path, nobody)
            if status != 403 or f"system:serviceaccount:{NS}:metrics-nobody" not in body:
                raise Failure(f"{port}{path} for a token without the role answered {status}: {body[:200]!r}")
            # The binding reaches the authorizer's cache within a moment of being created.
            got = wait_for(f"{port}{path} served to the metrics reader",
                           lambda: (lambda r: r if r[0] == 200 else NotYet(r[0]))(scrape(port, path, reader)), 30)
            if expect not in got[1]:
                raise Failure(f"{port}{path} has no {expect}: {got[1][:300]!r}")
            seen[f"{port}{path}"] = len(got[1])
        for port in (8095, 8085):
            status, body = scrape(port, "/readyz")
            if status != 200:
                raise Failure(f"{port}/readyz (no token) answered {status}: {body!r}")
        FIGURES["metrics-auth"] = ("401 without or with a forged token, 403 without the role, 200 with it on "
                                   + ", ".join(f"{k} ({v} bytes)" for k, v in seen.items()))
    finally:
        delete("pod", "mauth", NS, wait=False)
        delete("clusterrolebinding", "e2e-metrics-reader", wait=False)
        helm().upgrade(str(CHART), RELEASE, chart_values(emu), namespace=DRIVER_NS, timeout=180, wait="watcher")
        wait_for("the DaemonSet Ready (plain metrics again)", driver_ready, 120)
    text = pod_proxy(driver_pod(), 8095, "/metrics")
    if not text.rstrip().endswith("# EOF"):
        raise Failure(f"plain /metrics not served after metrics.auth was turned off: {text[:200]!r}")


def s_scale(ctx, inspector):
    """A 50-replica Deployment with a secrets volume: time from apply to all Ready; driver RSS and CPU."""
    rss0, cpu0 = inspector.driver_process()
    t0 = time.time()
    apply(deployment("fifty", NS, 50, [csi_volume("kv", "azure-kv-secrets")]))
    kubectl("rollout", "status", "deploy/fifty", "-n", NS, "--timeout=300s", timeout=330)
    took = time.time() - t0
    rss, cpu = inspector.driver_process()
    FIGURES["scale"] = (f"50 replicas Ready in {took:.1f} s; driver RSS {rss0:.1f} -> {rss:.1f} MiB, "
                        f"CPU {cpu - cpu0:.2f} s for the burst")
    t0 = time.time()
    delete("deployment", "fifty", NS)
    wait_for("the 50 pods gone", lambda: not [p for p in get("pods", ns=NS)["items"]
                                            if labels(p).get("app") == "fifty"], 180)
    FIGURES["scale"] += f"; deleted in {time.time() - t0:.1f} s"


def s_upgrade_uninstall(ctx):
    """helm upgrade with pods mounted (files readable throughout), then helm uninstall: nothing of ours
    left but the CRDs, as Helm does."""
    p = ctx["rot_pod"]
    reader = subprocess.Popen(
        ["kubectl", "exec", p, "-n", NS, "--", "sh", "-c",
         "i=0; while [ $i -lt 600 ]; do cat /mnt/kv/db-password >/dev/null || echo FAIL; i=$((i+1)); sleep 0.1; done; echo DONE"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    h = helm()
    values = chart_values(ctx["emu"], logVerbosity=2)
    old = driver_pod()
    h.upgrade(str(CHART), RELEASE, values, namespace=DRIVER_NS, timeout=180, wait="watcher")
    wait_for("the upgraded driver Ready", lambda: driver_ready() and driver_pod() != old, 120)
    out, _ = reader.communicate(timeout=120)
    if b"FAIL" in out or b"DONE" not in out:
        raise Failure(f"files unreadable during the upgrade: {out[-200:]!r}")
    if read(p, NS, "/mnt/kv/db-password") != "Pa55w0rd-e2e":
        raise Failure("after the upgrade")
    remove_workloads()
    h.uninstall(RELEASE, wait="watcher", timeout=120)
    wait_for("every pod of the release gone, terminating ones included", release_pods_gone, 120)
    left = []
    for kind, name, ns in (("daemonset", DS, DRIVER_NS), ("csidriver", "secrets-store.csi.k8s.io", None),
                           ("serviceaccount", DS, DRIVER_NS), ("clusterrole", "secretproviderclasses-role", None),
                           ("clusterrolebinding", "secretproviderclasses-rolebinding", None),
                           ("clusterrole", "secretprovidersyncing-role", None)):
        if exists(kind, name, ns):
            left.append(f"{kind}/{name}")
    if left:
        raise Failure(f"left after uninstall: {left}")
    for crd in ("secretproviderclasses.secrets-store.csi.x-k8s.io",
                "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io"):
        if not exists("crd", crd):
            raise Failure(f"CRD {crd} removed (Helm keeps CRDs)")
    ctx["uninstalled"] = True


# ----------------------------------------------------------------------------------------------------
# The operator's life: failover vaults, migration from the add-on and back


def s_failover(ctx):
    """failoverKeyvaultNames: with the class's vault down (every request 503), a new pod mounts from the
    failover vault; the pod status and a Warning event say so. With the vault back, a new pod is served
    by it again (after the back-off)."""
    emu = ctx["emu"]
    c = spc("with-failover", NS, [{"objectName": "db-password", "objectType": "secret"}])
    c["spec"]["parameters"]["failoverKeyvaultNames"] = SLOW_VAULT
    apply(c)
    emu.call("PUT", f"/faults/{VAULT}", {"outage": True})
    # A fetch of the same object and identity from the last 5 s (--keyvault-dedup-window) would be
    # shared with this pod; let that window pass so its mount asks the vault.
    time.sleep(6)
    try:
        apply(pod("failover", NS, [csi_volume("kv", "with-failover")]))
        wait_pod("failover", NS, timeout=120)
    finally:
        emu.call("DELETE", f"/faults/{VAULT}")
    if read("failover", NS, "/mnt/kv/db-password") != "Pa55w0rd-replica":
        raise Failure("not served by the failover vault")
    st = pod_status(f"failover-{NS}-with-failover", lambda s: (s["metadata"].get("annotations") or {}).get("keyvault-csi.io/served-from"))
    served = json.loads((st["metadata"].get("annotations") or {}).get("keyvault-csi.io/served-from", "{}"))
    if served != {"secret/db-password": SLOW_VAULT}:
        raise Failure(f"pod status annotation keyvault-csi.io/served-from: {served}")
    ev = wait_for("ServedByFailoverVault event", lambda: events(NS, "failover", "ServedByFailoverVault"), 20)
    if SLOW_VAULT not in ev[0]["message"] or "Pa55w0rd" in ev[0]["message"]:
        raise Failure(f"event {ev[0]['message']!r}")
    m = metrics(port=PROVIDER_METRICS_PORT)  # the Azure provider's container (provider.isolation=process)
    if not any(k.startswith("keyvault_failover_objects_total") and SLOW_VAULT in k for k in m):
        raise Failure("keyvault_failover_objects_total has no series for the failover vault")
    # The vault answers again: once its back-off (10 s) is over, mounts are served by it.
    time.sleep(11)
    apply(pod("failback", NS, [csi_volume("kv", "with-failover")]))
    wait_pod("failback", NS)
    if read("failback", NS, "/mnt/kv/db-password") != "Pa55w0rd-e2e":
        raise Failure("not served by the class's vault after it recovered")
    for p in ("failover", "failback"):
        delete("pod", p, NS, wait=False)


# ----------------------------------------------------------------------------------------------------
# Cluster scale: Key Vault change events


def events_values(emu, enabled=True):
    values = chart_values(emu)
    values["events"] = {
        "enabled": enabled,
        "queueUrl": f"https://{EVENTS_ACCOUNT}.queue.core.windows.net:{HTTPS_PORT}/{EVENTS_QUEUE}",
        "identity": "workload", "tenantId": TENANT, "clientId": "events-client", "pollInterval": "1h",
    }
    return values


def invalidations():
    cm = get("configmap", "keyvault-csi-invalidations", DRIVER_NS, check=False) or {}
    return cm.get("data") or {}


def s_change_events(ctx):
    """Polls at 1 h, events on: a secret changed in the vault reaches a mounted file, a secretObjects
    Secret and a SecretSync's Secret within seconds through Event Grid → Storage queue → the
    controller's consumer → the invalidations ConfigMap. With the queue taken away, the nodes fall back
    to their normal poll interval (a Warning says so) and the next poll brings the change."""
    emu = ctx["emu"]
    old = driver_pod()
    helm().upgrade(str(CHART), RELEASE, events_values(emu), namespace=DRIVER_NS, timeout=180, wait="watcher")
    wait_for("the driver restarted with events", lambda: driver_ready() and driver_pod() != old, 120)
    wait_for("the consumer's heartbeat", lambda: "heartbeat" in invalidations(), 90)
    wait_for("the node on the long interval", lambda: metric_sum(metrics(), "events_healthy") == 1, 30)
    emu.set_secret("ev-secret", "ev-v1")
    apply({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "workload", "namespace": NS,
                        "annotations": {"azure.workload.identity/client-id": "wi-client",
                                        "keyvault-csi.io/allow-secret-syncs": "ss-db,ss-foreign,ss-heal,ss-partial,ss-ev"}}})
    objects = [{"objectName": "ev-secret", "objectType": "secret"}]
    apply(spc("ev-class", NS, objects, secret_objects=[
        {"secretName": "ev-synced", "type": "Opaque", "data": [{"objectName": "ev-secret", "key": "value"}]}]),
          spc("ev-class-wi", NS, objects, client_id="wi-client"),
          pod("ev-pod", NS, [csi_volume("kv", "ev-class")]),
          secret_sync("ss-ev", "ev-class-wi", "workload", [("ev-secret", "value")]))
    wait_pod("ev-pod", NS)
    wait_ready("ss-ev", 60)

    def everywhere(value):
        file_ok = read("ev-pod", NS, "/mnt/kv/ev-secret") == value
        synced = (secret_values("ev-synced") or {}).get("value") == value
        ss = (secret_values("ss-ev") or {}).get("value") == value
        return file_ok and synced and ss

    wait_for("v1 everywhere", lambda: everywhere("ev-v1"), 30)
    t0 = time.time()
    emu.set_secret("ev-secret", "ev-v2")
    wait_for("the change through the event path", lambda: everywhere("ev-v2"), 30, interval=0.2)
    took = time.time() - t0
    FIGURES["change-event"] = f"vault change to file, secretObjects Secret and SecretSync Secret in {took:.1f} s (polls: 1 h)"
    if took > 10:
        raise Failure(f"the event path took {took:.1f} s (about 3 s expected)")
    m = metrics()
    if metric_sum(m, "events_invalidations_total") < 1 or metric_sum(m, "event_to_file_seconds_count") < 1:
        raise Failure("events_invalidations_total / event_to_file_seconds not recorded")

    # The queue taken away: the heartbeat stops, the node polls at rotationPollInterval again.
    emu.call("PUT", f"/queues/{EVENTS_ACCOUNT}/{EVENTS_QUEUE}/faults", {"unavailable": True})
    try:
        wait_for("ChangeEventsUnavailable warning",
                 lambda: events(DRIVER_NS, "keyvault-csi-invalidations", "ChangeEventsUnavailable"), 60)
        wait_for("the node back on polling", lambda: metric_sum(metrics(), "events_healthy") == 0, 150)
        t0 = time.time()
        emu.set_secret("ev-secret", "ev-v3")
        wait_for("the change through polling", lambda: read("ev-pod", NS, "/mnt/kv/ev-secret") == "ev-v3",
                 3 * POLL + 10)
        FIGURES["change-event-fallback"] = f"queue away: the change reached the file by polling in {time.time() - t0:.1f} s"
    finally:
        emu.call("PUT", f"/queues/{EVENTS_ACCOUNT}/{EVENTS_QUEUE}/faults", {})
    wait_for("ChangeEventsRestored", lambda: events(DRIVER_NS, "keyvault-csi-invalidations", "ChangeEventsRestored"), 60)
    delete("pod", "ev-pod", NS, wait=False)
    delete("secretsync", "ss-ev", NS, wait=False)
    # Back to the values the other scenarios expect.
    old = driver_pod()
    helm().upgrade(str(CHART), RELEASE, chart_values(emu), namespace=DRIVER_NS, timeout=180, wait="watcher")
    wait_for("the driver restarted without events", lambda: driver_ready() and driver_pod() != old, 120)


UPSTREAM_DS, UPSTREAM_PROVIDER_DS = "aks-secrets-store-csi-driver", "aks-secrets-store-provider-azure"
UPSTREAM_SA = "e2e-upstream-secrets-store"


def upstream_addon(emu):
    """The AKS add-on's shape, from upstream binaries: the Secrets Store CSI Driver v1.6 DaemonSet (with
    the registrar) and the Azure provider DaemonSet (our binary's `provider` mode on the provider
    socket, standing in for the Go provider), their CSIDriver, and (a test shortcut) cluster-admin."""
    image = os.environ["E2E_UPSTREAM_IMAGE"]
    values = chart_values(emu)
    root, providers = "/var/lib/kubelet", "/var/run/secrets-store-csi-providers"
    env = values["linux"]["env"] + [{"name": "KUBE_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]

    def ds(name, containers, volumes):
        return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name, "namespace": DRIVER_NS},
                "spec": {"selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"serviceAccountName": UPSTREAM_SA, "hostNetwork": KIT,
                                               "dnsPolicy": "ClusterFirstWithHostNet",
                                               "containers": containers, "volumes": volumes}}}}

    host = lambda n, p, t="DirectoryOrCreate": {"name": n, "hostPath": {"path": p, "type": t}}  # noqa: E731
    driver = ds(UPSTREAM_DS, [
        {"name": "node-driver-registrar",
         "image": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.16.0",
         "imagePullPolicy": "IfNotPresent",
         "args": ["--csi-address=/csi/csi.sock", f"--kubelet-registration-path={root}/plugins/csi-secrets-store/csi.sock"],
         "volumeMounts": [{"name": "plugin-dir", "mountPath": "/csi"},
                          {"name": "registration-dir", "mountPath": "/registration"}]},
        {"name": "secrets-store", "image": image, "imagePullPolicy": PULL,
         "args": ["--endpoint=unix:///csi/csi.sock", "--nodeid=$(KUBE_NODE_NAME)", f"--provider-volume={providers}",
                  "--enable-secret-rotation=true", "--rotation-poll-interval=2m", "--metrics-addr=:18095", "-v=2"],
         "env": env, "securityContext": {"privileged": True},
         "volumeMounts": [{"name": "plugin-dir", "mountPath": "/csi"},
                          {"name": "mountpoint-dir", "mountPath": f"{root}/pods", "mountPropagation": "Bidirectional"},
                          {"name": "providers-dir", "mountPath": providers}]},
    ], [host("plugin-dir", f"{root}/plugins/csi-secrets-store"), host("registration-dir", f"{root}/plugins_registry"),
        host("mountpoint-dir", f"{root}/pods"), host("providers-dir", providers)])
    provider = ds(UPSTREAM_PROVIDER_DS, [
        {"name": "provider-azure-installer", "image": f"{values['linux']['image']['repository']}:{values['linux']['image']['tag']}",
         "imagePullPolicy": PULL,
         "args": ["provider", "--endpoint=unix:///provider/azure.sock", "--metrics-addr=:18898", "--healthz-port=18989"]
                 + values["provider"]["extraArgs"],
         # Ready once the provider socket is bound and served (not merely once the process started), so
         # that "the add-on's DaemonSets Ready" means the driver can find provider "azure".
         "readinessProbe": {"httpGet": {"path": "/readyz", "port": 18989}, "periodSeconds": 1},
         "env": values["linux"]["env"],
         "volumeMounts": [{"name": "providers-dir", "mountPath": "/provider"}] + values["linux"]["volumeMounts"]},
    ], [host("providers-dir", providers)] + values["linux"]["volumes"])
    csidriver = {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "secrets-store.csi.k8s.io"},
                 "spec": {"podInfoOnMount": True, "attachRequired": False, "requiresRepublish": True,
                          "volumeLifecycleModes": ["Ephemeral"]}}
    rbac = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": UPSTREAM_SA, "namespace": DRIVER_NS}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": UPSTREAM_SA},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"kind": "ServiceAccount", "name": UPSTREAM_SA, "namespace": DRIVER_NS}]}]
    return [csidriver, *rbac, driver, provider]


def upstream_ready():
    """Both DaemonSets have a Ready pod: the driver's containers started, the provider's `/readyz`
    answers (its socket is bound). Otherwise, what each pod is doing."""
    for name in (UPSTREAM_DS, UPSTREAM_PROVIDER_DS):
        d = get("daemonset", name, DRIVER_NS, check=False)
        if not d or d.get("status", {}).get("numberReady", 0) < 1:
            pods = [pod_state(p) for p in get("pods", ns=DRIVER_NS)["items"] if labels(p).get("app") == name]
            return NotYet(f"{name}: no Ready pod ({'; '.join(pods) or 'none created'})")
    return True


def remove_upstream(keep_csidriver=False):
    for name in (UPSTREAM_DS, UPSTREAM_PROVIDER_DS):
        kubectl("delete", "daemonset", name, "-n", DRIVER_NS, "--ignore-not-found", "--wait=true", timeout=120)
    wait_for("the add-on's pods gone", lambda: not [
        p for p in get("pods", ns=DRIVER_NS)["items"] if labels(p).get("app") in (UPSTREAM_DS, UPSTREAM_PROVIDER_DS)], 90)
    if not keep_csidriver:
        kubectl("delete", "csidriver", "secrets-store.csi.k8s.io", "--ignore-not-found")


def restarts(name, ns):
    p = get("pod", name, ns)
    return p["metadata"]["uid"], sum(c.get("restartCount", 0) for c in p["status"].get("containerStatuses", []))


def s_migration(ctx):
    """docs/migration.md on the kit: pods mounted by the add-on (upstream driver + provider DaemonSets)
    keep running while the add-on goes and the chart comes (adopting the CSIDriver, tolerating the
    CRDs); keyvault-csi adopts their volumes, rotates and unmounts them. Then the rollback: the add-on
    back, a pod mounted by keyvault-csi keeps its files, new pods mount under the add-on."""
    if not os.environ.get("E2E_UPSTREAM_IMAGE"):
        raise Failure("no upstream driver image (E2E_UPSTREAM_IMAGE): ../shared/upstream missing?")
    emu = ctx["emu"]
    apply(*upstream_addon(emu))
    wait_for("the add-on's DaemonSets Ready", upstream_ready, 120)
    apply(spc("migrating", NS, [{"objectName": "migrating", "objectType": "secret"}]))
    emu.set_secret("migrating", "before-migration")
    apply(pod("addon-mounted", NS, [csi_volume("kv", "migrating")]))
    wait_pod("addon-mounted", NS, timeout=120)
    if read("addon-mounted", NS, "/mnt/kv/migrating") != "before-migration":
        raise Failure("the add-on did not mount the pod")
    before = restarts("addon-mounted", NS)

    # The runbook: the add-on goes (its pods, its provider), the CSIDriver is handed to Helm, the chart comes.
    remove_upstream(keep_csidriver=True)
    kubectl("label", "csidriver", "secrets-store.csi.k8s.io", "app.kubernetes.io/managed-by=Helm", "--overwrite")
    kubectl("annotate", "csidriver", "secrets-store.csi.k8s.io", f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={DRIVER_NS}", "--overwrite")
    t0 = time.time()
    helm().install(str(CHART), RELEASE, chart_values(emu), namespace=DRIVER_NS, timeout=180, wait="watcher")
    wait_for("keyvault-csi Ready", driver_ready, 120)
    if read("addon-mounted", NS, "/mnt/kv/migrating") != "before-migration":
        raise Failure("the mounted file changed or vanished during the swap")
    emu.set_secret("migrating", "after-migration")
    wait_for("the adopted volume rotated by keyvault-csi",
             lambda: read("addon-mounted", NS, "/mnt/kv/migrating") == "after-migration", 2 * POLL + 20)
    FIGURES["migration"] = f"add-on → keyvault-csi: adopted volume rotated {time.time() - t0:.0f} s after helm install"
    if restarts("addon-mounted", NS) != before:
        raise Failure(f"the pod restarted or was replaced: {before} -> {restarts('addon-mounted', NS)}")
    delete("pod", "addon-mounted", NS, wait=True)  # kubelet's unpublish, served by keyvault-csi

    # Rollback: a pod mounted by keyvault-csi, then the add-on back.
    apply(pod("ours-mounted", NS, [csi_volume("kv", "migrating")]))
    wait_pod("ours-mounted", NS)
    before = restarts("ours-mounted", NS)
    helm().uninstall(RELEASE, wait="watcher", timeout=120)
    ctx["uninstalled"] = True
    wait_for("every pod of the release gone, terminating ones included", release_pods_gone, 120)
    apply(*upstream_addon(emu))
    wait_for("the add-on's DaemonSets Ready again", upstream_ready, 120)
    if read("ours-mounted", NS, "/mnt/kv/migrating") != "after-migration" or restarts("ours-mounted", NS) != before:
        raise Failure("the pod mounted by keyvault-csi lost its files or restarted during the rollback")
    apply(pod("addon-again", NS, [csi_volume("kv", "migrating")]))
    wait_pod("addon-again", NS, timeout=120)
    if read("addon-again", NS, "/mnt/kv/migrating") != "after-migration":
        raise Failure("the add-on cannot mount after the rollback")
    for p in ("ours-mounted", "addon-again"):
        delete("pod", p, NS, wait=True)  # both unmounted by the add-on's driver
    remove_upstream()
    kubectl("delete", "clusterrolebinding", UPSTREAM_SA, "--ignore-not-found")
    kubectl("delete", "serviceaccount", UPSTREAM_SA, "-n", DRIVER_NS, "--ignore-not-found")


# ----------------------------------------------------------------------------------------------------
# SecretSync: mount-less sync (no kubelet involved)

SYNC_DEPLOY = f"{RELEASE}-keyvault-csi-sync-controller"


def s_hostile_tenants(ctx):
    """Hostile tenants (issue 25) on the real kit. An attacker namespace (1) points cloudEnvFileName at
    another pod's mounted secret, by absolute and by relative path: the mount fails naming the allowed
    directory, and nothing of the victim's appears in the attacker's events; (2) annotates its class
    with an interval beyond Go's range and Go's longest, plus a 5,000-character refresh-now, which once
    stopped refresh-now for every pod on the node; (3) mounts from a vault that hangs for 30 s.
    Meanwhile the victim keeps mounting and refreshing on request, the driver stays Ready, and no task
    panicked."""
    emu = ctx["emu"]
    victim_value = "victim-value-7f3a"
    emu.set_secret("victim-secret", victim_value)
    apply(spc("victim", NS, [{"objectName": "victim-secret", "objectType": "secret"}]))
    apply(pod("victim", NS, [csi_volume("kv", "victim")]))
    wait_pod("victim", NS)
    uid = get("pod", "victim", NS)["metadata"]["uid"]
    victim_file = f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/kv/mount/victim-secret"

    kubectl("create", "namespace", ATTACKER)
    apply(sp_creds(ATTACKER))
    emu.set_secret("attacker-secret", "attacker-own")
    for name, path in (("steal-abs", victim_file), ("steal-rel", f"../../../../..{victim_file}")):
        cls = spc(name, ATTACKER, [{"objectName": "attacker-secret", "objectType": "secret"}])
        cls["spec"]["parameters"].update({"cloudName": "AzureStackCloud", "cloudEnvFileName": path})
        apply(cls)
        apply(pod(name, ATTACKER, [csi_volume("kv", name)]))
        msg = failed_mount(name, ATTACKER, "cloudEnvFileName")
        if "/cloudEnv" not in msg:
            raise Failure(f"{name}: the error does not name the allowed directory: {msg}")

    # (2) Hostile annotations on a class that mounts fine.
    cls = spc("hostile", ATTACKER, [{"objectName": "attacker-secret", "objectType": "secret"}])
    cls["metadata"]["annotations"] = {"keyvault-csi.io/rotation-poll-interval": "3000000000000000h"}
    apply(cls)
    apply(pod("noisy", ATTACKER, [csi_volume("kv", "hostile")]))
    wait_pod("noisy", ATTACKER)
    wait_for("an InvalidRotationInterval Warning on the attacker's pod", lambda: events(
        ATTACKER, "noisy", "InvalidRotationInterval"), POLL * 2 + 10)
    kubectl("annotate", "--overwrite", "secretproviderclass", "hostile", "-n", ATTACKER,
            "keyvault-csi.io/rotation-poll-interval=2562047h", "keyvault-csi.io/refresh-now=1")
    kubectl("annotate", "--overwrite", "pod", "noisy", "-n", ATTACKER, "keyvault-csi.io/refresh-now=" + "x" * 5000)
    wait_for("the capped interval reported", lambda: [
        e for e in events(ATTACKER, "noisy", "InvalidRotationInterval") if "capped at 720h" in e["message"]], 30)

    # (3) A vault that hangs: the attacker's mount waits, the victim's do not.
    emu.call("PUT", f"/faults/{SLOW_VAULT}", {"latencyMs": 30000})
    slow = spc("slow", ATTACKER, [{"objectName": "slow-secret", "objectType": "secret"}])
    slow["spec"]["parameters"]["keyvaultName"] = SLOW_VAULT
    apply(slow)
    apply(pod("stuck", ATTACKER, [csi_volume("kv", "slow")]))
    time.sleep(2)
    t0 = time.time()
    apply(pod("victim2", NS, [csi_volume("kv", "victim")]))
    wait_pod("victim2", NS, timeout=40)
    victim_mount_s = time.time() - t0
    if pod_ready("stuck", ATTACKER):
        raise Failure("the hung vault's pod is Ready: the fault did not apply")

    # The victim still gets refresh-now (served by the node-wide loop the attacker once stopped).
    emu.set_secret("victim-secret", victim_value + "-2")
    kubectl("annotate", "--overwrite", "pod", "victim", "-n", NS, f"keyvault-csi.io/refresh-now={int(time.time())}")
    wait_for("the victim refreshed on request",
             lambda: read("victim", NS, "/mnt/kv/victim-secret") == victim_value + "-2", 20)
    emu.call("DELETE", f"/faults/{SLOW_VAULT}")
    # The hung tenant recovers on its own once its vault answers (its request in flight completes).
    wait_pod("stuck", ATTACKER, timeout=120)

    leaked = [e["message"] for e in events(ATTACKER) if victim_value in e.get("message", "")]
    if leaked:
        raise Failure(f"the victim's value reached the attacker's events: {leaked}")
    long_events = [e["message"][:80] for e in events(ATTACKER) if len(e.get("message", "")) > 1500]
    if long_events:
        raise Failure(f"an event echoes the attacker's input unbounded: {long_events}")
    if not driver_ready():
        raise Failure("the driver is not Ready after the hostile tenant")
    panics = metric_sum(metrics(), "task_panics_total") + metric_sum(metrics(port=PROVIDER_METRICS_PORT), "task_panics_total")
    if panics:
        raise Failure(f"task_panics_total = {panics}")
    for p in ("victim", "victim2"):
        delete("pod", p, NS, wait=False, grace=0)
    # Gone before the next scenario: its failing mounts would be retried (and logged) meanwhile.
    t_del = time.time()
    kubectl("delete", "namespace", ATTACKER, "--wait=true", timeout=240)
    FIGURES["hostile-tenants-cleanup"] = f"attacker namespace deleted in {time.time() - t_del:.1f} s"
    FIGURES["hostile-tenants"] = (f"victim's mount while another tenant's vault hangs: {victim_mount_s:.1f} s; "
                                  "cloudEnvFileName escapes refused; node loops alive")


def s_class_policy(ctx):
    """The chart's opt-in SecretProviderClass policy (classPolicy.enabled) on the real API server: a
    class the driver would refuse at mount is refused at apply, naming the field (oversized objects,
    an unknown objectType, cloudEnvFileName outside the operator's directory or with '..', a rotation
    interval that is not a positive Go duration up to 720h); a valid class is admitted and mounts; off
    again, the same bad class is admitted (and fails at mount, as before)."""
    emu = ctx["emu"]
    helm().upgrade(str(CHART), RELEASE, chart_values(emu, classPolicy={"enabled": True}),
                   namespace=DRIVER_NS, timeout=180, wait="watcher")
    good_objects = [{"objectName": "policy-secret", "objectType": "secret"}]
    emu.set_secret("policy-secret", "p1")

    def bad(name, objects=None, params=None, annotations=None):
        cls = spc(name, NS, objects or good_objects)
        cls["spec"]["parameters"].update(params or {})
        if annotations:
            cls["metadata"]["annotations"] = annotations
        return cls

    def apply_result(cls):
        r = subprocess.run(["kubectl", "apply", "--server-side", "--force-conflicts", "--field-manager=e2e",
                            "-f", "-"], input=json.dumps(cls).encode(), capture_output=True, timeout=60)
        return r.returncode, r.stderr.decode()

    probe = bad("policy-probe", [{"objectName": "s", "objectType": "secrt"}])
    # The policy is in force once the API server's admission plugin has compiled it (a few seconds).
    wait_for("the class policy in force", lambda: apply_result(probe)[0] != 0, 60)
    cases = [
        ("policy-type", bad("policy-type", [{"objectName": "s", "objectType": "secrt"}]), "must be secret, key or cert"),
        ("policy-cloud-abs", bad("policy-cloud-abs", params={"cloudName": "AzureStackCloud",
                                 "cloudEnvFileName": "/var/lib/kubelet/pods/x/volumes/secret"}), "/cloudEnv"),
        ("policy-cloud-dots", bad("policy-cloud-dots", params={"cloudName": "AzureStackCloud",
                                  "cloudEnvFileName": "../../etc/passwd"}), "no '..'"),
        ("policy-interval", bad("policy-interval", annotations={
            "keyvault-csi.io/rotation-poll-interval": "3000000000000000h"}), "rotation-poll-interval"),
        ("policy-interval-text", bad("policy-interval-text", annotations={
            "keyvault-csi.io/rotation-poll-interval": "soon"}), "rotation-poll-interval"),
        ("policy-big", bad("policy-big", params={"objects": "array:\n" + "  - |\n    objectName: s\n    objectType: secret\n" * 7000}),
         "larger than the 262144 bytes"),
        ("policy-many", bad("policy-many", params={"objects": "array:\n" + "  - |\n    objectName: s\n    objectType: key\n" * 1001}),
         "more than the 1000 objects"),
    ]
    for name, cls, message in cases:
        code, err = apply_result(cls)
        if code == 0 or message not in err:
            raise Failure(f"{name}: expected a refusal naming {message!r}; got exit {code}: {err.strip()[:400]}")
        if exists("secretproviderclass", name, NS):
            raise Failure(f"{name}: refused, yet stored")
    ok = bad("policy-ok", annotations={"keyvault-csi.io/rotation-poll-interval": "1h30m"})
    ok["spec"]["parameters"]["cloudEnvFileName"] = ""
    code, err = apply_result(ok)
    if code != 0:
        raise Failure(f"a valid class was refused: {err.strip()[:400]}")
    apply(pod("policy-pod", NS, [csi_volume("kv", "policy-ok")]))
    wait_pod("policy-pod", NS)
    if read("policy-pod", NS, "/mnt/kv/policy-secret") != "p1":
        raise Failure("the admitted class did not mount")
    helm().upgrade(str(CHART), RELEASE, chart_values(emu), namespace=DRIVER_NS, timeout=180, wait="watcher")
    wait_for("the class policy gone", lambda: apply_result(probe)[0] == 0, 60)
    delete("pod", "policy-pod", NS, wait=False, grace=0)
    for name in ["policy-probe", "policy-ok"]:
        delete("secretproviderclass", name, NS)
    FIGURES["class-policy"] = f"{len(cases)} bad classes refused at apply time, each naming its field; a valid one mounted"


def sync_pods():
    return [p for p in get("pods", ns=DRIVER_NS)["items"]
            if p["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "sync-controller"
            and p["metadata"].get("deletionTimestamp") is None]


def sync_metrics():
    pods = [p for p in sync_pods() if pod_ready(p["metadata"]["name"], DRIVER_NS)]
    if not pods:
        raise Failure("no Ready sync-controller pod")
    return metrics(pods[0]["metadata"]["name"], 8085)


def secret_sync(name, cls, sa, data, type_=None, labels=None, force=None, annotations=None):
    spec = {"secretProviderClassName": cls, "serviceAccountName": sa,
            "secretObject": {"data": [{"sourcePath": s, "targetKey": t} for s, t in data]}}
    if type_:
        spec["secretObject"]["type"] = type_
    if labels:
        spec["secretObject"]["labels"] = labels
    if force:
        spec["forceSynchronization"] = force
    meta = {"name": name, "namespace": NS}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "secret-sync.x-k8s.io/v1alpha1", "kind": "SecretSync", "metadata": meta, "spec": spec}


def secret_values(name):
    s = get("secret", name, NS, check=False)
    if not s:
        return None
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (s.get("data") or {}).items()}


def ready(name):
    st = (get("secretsync", name, NS, check=False) or {}).get("status", {})
    return {c["type"]: c for c in st.get("conditions", [])}.get("Ready", {})


def wait_ready(name, timeout=30):
    return wait_for(f"SecretSync {name} Ready", lambda: ready(name).get("status") == "True", timeout)


def wait_refused(name, reason, contains, timeout=30):
    def seen():
        r = ready(name)
        return r if r.get("status") == "False" and r.get("reason") == reason and contains in r.get("message", "") else None
    return wait_for(f"SecretSync {name} Ready=False {reason} ({contains!r})", seen, timeout)


def s_secret_sync(ctx):
    """Upstream's SecretSync, applied unchanged, produces upstream's Secret; then every way it can go
    wrong or drift: a vault change, a class edit, a deleted or tampered Secret, a foreign Secret, a
    service account that has not opted in, the SecretSync deleted (garbage collection)."""
    emu = ctx["emu"]
    wait_for("the sync controller Ready", lambda: any(pod_ready(p["metadata"]["name"], DRIVER_NS) for p in sync_pods()), 90)
    emu.set_secret("ss-rotating", "ss-v1")
    apply({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "workload", "namespace": NS,
                        "annotations": {"azure.workload.identity/client-id": "wi-client",
                                        "keyvault-csi.io/allow-secret-syncs": "ss-db,ss-foreign,ss-heal,ss-partial"}}},
          {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "not-opted", "namespace": NS}})
    apply(spc("ss-class", NS, [{"objectName": "db-password", "objectType": "secret"},
                               {"objectName": "ss-rotating", "objectType": "secret"}], client_id="wi-client"))
    t0 = time.time()
    # Upstream's manifest shape: no type (defaults to Opaque), labels on the Secret.
    apply(secret_sync("ss-db", "ss-class", "workload", [("db-password", "password"), ("ss-rotating", "rotating")],
                      labels={"team": "payments"}))
    wait_ready("ss-db")
    FIGURES["secretsync-create"] = f"SecretSync applied to Secret written in {time.time() - t0:.1f} s"
    sec = get("secret", "ss-db", NS)
    ss = get("secretsync", "ss-db", NS)
    vals = secret_values("ss-db")
    if vals != {"password": "Pa55w0rd-e2e", "rotating": "ss-v1"} or sec["type"] != "Opaque":
        raise Failure(f"Secret ss-db: type {sec['type']}, data {sorted(vals)}")
    if sec["metadata"]["labels"] != {"team": "payments", "secrets-store.sync.x-k8s.io": ""}:
        raise Failure(f"labels {sec['metadata']['labels']}")
    owners = [(o["kind"], o["name"], o["uid"], o.get("controller")) for o in sec["metadata"]["ownerReferences"]]
    if owners != [("SecretSync", "ss-db", ss["metadata"]["uid"], None)]:
        raise Failure(f"owner references {owners}")
    full = json.loads(kubectl("get", "secret", "ss-db", "-n", NS, "--show-managed-fields", "-o", "json"))
    managers = {m["manager"] for m in full["metadata"].get("managedFields", [])}
    if "secrets-store-sync-controller" not in managers:
        raise Failure(f"field managers {managers}")
    st = ss["status"]
    if not st.get("syncHash", "").startswith("v1:") or st.get("observedGeneration") != ss["metadata"]["generation"]:
        raise Failure(f"status {st}")
    types = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    if types != {"SecretCreated": ("True", "CreateSuccessful"), "SecretUpdated": ("True", "SecretUpToDate"),
                 "Ready": ("True", "SecretUpToDate")}:
        raise Failure(f"conditions {types}")
    if not [e for e in events(NS, "ss-db", "SecretSynced")]:
        raise Failure("no SecretSynced event")

    # A vault change arrives within one round (POLL s + jitter).
    emu.set_secret("ss-rotating", "ss-v2")
    t0 = time.time()
    wait_for("the vault change in the Secret", lambda: (secret_values("ss-db") or {}).get("rotating") == "ss-v2", POLL + 15)
    FIGURES["secretsync-vault-change"] = f"vault change to Secret in {time.time() - t0:.1f} s (round {POLL} s)"

    # Deleted: recreated at once (the owned-Secret watch), not at the next round.
    t0 = time.time()
    kubectl("delete", "secret", "ss-db", "-n", NS)
    wait_for("the deleted Secret recreated", lambda: (secret_values("ss-db") or {}).get("rotating") == "ss-v2", 5)
    recreated = time.time() - t0
    # Tampered with: restored at once.
    kubectl("patch", "secret", "ss-db", "-n", NS, "-p", json.dumps({"data": {"password": base64.b64encode(b"x").decode()}}))
    wait_for("the tampered Secret restored", lambda: (secret_values("ss-db") or {}).get("password") == "Pa55w0rd-e2e", 5)
    FIGURES["secretsync-heal"] = f"deleted Secret recreated in {recreated:.1f} s, tampered Secret restored at once"

    # A class edit heals a SecretSync that named an object the class lacked, at once.
    apply(secret_sync("ss-heal", "ss-class", "workload", [("api-key", "key")]))
    wait_refused("ss-heal", "RemoteSecretStoreFetchFailed", 'sourcePath "api-key" is not among')
    t0 = time.time()
    apply(spc("ss-class", NS, [{"objectName": "db-password", "objectType": "secret"},
                               {"objectName": "ss-rotating", "objectType": "secret"},
                               {"objectName": "api-key", "objectType": "secret"}], client_id="wi-client"))
    wait_for("the class edit healing ss-heal", lambda: secret_values("ss-heal") == {"key": "ak_live_e2e_123"}, 10)
    FIGURES["secretsync-class-edit"] = f"class edit to Secret in {time.time() - t0:.1f} s"
    if ready("ss-heal").get("status") != "True":
        wait_ready("ss-heal", 5)

    # A Secret that is not ours is never overwritten; the condition and an event say whose it is.
    apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ss-foreign", "namespace": NS},
           "stringData": {"mine": "keep-me"}})
    apply(secret_sync("ss-foreign", "ss-class", "workload", [("db-password", "password")]))
    r = wait_refused("ss-foreign", "ControllerPatchError", "is not managed by this SecretSync")
    if "written by e2e" not in r["message"]:
        raise Failure(f"the refusal does not say whose Secret it is: {r['message']}")
    if secret_values("ss-foreign") != {"mine": "keep-me"}:
        raise Failure(f"the foreign Secret was changed: {secret_values('ss-foreign')}")
    if not events(NS, "ss-foreign", "ControllerPatchError"):
        raise Failure("no ControllerPatchError event")

    # A service account that has not opted in is never used (no token is minted for it).
    apply(secret_sync("ss-optout", "ss-class", "not-opted", [("db-password", "password")]))
    wait_refused("ss-optout", "ControllerSyncError", "has not opted in to SecretSync \"ss-optout\"")
    if get("secret", "ss-optout", NS, check=False):
        raise Failure("a Secret was written through a service account that did not opt in")

    # Partial sync (asked for by annotation): one object of the class failing (a disabled secret: 403)
    # still updates the other key; the failed key keeps its value; PartialSync names the object; once
    # the object is back, the SecretSync recovers on its own.
    emu.set_secret("ss-partial-a", "a-v1")
    emu.set_secret("ss-partial-b", "b-v1")
    apply(spc("ss-partial-class", NS, [{"objectName": "ss-partial-a", "objectType": "secret"},
                                       {"objectName": "ss-partial-b", "objectType": "secret"}], client_id="wi-client"))
    apply(secret_sync("ss-partial", "ss-partial-class", "workload", [("ss-partial-a", "a"), ("ss-partial-b", "b")],
                      annotations={"keyvault-csi.io/partial-sync": "true"}))
    wait_ready("ss-partial")
    emu.call("PUT", f"/vaults/{VAULT}/secrets/ss-partial-b", {"value": "b-disabled", "enabled": False})
    emu.set_secret("ss-partial-a", "a-v2")
    wait_for("the partial sync of ss-partial", lambda: secret_values("ss-partial") == {"a": "a-v2", "b": "b-v1"}, POLL + 15)
    r = wait_refused("ss-partial", "PartialSync", "ss-partial-b", 10)
    summary = json.loads(r["message"])
    if summary.get("synced") != ["a"] or summary.get("kept") != ["b"] or "b-disabled" in r["message"]:
        raise Failure(f"PartialSync summary {r['message']}")
    emu.set_secret("ss-partial-b", "b-v3")
    wait_for("ss-partial recovered", lambda: secret_values("ss-partial") == {"a": "a-v2", "b": "b-v3"}
             and ready("ss-partial").get("status") == "True", POLL + 30)
    delete("secretsync", "ss-partial", NS)

    # Deleted SecretSync: the garbage collector removes its Secret (owner reference).
    delete("secretsync", "ss-heal", NS)
    wait_for("Secret ss-heal garbage-collected", lambda: not exists("secret", "ss-heal", NS), 60)
    m = sync_metrics()
    if m.get('secretsync_ready{namespace="e2e",name="ss-db"}') != 1.0:
        raise Failure("secretsync_ready for ss-db is not 1")
    if not m.get('secretsync_failures_total{namespace="e2e",name="ss-optout",reason="ControllerSyncError"}'):
        raise Failure("no failure counted for ss-optout")
    # Nothing changed since: a round writes nothing. First see the round run (ss-db checked again and
    # found up to date), then count the Secret writes across it.
    before = m.get('secretsync_api_writes_total{kind="secret"}', 0)
    checked = m.get('secretsync_reconcile_total{result="unchanged"}', 0)
    last = m.get('secretsync_last_success_timestamp_seconds{namespace="e2e",name="ss-db"}', 0)
    wait_for("a round that checks ss-db again", lambda: sync_metrics().get(
        'secretsync_last_success_timestamp_seconds{namespace="e2e",name="ss-db"}', 0) > last, POLL + 30)
    after_m = sync_metrics()
    if after_m.get('secretsync_reconcile_total{result="unchanged"}', 0) <= checked:
        raise Failure("the round ran but counted no unchanged check")
    after = after_m.get('secretsync_api_writes_total{kind="secret"}', 0)
    if after != before:
        raise Failure(f"a round with nothing changed wrote {after - before} Secrets")
    for n in ("ss-foreign", "ss-optout"):
        delete("secretsync", n, NS)


def s_secret_sync_storm_restart(ctx):
    """A 429 storm backs off per vault (one Retry-After pauses every SecretSync of that vault) and
    recovers; then the controller killed mid-sync: the next leader finishes, nothing is lost."""
    emu = ctx["emu"]
    n, objects = 12, 8
    for k in range(objects):
        emu.call("PUT", f"/vaults/{STORM_VAULT}/secrets/storm-{k}", {"value": f"storm-value-{k}"})
    storm = spc("ss-storm", NS, [{"objectName": f"storm-{k}", "objectType": "secret"} for k in range(objects)],
                client_id="wi-client")
    storm["spec"]["parameters"]["keyvaultName"] = STORM_VAULT
    apply(storm)
    names = [f"ss-many-{i}" for i in range(n)]
    anns = "ss-db," + ",".join(names)
    kubectl("annotate", "serviceaccount", "workload", "-n", NS, "--overwrite", f"keyvault-csi.io/allow-secret-syncs={anns}")
    emu.call("DELETE", "/stats")
    # 3 requests per 4 s: the class's 8 objects cannot all be fetched at once.
    emu.call("PUT", f"/throttle/{STORM_VAULT}", {"limit": 3, "windowSeconds": 4})
    t0 = time.time()
    apply(*[secret_sync(nm, "ss-storm", "workload", [(f"storm-{i % objects}", "v")]) for i, nm in enumerate(names)])
    wait_for(f"{n} SecretSyncs Ready through the throttle", lambda: all(ready(nm).get("status") == "True" for nm in names), 90)
    took = time.time() - t0
    emu.call("PUT", f"/throttle/{STORM_VAULT}", {"limit": 4000, "windowSeconds": 10})
    rows = emu.call("GET", "/stats").get("requests", [])
    vault_rows = [r for r in rows if r.get("vault") == STORM_VAULT and r.get("kind") == "secrets"]
    throttled = sum(r.get("count", 0) for r in vault_rows if r.get("status") == 429)
    total = sum(r.get("count", 0) for r in vault_rows)
    FIGURES["secretsync-429-storm"] = (f"{n} SecretSyncs on a class of {objects} objects through a 3-per-4 s "
                                      f"throttle: Ready in {took:.1f} s, {total} vault requests, {throttled} answered 429")
    if not throttled:
        raise Failure("the throttle never answered 429: the storm did not happen")
    if throttled > 3 * objects:
        raise Failure(f"{throttled} requests answered 429 for {objects} objects: no per-vault back-off")
    bad = [nm for i, nm in enumerate(names) if secret_values(nm) != {"v": f"storm-value-{i % objects}"}]
    if bad:
        raise Failure(f"wrong Secrets after the storm: {bad}")

    # Kill the leader while a batch is being synced; the Deployment's next pod takes the Lease.
    more = [f"ss-late-{i}" for i in range(n)]
    kubectl("annotate", "serviceaccount", "workload", "-n", NS, "--overwrite",
            f"keyvault-csi.io/allow-secret-syncs={anns},{','.join(more)}")
    old = [p["metadata"]["name"] for p in sync_pods()]
    apply(*[secret_sync(nm, "ss-storm", "workload", [("storm-0", "password")]) for nm in more])
    kubectl("delete", "pod", *old, "-n", DRIVER_NS, "--grace-period=0", "--force", "--wait=false", check=False)
    t0 = time.time()
    wait_for("a new sync-controller pod Ready", lambda: any(
        pod_ready(p["metadata"]["name"], DRIVER_NS) for p in sync_pods() if p["metadata"]["name"] not in old), 90)
    wait_for("every SecretSync Ready after the controller was killed",
             lambda: all(ready(nm).get("status") == "True" for nm in names + more), 90)
    FIGURES["secretsync-restart"] = f"controller killed mid-sync: all {2 * n} Ready {time.time() - t0:.1f} s later"
    bad = [nm for nm in more if secret_values(nm) != {"password": "storm-value-0"}]
    bad += [nm for i, nm in enumerate(names) if secret_values(nm) != {"v": f"storm-value-{i % objects}"}]
    if bad:
        raise Failure(f"wrong or missing Secrets after the restart: {bad}")
    # The new leader rewrote nothing that was already right.
    rewritten = sync_metrics().get('secretsync_api_writes_total{kind="secret"}', 0)
    if rewritten > n:
        raise Failure(f"the new leader wrote {rewritten} Secrets; at most the {n} new ones were due")
    for nm in names + more + ["ss-db"]:
        kubectl("delete", "secretsync", nm, "-n", NS, "--wait=false", check=False)


def remove_workloads():
    """Workloads go before the driver, while it can still unmount their volumes (as an operator must
    do before uninstalling any CSI driver)."""
    for ns in (NS, NS2):
        kubectl("delete", "deployments", "--all", "-n", ns, "--wait=true", check=False, timeout=180)
        kubectl("delete", "pods", "--all", "-n", ns, "--wait=true", "--grace-period=2", check=False, timeout=180)


# ----------------------------------------------------------------------------------------------------


def main():
    only = {s for s in os.environ.get("E2E_ONLY", "").split(",") if s}
    results = []
    started = time.time()
    emu = Emulator()
    inspector = Inspector()
    ctx = {"emu": emu}
    failing_pods = []

    def run(name, fn, *args):
        if only and name not in only and name != "install":
            return
        t0 = time.time()
        try:
            fn(ctx, *args)
            results.append((name, True, time.time() - t0, ""))
            print(f"PASS {name} ({time.time() - t0:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - a scenario's every failure is reported, the rest still run
            reason = str(e) if isinstance(e, Failure) else f"{type(e).__name__}: {e}"
            results.append((name, False, time.time() - t0, reason))
            print(f"FAIL {name}: {reason} ({time.time() - t0:.1f} s)", flush=True)
            if not isinstance(e, Failure):
                traceback.print_exc()
            pods = [(p["metadata"]["namespace"], p["metadata"]["name"]) for ns in (NS, NS2)
                    for p in (get("pods", ns=ns, check=False) or {"items": []})["items"]
                    if not pod_ready(p["metadata"]["name"], ns)]
            failing_pods.extend(pods)
            print(dump([NS, NS2, ATTACKER, EMU_NS], DRIVER_NS, pods), flush=True)

    def setup(ctx):
        for ns in (NS, NS2, ATTACKER, EMU_NS):
            kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", timeout=180)
        emu.start()
        kubectl("create", "namespace", NS)
        apply(sp_creds(NS))
        t0 = time.time()
        helm().install(str(CHART), RELEASE, chart_values(emu), namespace=DRIVER_NS, timeout=180, wait="watcher")
        wait_for("the DaemonSet Ready (registrar in CSINode, /readyz 200)", driver_ready, 120)
        # The liveness-probe sidecar answers on the healthz port after probing the driver's CSI socket.
        wait_for("the liveness probe healthy", lambda: "ok" in pod_proxy(driver_pod(), 9808, "/healthz").lower(), 30)
        FIGURES["install"] = f"helm install to Ready in {time.time() - t0:.1f} s"
        inspector.start()

    run("install", setup)
    if results and not results[-1][1]:
        print(f"0 passed, 1 failed (install) in {time.time() - started:.0f} s")
        return 1
    run("classic-exercise", s_classic)
    run("workload-identity", s_workload_identity)
    run("identity-binding", s_identity_binding)
    run("sp-key-cert-alias", s_keys_certs_alias)
    run("json-keys", s_json_keys)
    run("object-selector", s_selector)
    run("last-known-good", s_last_known_good)
    run("optional-object", s_optional)
    run("secret-sync", s_sync)
    run("namespaces-missing-two-classes", s_namespaces)
    run("pod-status-takeover", s_takeover)
    run("rotation", s_rotation)
    run("api-outage", s_api_outage)
    run("refresh-now-and-class-interval", s_refresh_now)
    run("certificate-expiry", s_cert_expiry)
    run("hostile-tenants", s_hostile_tenants)
    run("provider-isolation", s_provider_isolation)
    run("class-policy", s_class_policy)
    run("unmount", s_unmount, inspector)
    if "rot_pod" in ctx:
        run("driver-restart-mid-rotation", s_driver_restart, inspector)
    run("secretsync", s_secret_sync)
    run("secretsync-429-storm-and-restart", s_secret_sync_storm_restart)
    run("metrics", s_metrics)
    run("metrics-auth", s_metrics_auth)
    run("scale-50", s_scale, inspector)
    run("failover-vault", s_failover)
    run("change-events", s_change_events)
    if "rot_pod" in ctx:
        run("helm-upgrade-uninstall", s_upgrade_uninstall)
    if ctx.get("uninstalled"):
        run("migration-from-addon-and-back", s_migration)

    # Teardown: our namespaces and, unless uninstalled above, the release.
    if env_flag("E2E_KEEP"):
        print("E2E_KEEP: leaving everything installed")
        return 1 if any(not r[1] for r in results) else 0
    try:
        if not ctx.get("uninstalled"):
            remove_workloads()
            helm().uninstall(RELEASE, wait="watcher", timeout=120, ignore_not_found=True)
        for ns in (NS, NS2, ATTACKER, EMU_NS):
            kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
        kubectl("delete", "configmap", "kv-emulator-ca", "-n", DRIVER_NS, "--ignore-not-found", check=False)
    finally:
        emu.stop()

    passed = sum(1 for r in results if r[1])
    failed = len(results) - passed
    for k, v in FIGURES.items():
        print(f"figure {k}: {v}")
    print(f"{passed} passed, {failed} failed in {time.time() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
