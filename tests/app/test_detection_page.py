import shutil

import pytest

from conftest import DEFAULT_RUN

pytestmark = pytest.mark.app
PAGE = "views/detection.py"


@pytest.mark.parametrize("page", [PAGE, "views/feature_map.py"])
def test_without_analysis_the_page_offers_to_compute_it(open_app, tmp_path, page):
    from analysis.analyze import AnalyzeConfig

    run = tmp_path / "fresh"
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis"))
    at = open_app(run, page=page)
    assert "not stored for this run yet" in at.info[0].value
    defaults = AnalyzeConfig()  # the form starts from the CLI's defaults
    assert at.multiselect(key="job_attacks").value == list(defaults.attacks)
    assert at.multiselect(key="job_detectors").value == list(defaults.detectors)
    assert at.number_input(key="job_limit").value == defaults.limit
    assert any(b.label == "Start the analysis" for b in at.button)


@pytest.mark.parametrize("page", [PAGE, "views/feature_map.py"])
def test_an_analysis_of_other_weights_is_reported_stale_not_shown(open_app, analysed_run, tmp_path, page):
    import torch

    from models import load_run, save_run

    run = tmp_path / "retrained"
    shutil.copytree(analysed_run, run)
    moved = load_run(run)
    with torch.no_grad():
        moved.model.fc.bias.add_(0.01)
    save_run(run, moved.model, moved.meta)
    at = open_app(run, page=page)
    assert "other weights" in at.warning[0].value and not at.dataframe and not at.get("plotly_chart")
    assert any(b.label == "Start the analysis" for b in at.button)  # and offers to recompute it


def test_a_damaged_manifest_reads_as_no_analysis(open_app, analysed_run, tmp_path):
    run = tmp_path / "damaged"
    shutil.copytree(analysed_run, run)
    (run / "analysis" / "manifest.json").write_text('[{"entries": 3}]')
    at = open_app(run, page=PAGE)
    assert "not stored for this run yet" in at.info[0].value


def test_table_roc_threshold_and_layers(open_app, analysed_run):
    at = open_app(analysed_run, page=PAGE)
    table = at.dataframe[0].value
    assert set(table["attack"]) == {"fgsm", "deepfool", "pgd"}
    assert set(table["detector"]) == {"decision-logreg", "mahalanobis", "margin"}
    assert table["ROC-AUC"].between(0, 1).all()
    pgd = table[table["attack"] == "pgd"]
    assert pgd["adaptive ROC-AUC"].notna().all()  # every detector attacked adaptively
    assert table[table["attack"] == "fgsm"]["adaptive ROC-AUC"].isna().all()
    confusion = at.table[0].value
    total_adv = int(confusion.loc["adversarial"].sum())
    at.slider(key="threshold").set_value(0.0).run()
    assert int(at.table[0].value.loc["adversarial", "flagged"]) == total_adv  # threshold 0 flags everything
    at.selectbox(key="detection_attack").set_value("deepfool").run()
    assert not at.exception
    assert [s.value for s in at.subheader] == [
        "ROC-AUC per attack and detector", "Every detector attacked: oblivious vs adaptive pgd",
        "Which gated layers carry the signal", "Known, unknown and transfer attacks", "Compute as an attack surface",
        "Counted MACs of clean and attacked inputs"]
    compute = at.dataframe[1].value
    assert list(compute["eps"]) == ["2/255", "4/255", "8/255"]
    assert (compute["mean ratio after"] >= compute["mean ratio before"]).all()


def test_choosing_families_filters_the_rows(open_app, analysed_run):
    at = open_app(analysed_run, page=PAGE)
    at.multiselect(key="families").set_value(["baseline (no training on attacks)"]).run()
    assert not at.exception
    assert set(at.dataframe[0].value["detector"]) == {"margin"}
