"""The Overview's report download: built only when asked, once per run, split and analysis."""

import re
import shutil

import pytest

pytestmark = pytest.mark.app
LABEL = "Download a report (HTML)"


@pytest.fixture
def builds(monkeypatch) -> list:
    """The runs the report module was asked to build (a spy on app.html_report.html_report)."""
    from app import html_report

    calls, build = [], html_report.html_report

    def spy(run, **options):
        calls.append(run.path)
        return build(run, **options)

    monkeypatch.setattr(html_report, "html_report", spy)
    return calls


def test_the_report_is_prepared_on_demand_then_offered_and_kept(open_app, analysed_run, tmp_path, offered, builds):
    run = tmp_path / "dynamic"  # a folder of its own: no report cached from another test
    shutil.copytree(analysed_run, run)
    at = open_app(run)
    assert LABEL not in [b.label for b in at.get("download_button")] and builds == []  # nothing built on open
    at.button(key="prepare_report").click().run()
    assert not at.exception
    assert LABEL in [b.label for b in at.get("download_button")] and builds == [run]
    page = offered["dynamic-test-report.html"].decode()
    assert page.startswith("<!DOCTYPE html>") and '<h2 id="detection">Adversarial detection</h2>' in page
    assert int(re.search(r'data-figures="(\d+)"', page).group(1)) > 15
    assert any(re.search(r"\d+\.\d MB: the model card", c.value) for c in at.caption)
    at.selectbox(key="class_pref_layer").set_value(1).run()  # another widget: the report stays, not rebuilt
    assert LABEL in [b.label for b in at.get("download_button")] and builds == [run]
