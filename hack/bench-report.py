#!/usr/bin/env python3
"""Turns target/bench/sidebyside.json (make bench) into tables, an SVG, and optionally the README's comparison.

Every figure printed here comes from that one run: nothing is computed from constants.
  hack/bench-report.py target/bench/sidebyside.json [--svg docs/bench.svg] [--readme README.md]
"""
import argparse
import json
import statistics

COLUMNS = {"upstream": "upstream v1.6 + mock provider", "ours-mock": "keyvault-csi + mock provider",
           "ours-mock-no-api": "keyvault-csi + mock provider, no API server",
           "ours-mock-sync": "keyvault-csi + mock provider, --api-writes=synchronous",
           "ours-azure": "keyvault-csi + Azure (emulated, 20 ms)",
           "ours-azure-isolated": "keyvault-csi + Azure in its own process (the chart's default)"}
COLORS = {"upstream": "#d62728", "ours-mock": "#1f77b4", "ours-mock-no-api": "#9467bd", "ours-mock-sync": "#8c564b",
          "ours-azure": "#2ca02c", "ours-azure-isolated": "#17becf"}
# Columns of the main tables; `ours-mock-no-api` only serves the split below.
MAIN = ("upstream", "ours-mock", "ours-azure", "ours-azure-isolated")
BEGIN, END = "<!-- bench:begin (hack/bench-report.py --readme) -->", "<!-- bench:end -->"


def spread(values, fmt="{:.1f}"):
    """Median of the repeats, with the range when there is more than one."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1 or max(values) == min(values):
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def grouped(column):
    """(volumes, concurrency) -> list of phase results (the repeats)."""
    out = {}
    for p in column["phases"]:
        out.setdefault((p["volumes"], p["concurrency"]), []).append(p)
    return out


def main_columns(data):
    return [c for c in data["columns"] if c["name"] in MAIN]


def latency_table(data, op):
    cols = main_columns(data)
    keys = sorted({k for c in cols for k in grouped(c)})
    head = "| volumes × concurrency | " + " | ".join(f"{COLUMNS[c['name']]}: {op}/s · p50 / p90 / p99 ms" for c in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    for k in keys:
        cells = []
        for c in cols:
            runs = grouped(c).get(k, [])
            r = [x[op] for x in runs]
            cells.append(f"{spread([x['per_s'] for x in r])} · {spread([x['p50_ms'] for x in r])} / "
                         f"{spread([x['p90_ms'] for x in r])} / {spread([x['p99_ms'] for x in r])}")
        lines.append(f"| {k[0]} × {k[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resources_table(data):
    cols = main_columns(data)
    biggest = max(k for c in cols for k in grouped(c))
    lines = ["| | " + " | ".join(COLUMNS[c["name"]] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def row(label, f):
        lines.append(f"| {label} | " + " | ".join(f(c) for c in cols) + " |")

    def rss(d):
        return " + ".join(f"{v:.1f}" for k, v in sorted(d.items(), key=lambda kv: kv[0] != "driver")) + " MiB"

    row("RSS idle (driver + provider)", lambda c: rss(c["rss_idle_mib"]))
    row(f"RSS after publishing {biggest[0]} (concurrency {biggest[1]})",
        lambda c: rss(grouped(c)[biggest][-1]["rss_after_publish_mib"]))
    row(f"RSS after unpublishing them", lambda c: rss(grouped(c)[biggest][-1]["rss_after_unpublish_mib"]))
    row(f"CPU s per 100 publishes ({biggest[0]} × {biggest[1]})",
        lambda c: spread([p["publish"]["cpu_s"] / p["volumes"] * 100 for p in grouped(c)[biggest]], "{:.2f}"))
    row(f"CPU s per 100 unpublishes", lambda c: spread([p["unpublish"]["cpu_s"] / p["volumes"] * 100 for p in grouped(c)[biggest]], "{:.2f}"))
    row("API requests per publish", lambda c: spread([p["publish"]["api_requests"] / p["volumes"] for p in grouped(c)[biggest]], "{:.2f}"))
    row("API requests per unpublish", lambda c: spread([p["unpublish"]["api_requests"] / p["volumes"] for p in grouped(c)[biggest]], "{:.2f}"))

    def errors(c):
        total = {}
        for p in c["phases"]:
            for op in ("publish", "unpublish"):
                for code, n in p[op]["errors"].items():
                    total[f"{op} {code}"] = total.get(f"{op} {code}", 0) + n
        return ", ".join(f"{k}: {v}" for k, v in sorted(total.items())) or "0"

    row("errors (all phases)", errors)
    return "\n".join(lines)


def rotation_table(data):
    cols = [c for c in main_columns(data) if "rotation" in c]
    lines = ["| rotation of {} volumes, kubelet republishing every {} s | ".format(
        cols[0]["rotation"]["volumes"], cols[0]["rotation"]["interval_s"]) + " | ".join(COLUMNS[c["name"]] for c in cols) + " |",
        "|---" * (len(cols) + 1) + "|"]

    def row(label, f):
        lines.append(f"| {label} | " + " | ".join(f(c["rotation"]) for c in cols) + " |")

    def when(r, q):
        t = r["files"]["changed_at_s"]
        if not t:
            return "never"
        return f"{t[min(len(t) - 1, int(q * (len(t) - 1)))]:.1f} s"

    row("first file changed", lambda r: when(r, 0))
    row("half the files changed", lambda r: when(r, 0.5))
    row("every file changed", lambda r: when(r, 1) if r["files"]["unchanged"] == 0 else f"{r['files']['unchanged']} never changed")
    row("CPU s per minute (driver + provider)", lambda r: f"{r['cpu_s_per_min']:.2f}")
    row("API requests per minute", lambda r: f"{r['api_requests_per_min']:.0f}")
    row("RSS (driver + provider)", lambda r: " + ".join(f"{v:.1f}" for k, v in sorted(r["rss_mib"].items(), key=lambda kv: kv[0] != "driver")) + " MiB")
    row("republish errors", lambda r: ", ".join(f"{k}: {v}" for k, v in r["republish_errors"].items()) or "0")
    return "\n".join(lines)


def split_table(data):
    """Publish latency of keyvault-csi with and without the API server: the rest is API time."""
    by = {c["name"]: grouped(c) for c in data["columns"]}
    if "ours-mock" not in by or "ours-mock-no-api" not in by:
        return ""
    lines = ["| volumes × concurrency | publish p50 with the API server | without it (classes from files, no pod status) | waiting on the API server |",
             "|---|---|---|---|"]
    for k in sorted(by["ours-mock"]):
        if k not in by["ours-mock-no-api"]:
            continue
        with_api = statistics.median(p["publish"]["p50_ms"] for p in by["ours-mock"][k])
        without = statistics.median(p["publish"]["p50_ms"] for p in by["ours-mock-no-api"][k])
        share = (with_api - without) / with_api * 100 if with_api else 0
        lines.append(f"| {k[0]} × {k[1]} | {with_api:.1f} ms | {without:.1f} ms | {with_api - without:.1f} ms ({share:.0f}%) |")
    return "Where a keyvault-csi publish spends its time (same mock provider):\n\n" + "\n".join(lines)


def writes_table(data):
    """Publish with the background writer (the default) and with --api-writes=synchronous (upstream's
    semantics), beside upstream: throughput, latency, and the speed-up over upstream's throughput."""
    by = {c["name"]: grouped(c) for c in data["columns"]}
    names = [n for n in ("upstream", "ours-mock-sync", "ours-mock") if n in by]
    if "ours-mock" not in by or "upstream" not in by:
        return ""
    lines = ["| volumes × concurrency | " + " | ".join(f"{COLUMNS[n]}: publish/s · p50 / p90 / p99 ms" for n in names)
             + " | × upstream (synchronous → background) |", "|---" * (len(names) + 2) + "|"]
    for k in sorted(by["ours-mock"]):
        cells = []
        for n in names:
            r = [x["publish"] for x in by[n].get(k, [])]
            cells.append(f"{spread([x['per_s'] for x in r])} · {spread([x['p50_ms'] for x in r])} / "
                         f"{spread([x['p90_ms'] for x in r])} / {spread([x['p99_ms'] for x in r])}" if r else "–")
        up = [x["publish"]["per_s"] for x in by["upstream"].get(k, [])]
        ratio = []
        for n in ("ours-mock-sync", "ours-mock"):
            ours = [x["publish"]["per_s"] for x in by.get(n, {}).get(k, [])]
            ratio.append(f"{statistics.median(ours) / statistics.median(up):.1f}×" if ours and up else "–")
        lines.append(f"| {k[0]} × {k[1]} | " + " | ".join(cells) + f" | {' → '.join(ratio)} |")
    return ("Publish with the background API writer (default) and with `--api-writes=synchronous` (upstream's "
            "semantics: kubelet waits for the pod status), same mock provider:\n\n" + "\n".join(lines))


def svg(data, path):
    """Left: publish latency CDFs (largest run, concurrency 16); right: share of files rotated over time."""
    w, h, pad = 980, 380, 55
    pw = (w - 3 * pad) / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    cols = main_columns(data)
    biggest = max(k for c in cols for k in grouped(c))
    lat = {c["name"]: grouped(c)[biggest][-1]["publish"]["latencies_ms"] for c in cols}
    xmax = max(max(v) for v in lat.values() if v) * 1.05
    rot = {c["name"]: c["rotation"] for c in cols if "rotation" in c}
    tmax = max([max(r["files"]["changed_at_s"] or [0]) for r in rot.values()] + [1]) * 1.1

    def panel(x0, title, xlabel, xmax_, series):
        y0, ph = 40, h - 100
        out.append(f'<text x="{x0 + pw / 2}" y="22" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        for i in range(6):
            fx = i / 5
            out.append(f'<text x="{x0 + fx * pw}" y="{y0 + ph + 16}" text-anchor="middle">{fx * xmax_:.0f}</text>')
            out.append(f'<line x1="{x0 + fx * pw}" y1="{y0}" x2="{x0 + fx * pw}" y2="{y0 + ph}" stroke="#eee"/>')
            out.append(f'<text x="{x0 - 6}" y="{y0 + ph - fx * ph + 4}" text-anchor="end">{fx * 100:.0f}%</text>')
        out.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph + 34}" text-anchor="middle">{xlabel}</text>')
        for name, xs in series.items():
            if not xs:
                continue
            total = len(xs)
            pts = [f"{x0:.1f},{y0 + ph:.1f}"]
            for i, x in enumerate(sorted(xs)):
                px = x0 + min(x / xmax_, 1) * pw
                pts.append(f"{px:.1f},{y0 + ph - (i / total) * ph:.1f}")
                pts.append(f"{px:.1f},{y0 + ph - ((i + 1) / total) * ph:.1f}")
            out.append(f'<polyline fill="none" stroke="{COLORS[name]}" stroke-width="2" points="{" ".join(pts)}"/>')

    panel(pad, f"Publish latency, {biggest[0]} volumes at concurrency {biggest[1]} (share of calls done)", "milliseconds", xmax, lat)
    panel(2 * pad + pw, f"Rotation of {cols[0]['rotation']['volumes']} volumes (share of files changed)", "seconds after the change", tmax,
          {n: r["files"]["changed_at_s"] + [float("inf")] * r["files"]["unchanged"] for n, r in rot.items()})
    for i, c in enumerate(cols):
        x = pad + i * 225
        out.append(f'<rect x="{x}" y="{h - 22}" width="14" height="4" fill="{COLORS[c["name"]]}"/>')
        out.append(f'<text x="{x + 20}" y="{h - 16}">{COLUMNS[c["name"]]}</text>')
    out.append(f'<text x="{w - 8}" y="{h - 4}" text-anchor="end" fill="#777" font-size="10">{data["machine"]}, {data["date"]}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def report(data):
    v = data["versions"]
    return "\n\n".join([
        f"Measured by `make bench` on {data['date']}: {data['machine']}; keyvault-csi {v['keyvault-csi']} "
        f"({v.get('keyvault-csi-binary', 'cargo bench build')}), upstream "
        f"driver {v['upstream'] or 'v1.6'}, kube-apiserver {v['kube-apiserver']}; {data['repeats']} runs per row "
        "(median, range in brackets). The same kubelet-like client calls each driver's CSI socket; the mock "
        "provider is upstream's e2e provider over the v1alpha1 socket.",
        "Publish:\n\n" + latency_table(data, "publish"),
        "Unpublish:\n\n" + latency_table(data, "unpublish"),
        "Resources:\n\n" + resources_table(data),
        rotation_table(data),
        split_table(data),
        writes_table(data),
        "![latency and rotation](docs/bench.svg)",
    ])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--svg")
    ap.add_argument("--readme")
    a = ap.parse_args()
    data = json.load(open(a.json))
    text = report(data)
    print(text)
    if a.svg:
        svg(data, a.svg)
        print(f"\nwrote {a.svg}")
    if a.readme:
        readme = open(a.readme).read()
        if BEGIN not in readme or END not in readme:
            raise SystemExit(f"{a.readme} has no {BEGIN} … {END} section")
        head, rest = readme.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        open(a.readme, "w").write(f"{head}{BEGIN}\n{text}\n{END}{tail}")
        print(f"rewrote the comparison in {a.readme}")


if __name__ == "__main__":
    main()
