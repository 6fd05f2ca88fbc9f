"""The Helm chart, rendered by the real Helm engine (helm-python-sdk: Helm v4 as a library) and
validated against the Kubernetes OpenAPI schemas (kubernetes-validate --strict) of the oldest and
newest Kubernetes versions the chart claims; plus the fields that matter, and the rendered arguments
run through the real binary."""

import contextlib
import json
import os
import pathlib
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import helm_python
import kubernetes_validate
import promql_parser
import pytest
import yaml
from helm_python import _native

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "keyvault-csi"
# Oldest (Chart.yaml kubeVersion) and newest Kubernetes the chart claims.
OLDEST, NEWEST = "1.30.0", "1.37.0"

VARIANTS = {
    "defaults": {},
    "rotation": {"enableSecretRotation": True, "rotationPollInterval": "30s", "restartTokenRequests": True},
    "no-sync-json-logs": {"syncSecret": {"enabled": False}, "logFormatJSON": True, "logVerbosity": 5},
    "rancher-digest": {
        "linux": {
            "kubeletRootDir": "/opt/rke/var/lib/kubelet",
            "image": {"repository": "example.azurecr.io/keyvault-csi", "digest": "sha256:" + "a" * 64},
            "additionalProvidersDirs": [],
        },
        "tokenRequests": [],
    },
    "extras": {
        "commonLabels": {"team": "platform"},
        "linux": {
            "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
            "volumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
            "volumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca"}],
            "podAnnotations": {"prometheus.io/scrape": "true"},
        },
        "provider": {"writeCertAndKeyInSeparateFiles": True, "cloudName": "AzureChinaCloud",
                     "tokenProxyURL": "https://proxy.example:8443", "sniName": "a1.ests.aks",
                     "tokenProxyCAFile": "/etc/corp-ca/ca.pem"},
    },
    "class-policy": {"classPolicy": {"enabled": True, "validationActions": ["Warn", "Audit"]},
                     "provider": {"cloudEnvDir": "/etc/azure-stack/"}},
    "sync-controller": {"syncController": {"enabled": True, "replicas": 2, "tokenRequestAudiences": ["a", "b"]}},
    "events": {
        "syncController": {"enabled": True},
        "events": {"enabled": True, "queueUrl": "https://kvevents.queue.core.windows.net/kv-events",
                   "tenantId": "t", "clientId": "c"},
    },
    "monitoring": {
        "metrics": {
            "service": {"enabled": True},
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "dashboard": {"enabled": True},
        },
        "minRotationPollInterval": "1m",
        "certExpiryWarning": "168h",
    },
    # A cluster without pod network or kube-proxy (the e2e kit): host networking, the API server's
    # node address in the environment, extra flags.
    "host-network": {
        "linux": {
            "hostNetwork": True,
            "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                    {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}],
            "volumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
            "volumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca"}],
            "image": {"pullPolicy": "Never"},
        },
        "provider": {"extraArgs": ["--azure-extra-ca-file=/etc/corp-ca/ca.pem"]},
    },
    # The Azure provider in the privileged driver process, its flags among the driver's.
    "in-process": {
        "provider": {"isolation": "none", "cloudEnvHostPath": "/etc/kubernetes/custom-cloud"},
        "linux": {"extraArgs": ["--azure-extra-ca-file=/etc/corp-ca/ca.pem"]},
    },
    "cloud-env": {"provider": {"cloudEnvHostPath": "/etc/kubernetes/custom-cloud"}},
    "metrics-auth": {
        "metrics": {"auth": {"enabled": True}, "service": {"enabled": True}, "serviceMonitor": {"enabled": True},
                    "podMonitor": {"enabled": True}},
        "syncController": {"enabled": True},
    },
}


def render(values=None, kube_version=NEWEST, name="kv", namespace="kube-system"):
    chart = helm_python.Chart.load(str(CHART))
    opts = {"name": name, "namespace": namespace, "kube_version": "v" + kube_version}
    out = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts)))
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def crds():
    return [d for f in ("crds.yaml", "secretsync.yaml")
            for d in yaml.safe_load_all((CHART / "crds" / f).read_text()) if d]


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container(docs, name):
    kind = "Deployment" if name == "sync-controller" else "DaemonSet"
    workload = one(docs, kind)
    return next(c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def test_lint_is_clean():
    report = helm_python.lint(str(CHART), strict=True, kube_version="v" + NEWEST)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kube_version", [OLDEST, NEWEST])
def test_every_object_validates_strictly(variant, kube_version):
    docs = render(VARIANTS[variant], kube_version=kube_version) + crds()
    assert docs
    for d in docs:
        if d["kind"] in MONITORING_KINDS:
            continue  # Prometheus Operator CRDs: not in Kubernetes' schemas (checked below)
        try:
            kubernetes_validate.validate(d, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{d['kind']}/{d['metadata']['name']} is invalid for Kubernetes {kube_version}: {e.message}")


def test_csidriver_matches_the_add_on():
    d = one(render(), "CSIDriver")
    assert d["metadata"]["name"] == "secrets-store.csi.k8s.io"
    spec = d["spec"]
    assert spec["podInfoOnMount"] is True
    assert spec["attachRequired"] is False
    assert spec["volumeLifecycleModes"] == ["Ephemeral"]
    assert spec["requiresRepublish"] is True
    # As the add-on's chart: workload identity and identity binding (useAzureTokenProxy).
    assert spec["tokenRequests"] == [{"audience": "api://AzureADTokenExchange"}, {"audience": "api://AKSIdentityBinding"}]


@pytest.mark.parametrize("kube_version,expected", [("1.34.2", None), ("1.35.0", True), (NEWEST, True)])
def test_tokens_move_to_secrets_from_kubernetes_1_35(kube_version, expected):
    spec = one(render(kube_version=kube_version), "CSIDriver")["spec"]
    assert spec.get("serviceAccountTokenInSecrets") is expected
    none = one(render({"tokenRequests": []}, kube_version=kube_version), "CSIDriver")["spec"]
    assert "tokenRequests" not in none and "serviceAccountTokenInSecrets" not in none


def test_daemonset_mounts_propagate_and_the_add_on_label_finds_the_pods():
    docs = render({"linux": {"kubeletRootDir": "/var/snap/microk8s/common/var/lib/kubelet/"}})
    ds = one(docs, "DaemonSet")
    pod = ds["spec"]["template"]
    assert pod["metadata"]["labels"]["app"] == "secrets-store-csi-driver"
    assert "app" not in ds["spec"]["selector"]["matchLabels"], "the selector must not adopt the add-on's pods"
    root = "/var/snap/microk8s/common/var/lib/kubelet"
    driver = container(docs, "secrets-store")
    mounts = {m["name"]: m for m in driver["volumeMounts"]}
    assert mounts["mountpoint-dir"]["mountPath"] == f"{root}/pods"
    assert mounts["mountpoint-dir"]["mountPropagation"] == "Bidirectional"
    assert driver["securityContext"]["privileged"] is True
    assert driver["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v}
    assert volumes["mountpoint-dir"] == f"{root}/pods"
    assert volumes["plugin-dir"] == f"{root}/plugins/csi-secrets-store/"
    assert volumes["registration-dir"] == f"{root}/plugins_registry/"
    registrar = container(docs, "node-driver-registrar")
    assert f"--kubelet-registration-path={root}/plugins/csi-secrets-store/csi.sock" in registrar["args"]
    env = {e["name"]: e for e in driver["env"]}
    assert env["KUBE_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert {"operator": "Exists"} in pod["spec"]["tolerations"]
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    probe = container(docs, "liveness-probe")
    assert "--csi-address=/csi/csi.sock" in probe["args"]
    assert driver["livenessProbe"]["httpGet"]["port"] == "healthz"
    assert driver["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_host_network_is_off_by_default_and_complete_when_on():
    pod = one(render(), "DaemonSet")["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod and "dnsPolicy" not in pod
    docs = render(VARIANTS["host-network"])
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    # Without it, a host-network pod would resolve names with the node's resolver only.
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    driver = container(docs, "secrets-store")
    provider = container(docs, "provider-azure")
    assert provider["args"][-1] == "--azure-extra-ca-file=/etc/corp-ca/ca.pem"
    assert {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"} in driver["env"]
    assert {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"} in provider["env"], "linux.env applies to both"
    pod = one(render({"linux": {"dnsPolicy": "Default"}}), "DaemonSet")["spec"]["template"]["spec"]
    assert pod["dnsPolicy"] == "Default" and "hostNetwork" not in pod
    # The controller on the host network: a new pod cannot start beside the old one (same ports), so a
    # rollout replaces instead of surging (it would wait forever on one node).
    ctl = one(render({"syncController": {"enabled": True, "hostNetwork": True}}), "Deployment")["spec"]
    assert ctl["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert "strategy" not in one(render({"syncController": {"enabled": True}}), "Deployment")["spec"]


def rules(docs, role):
    return {
        (g, r): sorted(rule["verbs"])
        for rule in one(docs, "ClusterRole", role)["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }


def test_rbac_is_least_privilege():
    docs = render()
    assert rules(docs, "secretproviderclasses-role") == {
        ("", "events"): ["create", "patch"],
        ("", "pods"): ["get", "list", "watch"],
        ("secrets-store.csi.x-k8s.io", "secretproviderclasses"): ["get", "list", "watch"],
        # patch: a rotated volume's status is one merge patch.
        ("secrets-store.csi.x-k8s.io", "secretproviderclasspodstatuses"): sorted(
            ["create", "delete", "get", "list", "patch", "update", "watch"]
        ),
    }
    assert rules(docs, "secretprovidersyncing-role") == {("", "secrets"): ["create", "get", "update"]}
    for name in ["secretproviderclasses-admin-role", "secretproviderclasses-viewer-role", "secretproviderclasspodstatuses-viewer-role"]:
        one(docs, "ClusterRole", name)
    for binding in ["secretproviderclasses-rolebinding", "secretprovidersyncing-rolebinding"]:
        b = one(docs, "ClusterRoleBinding", binding)
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "secrets-store-csi-driver", "namespace": "kube-system"}]
    # Rotation off (the default): no access to Secrets beyond sync, no tokens.
    assert not [d for d in docs if d["metadata"]["name"].startswith("secretproviderrotation")]
    # Rotation on: the nodePublishSecretRef after a restart, but no token minting (kubelet hands tokens
    # over at its next republish) unless restartTokenRequests names the feature that needs it.
    rot = render({"enableSecretRotation": True})
    assert rules(rot, "secretproviderrotation-role") == {("", "secrets"): ["get"]}
    assert "--restart-token-requests" not in container(rot, "secrets-store")["args"]
    minting = render({"enableSecretRotation": True, "restartTokenRequests": True})
    assert rules(minting, "secretproviderrotation-role") == {
        ("", "secrets"): ["get"],
        ("", "serviceaccounts/token"): ["create"],
        ("storage.k8s.io", "csidrivers"): ["get"],
    }
    assert "--restart-token-requests" in container(minting, "secrets-store")["args"]
    assert rules(render({"enableSecretRotation": True, "tokenRequests": []}), "secretproviderrotation-role") == {
        ("", "secrets"): ["get"],
    }
    no_sync = render({"syncSecret": {"enabled": False}})
    assert not [d for d in no_sync if d["metadata"]["name"].startswith("secretprovidersyncing")]
    assert not any(("", "secrets") in rules(no_sync, r["metadata"]["name"]) for r in no_sync if r["kind"] == "ClusterRole")


@pytest.mark.parametrize(
    "values,message",
    [
        ({"rotationPollInterval": "2 minutes"}, "at '/rotationPollInterval'"),
        ({"linux": {"kubeletRootDir": "var/lib/kubelet"}}, "at '/linux/kubeletRootDir'"),
        ({"enableSecretRotation": "yes"}, "at '/enableSecretRotation'"),
        ({"syncSecrets": {"enabled": True}}, "'syncSecrets' not allowed"),
        ({"linux": {"image": {"repository": "x", "pullPolicy": "Sometimes"}}}, "at '/linux/image/pullPolicy'"),
        ({"provider": {"keyvaultRateLimit": 5000}}, "at '/provider/keyvaultRateLimit'"),
        ({"linux": {"extraArgs": ["-v=5"]}}, "at '/linux/extraArgs/0'"),
        ({"linux": {"hostNetwork": "true"}}, "at '/linux/hostNetwork'"),
        ({"events": {"queueUrl": "http://a.queue.core.windows.net/q"}}, "at '/events/queueUrl'"),
        ({"events": {"identity": "pod"}}, "at '/events/identity'"),
    ],
)
def test_bad_values_are_rejected_with_the_path(values, message):
    with pytest.raises(helm_python.HelmValuesError) as e:
        render(values)
    assert message in str(e.value)


def test_crds_are_the_three_upstream_crds():
    names = [d["metadata"]["name"] for d in crds()]
    assert names == [
        "secretproviderclasses.secrets-store.csi.x-k8s.io",
        "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
        "secretsyncs.secret-sync.x-k8s.io",
    ]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_ca_pem():
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@contextlib.contextmanager
def running_driver(values, name="secrets-store"):
    """The real binary with the arguments of the DaemonSet's container `name` for `values` (sockets,
    directories and listen addresses moved to a temporary directory and free ports), serving; yields
    its metrics port."""
    binary = ROOT / "target" / "debug" / "keyvault-csi"
    assert binary.exists(), "build first (make test builds it)"
    driver = container(render(values), name)
    with tempfile.TemporaryDirectory() as tmp:
        sock = pathlib.Path(tmp) / ("csi.sock" if name == "secrets-store" else "azure.sock")
        port = free_port()
        env = {**os.environ, "CSI_ENDPOINT": f"unix://{sock}", "KUBE_NODE_NAME": "node-1", "KUBECONFIG": "/nonexistent"}
        for e in driver.get("env", []):
            if "value" in e:
                env.setdefault(e["name"], e["value"])
        args = []
        for a in driver["args"]:
            # Kubernetes expands $(VAR) from the container's env.
            for k in ("CSI_ENDPOINT", "KUBE_NODE_NAME"):
                a = a.replace(f"$({k})", env[k])
            if a.startswith("--metrics-addr="):
                assert a.split("=", 1)[1].startswith(":"), a
                a = f"--metrics-addr=127.0.0.1:{port}"
            if a.split("=", 1)[0] in ("--provider-volume", "--additional-provider-volume-paths", "--internal-provider-dir"):
                a = a.split("=", 1)[0] + "=" + tmp
            if a.startswith("--endpoint=unix://") and name != "secrets-store":
                a = f"--endpoint=unix://{sock}"
            if a.split("=", 1)[0] in ("--metrics-socket", "--provider-metrics-socket"):
                a = a.split("=", 1)[0] + "=" + str(pathlib.Path(tmp) / "metrics.socket")
            if a.startswith("--healthz-port="):
                healthz_port = free_port()
                a = f"--healthz-port={healthz_port}"
            if a.startswith("--cloud-env-dir="):
                a = f"--cloud-env-dir={tmp}"
            if a.startswith("--azure-extra-ca-file="):
                ca = pathlib.Path(tmp) / "ca.pem"
                ca.write_bytes(self_signed_ca_pem())
                a = f"--azure-extra-ca-file={ca}"
            args.append(a)
        # --metrics-secure: HTTPS with a self-signed certificate.
        scheme = "https" if "--metrics-secure" in args else "http"
        # A provider whose metrics are on a Unix socket answers the probes on its health port only.
        probe_port = healthz_port if any(a.startswith("--metrics-socket=") for a in args) else port
        unverified = ssl._create_unverified_context() if scheme == "https" else None
        proc = subprocess.Popen([str(binary), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 20
            while True:
                assert proc.poll() is None, f"exited {proc.returncode}: {proc.stderr.read().decode()}"
                try:
                    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{probe_port}/healthz", timeout=1,
                                                context=unverified) as r:
                        if r.status == 200 and sock.exists():
                            break
                except OSError:
                    pass
                assert time.time() < deadline, "the driver did not serve within 20 s"
                time.sleep(0.1)
            yield port
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_binary_accepts_the_rendered_arguments(variant):
    """The DaemonSet's arguments, run through the real binary: it must serve, not exit with a flag error;
    so must the provider container's, when the provider runs in its own."""
    with running_driver(VARIANTS[variant]):
        pass
    if (VARIANTS[variant].get("provider") or {}).get("isolation", "process") == "process":
        with running_driver(VARIANTS[variant], "provider-azure"):
            pass


def test_the_azure_provider_runs_unprivileged_and_blind_to_the_kubelets_directories():
    docs = render(VARIANTS["cloud-env"])
    pod = one(docs, "DaemonSet")["spec"]["template"]["spec"]
    # Kubernetes refuses port names over 15 characters (the schemas do not say so).
    assert all(len(p["name"]) <= 15 for c in pod["containers"] for p in c.get("ports", [])), pod["containers"]
    provider = container(docs, "provider-azure")
    assert provider["args"][0] == "provider"
    sc = provider["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0 and sc["runAsGroup"] > 0
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {m["name"] for m in provider["volumeMounts"]}
    assert mounted == {"provider-socket-dir", "cloud-env-dir"}, mounted
    host = sorted(volumes[n]["hostPath"]["path"] for n in mounted if "hostPath" in volumes[n])
    assert host == ["/etc/kubernetes/custom-cloud"], "no host path but the operator's cloud-env directory"
    assert volumes["provider-socket-dir"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Mi"}
    assert provider["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "prov-health"}
    # Only the driver container holds the node's API credential.
    assert pod["automountServiceAccountToken"] is False
    api = [c["name"] for c in pod["containers"]
           if any(m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in c.get("volumeMounts", []))]
    assert api == ["secrets-store"], api
    assert provider["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "prov-health"}
    driver = container(docs, "secrets-store")
    assert "--builtin-azure-provider=false" in driver["args"]
    assert "--internal-provider-dir=/run/keyvault-csi/provider" in driver["args"]
    assert not [a for a in driver["args"] if a.split("=")[0] in ("--cloud-name", "--keyvault-rate-limit")]
    assert "cloud-env-dir" not in {m["name"] for m in driver["volumeMounts"]}
    # In process: one container fewer, the provider's flags and the cloud-env mount on the driver.
    docs = render(VARIANTS["in-process"])
    names = [c["name"] for c in one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]]
    assert "provider-azure" not in names
    driver = container(docs, "secrets-store")
    assert "--cloud-name=AzurePublicCloud" in driver["args"] and "--builtin-azure-provider=false" not in driver["args"]
    assert "cloud-env-dir" in {m["name"] for m in driver["volumeMounts"]}


def test_azure_flags_left_in_the_drivers_extra_args_are_refused_with_a_way_out():
    with pytest.raises(Exception) as e:
        render({"linux": {"extraArgs": ["--keyvault-dedup-window=1s"]}})
    assert "provider.extraArgs" in str(e.value)


# ----------------------------------------------------------------------------------------------------
# The SecretSync controller (ours; upstream ships it as a separate chart)

SYNC = {"syncController": {"enabled": True}}


def test_the_sync_controller_is_off_by_default_but_its_crd_ships():
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"Deployment", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}, kinds
    assert "secretsyncs.secret-sync.x-k8s.io" in [d["metadata"]["name"] for d in crds()]


def test_the_sync_controller_binary_accepts_its_rendered_arguments():
    """The Deployment's arguments through the real binary: flags parse, and it stops only at the missing
    cluster (exit 1 naming it), never at a flag (exit 2)."""
    binary = ROOT / "target" / "debug" / "keyvault-csi"
    assert binary.exists(), "build first (make test builds it)"
    for values in (SYNC, VARIANTS["sync-controller"]):
        args = container(render(values), "sync-controller")["args"]
        assert args[0] == "sync-controller"
        env = {**os.environ, "KUBECONFIG": "/nonexistent", "KUBERNETES_SERVICE_HOST": ""}
        r = subprocess.run([str(binary), *args], env=env, capture_output=True, timeout=30)
        assert r.returncode == 1, (r.returncode, r.stderr.decode())
        assert "no Kubernetes configuration" in r.stderr.decode(), r.stderr.decode()


def test_change_events_read_one_configmap_by_name_and_need_the_controller():
    docs = render(VARIANTS["events"])
    reader = one(docs, "Role", "keyvault-csi-invalidations-reader")
    assert reader["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                "resourceNames": ["keyvault-csi-invalidations"], "verbs": ["get", "list", "watch"]}]
    node = container(docs, "secrets-store")["args"]
    assert "--events-poll-interval=1h" in node and "--events-namespace=kube-system" in node
    ctl = container(docs, "sync-controller")
    assert "--events-queue-url=https://kvevents.queue.core.windows.net/kv-events" in ctl["args"]
    assert {"name": "azure-identity-token", "mountPath": "/var/run/secrets/azure/tokens", "readOnly": True} in ctl["volumeMounts"]
    writer = [r for r in one(docs, "Role", "kv-keyvault-csi-sync-controller")["rules"] if r["resources"] == ["configmaps"]]
    assert {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["keyvault-csi-invalidations"],
            "verbs": ["get", "patch"]} in writer
    assert not [d for d in render() if d["metadata"]["name"] == "keyvault-csi-invalidations-reader"]
    with pytest.raises(Exception) as e:
        render({"events": {"enabled": True, "queueUrl": "https://a.queue.core.windows.net/q"}})
    assert "needs syncController.enabled" in str(e.value)


def test_the_class_policy_is_opt_in_and_names_the_operators_directory():
    assert not [d for d in render() if d["kind"].startswith("ValidatingAdmissionPolicy")
                and d["metadata"]["name"] == "keyvault-csi-secretproviderclass"]
    docs = render(VARIANTS["class-policy"])
    policy = one(docs, "ValidatingAdmissionPolicy", "keyvault-csi-secretproviderclass")
    binding = one(docs, "ValidatingAdmissionPolicyBinding", "keyvault-csi-secretproviderclass")
    assert binding["spec"] == {"policyName": "keyvault-csi-secretproviderclass", "validationActions": ["Warn", "Audit"]}
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rules == [{"apiGroups": ["secrets-store.csi.x-k8s.io"], "apiVersions": ["*"],
                      "operations": ["CREATE", "UPDATE"], "resources": ["secretproviderclasses"]}]
    cloud = [v for v in policy["spec"]["validations"] if "cloudEnvFileName" in v.get("message", "")][0]
    assert '"/etc/azure-stack/"' in cloud["expression"] and "/etc/azure-stack (the driver's" in cloud["message"]
    with pytest.raises(Exception):
        render({"classPolicy": {"enabled": True, "validationActions": ["Block"]}})


def test_the_admission_policies_bind_the_controllers_account_and_its_audiences():
    docs = render(VARIANTS["sync-controller"], namespace="secrets")
    deploy = one(docs, "Deployment")
    sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
    assert deploy["spec"]["replicas"] == 2
    # No selector of the DaemonSet's matches the controller's pods (nor the reverse).
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    ds = one(docs, "DaemonSet")
    assert not all(pod_labels.get(k) == v for k, v in ds["spec"]["selector"]["matchLabels"].items())
    ds_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert not all(ds_labels.get(k) == v for k, v in deploy["spec"]["selector"]["matchLabels"].items())
    assert "--leader-elect=true" in container(docs, "sync-controller")["args"]
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    bindings = {d["spec"]["policyName"] for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert set(policies) == bindings and len(policies) == 4
    for p in policies.values():
        cond = p["spec"]["matchConditions"][0]["expression"]
        assert cond == f'request.userInfo.username == "system:serviceaccount:secrets:{sa}"', cond
        assert p["spec"]["failurePolicy"] == "Fail"
    token = next(p for n, p in policies.items() if n.endswith("validate-token-policy"))
    assert '["a","b"]' in token["spec"]["validations"][0]["expression"]
    assert "--token-request-audience=a,b" in container(docs, "sync-controller")["args"]
    # The hash key Secret (no SecretSync owns it) is exempt by name, and it is the name the binary uses.
    create = next(p for n, p in policies.items() if n.endswith("create-update-policy"))
    assert f'"{sa}-hash-key"' in create["spec"]["matchConditions"][1]["expression"]
    assert f"--leader-election-id={sa}" in container(docs, "sync-controller")["args"]
    off = render({"syncController": {"enabled": True, "validatingAdmissionPolicies": {"applyPolicies": False}}})
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmission")]


# ----------------------------------------------------------------------------------------------------
# Monitoring (ours): Service, ServiceMonitor, PodMonitor, PrometheusRule, dashboard

MONITORING = {
    "metrics": {
        "service": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True, "mountLatencySeconds": 100, "certificateExpiryDays": 21},
        "dashboard": {"enabled": True, "namespace": "monitoring"},
    },
}
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def scraped_metric_names():
    """The sample names the real binary exposed after mounts, errors and rotations: written by
    tests/observability.rs (every_metric_family_...), which `make chart` runs first. An idle driver
    would not do: a metric family shows only once it has a series."""
    path = ROOT / "target" / "metric-names.txt"
    assert path.exists(), "run `cargo test -p keyvault-csi --test observability` first (make chart does)"
    return set(path.read_text().split())


def selectors(expr):
    """Every metric name an expression selects, from its parsed syntax tree."""
    found = []

    def walk(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node.name)
        for attr in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
            child = getattr(node, attr, None)
            for c in child if isinstance(child, list) else [child]:
                if c is not None and not isinstance(c, (str, int, float)):
                    walk(c)

    walk(promql_parser.parse(expr))
    return found


def test_monitoring_is_off_by_default():
    kinds = {d["kind"] for d in render()}
    assert not kinds & (MONITORING_KINDS | {"Service", "ConfigMap"}), kinds


def test_the_monitors_find_the_driver_pods_and_keep_our_labels():
    docs = render(MONITORING)
    svc = one(docs, "Service")
    pod_labels = one(docs, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["clusterIP"] == "None"
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    ports = [p["name"] for p in container(docs, "secrets-store")["ports"]]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics" and "metrics" in ports
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "prom"
    assert all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    pm = one(docs, "PodMonitor")
    assert all(pod_labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
    # Both containers' metrics: the driver's, and the Azure provider's (keyvault_*) in its own.
    provider_ports = [p["name"] for p in container(docs, "provider-azure")["ports"]]
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["metrics", "prov-metrics"]
    assert "prov-metrics" in provider_ports
    for eps in (sm["spec"]["endpoints"], pm["spec"]["podMetricsEndpoints"]):
        assert [ep["port"] for ep in eps] == ["metrics", "prov-metrics"], eps
        assert all(ep["honorLabels"] is True for ep in eps), eps
    # AKS managed Prometheus reads the same objects under its own group.
    aks = render({"metrics": {"podMonitor": {"enabled": True, "apiVersion": "azmonitoring.coreos.com/v1"}}})
    assert one(aks, "PodMonitor")["apiVersion"] == "azmonitoring.coreos.com/v1"


def test_every_alert_parses_and_selects_metrics_the_binary_exposes():
    names = scraped_metric_names() | {"up"}
    docs = render(MONITORING)
    rule = one(docs, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {
        "KeyvaultCsiMountErrors", "KeyvaultCsiMountSlow", "KeyvaultCsiRotationFailing", "KeyvaultCsiRotationLagging",
        "KeyvaultCsiKeyVaultThrottled", "KeyvaultCsiKeyVaultAuthFailures", "KeyvaultCsiCertificateExpiring",
        "KeyvaultCsiDriverDown", "KeyvaultCsiApiWritesPending",
    }
    for name, r in alerts.items():
        used = selectors(r["expr"])
        assert used, name
        unknown = [m for m in used if m not in names]
        assert not unknown, f"{name} selects {unknown}, which the binary does not expose"
        assert 'job=~"kv-keyvault-csi-metrics|kube-system/kv-keyvault-csi"' in r["expr"], r["expr"]
        assert r["labels"]["severity"] == "warning" and r["annotations"]["summary"], name
    # Thresholds are values.
    assert alerts["KeyvaultCsiMountSlow"]["expr"].endswith("> 100")
    assert alerts["KeyvaultCsiCertificateExpiring"]["expr"].endswith("< 21 * 86400")
    assert 'error_class="throttled"' in alerts["KeyvaultCsiKeyVaultThrottled"]["expr"]
    custom = render({"metrics": {"prometheusRule": {"enabled": True, "selector": 'job="kubernetes-pods"'}}})
    expr = one(custom, "PrometheusRule")["spec"]["groups"][0]["rules"][0]["expr"]
    assert 'node_publish_error_total{job="kubernetes-pods"}' in expr, expr


def test_the_dashboard_is_for_the_sidecar_and_queries_real_metrics():
    names = scraped_metric_names()
    cm = one(render(MONITORING), "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["keyvault-csi.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for e in exprs:
        concrete = e.replace("$__rate_interval", "5m").replace("$job", ".*")
        unknown = [m for m in selectors(concrete) if m not in names]
        assert not unknown, f"{e} selects {unknown}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_metrics_auth_is_opt_in_secures_every_metrics_port_and_grants_only_the_reviews():
    plain = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert "--metrics-secure" not in container(plain, "secrets-store")["args"]
    node_role = one(plain, "ClusterRole", "secretproviderclasses-role")
    assert not [r for r in node_role["rules"] if "tokenreviews" in r["resources"]]
    assert not [d for d in plain if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-metrics-reader")]
    assert [e["port"] for e in one(plain, "ServiceMonitor")["spec"]["endpoints"]] == ["metrics", "prov-metrics"]

    docs = render(VARIANTS["metrics-auth"])
    driver, provider = container(docs, "secrets-store"), container(docs, "provider-azure")
    assert "--metrics-secure" in driver["args"]
    assert "--provider-metrics-socket=/run/keyvault-csi/provider/metrics.socket" in driver["args"]
    assert not [a for a in driver["args"] if a.startswith("--metrics-cert-path")], "self-signed by default"
    assert driver["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # The provider serves its metrics only on the socket the two containers share; no metrics port.
    assert "--metrics-socket=/run/keyvault-csi/provider/metrics.socket" in provider["args"]
    assert [p["name"] for p in provider["ports"]] == ["prov-health"]
    assert provider["readinessProbe"]["httpGet"]["port"] == "prov-health"
    sync = container(docs, "sync-controller")
    assert "--metrics-secure" in sync["args"]
    assert sync["readinessProbe"]["httpGet"]["scheme"] == "HTTPS" == sync["livenessProbe"]["httpGet"]["scheme"]
    for role in (one(docs, "ClusterRole", "secretproviderclasses-role"), one(docs, "ClusterRole", "kv-keyvault-csi-sync-controller")):
        granted = {(r["apiGroups"][0], r["resources"][0]): r["verbs"] for r in role["rules"]}
        assert granted[("authentication.k8s.io", "tokenreviews")] == ["create"]
        assert granted[("authorization.k8s.io", "subjectaccessreviews")] == ["create"]
    reader = one(docs, "ClusterRole", "kv-keyvault-csi-metrics-reader")
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics", "/metrics/provider"], "verbs": ["get"]}]
    service = one(docs, "Service", "kv-keyvault-csi-metrics")
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    endpoints = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("metrics", "/metrics"), ("metrics", "/metrics/provider")]
    for e in endpoints:
        assert e["scheme"] == "https" and e["tlsConfig"] == {"insecureSkipVerify": True}
        assert e["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert all("bearerTokenFile" not in e for e in one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"])

    # A certificate Secret is mounted where the flag points, in both workloads.
    with_cert = render({"metrics": {"auth": {"enabled": True, "certSecretName": "metrics-tls",
                                             "authorization": {"type": "Bearer", "credentials": {"name": "t", "key": "k"}}},
                                    "podMonitor": {"enabled": True}}, "syncController": {"enabled": True}})
    for name in ("secrets-store", "sync-controller"):
        c = container(with_cert, name)
        assert "--metrics-cert-path=/etc/keyvault-csi/metrics-tls" in c["args"]
        assert {"name": "metrics-tls", "mountPath": "/etc/keyvault-csi/metrics-tls", "readOnly": True} in c["volumeMounts"]
    volumes = one(with_cert, "DaemonSet")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "metrics-tls", "secret": {"secretName": "metrics-tls"}} in volumes
    pm = one(with_cert, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
    assert pm["authorization"] == {"type": "Bearer", "credentials": {"name": "t", "key": "k"}}
    # In-process: no socket to relay, the one port serves everything.
    inproc = render({"metrics": {"auth": {"enabled": True}, "serviceMonitor": {"enabled": True}},
                     "provider": {"isolation": "none"}})
    assert not [a for a in container(inproc, "secrets-store")["args"] if "metrics-socket" in a]
    assert [e["path"] for e in one(inproc, "ServiceMonitor")["spec"]["endpoints"]] == ["/metrics"]
