import shutil

import pytest

from conftest import DEFAULT_RUN

pytestmark = pytest.mark.app
PAGE = "views/detection.py"


@pytest.mark.parametrize("page", [PAGE, "views/feature_map.py"])
def test_without_analysis_the_page_says_how_to_compute_it(open_app, tmp_path, page):
    run = tmp_path / "fresh"
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis"))
    at = open_app(run, page=page)
    assert "gatescope analyze" in at.info[0].value


def test_table_roc_threshold_and_layers(open_app, analysed_run):
    at = open_app(analysed_run, page=PAGE)
    table = at.dataframe[0].value
    assert set(table["attack"]) == {"fgsm", "deepfool"}
    assert set(table["detector"]) == {"decision-logreg", "mahalanobis"}
    assert table["ROC-AUC"].between(0, 1).all()
    confusion = at.table[0].value
    total_adv = int(confusion.loc["adversarial"].sum())
    at.slider(key="threshold").set_value(0.0).run()
    assert int(at.table[0].value.loc["adversarial", "flagged"]) == total_adv  # threshold 0 flags everything
    at.selectbox(key="detection_attack").set_value("deepfool").run()
    assert not at.exception
    assert [s.value for s in at.subheader][:2] == ["Which gated layers carry the signal",
                                                   "Counted MACs of clean and attacked inputs"]
