"""Small helpers over kubectl for the end-to-end scenarios: JSON reads, applies from Python objects,
waits with a reason, and the debugging dump a failing scenario prints. kubectl rather than a client
library, so what runs here is what an operator would type."""

import json
import os
import subprocess
import time


class Failure(Exception):
    """A scenario's expectation that did not hold; the message says what and what was seen."""


def kubectl(*args, input=None, check=True, timeout=120):
    r = subprocess.run(
        ["kubectl", *args],
        input=input.encode() if isinstance(input, str) else input,
        capture_output=True,
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise Failure(f"kubectl {' '.join(args)}: {r.stderr.decode().strip() or r.stdout.decode().strip()}")
    return r.stdout.decode()


def get(kind, name=None, ns=None, check=True):
    args = ["get", kind] + ([name] if name else []) + (["-n", ns] if ns else []) + ["-o", "json"]
    out = kubectl(*args, check=check)
    return json.loads(out) if out.strip() else None


def exists(kind, name, ns=None):
    args = ["get", kind, name, "--ignore-not-found", "-o", "name"] + (["-n", ns] if ns else [])
    return bool(kubectl(*args).strip())


def apply(*objects):
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=e2e", "-f", "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def create(obj):
    kubectl("create", "-f", "-", input=json.dumps(obj))


def delete(kind, name, ns=None, wait=True, grace=None):
    args = ["delete", kind, name, "--ignore-not-found", f"--wait={str(wait).lower()}"]
    if ns:
        args += ["-n", ns]
    if grace is not None:
        args += [f"--grace-period={grace}"]
    kubectl(*args, timeout=180)


def wait_for(what, fn, timeout, interval=0.5):
    """Polls `fn` until it returns a truthy value (returned) or `timeout` seconds pass (Failure naming
    `what` and the last value or error seen)."""
    deadline = time.time() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except Failure as e:
            last = e
        if time.time() > deadline:
            raise Failure(f"{what}: not within {timeout:.0f} s (last: {str(last)[:300]})")
        time.sleep(interval)


class NotYet:
    """A condition that does not hold yet: falsy, and says what was seen (what `wait_for` prints when
    its time runs out)."""

    def __init__(self, seen):
        self.seen = seen  # a string, or a function making it (called only if printed)

    def __bool__(self):
        return False

    def __str__(self):
        return self.seen() if callable(self.seen) else self.seen


def pod_state(p):
    """A pod's phase, each container's state and restarts, in one line."""
    status = p.get("status", {})
    parts = [f"phase {status.get('phase', '?')}"]
    for c in status.get("containerStatuses", []):
        state = c.get("state", {})
        kind = next(iter(state), "?")
        reason = state.get(kind, {}).get("reason", "")
        line = f"{c['name']} {kind}{' ' + reason if reason else ''} restarts {c.get('restartCount', 0)}"
        # Why the last run ended: a process's exit (code, and its logs in the dump) or the runtime's
        # failure to start it at all (StartError, with containerd's message), which a busy node causes.
        last = c.get("lastState", {}).get("terminated")
        if last:
            message = (last.get("message") or "").strip().replace("\n", " ")[:300]
            line += f" (last run: {last.get('reason', '?')}, exit {last.get('exitCode', '?')}{': ' + message if message else ''})"
        parts.append(line)
    return "; ".join(parts)


def pod_ready(name, ns):
    p = get("pod", name, ns, check=False)
    if not p:
        return NotYet(f"pod {ns}/{name} does not exist")
    conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
    if conds.get("Ready") == "True":
        return True

    def seen():  # the events are read only when a timed-out wait prints this, not at every poll
        warnings = [e for e in events(ns, name) if e.get("type") == "Warning"]
        last = f"; last warning {warnings[-1].get('reason')}: {warnings[-1].get('message', '')[:200]}" if warnings else ""
        return pod_state(p) + last
    return NotYet(seen)


def events(ns, involved=None, reason=None):
    items = get("events", ns=ns)["items"]
    return [
        e for e in items
        if (involved is None or e["involvedObject"].get("name") == involved)
        and (reason is None or e.get("reason") == reason)
    ]


def raw(path):
    return kubectl("get", "--raw", path)


def exec_(pod, ns, *cmd, container=None, check=True):
    args = ["exec", pod, "-n", ns] + (["-c", container] if container else []) + ["--", *cmd]
    return kubectl(*args, check=check, timeout=60)


def dump(ns_list, driver_ns, pods=()):
    """What an operator would look at: the logs of every container in the driver's namespace (ours,
    the add-on's, the sync controller's) and in the scenarios' namespaces, current and previous (a
    crash loop shows why it crashed), the events, and `describe` of failing pods."""
    out = []
    for ns in [driver_ns, *ns_list]:
        for p in (get("pods", ns=ns, check=False) or {"items": []})["items"]:
            name = p["metadata"]["name"]
            restarted = {c["name"]: c.get("restartCount", 0) for c in p.get("status", {}).get("containerStatuses", [])}
            for c in p["spec"].get("initContainers", []) + p["spec"]["containers"]:
                lines = 60 if ns == driver_ns else 20
                out.append(f"--- logs {ns}/{name} ({c['name']}, last {lines} lines)")
                out.append(kubectl("logs", name, "-n", ns, "-c", c["name"], f"--tail={lines}", check=False, timeout=30))
                if restarted.get(c["name"]):
                    out.append(f"--- previous logs {ns}/{name} ({c['name']}, restarted {restarted[c['name']]}x)")
                    out.append(kubectl("logs", name, "-n", ns, "-c", c["name"], "--previous", f"--tail={lines}",
                                       check=False, timeout=30))
    for ns in [driver_ns, *ns_list]:
        out.append(f"--- events in {ns}")
        out.append("\n".join(kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False).splitlines()[-25:]))
    for ns, name in pods:
        out.append(f"--- describe pod {ns}/{name}")
        out.append(kubectl("describe", "pod", name, "-n", ns, check=False)[-3000:])
    return "\n".join(out)


def env_flag(name):
    return os.environ.get(name, "") not in ("", "0", "false")
