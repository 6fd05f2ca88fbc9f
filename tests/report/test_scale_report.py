"""hack/scale-report.py: the model against hand computation, the page self-contained, and the check
catching a page that does not show the run. `cluster.json` is a recorded `make bench` cluster run."""
import importlib.util
import json
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("scale_report", ROOT / "hack" / "scale-report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)
RUN = json.loads((pathlib.Path(__file__).parent / "cluster.json").read_text())


def probed(page):
    """What the page's probe writes into <body> in a browser that laid everything out."""
    marks = {m.group(1): int(m.group(2)) for m in re.finditer(r'<svg class="plot" id="([^"]+)" data-marks="(\d+)"', page)}
    numbers = len(re.findall(r'<span data-(?:src|model)=', page))
    rendered = {"figs": [{"id": k, "width": 660, "height": 360, "marks": v, "drawn": v} for k, v in marks.items()],
                "numbers": numbers}
    return page.replace("<body>", f"<body data-rendered='{json.dumps(rendered)}'>", 1)


def test_the_model_is_the_hand_computed_one():
    m = report.model(RUN)
    polling = [r for r in RUN["runs"] if not r["events"]]
    per_node = sum(r["kv_gets_per_interval"] / r["nodes"] for r in polling) / len(polling)
    assert m["gets_per_node_round"] == pytest.approx(per_node)
    # 1,000 nodes polling every 2 minutes: each node's distinct objects once per 120 s, per 10 s.
    assert m["1000/ours_10s"] == pytest.approx(1000 * per_node * 10 / 120)
    assert m["5000/ours_events_10s"] == pytest.approx(5000 * per_node * 10 / 3600)
    # Upstream: every volume fetches every object every remount; 2 pod-status writes per remount.
    v, o = RUN["runs"][0]["volumes_per_node"], RUN["runs"][0]["objects"]
    assert m["1000/upstream_10s"] == pytest.approx(1000 * v * o * 10 / 120)
    assert m["1000/upstream_budget_pct"] == pytest.approx(1000 * v * o * 10 / 120 / 4000 * 100)
    assert m["upstream_api_per_node_min"] == pytest.approx(2 * v * 60 / 120)
    assert m["5000/ours_rss_gib"] == pytest.approx(5000 * sum(r["rss_mib"]["mean"] for r in RUN["runs"]) / len(RUN["runs"]) / 1024)


def test_the_page_is_one_file_with_nothing_to_fetch():
    page = report.render(RUN)
    assert page.count("<svg") == 4
    for pattern in (r'(?<![\w-])src=', r'(?<![\w-])href=', r'url\(', r'@import', r'<link', r'<img'):
        assert not re.search(pattern, page), pattern
    assert re.findall(r'https?://[^"\s<]+', page) == ["http://www.w3.org/2000/svg"] * 4


def test_a_page_that_shows_the_run_passes():
    assert report.verify(RUN, probed(report.render(RUN))) == []


def test_a_changed_number_is_caught():
    page = probed(report.render(RUN))
    wrong = re.sub(r'(<span data-src="runs/2/kv_gets_per_interval" data-digits="0">)[^<]*', r"\g<1>999", page)
    assert wrong != page
    assert any("runs/2/kv_gets_per_interval" in p for p in report.verify(RUN, wrong))


def test_a_mark_drawn_elsewhere_is_caught():
    page = probed(report.render(RUN))
    mark = re.search(r'<circle cx="[^"]+" cy="([^"]+)"[^>]*data-model="1000/upstream_10s"', page)
    moved = page.replace(mark.group(0), mark.group(0).replace(f'cy="{mark.group(1)}"', 'cy="3.0"'))
    assert any("1000/upstream_10s drawn at" in p for p in report.verify(RUN, moved))


def test_a_plot_the_browser_did_not_lay_out_is_caught():
    page = probed(report.render(RUN))
    rendered = json.loads(re.search(r"data-rendered='([^']+)'", page).group(1))
    rendered["figs"][1]["drawn"] = 0
    broken = re.sub(r"data-rendered='[^']+'", f"data-rendered='{json.dumps(rendered)}'", page)
    assert any("plot latency not rendered" in p for p in report.verify(RUN, broken))


@pytest.mark.skipif(report.browser() is None, reason="no Chromium here: make bench installs it and runs this check")
def test_headless_chromium_renders_the_page(tmp_path):
    page = tmp_path / "scale-report.html"
    page.write_text(report.render(RUN))
    report.check(RUN, str(page), str(tmp_path / "shot.png"))
    assert (tmp_path / "shot.png").stat().st_size > 10_000
