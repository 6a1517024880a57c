"""The HTML report opened from disk in Chromium with the network blocked: every figure renders."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

# per figure div: drawn by plotly (its SVG, with a size) and holding the marks of its traces
RENDERED = """() => [...document.querySelectorAll('.plotly-graph-div')].map(gd => {
    const svg = gd.querySelector('.main-svg');
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    const marks = gd.querySelectorAll('g.trace, g.hm, g.sankey, canvas.gl-canvas-context').length;
    return {id: gd.id, svg: !!svg, width: box.width, height: box.height, marks: marks,
            nodes: gd.querySelectorAll('g.sankey-node').length, links: gd.querySelectorAll('path.sankey-link').length,
            types: (gd._fullData || []).map(t => t.type)};
})"""


@pytest.fixture(scope="module")
def report(analysed_run, tmp_path_factory) -> Path:
    from app.html_report import write_html_report
    from models import load_run

    return write_html_report(load_run(analysed_run), tmp_path_factory.mktemp("report") / "report.html")


def test_the_report_renders_every_figure_offline(report, browser, tmp_path):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, offline=True)
    blocked, requested = [], []

    def only_files(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_files)
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requested.append(r.url))
    page.goto(report.as_uri())
    declared = int(page.get_attribute("body", "data-figures"))
    page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {declared}",
                           timeout=120_000)
    figures = page.evaluate(RENDERED)
    assert len(figures) == declared == page.locator(".js-plotly-plot").count() > 10
    empty = [f for f in figures if not (f["svg"] and f["width"] > 200 and f["height"] > 150 and f["marks"] and f["types"])]
    assert not empty, empty
    types = {t for f in figures for t in f["types"]}
    assert {"sankey", "scattergl", "heatmap", "box", "bar", "scatter"} <= types  # histograms come binned, as bars
    sankeys = [f for f in figures if f["types"] == ["sankey"]]
    assert sankeys and all(f["nodes"] and f["links"] for f in sankeys)  # every Sankey drew its nodes and flows
    assert blocked == [] and [u for u in requested if not u.startswith("file:")] == []  # nothing asked of the network
    assert not errors, errors
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    context.close()
