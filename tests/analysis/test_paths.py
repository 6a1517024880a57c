import io

import numpy as np
import pytest
import torch
from PIL import Image

from analysis import collect, load_dataset
from analysis.images import ImageError, image_to_input
from analysis.paths import changed_layers, decision_path, sankey_links
from conftest import BASELINE_RUN, DEFAULT_RUN
from models import load_run


@pytest.fixture(scope="module")
def model():
    return load_run(DEFAULT_RUN).model


def test_a_path_agrees_with_the_batch_pass(model):
    split = load_dataset("mnist5k", "test")
    out = collect(model, split)
    x = split.dataset.tensors[0][7:8]
    p = decision_path(model, x)
    assert np.array_equal(p.actions, out.paths[7]) and np.array_equal(p.active, out.active[7])
    assert p.macs == pytest.approx(out.macs[7])
    assert p.prediction == out.preds[7]
    assert np.allclose(p.probs.sum(1), 1, atol=1e-5)
    assert [int((m != 0).sum()) for m in p.masks] == p.active.tolist()


def test_changed_layers_and_sankey_counts():
    paths = np.array([[0, 1, 2], [0, 1, 3], [4, 1, 2]])
    labels, source, target, value = sankey_links(paths)
    assert labels[:2] == ["g0:a0", "g0:a4"]
    assert sum(value) == 2 * len(paths)  # every input crosses both gaps once
    from analysis.paths import Path

    def path(actions):
        return Path(probs=np.zeros((3, 6)), actions=np.array(actions), masks=[], active=np.zeros(3), layer_names=[],
                    layer_macs=np.zeros(1), decision_macs=0, ungated_macs=1, class_probs=np.zeros(10))

    a, b = path([1, 2, 3]), path([1, 5, 3])
    assert changed_layers(a, b) == [1]


def test_ungated_networks_and_bad_inputs_are_refused(model):
    with pytest.raises(ValueError, match="no gated layers"):
        decision_path(load_run(BASELINE_RUN).model, torch.rand(1, 1, 28, 28))
    with pytest.raises(ValueError, match="NaN"):
        decision_path(model, torch.full((1, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="one input"):
        decision_path(model, torch.rand(2, 1, 28, 28))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_converted_to_the_model_mode_and_size():
    x, notes = image_to_input(_png(Image.new("RGB", (56, 40), (255, 255, 255))), (1, 28, 28))
    assert x.shape == (1, 1, 28, 28) and float(x.max()) == pytest.approx(1.0)
    assert notes == ["converted from RGB to L", "resized from 56x40 to 28x28"]
    x, notes = image_to_input(_png(Image.new("L", (32, 32), 0)), (3, 32, 32))
    assert x.shape == (1, 3, 32, 32) and notes == ["converted from L to RGB"]


def test_bad_uploads_are_refused_with_a_reason():
    with pytest.raises(ImageError, match="not a readable image"):
        image_to_input(b"%PDF-1.4 not an image", (1, 28, 28))
    with pytest.raises(ImageError, match="the limit is 1,000"):
        image_to_input(b"x" * 2000, (1, 28, 28), max_bytes=1000)
    with pytest.raises(ImageError, match="decompression bomb"):
        image_to_input(_png(Image.new("L", (5000, 5000))), (1, 28, 28))


def test_path_neighbours_rank_by_hamming_then_feature_distance():
    from analysis.paths import path_neighbours

    paths = np.array([[0, 1, 2], [0, 1, 3], [5, 5, 5], [0, 1, 2], [0, 9, 3]])
    features = np.array([[0.0], [0.1], [0.0], [2.0], [0.0]])
    index, hamming = path_neighbours(paths, features, np.array([0, 1, 2]), np.array([0.0]), k=4)
    assert index.tolist() == [0, 3, 1, 4] and hamming.tolist() == [0, 0, 1, 2]
    index, _ = path_neighbours(paths, features, paths[0], features[0], k=2, exclude=0)
    assert index.tolist() == [3, 1]  # the query itself is left out; the same road wins over feature distance


def test_confident_choosers_are_the_inputs_choosing_that_action_most_surely():
    from analysis.paths import confident_choosers

    probs = np.array([[[0.6, 0.4]], [[0.9, 0.1]], [[0.2, 0.8]], [[0.7, 0.3]]])
    log_probs = np.log(probs)
    assert confident_choosers(log_probs, 0, 0).tolist() == [1, 3, 0]
    assert confident_choosers(log_probs, 0, 0, k=1).tolist() == [1]
    assert confident_choosers(log_probs, 0, 1).tolist() == [2]
    assert confident_choosers(log_probs, 0, 0, among=np.array([0, 2, 3])).tolist() == [3, 0]
