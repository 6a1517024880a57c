import numpy as np
import pytest
import torch

from analysis import load_dataset
from analysis.attribution import decision_attribution
from conftest import DEFAULT_RUN
from models import load_run


@pytest.fixture(scope="module")
def model_and_image():
    x, _ = load_dataset("mnist5k", "test").dataset.tensors
    return load_run(DEFAULT_RUN).model, x[:1]


def test_integrated_gradients_complete_to_the_probability_change(model_and_image):
    model, x = model_and_image
    # layer 0 reads an ungated layer: its probability is smooth in the input, so IG is complete
    attr, action, prob = decision_attribution(model, x, layer=0, steps=64)
    assert attr.shape == (1, 28, 28)
    _, black = model.decide(torch.zeros_like(x))
    prob_black = float(black[0].log_probs[0, action].exp())
    # completeness: attributions add up to f(x) - f(baseline)
    assert attr.sum() == pytest.approx(prob - prob_black, abs=0.02)


def test_saliency_concentrates_on_the_digit(model_and_image):
    model, x = model_and_image
    attr, _, _ = decision_attribution(model, x, layer=3, method="saliency")
    on_digit = np.abs(attr[0])[x[0, 0].numpy() > 0.1].mean()
    far = np.abs(attr[0])[:3, :3].mean()  # the corner is always background
    assert on_digit > far


def test_bad_layer_or_method_is_refused(model_and_image):
    model, x = model_and_image
    with pytest.raises(ValueError, match="gated layers 0..3"):
        decision_attribution(model, x, layer=7)
    with pytest.raises(ValueError, match="integrated_gradients, saliency"):
        decision_attribution(model, x, layer=0, method="lime")
