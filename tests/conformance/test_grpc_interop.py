"""gRPC interop: grpcio (grpc-core), with its default channel options, on both of our Unix sockets.

grpc-core sends the percent-encoded socket path as `:authority` (`tmp%2F...%2Fcsi.sock`), which h2
alone answers with RST_STREAM (PROTOCOL_ERROR); the upstream Go driver and provider accept it, and so
must we (crates/driver/src/uds_authority.rs). The messages are encoded by hand (a few protobuf fields),
so no generated Python code and no protobuf runtime are needed.
"""
import json
import os
import subprocess
import tempfile
import time

import grpc
import pytest

from conftest import ROOT

BINARY = os.environ.get("KEYVAULT_CSI", os.path.join(ROOT, "target", "debug", "keyvault-csi"))


def _varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(field, value):
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _fields(data):
    """Decodes one protobuf message into {field: [values]} (varints as ints, the rest as bytes)."""
    out, i = {}, 0

    def varint():
        nonlocal i
        n = shift = 0
        while True:
            b = data[i]
            i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    while i < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 2:
            length = varint()
            value, i = data[i:i + length], i + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.setdefault(field, []).append(value)
    return out


def _call(channel, method, request):
    identity = lambda b: b  # noqa: E731 - raw bytes in, raw bytes out
    return channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)(request, timeout=30)


def _start(args, sock):
    if not os.path.exists(BINARY):
        pytest.fail(f"{BINARY} not built: run `cargo build` (make test does)")
    proc = subprocess.Popen([BINARY, *args], stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not os.path.exists(sock):
        if proc.poll() is not None:
            pytest.fail(f"keyvault-csi exited: {proc.stderr.read().decode()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"keyvault-csi did not create {sock} within 60 s")
        time.sleep(0.05)
    return proc


def _stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def work():
    # A short path: a Unix socket path is at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="kvgrpc-") as d:
        yield d


def test_grpcio_default_options_on_the_csi_socket(work):
    sock = os.path.join(work, "csi.sock")
    classes = os.path.join(work, "classes")
    os.mkdir(classes)
    proc = _start([f"--endpoint=unix://{sock}", "--nodeid=interop-node", f"--class-dir={classes}",
                   f"--provider-volume={os.path.join(work, 'providers')}", "--metrics-addr=127.0.0.1:0"], sock)
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            info = _fields(_call(channel, "/csi.v1.Identity/GetPluginInfo", b""))
            assert info[1] == [b"secrets-store.csi.k8s.io"]
            node = _fields(_call(channel, "/csi.v1.Node/NodeGetInfo", b""))
            assert node[1] == [b"interop-node"]
            # A request the driver refuses is answered by the driver, not reset by the transport.
            with pytest.raises(grpc.RpcError) as refused:
                _call(channel, "/csi.v1.Node/NodePublishVolume", _string(1, "v") + _string(4, "relative/path"))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    finally:
        _stop(proc)


def test_grpcio_default_options_on_the_provider_socket(emulator, work):
    sock = os.path.join(work, "azure.sock")
    port = str(emulator["port"])
    proc = _start(["provider", f"--endpoint=unix://{sock}", "--metrics-addr=127.0.0.1:0", "--healthz-port=0",
                   "--azure-extra-ca-file", emulator["ca"], "--azure-resolve-to", "127.0.0.1",
                   "--azure-vault-port", port, "--azure-authority-host", emulator["authority"]], sock)
    try:
        with grpc.insecure_channel(f"unix:{sock}") as channel:
            health = _fields(_call(channel, "/grpc.health.v1.Health/Check", b""))
            assert health[1] == [1], "SERVING"
            version = _fields(_call(channel, "/v1alpha1.CSIDriverProvider/Version", _string(1, "v1alpha1")))
            assert version[1] == [b"v1alpha1"]
            # A real mount from the emulator, as the upstream driver asks for it.
            attributes = {
                "keyvaultName": "conformance", "tenantId": emulator["tenant"],
                "objects": "array:\n  - |\n    objectName: seeded\n    objectType: secret\n",
                "csi.storage.k8s.io/pod.name": "p", "csi.storage.k8s.io/pod.namespace": "default",
                "csi.storage.k8s.io/pod.uid": "u", "csi.storage.k8s.io/serviceAccount.name": "default",
            }
            secrets = {"clientid": "sdk-client", "clientsecret": "sdk-secret"}
            request = (_string(1, json.dumps(attributes)) + _string(2, json.dumps(secrets))
                       + _string(3, os.path.join(work, "target")) + _string(4, "420"))
            mounted = _fields(_call(channel, "/v1alpha1.CSIDriverProvider/Mount", request))
            files = [_fields(f) for f in mounted.get(3, [])]
            assert [(f[1][0], f[3][0]) for f in files] == [(b"seeded", b"from-the-seed")]
            ids = [_fields(v)[1][0] for v in mounted[1]]
            assert ids == [b"secret/seeded"]
    finally:
        _stop(proc)
