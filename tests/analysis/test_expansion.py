"""One pruning ratio p for gates learned on a widened network: the MACs reduction against the
unexpanded network (as the reference Pruning-from-Scratch code measures it), everywhere."""

import json

import pytest

from analysis.scratch import build_pruned, save_structure, scratch_b_epochs, search_structure, structure_search
from app.cli import main
from models import cost_model, create_model, load_run

UNEXPANDED_MACS = cost_model(create_model("small_cnn", gated=False, in_channels=1), (1, 28, 28)).ungated_macs


def test_prune_search_reports_the_target_against_the_unexpanded_network(expanded_gates_run, capsys):
    assert main(["prune", "search", str(expanded_gates_run), "--target", "0.5"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert "target 50.0%" in first and "removes 49.9% of the unexpanded network's MACs" in first, out
    s = search_structure(expanded_gates_run, 0.5)
    assert s.reference_macs == UNEXPANDED_MACS and s.full_macs > 3 * UNEXPANDED_MACS
    assert s.macs == pytest.approx(0.5 * UNEXPANDED_MACS, rel=5e-3) and s.reduction == pytest.approx(0.5, abs=5e-3)


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_the_app_search_and_the_cli_search_mean_the_same_p(expanded_gates_run, target):
    search, source = structure_search(load_run(expanded_gates_run))
    assert source == "learned channel gates"
    app, cli = search(target), search_structure(expanded_gates_run, target)
    assert app.widths == cli.widths and app.target == cli.target == target
    assert app.reduction == pytest.approx(target, abs=5e-3)


def test_structure_json_and_scratch_b_use_the_same_p(expanded_gates_run, tmp_path):
    structure, _ = build_pruned(expanded_gates_run, 0.5, tmp_path / "cli-built")
    run = load_run(expanded_gates_run)
    save_structure(run.meta, structure_search(run)[0](0.5), tmp_path / "app-built")
    for built in ("cli-built", "app-built"):
        written = json.loads((tmp_path / built / "structure.json").read_text())
        assert written["target"] == 0.5 and written["reduction"] == pytest.approx(0.5, abs=5e-3)
        assert written["reference_macs"] == UNEXPANDED_MACS
        assert scratch_b_epochs(load_run(tmp_path / built).meta.metrics["structure"], 10) == 20  # 10 / (1 - 0.5)


def test_a_target_the_narrower_network_already_meets_is_said_plainly(tmp_path):
    from models import RunMeta, build_model, save_run

    meta = RunMeta(arch="small_cnn", arch_args={"gated": False, "num_classes": 10, "in_channels": 1,
                                                "channel_gates": True, "widths": [8, 16, 32, 32, 64]},
                   dataset="mnist5k", class_names=[str(i) for i in range(10)], input_shape=[1, 28, 28],
                   mean=[0.1307], std=[0.3081])  # --expansion 0.5
    save_run(tmp_path / "narrow", build_model(meta), meta)
    s = search_structure(tmp_path / "narrow", 0.2)
    assert s.widths == s.full_widths and s.met and s.threshold is None
    assert "already removes" in s.message and s.reduction > 0.7
