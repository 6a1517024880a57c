import json

import pytest
import torch

from analysis.scratch import GateConfig, ScratchConfig, build_pruned, learn_gates, train_pruned
from app.cli import main
from models import cost_model, create_model, load_run, prunable_convs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gates_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gates") / "gates"
    learn_gates(GateConfig(epochs=1), out, progress=False, log=lambda s: None)
    return out


def test_gate_learning_trains_only_the_gates(gates_run):
    run = load_run(gates_run)
    torch.manual_seed(0)
    fresh = create_model("small_cnn", gated=False, channel_gates=True, num_classes=10, in_channels=1,
                         mean=(0.1307,), std=(0.3081,))
    for (name, p), q in zip(run.model.named_parameters(), fresh.parameters()):
        if name.endswith(".gate"):
            assert 0.0 <= p.min() and p.max() <= 1.0
            assert not torch.equal(p, q), f"{name} was trained"
        else:
            assert torch.equal(p, q), f"{name} stayed at its random initialisation"
    # the sparsity term (r = 0.2) pulls the mean gate below its initial 1
    gates = torch.cat([c.gate for c in prunable_convs(run.model)])
    assert gates.mean() < 0.99


def test_built_structure_loads_like_any_run_and_matches_the_search(gates_run, tmp_path):
    structure, _ = build_pruned(gates_run, 0.5, tmp_path / "pruned")
    run = load_run(tmp_path / "pruned")
    assert [c.conv.out_channels for c in prunable_convs(run.model)] == structure.widths
    assert cost_model(run.model, (1, 28, 28)).ungated_macs == structure.macs
    assert json.loads((tmp_path / "pruned" / "structure.json").read_text())["widths"] == structure.widths
    assert abs(structure.reduction - 0.5) < 0.01


def test_scratch_b_scales_the_epochs_and_trains_fresh_weights(gates_run, tmp_path):
    build_pruned(gates_run, 0.5, tmp_path / "pruned")
    meta = train_pruned(tmp_path / "pruned", tmp_path / "trained", ScratchConfig(base_epochs=1),
                        progress=False, log=lambda s: None)
    assert meta.training["epochs"] == 2  # ceil(1 / (1 - 0.5))
    assert meta.metrics["test_accuracy"] > 0.5
    assert load_run(tmp_path / "trained").meta.arch_args["widths"] == meta.arch_args["widths"]


def test_cli_prune_steps(gates_run, tmp_path, capsys):
    assert main(["prune", "search", str(gates_run), "--target", "0.4"]) == 0
    assert "widths" in capsys.readouterr().out
    assert main(["prune", "build", str(gates_run), str(tmp_path / "b"), "--target", "0.3"]) == 0
    assert "(untrained)" in capsys.readouterr().out
    assert main(["prune", "search", str(tmp_path / "b")]) == 1
    assert "neither channel gates nor mask banks" in capsys.readouterr().err
