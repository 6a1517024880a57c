"""gatescope.analysis: datasets, training and computation on trained networks (no UI)."""

from .datasets import DatasetError, DatasetSplit, list_datasets, load_dataset, register_dataset
from .evaluation import NonFiniteError, Outputs, collect, decision_features, macs_summary, one_hot_paths, path_diversity
from .path_health import path_health_table
from .trainer import TrainError
from .training import TrainConfig, train

__all__ = [
    "DatasetError", "DatasetSplit", "NonFiniteError", "Outputs", "TrainConfig", "TrainError", "collect",
    "decision_features", "list_datasets", "load_dataset", "macs_summary", "one_hot_paths",
    "path_diversity", "path_health_table", "register_dataset", "train",
]
