import pytest

from hostile import tampered_copy

pytestmark = pytest.mark.app
PAGE = "views/feature_map.py"


def test_map_shows_clean_and_attacked_points_and_filters_them(open_app, analysed_run):
    at = open_app(analysed_run, page=PAGE)
    assert at.multiselect(key="umap_kinds").value == ["clean", "fgsm", "deepfool", "pgd"]
    at.multiselect(key="umap_kinds").set_value(["clean"]).run()
    assert not at.exception
    at.number_input(key="umap_neighbors").set_value(10).run()  # a new UMAP, computed and cached
    assert not at.exception


def test_stored_features_with_nan_give_an_error_in_the_page(open_app, analysed_run, tmp_path):
    at = open_app(tampered_copy(analysed_run, tmp_path), page=PAGE)
    assert "The map is not drawn" in at.error[0].value and "NaN or infinite" in at.error[0].value
    assert not at.get("plotly_chart")


def test_new_umap_parameters_are_cached_in_the_analysis_folder(analysed_run):
    from analysis.analyze import umap_points
    from analysis.store import AnalysisStore
    from models import load_run

    run = load_run(analysed_run)
    a = umap_points(run, neighbors=8, min_dist=0.2, log=lambda s: None)
    assert AnalysisStore(run).params("umap")["neighbors"] == 8
    messages = []
    b = umap_points(run, neighbors=8, min_dist=0.2, log=messages.append)
    assert messages == [] and a.equals(b)
    assert set(a["kind"]) == {"clean", "fgsm", "deepfool", "pgd"} and len(a[a["kind"] == "clean"]) == 100
