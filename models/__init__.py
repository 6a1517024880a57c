"""gatescope.models: dynamic (gated) networks, their MACs and their run folders.

>>> from models import create_model, cost_model
>>> net = create_model("small_cnn", gated=True, num_classes=10)
>>> cost_model(net, (1, 28, 28)).static_macs
"""

from . import chain, reference_nets, resnet  # noqa: F401  (register the architectures)
from .checkpoint import (
    Run, RunError, RunMeta, build_model, find_runs, load_run, read_meta, save_run, update_metrics,
)
from .gates import (
    Decision, DecisionUnit, GatedConv, MaskBank, constrain_, forced_actions, gated_convs, relaxed_decisions, set_tau,
)
from .macs import CostModel, LayerCost, active_channels, cost_model, prunable_convs
from .network import Link, Network, channels_last
from .registry import create_model, list_models, register_model

__all__ = [
    "CostModel", "Decision", "DecisionUnit", "GatedConv", "LayerCost", "Link", "MaskBank",
    "Network", "Run", "RunError", "RunMeta", "active_channels", "build_model", "channels_last", "constrain_",
    "cost_model", "create_model", "find_runs", "gated_convs", "prunable_convs", "list_models", "load_run", "read_meta",
    "register_model", "forced_actions", "relaxed_decisions", "save_run", "set_tau", "update_metrics",
]
