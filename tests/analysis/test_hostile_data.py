"""Broken data and arrays: NaN or infinite images, outputs and gate values, empty datasets,
datasets whose classes differ from the model's, and hostile inputs to the threshold searches.
Each is detected and reported, never analysed or plotted silently."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from torch.utils.data import TensorDataset

from analysis import DatasetError, NonFiniteError, collect, load_dataset
from analysis.datasets import load_run_dataset
from analysis.pruning import MaskSearch, StaticSearch
from models import cost_model, create_model, gated_convs, load_run

from conftest import DEFAULT_RUN, fuzz
from hostile import tampered_copy


def _split(x: torch.Tensor):
    split = load_dataset("mnist5k", "test")
    return split.with_dataset(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images_are_reported_with_their_rows(bad):
    model = create_model("small_cnn", gated=True, num_classes=10, in_channels=1, num_actions=3).eval()
    x = torch.rand(300, 1, 28, 28)
    x[7, 0, 3, 3] = bad
    x[280, 0, 0, 0] = bad  # in the second batch
    with pytest.raises(NonFiniteError, match=r"the images of 1 input\(s\) hold NaN or infinite values \(rows 7\)"):
        collect(model, _split(x))
    x[7, 0, 3, 3] = 0.5
    with pytest.raises(NonFiniteError, match=r"rows 280\)"):
        collect(model, _split(x))


def test_non_finite_gate_values_are_reported_not_collected():
    model = create_model("small_cnn", gated=True, num_classes=10, in_channels=1, num_actions=3).eval()
    with torch.no_grad():
        gated_convs(model)[1].decision.linear.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="the gate values of gated layer 1"):
        collect(model, _split(torch.rand(10, 1, 28, 28)))


def test_non_finite_outputs_are_reported():
    model = create_model("small_cnn", gated=False, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        model.fc.bias[2] = float("inf")
    with pytest.raises(NonFiniteError, match="the network's outputs of 10 input"):
        collect(model, _split(torch.rand(10, 1, 28, 28)))


def _folder(root, classes, size=(28, 28), mode="L"):
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new(mode, size).save(root / split / c / "a.png")
    return root


def test_a_dataset_with_other_classes_is_refused_for_the_run(tmp_path):
    run = load_run(DEFAULT_RUN)
    digits = [str(i) for i in range(10)]
    other = _folder(tmp_path / "letters", [*digits[:9], "a"])
    meta = dataclasses.replace(run.meta, dataset=f"imagefolder:{other}")
    with pytest.raises(DatasetError, match="classes differ from the model's 10 .*class 9: dataset 'a', model '9'"):
        load_run_dataset(meta, "test")
    fewer = _folder(tmp_path / "fewer", digits[:4])
    with pytest.raises(DatasetError, match="its 4 classes differ"):
        load_run_dataset(dataclasses.replace(run.meta, dataset=f"imagefolder:{fewer}"), "test")
    rgb = _folder(tmp_path / "rgb", digits, mode="RGB")
    with pytest.raises(DatasetError, match=r"images are \(3, 28, 28\)"):
        load_run_dataset(dataclasses.replace(run.meta, dataset=f"imagefolder:{rgb}"), "test")
    same = _folder(tmp_path / "same", digits)
    assert len(load_run_dataset(dataclasses.replace(run.meta, dataset=f"imagefolder:{same}"), "test")) == 10


def test_a_dataset_with_no_images_is_refused(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "empty" / "train" / c).mkdir(parents=True)
        (tmp_path / "empty" / "test" / c).mkdir(parents=True)
    with pytest.raises(DatasetError):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", "test")


@pytest.fixture(scope="module")
def costs():
    return cost_model(create_model("small_cnn", gated=True, num_classes=10, in_channels=1, num_actions=3), (1, 28, 28))


WIDTHS = [32, 64, 64, 128]  # small_cnn's prunable layers after the first (see below)
hostile_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@fuzz(250)
@given(data=st.data(), target=hostile_floats | st.sampled_from([0.0, 0.5, 0.999999, 1.0, -0.0, 1e-300]))
def test_static_search_on_hostile_gates_and_targets(costs, data, target, tried):
    tried("threshold search")
    widths = costs.source_widths
    sizes = data.draw(st.sampled_from([list(widths), list(widths[:-1]), [w + 1 for w in widths]]))
    gates = [data.draw(arrays(np.float64, n, elements=hostile_floats | st.sampled_from([0.0, 1.0]))) for n in sizes]
    try:
        search = StaticSearch(costs, gates)
        s = search(target)
    except ValueError as e:
        assert str(e)
        return
    assert 0.0 <= target < 1.0 and all(np.isfinite(np.concatenate(gates)))
    assert all(1 <= w <= f for w, f in zip(s.widths, s.full_widths)) and 0 < s.macs <= s.full_macs


@fuzz(150)
@given(data=st.data(), target=hostile_floats)
def test_mask_search_on_hostile_banks_paths_and_targets(costs, data, target, tried):
    tried("threshold search")
    model_banks = [(3, w) for w in WIDTHS]
    banks = [data.draw(arrays(np.float64, shape, elements=hostile_floats | st.floats(0, 5))) for shape in model_banks]
    paths = data.draw(arrays(np.int64, (data.draw(st.integers(1, 20)), len(banks)), elements=st.integers(-3, 5)))
    try:
        s = MaskSearch(costs, banks, paths)(target)
    except ValueError as e:
        assert str(e)
        return
    assert 0.0 <= target < 1.0 and ((paths >= 0) & (paths < 3)).all()
    assert all(np.isfinite(b).all() for b in banks)
    assert np.isfinite(s.predicted_ratio) and 0.0 <= s.predicted_ratio <= s.unthresholded_ratio + 1e-12


def test_an_empty_split_is_refused_not_evaluated():
    model = create_model("small_cnn", gated=True, num_classes=10, in_channels=1, num_actions=3)
    with pytest.raises(DatasetError, match="no images to evaluate"):
        collect(model, _split(torch.zeros(0, 1, 28, 28)))


def test_stored_features_with_nan_are_reported_not_mapped(analysed_run, tmp_path):
    from analysis.analyze import umap_points

    run_path = tampered_copy(analysed_run, tmp_path)
    with pytest.raises(NonFiniteError, match=r"stored decision features \(fgsm\) of 1 input\(s\).*rows 4\)"):
        umap_points(load_run(run_path), neighbors=5, min_dist=0.1, log=lambda s: None)
