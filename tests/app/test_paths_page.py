import pytest

from conftest import BASELINE_RUN

pytestmark = pytest.mark.app
PAGE = "views/paths.py"


def _metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def test_a_path_clean_and_attacked_with_its_views(open_app):
    at = open_app(page=PAGE)
    shown = _metrics(at)
    assert shown["Prediction (label 3)"] == "3"  # test image 0 of mnist5k is a 3
    assert [s.value for s in at.subheader] == ["Clean", "Attacked", "Why this decision",
                                            "What if a gate chose otherwise", "Inputs that took the same road",
                                            "Paths of one class"]
    assert "Layers whose decision changed under attack" in at.markdown[0].value
    # a zero budget leaves the input, its prediction and its path unchanged
    at.slider(key="eps").set_value(0.0).run()
    assert not at.exception
    assert "none" in at.markdown[0].value
    assert [m.value for m in at.metric if m.label == "Prediction"] == ["3"]


def test_picking_another_input_changes_the_path(open_app):
    at = open_app(page=PAGE)
    before = _metrics(at)["Counted MACs"]
    labels = []
    for index in (1, 2, 3):
        at.number_input(key="index").set_value(index).run()
        assert not at.exception
        labels.append([m.label for m in at.metric][0])
    assert len(set(labels)) > 1 or _metrics(at)["Counted MACs"] != before


def test_by_class_and_attribution_controls(open_app):
    at = open_app(page=PAGE)
    at.radio(key="pick").set_value("by class").run()
    at.selectbox(key="cls").set_value(7).run()
    assert not at.exception
    assert [m.label for m in at.metric][0] == "Prediction (label 7)"
    first = at.caption[0].value
    thumbs = [b for b in at.button if b.key.startswith("thumb-")]
    assert len(thumbs) == 12
    thumbs[3].click().run()  # clicking a thumbnail opens that input
    assert not at.exception
    assert at.caption[0].value != first and thumbs[3].label in at.caption[0].value
    at.radio(key="attr_method").set_value("saliency").run()
    at.selectbox(key="attr_layer").set_value(2).run()
    assert not at.exception
    assert "at gate 2" in [c.value for c in at.caption if "Attribution" in c.value][0]


def test_forcing_a_gate_shows_what_follows(open_app):
    at = open_app(page=PAGE)
    at.selectbox(key="cf_gate").set_value(1).run()
    assert not at.exception
    action = at.selectbox(key="cf_action_1")
    assert "the runner-up" in action.format_func(action.value)  # the default is the runner-up
    taken = [o for o in action.options if "the one it took" in o]
    assert len(taken) == 1
    at.selectbox(key="cf_action_1").select(taken[0]).run()  # forcing what it took changes nothing
    assert not at.exception
    shown = _metrics(at)
    assert shown["Later gates that changed their choice"] == "0"
    assert [m.delta for m in at.metric if m.label == "Counted MACs when forced"] == ["no change"]
    assert [m.delta for m in at.metric if m.label == "Prediction when forced"] == ["unchanged"]


def test_the_same_road_starts_at_this_inputs_own_action(open_app):
    import re

    at = open_app(page=PAGE)
    for gate in (0, 2):
        at.selectbox(key="road_gate").set_value(gate).run()
        assert not at.exception
        action = at.selectbox(key=f"road_action_{gate}")
        assert "(this input's)" in action.format_func(action.value)
        text = [m.value for m in at.markdown if "most confidently" in m.value][0]
        chosen, total = (int(n.replace(",", "")) for n in re.search(r"\(([\d,]+) of ([\d,]+) choose it", text).groups())
        assert f"action {action.value} at gate {gate}" in text and 1 <= chosen <= total
    at.selectbox(key="sankey_class").set_value(4).run()
    nodes = at.selectbox(key="sankey_node_4")
    assert not at.exception and nodes.options[0] == "g0:a" + str(nodes.value[1])


def test_stored_attacks_join_the_same_road(open_app, analysed_run):
    at = open_app(analysed_run, page=PAGE)
    assert "Attacked with pgd (stored analysis, test split):" in [m.value for m in at.markdown]
    at.selectbox(key="attack").set_value("deepfool").run()
    assert not at.exception
    assert "Attacked with deepfool (stored analysis, test split):" in [m.value for m in at.markdown]


def test_an_ungated_run_says_it_has_no_paths(open_app):
    at = open_app(BASELINE_RUN, page=PAGE)
    assert "no gated layers" in at.info[0].value


def _opened_with(query: dict):
    from streamlit.testing.v1 import AppTest

    from conftest import REPO

    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=180)
    at.run()
    at.query_params.update(query)
    at.switch_page(PAGE).run()
    assert not at.exception
    return at


def test_a_link_reopens_the_same_input_attack_and_gates(monkeypatch):
    monkeypatch.delenv("GATESCOPE_RUNS", raising=False)
    at = _opened_with({"pick": "by index", "index": "17", "attack": "fgsm", "eps": "0.05", "attr_layer": "2",
                       "cf_gate": "1"})
    assert at.number_input(key="index").value == 17
    assert at.selectbox(key="attack").value == "fgsm" and at.slider(key="eps").value == 0.05
    assert at.selectbox(key="attr_layer").value == 2 and at.selectbox(key="cf_gate").value == 1
    at.number_input(key="index").set_value(4).run()  # the URL follows the page, so a copied link reopens it
    assert not at.exception
    assert at.query_params["index"] == "4" and at.query_params["attack"] == "fgsm"
    assert at.number_input(key="index").value == 4  # the old link's value is not applied again


def test_a_link_with_values_that_do_not_fit_says_so_and_keeps_the_defaults(monkeypatch):
    monkeypatch.delenv("GATESCOPE_RUNS", raising=False)
    at = _opened_with({"index": "99999", "attack": "nonsense"})
    warnings = " ".join(w.value for w in at.warning)
    assert "`index=99999` is not used: expected 0 to" in warnings and "`attack=nonsense` is not used" in warnings
    assert at.number_input(key="index").value == 0 and at.selectbox(key="attack").value == "pgd"
