#!/usr/bin/env python3
"""make bench (cluster): target/bench/cluster.json -> one self-contained HTML page with SVG plots.

  hack/scale-report.py target/bench/cluster.json --html docs/scale-report.html [--check [--screenshot F]]

The page has no external reference (no script, font, style or image from anywhere): it opens from a
file, offline. Every number on it carries where it came from: `data-src` is a path into the run's JSON,
`data-model` a key of the model below (computed from that JSON and the constants named on the page).
`--check` opens the page in headless Chromium with name resolution disabled, reads the DOM the browser
built, and fails unless every plot has a size and all its marks, and every number equals the run's.
"""
import argparse
import html
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

VAULT_BUDGET_10S = 4000  # Key Vault, per vault and region: "all other transactions" (GET secret) per 10 s
DEFAULT_INTERVAL_S = 120  # the add-on's rotation poll interval
EVENTS_INTERVAL_S = 3600  # the safety-net poll with change events on
EXTRAPOLATED = (1000, 5000)
UPSTREAM_WRITES_PER_REMOUNT = 2  # v1.6: SPCPS Create (AlreadyExists) then Update on every remount
UPSTREAM_PUBLISHED_RSS_MIB = (51, 54)  # the upstream load test (v0.0.21, 250 nodes): driver pods only
COLORS = {"ours": "#1f77b4", "ours-events": "#2ca02c", "upstream": "#d62728", "budget": "#555555"}


def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def runs_of(data, events):
    return [(i, r) for i, r in enumerate(data["runs"]) if bool(r["events"]) == events]


def model(data):
    """The per-node constants fitted on the run and what they give at every node count shown."""
    runs = data["runs"]
    polling, events = [r for _, r in runs_of(data, False)], [r for _, r in runs_of(data, True)]
    volumes, objects = runs[0]["volumes_per_node"], runs[0]["objects"]
    m = {
        # Key Vault GETs per node per round: distinct (object, identity) pairs on the node.
        "gets_per_node_round": mean(r["kv_gets_per_interval"] / r["nodes"] for r in polling),
        "api_idle": mean(r["api_per_node_min"]["idle"] for r in runs),
        "api_rotation": mean(r["api_per_node_min"]["rotation"] for r in polling),
        "api_rotation_events": mean(r["api_per_node_min"]["rotation"] for r in events),
        "watches_polling": mean(r["watches_per_node"] for r in polling),
        "watches_events": mean(r["watches_per_node"] for r in events),
        "rss_mib": mean(r["rss_mib"]["mean"] for r in runs),
        "events_p99_s": max((r["change_to_file_s"]["p99"] for r in events), default=0.0),
        "upstream_gets_per_node_round": volumes * objects,
        "upstream_api_per_node_min": UPSTREAM_WRITES_PER_REMOUNT * volumes * 60 / DEFAULT_INTERVAL_S,
    }
    measured = sorted({r["nodes"] for r in runs})
    for n in measured + list(EXTRAPOLATED):
        m[f"{n}/ours_10s"] = n * m["gets_per_node_round"] * 10 / DEFAULT_INTERVAL_S
        m[f"{n}/ours_events_10s"] = n * m["gets_per_node_round"] * 10 / EVENTS_INTERVAL_S
        m[f"{n}/upstream_10s"] = n * m["upstream_gets_per_node_round"] * 10 / DEFAULT_INTERVAL_S
        for k in ("ours", "ours_events", "upstream"):
            m[f"{n}/{k}_budget_pct"] = m[f"{n}/{k}_10s"] / VAULT_BUDGET_10S * 100
        m[f"{n}/ours_api_s"] = n * m["api_idle"] / 60
        m[f"{n}/ours_api_rotation_s"] = n * m["api_rotation"] / 60
        m[f"{n}/upstream_api_s"] = n * m["upstream_api_per_node_min"] / 60
        m[f"{n}/watches_events"] = n * m["watches_events"]
        m[f"{n}/ours_rss_gib"] = n * m["rss_mib"] / 1024
    for i, r in enumerate(runs):
        # A round's GETs as a rate at the add-on's interval: the count per round does not depend on it.
        m[f"run{i}/kv_10s_default"] = r["kv_gets_per_interval"] * 10 / DEFAULT_INTERVAL_S
    return m


def fmt(value, digits):
    return f"{value:,.{digits}f}"


def lookup(data, path):
    node = data
    for part in path.split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


class Page:
    """Numbers go on the page only through `src` (the run's JSON) or `mod` (the model)."""

    def __init__(self, data):
        self.data, self.model = data, model(data)

    def src(self, path, digits=1):
        return f'<span data-src="{path}" data-digits="{digits}">{fmt(float(lookup(self.data, path)), digits)}</span>'

    def mod(self, key, digits=1):
        return f'<span data-model="{key}" data-digits="{digits}">{fmt(self.model[key], digits)}</span>'


# --- SVG -------------------------------------------------------------------------------------------

W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 360, 64, 206, 20, 44


class Axis:
    def __init__(self, lo, hi, log=False, pixels=1.0, flip=False):
        self.lo, self.hi, self.log, self.pixels, self.flip = lo, hi, log, pixels, flip

    def __call__(self, v):
        if self.log:
            v = max(v, self.lo)
            t = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            t = (v - self.lo) / (self.hi - self.lo)
        t = min(max(t, 0.0), 1.0)
        return self.pixels * (1 - t) if self.flip else self.pixels * t

    def ticks(self):
        if self.log:
            return [10 ** e for e in range(math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi)) + 1)
                    if self.lo <= 10 ** e <= self.hi]
        step = 10 ** math.floor(math.log10((self.hi - self.lo) / 4 or 1))
        while (self.hi - self.lo) / step > 8:
            step *= 2
        return [self.lo + k * step for k in range(int((self.hi - self.lo) / step) + 1)]


def tick_label(v):
    return f"{v:,.0f}" if v >= 1 else f"{v:g}"


def plot(fig_id, title, xlabel, ylabel, x, y, series):
    """series: dicts of name, color, kind ('line' or 'points'), dashed, points [(x, y, attr)] where attr is
    the mark's data attribute (`data-src=...` or `data-model=...`) naming the value it shows."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    xa, ya = Axis(*x, pixels=pw), Axis(*y, pixels=ph, flip=True)
    marks = sum(len(s["points"]) for s in series if s["kind"] == "points")
    axes = f'data-x="{x[0]},{x[1]},{int(xa.log)}" data-y="{y[0]},{y[1]},{int(ya.log)}"'
    out = [f'<svg class="plot" id="{fig_id}" data-marks="{marks}" {axes} xmlns="http://www.w3.org/2000/svg" '
           f'viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{html.escape(title)}">',
           f'<title>{html.escape(title)}</title>', f'<g transform="translate({LEFT},{TOP})">',
           f'<rect width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>']
    for t in xa.ticks():
        px = xa(t)
        out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="0" y2="{ph}" stroke="#eee"/>'
                   f'<text x="{px:.1f}" y="{ph + 16}" text-anchor="middle">{tick_label(t)}</text>')
    for t in ya.ticks():
        py = ya(t)
        out.append(f'<line x1="0" x2="{pw}" y1="{py:.1f}" y2="{py:.1f}" stroke="#eee"/>'
                   f'<text x="-6" y="{py + 4:.1f}" text-anchor="end">{tick_label(t)}</text>')
    out.append(f'<text x="{pw / 2}" y="{ph + 36}" text-anchor="middle">{html.escape(xlabel)}</text>'
               f'<text transform="translate(-48,{ph / 2}) rotate(-90)" text-anchor="middle">{html.escape(ylabel)}</text>')
    for k, s in enumerate(series):
        dash = ' stroke-dasharray="6 4"' if s.get("dashed") else ""
        if s["kind"] == "line":
            pts = " ".join(f"{xa(px):.1f},{ya(py):.1f}" for px, py, _ in s["points"])
            out.append(f'<polyline points="{pts}" fill="none" stroke="{s["color"]}" stroke-width="2"{dash}/>')
        else:
            for px, py, attr in s["points"]:
                shape = (f'<circle cx="{xa(px):.1f}" cy="{ya(py):.1f}" r="4.5" fill="{s["color"]}"' if not s.get("hollow")
                         else f'<circle cx="{xa(px):.1f}" cy="{ya(py):.1f}" r="4.5" fill="#fff" stroke="{s["color"]}" stroke-width="2"')
                out.append(f'{shape} data-mark="" data-nodes="{px}" data-value="{py!r}" {attr}><title>{html.escape(s["name"])}: {px:,} nodes, {py:,.2f}</title></circle>')
        ly = 14 + 18 * k
        sym = (f'<line x1="{pw + 12}" x2="{pw + 32}" y1="{ly - 4}" y2="{ly - 4}" stroke="{s["color"]}" stroke-width="2"{dash}/>'
               if s["kind"] == "line" else f'<circle cx="{pw + 22}" cy="{ly - 4}" r="4.5" fill="{s["color"] if not s.get("hollow") else "#fff"}" stroke="{s["color"]}" stroke-width="2"/>')
        out.append(f'{sym}<text x="{pw + 38}" y="{ly}" class="legend">{html.escape(s["name"])}</text>')
    out.append("</g></svg>")
    return "\n".join(out)


def line(xs, f):
    return [(x, f(x), "") for x in xs]


# --- the page --------------------------------------------------------------------------------------

def figures(p):
    d, m = p.data, p.model
    measured = sorted({r["nodes"] for r in d["runs"]})
    span = [measured[0], *EXTRAPOLATED]
    every = measured + list(EXTRAPOLATED)
    xs = (min(measured) * 0.8, max(EXTRAPOLATED) * 1.25)
    g = m["gets_per_node_round"]
    kv = plot("kv-gets", "Key Vault GETs per 10 s against the vault's budget", "nodes (log)", "GETs per 10 s (log)",
              (*xs, True), (1, 100000, True), [
                  {"name": "upstream v1.6, computed", "color": COLORS["upstream"], "kind": "line", "dashed": True,
                   "points": line(span, lambda n: n * m["upstream_gets_per_node_round"] * 10 / DEFAULT_INTERVAL_S)},
                  {"name": "upstream, at each N", "color": COLORS["upstream"], "kind": "points", "hollow": True,
                   "points": [(n, m[f"{n}/upstream_10s"], f'data-model="{n}/upstream_10s"') for n in every]},
                  {"name": "ours, 2-min polls: model", "color": COLORS["ours"], "kind": "line",
                   "points": line(span, lambda n: n * g * 10 / DEFAULT_INTERVAL_S)},
                  {"name": "ours, measured (per 2 min)", "color": COLORS["ours"], "kind": "points",
                   "points": [(r["nodes"], m[f"run{i}/kv_10s_default"], f'data-model="run{i}/kv_10s_default"')
                              for i, r in runs_of(d, False)]},
                  {"name": "ours, extrapolated", "color": COLORS["ours"], "kind": "points", "hollow": True,
                   "points": [(n, m[f"{n}/ours_10s"], f'data-model="{n}/ours_10s"') for n in EXTRAPOLATED]},
                  {"name": "ours, events on: model", "color": COLORS["ours-events"], "kind": "line",
                   "points": line(span, lambda n: n * g * 10 / EVENTS_INTERVAL_S)},
                  {"name": "one vault's budget", "color": COLORS["budget"], "kind": "line", "dashed": True,
                   "points": line([xs[0], xs[1]], lambda n: VAULT_BUDGET_10S)},
              ])
    p99_poll = [(r["nodes"], r["change_to_file_s"]["p99"], f'data-src="runs/{i}/change_to_file_s/p99"') for i, r in runs_of(d, False)]
    p50_poll = [(r["nodes"], r["change_to_file_s"]["p50"], f'data-src="runs/{i}/change_to_file_s/p50"') for i, r in runs_of(d, False)]
    p99_ev = [(r["nodes"], r["change_to_file_s"]["p99"], f'data-src="runs/{i}/change_to_file_s/p99"') for i, r in runs_of(d, True)]
    p50_ev = [(r["nodes"], r["change_to_file_s"]["p50"], f'data-src="runs/{i}/change_to_file_s/p50"') for i, r in runs_of(d, True)]
    bench_interval = next((r["interval_s"] for _, r in runs_of(d, False)), 30)
    lat = plot("latency", "Change in the vault to the file on every volume", "nodes (log)", "seconds (log)",
               (*xs, True), (0.1, 1000, True), [
                   {"name": f"polls every {bench_interval} s: p99", "color": COLORS["ours"], "kind": "points", "points": p99_poll},
                   {"name": f"polls every {bench_interval} s: p50", "color": COLORS["ours"], "kind": "points", "hollow": True, "points": p50_poll},
                   {"name": "2-min polls: bound", "color": COLORS["ours"], "kind": "line", "dashed": True,
                    "points": line(span, lambda n: DEFAULT_INTERVAL_S)},
                   {"name": "events on: p99", "color": COLORS["ours-events"], "kind": "points", "points": p99_ev},
                   {"name": "events on: p50", "color": COLORS["ours-events"], "kind": "points", "hollow": True, "points": p50_ev},
                   {"name": "events: worst p99, held", "color": COLORS["ours-events"], "kind": "line", "dashed": True,
                    "points": line(span, lambda n: m["events_p99_s"])},
               ])
    api_top = max(m["upstream_api_per_node_min"] * 1.5, max(r["api_per_node_min"]["rotation"] for r in d["runs"]) * 1.5, 1)
    api = plot("api", "API server requests per node-minute", "nodes (log)", "requests per node-minute",
               (*xs, True), (0, math.ceil(api_top), False), [
                   {"name": "upstream v1.6, computed", "color": COLORS["upstream"], "kind": "line", "dashed": True,
                    "points": line(span, lambda n: m["upstream_api_per_node_min"])},
                   {"name": "ours, idle", "color": COLORS["ours"], "kind": "points", "hollow": True,
                    "points": [(r["nodes"], r["api_per_node_min"]["idle"], f'data-src="runs/{i}/api_per_node_min/idle"') for i, r in enumerate(d["runs"])]},
                   {"name": "ours, rotating (polls)", "color": COLORS["ours"], "kind": "points",
                    "points": [(r["nodes"], r["api_per_node_min"]["rotation"], f'data-src="runs/{i}/api_per_node_min/rotation"') for i, r in runs_of(d, False)]},
                   {"name": "ours, rotating (events)", "color": COLORS["ours-events"], "kind": "points",
                    "points": [(r["nodes"], r["api_per_node_min"]["rotation"], f'data-src="runs/{i}/api_per_node_min/rotation"') for i, r in runs_of(d, True)]},
                   {"name": "ours, rotating: model", "color": COLORS["ours"], "kind": "line",
                    "points": line(span, lambda n: m["api_rotation"])},
               ])
    rss_top = max(UPSTREAM_PUBLISHED_RSS_MIB[1], max(r["rss_mib"]["max"] for r in d["runs"])) * 1.25
    rss = plot("rss", "Resident memory per node", "nodes (log)", "MiB per node", (*xs, True), (0, math.ceil(rss_top / 10) * 10, False), [
        {"name": "upstream, published", "color": COLORS["upstream"], "kind": "line", "dashed": True,
         "points": line(span, lambda n: UPSTREAM_PUBLISHED_RSS_MIB[1])},
        {"name": "ours: mean per driver", "color": COLORS["ours"], "kind": "points",
         "points": [(r["nodes"], r["rss_mib"]["mean"], f'data-src="runs/{i}/rss_mib/mean"') for i, r in enumerate(d["runs"])]},
        {"name": "ours: largest driver", "color": COLORS["ours"], "kind": "points", "hollow": True,
         "points": [(r["nodes"], r["rss_mib"]["max"], f'data-src="runs/{i}/rss_mib/max"') for i, r in enumerate(d["runs"])]},
        {"name": "ours: model", "color": COLORS["ours"], "kind": "line", "points": line(span, lambda n: m["rss_mib"])},
    ])
    return kv, lat, api, rss


def measured_table(p):
    rows = []
    for i, r in enumerate(p.data["runs"]):
        rows.append(
            f"<tr><td>{r['nodes']}</td><td>{'on' if r['events'] else 'off'}</td><td>{r['interval_s']} s</td>"
            f"<td>{p.src(f'runs/{i}/api_per_node_min/idle', 2)}</td><td>{p.src(f'runs/{i}/api_per_node_min/burst_total_per_node')}</td>"
            f"<td>{p.src(f'runs/{i}/api_per_node_min/rotation')}</td><td>{p.src(f'runs/{i}/watches_per_node')}</td>"
            f"<td>{p.src(f'runs/{i}/rss_mib/mean')}</td><td>{p.src(f'runs/{i}/kv_gets_per_interval', 0)}</td>"
            f"<td>{p.src(f'runs/{i}/kv_gets_max_10s', 0)}</td><td>{p.src(f'runs/{i}/change_to_file_s/p50', 2)} / "
            f"{p.src(f'runs/{i}/change_to_file_s/p99', 2)}</td></tr>")
    return ("<table><tr><th>nodes</th><th>events</th><th>poll interval</th><th>API req/node/min, idle</th>"
            "<th>API req/node, mount burst</th><th>API req/node/min, rotating</th><th>watches/node</th>"
            "<th>RSS MiB per driver</th><th>KV GETs per round</th><th>most KV GETs in any 10 s</th>"
            "<th>change → file p50 / p99 s</th></tr>" + "".join(rows) + "</table>")


def model_table(p):
    rows = []
    for n in EXTRAPOLATED:
        rows.append(
            f"<tr><td>{n:,}</td><td>{p.mod(f'{n}/ours_10s', 0)} ({p.mod(f'{n}/ours_budget_pct')} %)</td>"
            f"<td>{p.mod(f'{n}/ours_events_10s', 0)} ({p.mod(f'{n}/ours_events_budget_pct')} %) + changes</td>"
            f"<td>{p.mod(f'{n}/upstream_10s', 0)} ({p.mod(f'{n}/upstream_budget_pct')} %)</td>"
            f"<td>{p.mod(f'{n}/ours_api_rotation_s')}</td><td>{p.mod(f'{n}/upstream_api_s')}</td>"
            f"<td>{p.mod(f'{n}/watches_events', 0)}</td><td>{p.mod(f'{n}/ours_rss_gib')}</td></tr>")
    return ("<table><tr><th>nodes</th><th>ours: KV GETs per 10 s, 2-min polls (% of budget)</th>"
            "<th>ours: KV GETs per 10 s, events on</th><th>upstream v1.6, computed: KV GETs per 10 s</th>"
            "<th>ours: API requests/s, rotating</th><th>upstream, computed: API requests/s</th>"
            "<th>ours: watches (events on)</th><th>ours: RSS, GiB in all</th></tr>" + "".join(rows) + "</table>")


CSS = """body{font:15px/1.45 system-ui,sans-serif;max-width:1340px;margin:24px auto;padding:0 16px;color:#222}
h1{font-size:24px}h2{font-size:19px;margin-top:28px}table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f4f4f4}
.figs{display:flex;flex-wrap:wrap;gap:8px}svg.plot{font-size:11px;font-family:system-ui,sans-serif}
svg .legend{font-size:11px}code{background:#f4f4f4;padding:0 3px}.note{color:#555;font-size:13px}"""

# Runs in the browser: what it laid out, for `--check` to read back from the DOM.
PROBE = """(function(){var figs=[].map.call(document.querySelectorAll('svg.plot'),function(s){var b=s.getBoundingClientRect();
var drawn=[].filter.call(s.querySelectorAll('[data-mark]'),function(c){var r=c.getBoundingClientRect();return r.width>0&&r.height>0;}).length;
return {id:s.id,width:b.width,height:b.height,marks:+s.dataset.marks,drawn:drawn};});
var numbers=[].filter.call(document.querySelectorAll('[data-src],[data-model]'),function(e){return e.tagName==='SPAN'&&e.getBoundingClientRect().width>0;}).length;
document.body.setAttribute('data-rendered',JSON.stringify({figs:figs,numbers:numbers}));})();"""


def render(data):
    p = Page(data)
    m, machine = p.model, data.get("machine", {})
    r0 = data["runs"][0]
    kv, lat, api, rss = figures(p)
    when = html.escape(str(data.get("date", "")))
    machine_text = html.escape(", ".join(f"{k}: {v}" for k, v in machine.items()) if isinstance(machine, dict) else str(machine))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>keyvault-csi: scale report</title><style>{CSS}</style></head>
<body>
<h1>keyvault-csi at cluster scale</h1>
<p>Produced by <code>make bench</code> (cluster section: <code>crates/keyvault-csi/benches/cluster.rs</code>, then
<code>hack/scale-report.py</code>). N keyvault-csi driver processes, each its own node (name, socket, kubelet directory),
on one real kube-apiserver; {r0['volumes_per_node']} pods per node mount a class of {r0['objects']} secrets with one
identity from the Key Vault emulator, which counts every request. Run {when} on {machine_text}. All N drivers share the
machine with the API server and etcd.</p>
<p class="note">Measured: 10, 25 and 50 nodes, change events off (polls every {r0['interval_s'] if not r0['events'] else 30} s) and on
(the sync-controller pulls the vault's change events; polls hourly). Extrapolated: 1,000 and 5,000 nodes, from the per-node
constants below. Upstream v1.6 is computed, not measured: every remount of every volume fetches every object
(no sharing between pods) and writes its pod status twice (Create, then Update). Its memory line is the upstream
load test's published figure (v0.0.21, 250 nodes, driver pods only), not this machine's.</p>
<div class="figs">{kv}{lat}{api}{rss}</div>
<h2>Measured</h2>{measured_table(p)}
<h2>Per-node constants (fitted on the measured runs)</h2>
<table><tr><th>constant</th><th>value</th><th>from</th></tr>
<tr><td>ours: Key Vault GETs per node per round</td><td>{p.mod('gets_per_node_round')}</td><td>distinct (object, identity) per node; polling runs</td></tr>
<tr><td>upstream: Key Vault GETs per node per round</td><td>{p.mod('upstream_gets_per_node_round', 0)}</td><td>volumes × objects</td></tr>
<tr><td>ours: API requests per node-minute, idle</td><td>{p.mod('api_idle', 2)}</td><td>every run</td></tr>
<tr><td>ours: API requests per node-minute, rotating</td><td>{p.mod('api_rotation', 2)}</td><td>polling runs; writes only when a version changes</td></tr>
<tr><td>upstream: API requests per node-minute</td><td>{p.mod('upstream_api_per_node_min', 1)}</td><td>2 writes per volume per 2-min remount</td></tr>
<tr><td>ours: watches per node, events on</td><td>{p.mod('watches_events')}</td><td>the API server's long-running request gauge</td></tr>
<tr><td>ours: RSS per driver, MiB</td><td>{p.mod('rss_mib')}</td><td>every run</td></tr>
<tr><td>ours: change → file p99 with events, s</td><td>{p.mod('events_p99_s', 2)}</td><td>the worst measured; assumed flat beyond</td></tr>
</table>
<h2>Extrapolated (budget: {VAULT_BUDGET_10S:,} GETs per 10 s per vault)</h2>{model_table(p)}
<p class="note">What the model leaves out: the API server's own cost of fanning a watch event out to thousands of
nodes, Key Vault's regional limits beyond one vault, and pods spread over many identities (GETs scale with
distinct identity × object per node, not with pods). Polls are spread by each node's phase; the busiest 10 s of a
synchronized start are in the measured table.</p>
<script>{PROBE}</script>
</body></html>
"""


# --- the browser check -----------------------------------------------------------------------------

def axis_of(text):
    lo, hi, log = text.split(",")
    return float(lo), float(hi), log == "1"


class Numbers(HTMLParser):
    def __init__(self):
        super().__init__()
        self.items, self.stack, self.rendered, self.external, self.axes = [], [], None, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg" and "data-x" in a:
            self.axes = tuple(axis_of(a[k]) for k in ("data-x", "data-y"))
        if tag == "body" and "data-rendered" in a:
            self.rendered = json.loads(a["data-rendered"])
        for k in ("src", "href"):
            if k in a and not (a[k] or "").startswith("#"):
                self.external.append(f"{tag} {k}={a[k]}")
        if "data-src" in a or "data-model" in a:
            item = {"tag": tag, "attrs": a, "text": "", "axes": self.axes}
            self.items.append(item)
            if tag == "span":
                self.stack.append(item)

    def handle_endtag(self, tag):
        if tag == "span" and self.stack:
            self.stack.pop()

    def handle_data(self, text):
        if self.stack:
            self.stack[-1]["text"] += text


def verify(data, dom):
    """Problems found in the browser's DOM: none means the page shows the run."""
    m, parser, problems = model(data), Numbers(), []
    parser.feed(dom)
    if parser.rendered is None:
        return ["the page's probe did not run: no data-rendered on <body>"]
    if parser.external:
        problems.append(f"external references: {parser.external}")
    for fig in parser.rendered["figs"]:
        if fig["width"] <= 0 or fig["height"] <= 0 or fig["drawn"] != fig["marks"] or fig["marks"] == 0:
            problems.append(f"plot {fig['id']} not rendered: {fig}")
    if len(parser.rendered["figs"]) != 4:
        problems.append(f"{len(parser.rendered['figs'])} plots rendered, 4 expected")
    spans = [i for i in parser.items if i["tag"] == "span"]
    if parser.rendered["numbers"] != len(spans):
        problems.append(f"{parser.rendered['numbers']} of {len(spans)} numbers laid out")
    for item in parser.items:
        a = item["attrs"]
        expected = float(lookup(data, a["data-src"])) if "data-src" in a else m[a["data-model"]]
        if item["tag"] == "span":
            if item["text"].strip() != fmt(expected, int(a["data-digits"])):
                problems.append(f"{a.get('data-src') or a.get('data-model')}: page says {item['text']!r}, "
                                f"the run gives {fmt(expected, int(a['data-digits']))}")
        elif "data-mark" in a:
            problems += mark_problems(data, item, expected)
    return problems


def mark_problems(data, item, expected):
    """A mark shows its number, for the right node count, where the plot's axes put that number."""
    a, name = item["attrs"], item["attrs"].get("data-src") or item["attrs"].get("data-model")
    head = name.split("/")[0]
    nodes = data["runs"][int(name.split("/")[1])]["nodes"] if head == "runs" else (
        data["runs"][int(head[3:])]["nodes"] if head.startswith("run") else int(head))
    value = float(a["data-value"])
    if int(float(a["data-nodes"])) != nodes or not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12):
        return [f"mark {name}: shows {value} at {a['data-nodes']} nodes, the run gives {expected} at {nodes}"]
    (xlo, xhi, xlog), (ylo, yhi, ylog) = item["axes"]
    cx = Axis(xlo, xhi, xlog, W - LEFT - RIGHT)(nodes)
    cy = Axis(ylo, yhi, ylog, H - TOP - BOTTOM, flip=True)(expected)
    if abs(float(a["cx"]) - cx) > 0.11 or abs(float(a["cy"]) - cy) > 0.11:
        return [f"mark {name} drawn at ({a['cx']}, {a['cy']}), its value belongs at ({cx:.1f}, {cy:.1f})"]
    return []


def browser():
    for name in ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check(data, page, shot):
    exe = browser()
    if exe is None:
        sys.exit("scale-report: no Chromium found (apt-get install chromium-headless-shell)")
    with tempfile.TemporaryDirectory() as profile:
        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking", "--window-size=1400,2000",
                "--virtual-time-budget=5000"]
        dom = subprocess.run(args + ["--dump-dom", f"file://{os.path.abspath(page)}"], capture_output=True,
                             text=True, timeout=120)
        subprocess.run(args + [f"--screenshot={shot}", f"file://{os.path.abspath(page)}"], capture_output=True, timeout=120)
    if dom.returncode != 0 or "<body" not in dom.stdout:
        sys.exit(f"scale-report: Chromium failed ({dom.returncode}): {dom.stderr[-2000:]}")
    problems = verify(data, dom.stdout)
    if problems:
        sys.exit("scale-report: the page in Chromium does not match the run:\n  " + "\n  ".join(problems[:40]))
    parser = Numbers()
    parser.feed(dom.stdout)
    r = parser.rendered
    print(f"scale-report: Chromium rendered {len(r['figs'])} plots ({sum(f['drawn'] for f in r['figs'])} marks) and "
          f"{r['numbers']} numbers, all equal to the run's JSON; screenshot {os.path.normpath(shot)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("--html", required=True)
    ap.add_argument("--check", action="store_true", help="open the page in headless Chromium and compare")
    ap.add_argument("--screenshot", help="with --check: where to keep what Chromium drew (PNG)")
    a = ap.parse_args()
    with open(a.json) as f:
        data = json.load(f)
    page = render(data)
    with open(a.html, "w") as f:
        f.write(page)
    print(f"scale-report: wrote {a.html} ({len(page):,} bytes)")
    if a.check:
        with tempfile.TemporaryDirectory() as tmp:
            check(data, a.html, a.screenshot or os.path.join(tmp, "scale-report.png"))


if __name__ == "__main__":
    main()
