"""Checkpoints in the papers' released layouts: imported runs compute what the reference forward
pass (re-implemented in tests/reference_code.py) computes, and bad files are named."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from analysis.scratch import default_widths, search_structure
from models import RunError, cost_model, load_run, prunable_convs
from models.official import import_official

from hostile import Payload, bad_runs
from reference_code import images, normalise, reference

ARCHS = ["vgg16", "vgg19", "resnet20", "resnet56"]
CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``checkpoints(arch)``: (reference network, its checkpoint.pth.tar as the dynamic-pruning code saves it)."""
    folder, made = tmp_path_factory.mktemp("official"), {}

    def get(arch):
        if arch not in made:
            net = reference(arch, k=6)
            torch.save({"epoch": 41, "state_dict": net.state_dict()}, folder / f"{arch}.pth.tar")
            made[arch] = net, folder / f"{arch}.pth.tar"
        return made[arch]

    return get


def _import(file, out, arch="resnet20", fmt="dynamic-pruning"):
    return import_official(file, out, fmt=fmt, arch=arch, dataset="cifar10", class_names=CLASSES)


@pytest.mark.parametrize("arch", ARCHS)
def test_an_imported_dynamic_pruning_checkpoint_gives_the_reference_logits_and_actions(checkpoints, tmp_path, arch):
    net, file = checkpoints(arch)
    meta = _import(file, tmp_path / "run", arch)
    model = load_run(tmp_path / "run").model
    x = images(8)
    with torch.no_grad():
        ref_logits, ref_actions = net(normalise(x))
        logits, decisions = model.decide(x)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    assert len(decisions) == len(ref_actions)
    for ours, theirs in zip(decisions, ref_actions):
        assert torch.equal(ours.action, theirs)
    assert max(len(set(a.tolist())) for a in ref_actions) > 1  # the inputs take different paths
    assert meta.arch == f"ref_{arch}" and meta.arch_args["standardise"] is False
    assert meta.arch_args["num_actions"] == 6
    assert meta.mean == [0.4914, 0.4822, 0.4465] and meta.std == [0.2023, 0.1994, 0.2010]
    written = json.loads((tmp_path / "run" / "model.json").read_text())
    assert written["training"] == {"imported_from": file.name, "imported_sha256": written["training"]["imported_sha256"],
                                   "imported_format": "dynamic-pruning", "imported_arch": arch, "imported_epoch": 41}


def _edited(checkpoints, tmp_path, arch, edit):
    net, _ = checkpoints(arch)
    state = dict(net.state_dict())
    edit(state)
    torch.save({"epoch": 0, "state_dict": state}, tmp_path / "edited.pth.tar")
    return tmp_path / "edited.pth.tar"


@pytest.mark.parametrize(("arch", "edit", "named"), [
    ("resnet20", lambda s: s.pop("layer2.1.decision_head.channel_gates"), "missing layer2.1.decision_head.channel_gates"),
    ("resnet20", lambda s: s.update({"layer9.0.conv1.weight": torch.zeros(1)}), "unexpected layer9.0.conv1.weight"),
    ("resnet20", lambda s: s.update({"linear.weight": torch.zeros(100, 64)}),
     r"wrong shape: linear.weight \(100, 64\), expected \(10, 64\)"),
    ("vgg16", lambda s: s.update({"feature.3.conv.weight": torch.zeros(128, 64, 1, 1)}),
     r"wrong shape: feature.3.conv.weight \(128, 64, 1, 1\), expected \(128, 64, 3, 3\)"),
    ("vgg16", lambda s: s.pop("classifier.bias"), "missing classifier.bias"),
])
def test_a_missing_unexpected_or_misshapen_key_is_named_and_nothing_is_written(checkpoints, tmp_path, arch, edit,
                                                                                named):
    file = _edited(checkpoints, tmp_path, arch, edit)
    with pytest.raises(RunError, match=f"not a dynamic-pruning {arch} checkpoint: {named}"):
        _import(file, tmp_path / "run", arch)
    assert not (tmp_path / "run").exists()


def test_the_first_vgg_convs_unused_decision_head_is_accepted_and_dropped(checkpoints, tmp_path):
    net, file = checkpoints("vgg16")
    assert "feature.0.decision_head.fc1.weight" in net.state_dict()  # the reference builds it
    _import(file, tmp_path / "run", "vgg16")
    assert not load_run(tmp_path / "run").model.convs[0].gated
    without = _edited(checkpoints, tmp_path, "vgg16", lambda s: [s.pop(k) for k in list(s) if k.startswith(
        "feature.0.decision_head")])
    _import(without, tmp_path / "run2", "vgg16")  # and not required


def test_a_checkpoint_for_another_architecture_is_refused(checkpoints, tmp_path):
    _, file = checkpoints("resnet20")
    with pytest.raises(RunError, match="not a dynamic-pruning resnet56 checkpoint: missing layer1.3.conv1.weight"):
        _import(file, tmp_path / "run", "resnet56")


@pytest.mark.parametrize("fmt", ["dynamic-pruning", "pruning-from-scratch"])
def test_a_pickle_payload_is_refused_and_runs_nothing(tmp_path, fmt):
    marker = tmp_path / "payload-ran"
    name, weights, _ = bad_runs(marker)["pickle payload"]
    (tmp_path / name).write_bytes(weights)
    plain = tmp_path / "payload.pkl"  # the same payload as a plain pickle, as channel_gates.pkl is
    plain.write_bytes(pickle.dumps([torch.ones(3), Payload(marker)]))
    for file in (tmp_path / name, plain):
        with pytest.raises(RunError, match="refused"):
            _import(file, tmp_path / "run", "vgg16", fmt)
    assert not marker.exists() and not (tmp_path / "run").exists()


def _gates_pickle(path, gates):
    with open(path, "wb") as f:  # what the pruning-from-scratch code's misc.dump_pickle writes
        pickle.dump([g.clone() for g in gates], f, protocol=4)
    return path


@pytest.mark.parametrize(("arch", "expansion"), [("vgg16", 1.25), ("resnet20", 1.0)])
def test_learned_gates_from_pruning_from_scratch_drive_the_structure_search(tmp_path, arch, expansion):
    widths = [len(p) for n, p in reference(arch, mode="gates").named_parameters() if n.endswith("gates")]
    gates = [torch.rand(round(w * expansion)) for w in widths]
    meta = _import(_gates_pickle(tmp_path / "channel_gates.pkl", gates), tmp_path / "gates", arch, "pruning-from-scratch")
    run = load_run(tmp_path / "gates")
    assert meta.arch_args["channel_gates"] and meta.training["weights"].startswith("random")
    for conv, g in zip(prunable_convs(run.model), gates, strict=True):
        assert torch.equal(conv.gate.detach(), g)
    structure = search_structure(tmp_path / "gates", 0.5)
    unexpanded = cost_model(run.model, (3, 32, 32)).macs_for_widths(default_widths(f"ref_{arch}", 3))
    assert abs(structure.macs - 0.5 * unexpanded) / unexpanded < 0.01  # p counts against the unexpanded network
    kept = torch.cat(gates).topk(sum(structure.widths)).values.min()  # the reference keeps the top gates overall
    assert structure.widths == [int((g >= kept).sum()) for g in gates]


@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
def test_a_pruning_from_scratch_checkpoint_with_weights_gives_the_reference_logits(tmp_path, arch):
    net = reference(arch, mode="gates")
    torch.save(net.state_dict(), tmp_path / "checkpoint.pth")  # learn_gates.py's checkpoint.pth
    _import(tmp_path / "checkpoint.pth", tmp_path / "run", arch, "pruning-from-scratch")
    x = images(4)
    with torch.no_grad():
        torch.testing.assert_close(load_run(tmp_path / "run").model(x), net(normalise(x))[0], rtol=0, atol=1e-5)


def test_resnet_gates_of_a_widened_stream_are_refused_with_the_reason(tmp_path):
    gates = [torch.rand(80)] * 3 + [torch.rand(160)] * 3 + [torch.rand(320)] * 3  # learned with -e 80
    file = _gates_pickle(tmp_path / "channel_gates.pkl", gates)
    with pytest.raises(RunError, match="gate vector 0 has 80 entries.*only gates learned with -e 16"):
        _import(file, tmp_path / "run", "resnet20", "pruning-from-scratch")
    with pytest.raises(RunError, match="expected 9 gate vectors"):
        _import(_gates_pickle(tmp_path / "short.pkl", gates[:4]), tmp_path / "run", "resnet20", "pruning-from-scratch")
