"""Why did a gated layer pick its mask? Captum attributions of a decision w.r.t. the input."""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import IntegratedGradients, Saliency

from models import Network, gated_convs

METHODS = ("integrated_gradients", "saliency")


def decision_attribution(
    model: Network, x: torch.Tensor, layer: int, *, method: str = "integrated_gradients", steps: int = 32,
) -> tuple[np.ndarray, int, float]:
    """Attribution map (C, H, W) of the chosen action's probability at gated ``layer`` for one
    input ``x`` (1, C, H, W) in [0, 1]; returns (map, chosen action, its probability).

    Integrated gradients start from a black image. Earlier layers keep their argmax masks, so
    the map explains this layer's choice given the path the input took to reach it.
    """
    n_layers = len(gated_convs(model))
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer is {layer}; this network has gated layers 0..{n_layers - 1}")
    if method not in METHODS:
        raise ValueError(f"method is {method!r}; expected one of {', '.join(METHODS)}")
    model.eval()
    with torch.no_grad():
        _, decisions = model.decide(x)
    action = int(decisions[layer].action[0])
    prob = float(decisions[layer].log_probs[0, action].exp())

    def chosen_probability(inputs: torch.Tensor) -> torch.Tensor:
        _, d = model.decide(inputs)
        return d[layer].log_probs[:, action].exp()  # (B,)

    if method == "saliency":
        attr = Saliency(chosen_probability).attribute(x, abs=False)
    else:
        attr = IntegratedGradients(chosen_probability).attribute(x, baselines=torch.zeros_like(x), n_steps=steps)
    return attr[0].detach().cpu().numpy(), action, prob
