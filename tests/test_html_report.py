"""The HTML report (app/html_report.py): sections, plotly inlined once, nothing from the network."""

import json
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from plotly.offline import get_plotlyjs

from analysis import DatasetError
from app import html_report as report_module
from app.cli import main
from app.html_report import html_report, write_html_report
from conftest import DEFAULT_RUN, REPO
from models import load_run

SECTIONS = {"card": "Model card", "cost": "Counted MACs per input", "health": "Path health",
            "paths": "Decision paths per class", "map": "Decision-feature map", "detection": "Adversarial detection"}
RESOURCE_ATTRS = {"src", "href", "srcset", "action", "formaction", "data", "poster", "background", "xlink:href"}


@pytest.fixture(scope="module")
def analysed_html(analysed_run) -> str:
    return html_report(load_run(analysed_run))


@pytest.fixture(scope="module")
def plotly_js() -> str:
    return get_plotlyjs()


class _Resources(HTMLParser):
    """Every tag and every attribute that could make a browser fetch something."""

    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in RESOURCE_ATTRS]


def _figure_count(page: str) -> int:
    declared = int(re.search(r'<body data-figures="(\d+)">', page).group(1))
    assert declared == page.count('class="plotly-graph-div"')
    return declared


def test_an_analysed_run_has_every_section_and_each_figure(analysed_html, analysed_run):
    page = analysed_html
    for anchor, title in SECTIONS.items():
        assert f'<h2 id="{anchor}">{title}</h2>' in page
        assert f'<a href="#{anchor}">{title}</a>' in page  # the contents
    assert "No analysis" not in page and "No decision-feature map" not in page and "No detection" not in page
    meta = json.loads((analysed_run / "model.json").read_text())
    for field in ("architecture arguments", "input shape (C, H, W)", "ungated MACs (counted)", "finetune_epochs",
                  "macs_ratio.mean", "test_accuracy"):
        assert f"<td>{field}</td>" in page
    assert f"<td>{meta['training']['command']}</td>" in page
    assert _sankeys(page) == len(meta["class_names"])  # one Sankey per class
    assert page.count('"type":"scattergl"') >= 1  # the map
    assert page.count("false-positive rate (clean flagged)") == 3  # ROC curves of fgsm, deepfool and pgd
    for figure in ("decision entropy per input (bits)", "I(class; action) (bits)", "action at gate 1", "mean 0."):
        assert figure in page
    for table in ("<th>adaptive pgd: AUC · evaded</th>", "<td>decision-logreg</td>", "<th>mean ratio before</th>",
                  "<th>utilisation (max share × K)</th>"):
        assert table in page  # the audit, the compute attack and path health as tables
    assert _figure_count(page) >= 10 + 3 + 4
    assert f"This report holds {_figure_count(page)} figures" in page


def test_plotly_is_inlined_exactly_once_and_nothing_refers_to_the_network(analysed_html, plotly_js):
    page = analysed_html
    assert page.count(plotly_js) == 1
    rest = page.replace(plotly_js, "")
    assert "https://" not in rest and "http://" not in rest  # plotly's bundle names URLs in its code; nothing else does
    assert not re.search(r"mathjax|cdn\.|@import|url\(", rest, re.I)
    parser = _Resources()
    parser.feed(rest)
    assert not {"link", "img", "iframe", "object", "embed", "video", "audio", "source", "base"} & set(parser.tags)
    assert [(t, a, v) for t, a, v in parser.refs if not v.startswith("#")] == []  # only the contents' anchors
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert all("src" not in s for s in scripts)


def _sankeys(page: str) -> int:
    """The Sankey figures of ``page``, counted by their titles ("class 3 (101 inputs)"): a count of
    '"type":"sankey"' also counts plotly's template, which names every trace type in each figure
    it is written into."""
    return len(re.findall(r'"text":"class [^"]+ \([\d,]+ inputs\)"', page))


def test_a_run_without_analysis_says_so_in_one_line_each(tiny_run):
    page = html_report(load_run(tiny_run))
    for what in ("decision-feature map", "detection results"):
        assert (f'<p class="missing">No {what} stored for this run: run <code>gatescope analyze {tiny_run}</code>.</p>'
                in page)
    assert _sankeys(page) == 10
    assert "No model.json" not in page and "records no metrics" not in page


def test_text_from_the_run_folder_is_escaped(tiny_run):
    meta = json.loads((tiny_run / "model.json").read_text())
    meta["training"]["command"] = "<script>alert(1)</script>"
    (tiny_run / "model.json").write_text(json.dumps(meta))
    page = html_report(load_run(tiny_run))
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_missing_dataset_is_one_clear_error(tiny_run, tmp_path):
    meta = json.loads((tiny_run / "model.json").read_text())
    meta["dataset"] = f"imagefolder:{tmp_path}/absent"
    (tiny_run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"test split of `imagefolder:.*absent`, which cannot be opened here: .*"
                                           r"ROOT/\{train,test\}"):
        html_report(load_run(tiny_run))


def test_a_large_map_is_thinned_and_says_so(analysed_run, monkeypatch):
    monkeypatch.setattr(report_module, "MAP_POINTS", 50)
    page = html_report(load_run(analysed_run))
    assert re.search(r"The map shows 50 of the [\d,]+ stored points", page)


def test_the_file_is_written_atomically(tiny_run, tmp_path, monkeypatch):
    import os

    out = tmp_path / "out" / "report.html"
    out.parent.mkdir()
    out.write_text("the last good report")
    run = load_run(tiny_run)

    def interrupted(src, dst):
        raise OSError("interrupted before the rename")

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError):
        write_html_report(run, out)
    assert out.read_text() == "the last good report"  # never half-written
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # and no temporary file left


def test_the_report_module_does_not_import_streamlit():
    code = "import sys, app.html_report; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_report_html_writes_the_file(tiny_run, tmp_path, capsys):
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(tiny_run), "--html", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (" in printed and " MB)" in printed and "path health" in printed  # progress, then the file
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and _figure_count(page) > 10
    with pytest.raises(SystemExit):
        main(["report", str(tiny_run), "--html", str(out), "--json"])  # one output form at a time


def test_cli_report_html_without_the_data_is_one_clear_error(tiny_run, tmp_path, capsys):
    meta = json.loads((tiny_run / "model.json").read_text())
    meta["dataset"] = f"imagefolder:{tmp_path}/absent"
    (tiny_run / "model.json").write_text(json.dumps(meta))
    assert main(["report", str(tiny_run), "--html", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gatescope: error:") and "cannot be opened here" in err and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("which", ["shipped", "analysed"])
def test_the_default_models_report_is_under_10_mb(which, request, tmp_path):
    run = DEFAULT_RUN if which == "shipped" else request.getfixturevalue("analysed_run")
    out = write_html_report(load_run(run), tmp_path / "report.html")
    size = out.stat().st_size
    print(f"HTML report of the {which} default model ({run}): {size / 1e6:.2f} MB")
    assert size < 10e6
