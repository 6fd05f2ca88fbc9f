"""Starts kv-emulator for Azure's own Python SDKs and points them at it.

Only documented client options are used: `connection_verify` (trust the emulator's CA), the
`authority` of azure-identity, and `disable_instance_discovery` (the authority has a port). Name
resolution of `*.vault.azure.net` and `login.microsoftonline.com` is redirected to 127.0.0.1 for the
test process, as an /etc/hosts entry would do; the emulator itself is not made lenient.
"""
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
import ssl

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"

_real_getaddrinfo = socket.getaddrinfo


def _local_getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and (host.endswith(".vault.azure.net") or host.endswith(".queue.core.windows.net")
                                  or host == "login.microsoftonline.com"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="session")
def emulator():
    socket.getaddrinfo = _local_getaddrinfo
    binary = os.environ.get("KV_EMULATOR", os.path.join(ROOT, "target", "debug", "kv-emulator"))
    if not os.path.exists(binary):
        pytest.fail(f"{binary} not built: run `cargo build -p emulator` (make test does)")
    work = tempfile.mkdtemp(prefix="kvemu-")
    ready = os.path.join(work, "ready.json")
    ca = os.path.join(work, "ca.pem")
    proc = subprocess.Popen(
        [binary, "--seed", os.path.join(os.path.dirname(__file__), "seed.yaml"),
         "--https-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--ca-file", ca, "--ready-file", ready],
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while not os.path.exists(ready):
        if proc.poll() is not None:
            pytest.fail(f"kv-emulator exited: {proc.stderr.read().decode()}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("kv-emulator did not start within 30 s")
        time.sleep(0.05)
    time.sleep(0.05)
    info = json.load(open(ready))
    port = int(info["https"].rsplit(":", 1)[1])
    yield {
        "port": port,
        "ca": ca,
        "vault_url": f"https://conformance.vault.azure.net:{port}",
        "queue_account_url": f"https://confevents.queue.core.windows.net:{port}",
        "authority": f"https://login.microsoftonline.com:{port}",
        "tenant": TENANT,
    }
    proc.terminate()
    proc.wait(timeout=10)
    socket.getaddrinfo = _real_getaddrinfo


def control(emulator, path):
    """GET an emulator control endpoint (JSON)."""
    ctx = ssl.create_default_context(cafile=emulator["ca"])
    with urllib.request.urlopen(f"https://127.0.0.1:{emulator['port']}/_emulator/{path}", context=ctx) as r:
        return json.load(r)
