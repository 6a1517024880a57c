"""Checkpoints of the papers' released code, read tensors-only and mapped onto the reference
networks of :mod:`models.reference_nets`.

- ``dynamic-pruning`` (frankwang345/dynamic-pruning, ``main.py``): ``checkpoint.pth.tar``, a
  torch.save of ``{"epoch", "state_dict"}``. VGG keys: ``feature.N.conv.weight``,
  ``feature.N.bn.*``, ``feature.N.decision_head.fc1.weight`` (K x C_in),
  ``feature.N.decision_head.channel_gates`` (K x C_out) and ``classifier.*``, where N counts the
  max-pools too; the first conv's decision head exists but is never used, so it is accepted and
  dropped. ResNet keys: ``conv1.weight``, ``bn1.*``, ``layerS.B.{conv1,bn1,conv2,bn2}.*``,
  ``layerS.B.shortcut.{0,1}.*``, ``layerS.B.decision_head.*`` and ``linear.*``.
- ``pruning-from-scratch`` (frankwang345/pruning-from-scratch, ``script/learn_gates.py``): the
  learned channel gates, as its ``channel_gates.pkl`` (a plain pickle of per-layer gate vectors,
  read by :func:`models.convert.read_tensor_pickle`) or a torch.save'd list of them (the network
  then gets seeded random weights, as the gates were learned on), or as its ``checkpoint.pth``
  (the frozen random weights with ``feature.N.gates`` / ``layerS.B.gates``).

>>> from analysis.datasets import CIFAR10_CLASSES
>>> import_official("checkpoint.pth.tar", "runs/vgg16", fmt="dynamic-pruning", arch="vgg16",
...                 dataset="cifar10", class_names=CIFAR10_CLASSES)
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .checkpoint import RunError, RunMeta, build_model, model_from_state, save_run
from .convert import load_tensors_only, read_tensor_pickle, state_dict_of
from .files import sha256_bytes
from .reference_nets import CIFAR10_MEAN, CIFAR10_STD, REF_VGG16, REF_VGG19
from .schema import SchemaError, check_meta, declared_state

FORMATS = {
    "dynamic-pruning": "checkpoint.pth.tar of frankwang345/dynamic-pruning (weights, decision heads, masks)",
    "pruning-from-scratch": "channel_gates.pkl or checkpoint.pth of frankwang345/pruning-from-scratch (learned gates)",
}
ARCHS = {"vgg16": "ref_vgg16", "vgg19": "ref_vgg19", "resnet20": "ref_resnet20", "resnet56": "ref_resnet56"}
_VGG_CONFIGS = {"ref_vgg16": REF_VGG16, "ref_vgg19": REF_VGG19}
_RESNET_BLOCKS = {"ref_resnet20": 3, "ref_resnet56": 9}  # blocks per stage
_RESNET_PARTS = [  # gatescope's name inside a block -> the reference's
    (r"conv(\d)\.conv\.weight", r"conv\1.weight"), (r"conv(\d)\.bn\.(.+)", r"bn\1.\2"),
    (r"conv1\.decision\.linear\.weight", "decision_head.fc1.weight"),
    (r"conv1\.bank\.weight", "decision_head.channel_gates"), (r"conv1\.gate", "gates"), (r"(shortcut\..+)", r"\1"),
]
_CHAIN_PARTS = {"decision.linear.weight": "decision_head.fc1.weight", "bank.weight": "decision_head.channel_gates",
                "gate": "gates"}


def official_keys(arch: str, names: list[str]) -> dict[str, str]:
    """gatescope's state-dict ``names`` of the reference network ``arch`` (``ref_vgg16``, ...) ->
    the reference code's names; the normalisation buffers (the reference normalises in its data
    loader) have none."""
    names = [n for n in names if n not in ("mean", "std")]
    if arch in _VGG_CONFIGS:
        positions = [i for i, c in enumerate(_VGG_CONFIGS[arch]) if c != "M"]  # index in `feature` of conv j
        return {n: _chain_key(n, positions) for n in names}
    n_blocks = _RESNET_BLOCKS[arch]
    return {n: _resnet_key(n, n_blocks) for n in names}


def _chain_key(name: str, positions: list[int]) -> str:
    if name.startswith("fc."):
        return "classifier." + name.removeprefix("fc.")
    j, rest = re.fullmatch(r"convs\.(\d+)\.(.+)", name).groups()
    return f"feature.{positions[int(j)]}.{_CHAIN_PARTS.get(rest, rest)}"


def _resnet_key(name: str, n_blocks: int) -> str:
    if name.startswith("fc."):
        return "linear." + name.removeprefix("fc.")
    if name.startswith("stem."):
        return "conv1.weight" if name == "stem.conv.weight" else "bn1." + name.removeprefix("stem.bn.")
    k, rest = re.fullmatch(r"blocks\.(\d+)\.(.+)", name).groups()
    for pattern, theirs in _RESNET_PARTS:
        if re.fullmatch(pattern, rest):
            return f"layer{int(k) // n_blocks + 1}.{int(k) % n_blocks}." + re.sub(pattern, theirs, rest)
    raise ValueError(f"{name}: no counterpart in the reference ResNet")


def import_official(
    file: str | Path, out: str | Path, *, fmt: str, arch: str, dataset: str, class_names: list[str],
) -> RunMeta:
    """Read the reference code's ``file`` (``fmt`` one of :data:`FORMATS`, ``arch`` one of
    :data:`ARCHS`) and save it as the run folder ``out``; returns the meta as written. Raises one
    :class:`RunError` naming every missing, unexpected or misshapen key."""
    file = Path(file)
    if fmt not in FORMATS:
        raise RunError(f"format {fmt!r}; known: {', '.join(FORMATS)}")
    if arch not in ARCHS:
        raise RunError(f"--arch {arch!r}; known: {', '.join(ARCHS)}")
    ref = ARCHS[arch]
    raw, state = _read(file, fmt)
    gates_only = state is None  # a bare list of gate vectors: no weights in the file
    if fmt == "dynamic-pruning":
        args = {"gated": True, "num_actions": _num_actions(state), "standardise": False}
    else:
        gates = _gate_vectors(raw, state, ref, file)
        args = {"gated": False, "channel_gates": True, "widths": [len(g) for g in gates]}
        state = dict(zip(_gate_keys(ref), gates)) if gates_only else state
    meta = _meta(ref, args, dataset, class_names, file)
    declared = _declared(meta, file)
    names = official_keys(ref, list(declared))
    keep = {k for k in names if k.endswith("num_batches_tracked")}  # absent in old torch's files; unused
    if gates_only:
        keep |= {k for k, theirs in names.items() if theirs not in state}  # everything but the gates
    dropped = _unused_heads(ref) if fmt == "dynamic-pruning" else set()
    hint = f" ({_RESNET_HINT})" if fmt == "pruning-from-scratch" and ref in _RESNET_BLOCKS else ""
    _check(state, declared, names, keep, dropped, f"{file}: not a {fmt} {arch} checkpoint", hint)
    torch.manual_seed(0)
    base = build_model(meta).state_dict()  # normalisation buffers and whatever `keep` names
    mapped = {k: (state[names[k]].to(v.dtype) if names.get(k) in state else v) for k, v in base.items()}
    model = model_from_state(meta, mapped, file)
    training = {"imported_from": file.name, "imported_sha256": sha256_bytes(file.read_bytes()),
                "imported_format": fmt, "imported_arch": arch}
    if isinstance(raw, dict) and isinstance(raw.get("epoch"), int):
        training["imported_epoch"] = raw["epoch"]
    if gates_only:
        training["weights"] = "random (seed 0): the gates file holds no weights"
    return save_run(out, model, replace(meta, training=training))


def _read(file: Path, fmt: str) -> tuple[Any, dict[str, torch.Tensor] | None]:
    """The loaded object and its state dict (None for a bare list of gate vectors)."""
    try:
        raw = load_tensors_only(file)
    except RunError:
        if fmt != "pruning-from-scratch" or zipfile.is_zipfile(file):  # a torch file: torch's reason stands
            raise
        raw = read_tensor_pickle(file)  # channel_gates.pkl is a plain pickle, not a torch file
    if fmt == "pruning-from-scratch" and isinstance(raw, (list, tuple)):
        return raw, None
    return raw, state_dict_of(raw, file)


def _num_actions(state: dict[str, torch.Tensor]) -> int:
    heads = [t for k, t in state.items() if k.endswith("decision_head.fc1.weight") and t.dim() == 2]
    return int(heads[0].shape[0]) if heads else 40  # 40: the reference's default; the check names the heads


def _gate_keys(ref: str) -> list[str]:
    """The reference's names of the gate vectors, in layer order."""
    names = list(declared_state(ref, {"gated": False, "channel_gates": True}, [3, 32, 32]))
    return [theirs for ours, theirs in official_keys(ref, names).items() if ours.endswith(".gate")]


def _gate_vectors(raw: Any, state: dict | None, ref: str, file: Path) -> list[torch.Tensor]:
    """The learned gate vectors of a pruning-from-scratch file, checked against ``ref``."""
    keys = _gate_keys(ref)
    if state is not None:
        missing = [k for k in keys if k not in state]
        if missing:
            raise RunError(f"{file}: not a pruning-from-scratch {ref.removeprefix('ref_')} checkpoint: missing "
                           f"{_some(missing)} (its learned gates)")
        gates = [state[k] for k in keys]
    else:
        gates = list(raw)
        if len(gates) != len(keys) or not all(isinstance(g, torch.Tensor) for g in gates):
            raise RunError(f"{file}: expected {len(keys)} gate vectors (one per prunable layer of "
                           f"{ref.removeprefix('ref_')}), found {len(gates)} items")
    bad = [i for i, g in enumerate(gates) if g.dim() != 1 or not g.is_floating_point() or len(g) < 1]
    if bad:
        raise RunError(f"{file}: gate vector {bad[0]} has shape {tuple(gates[bad[0]].shape)} and dtype "
                       f"{gates[bad[0]].dtype}; expected one float per channel")
    if ref in _RESNET_BLOCKS and state is None:
        declared = declared_state(ref, {"gated": False, "channel_gates": True}, [3, 32, 32])
        default = [int(shape[0]) for k, (shape, _) in declared.items() if k.endswith(".gate")]
        wrong = [i for i, (g, w) in enumerate(zip(gates, default)) if len(g) != w]
        if wrong:
            i = wrong[0]
            raise RunError(f"{file}: gate vector {i} has {len(gates[i])} entries; block {i} of "
                           f"{ref.removeprefix('ref_')} has {default[i]} channels ({_RESNET_HINT})")
    return [g.float().contiguous() for g in gates]


_RESNET_HINT = ("gatescope's CIFAR ResNets keep the reference's 16/32/64 residual stream, so only gates "
                "learned with -e 16 import")


def _meta(ref: str, args: dict, dataset: str, class_names: list[str], file: Path) -> RunMeta:
    meta = RunMeta(arch=ref, arch_args={**args, "num_classes": len(class_names), "in_channels": 3},
                   dataset=dataset, class_names=list(class_names), input_shape=[3, 32, 32],
                   mean=list(CIFAR10_MEAN), std=list(CIFAR10_STD))
    try:
        check_meta(asdict(meta))
    except SchemaError as e:
        raise RunError(f"{file}: {e}") from None
    return meta


def _declared(meta: RunMeta, file: Path) -> dict[str, tuple[torch.Size, torch.dtype]]:
    try:
        return declared_state(meta.arch, meta.arch_args, meta.input_shape)
    except SchemaError as e:
        raise RunError(f"{file}: {e}") from None


def _unused_heads(ref: str) -> set[str]:
    """The decision head the reference builds for VGG's first conv and never calls."""
    if ref not in _VGG_CONFIGS:
        return set()
    return {"feature.0.decision_head.fc1.weight", "feature.0.decision_head.channel_gates"}


def _check(state: dict, declared: dict, names: dict[str, str], keep: set[str], dropped: set[str], what: str,
           hint: str) -> None:
    """One RunError naming every missing, unexpected and misshapen key of ``state``; ``hint`` is
    added when a shape is wrong."""
    missing = [t for o, t in names.items() if t not in state and o not in keep]
    unexpected = sorted(set(state) - set(names.values()) - dropped)
    misshapen = [f"{t} {tuple(state[t].shape)}, expected {tuple(declared[o][0])}" for o, t in names.items()
                 if t in state and tuple(state[t].shape) != tuple(declared[o][0])]
    problems = [f"{label} {_some(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape:", misshapen)) if keys]
    if problems:
        raise RunError(f"{what}: " + "; ".join(problems) + (hint if misshapen else ""))


def _some(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(k[:120] for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")
