"""The schema of ``model.json``: every field's type, range and size, checked before anything
is allocated. A file from a paper's website or a colleague is untrusted: a wrong type, an
unknown architecture or a network declaring a billion channels is refused with a message
naming the field, never handed to a constructor.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from .registry import builder_defaults, list_models

MAX_CLASSES = 100_000
MAX_CHANNELS_IN = 64  # image channels
MAX_SIDE = 4096  # input height / width
MAX_INPUT_VALUES = 3 * 1024 * 1024
MAX_WIDTH = 8192  # channels of one layer
MAX_LAYERS = 512
MAX_ACTIONS = 1024
MAX_PARAMS = 200_000_000  # about 800 MB of float32 weights
MAX_TEXT = 4096

# builder arguments every registered architecture accepts: name -> (check, description)
_ARGS = {
    "gated": (lambda v: isinstance(v, bool), "true or false"),
    "channel_gates": (lambda v: isinstance(v, bool), "true or false"),
    "standardise": (lambda v: isinstance(v, bool), "true or false"),
    "num_classes": (lambda v: _int_in(v, 1, MAX_CLASSES), f"an integer in [1, {MAX_CLASSES}]"),
    "in_channels": (lambda v: _int_in(v, 1, MAX_CHANNELS_IN), f"an integer in [1, {MAX_CHANNELS_IN}]"),
    "num_actions": (lambda v: _int_in(v, 1, MAX_ACTIONS), f"an integer in [1, {MAX_ACTIONS}]"),
    "widths": (lambda v: v is None or (isinstance(v, list) and 0 < len(v) <= MAX_LAYERS
                                       and all(_int_in(w, 1, MAX_WIDTH) for w in v)),
               f"null or a list of at most {MAX_LAYERS} integers in [1, {MAX_WIDTH}]"),
}


class SchemaError(ValueError):
    """A ``model.json`` that does not follow the schema; the message names the field."""


def _int_in(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TEXT


def check_meta(raw: Any) -> None:
    """Raise :class:`SchemaError` unless ``raw`` (parsed model.json) is a sane run description."""
    if not isinstance(raw, dict):
        raise SchemaError(f"expected a JSON object, found {type(raw).__name__}")

    def need(name: str, ok: bool, what: str) -> None:
        if not ok:
            shown = repr(raw.get(name))
            raise SchemaError(f'"{name}" must be {what}; found {shown[:80]}{"..." if len(shown) > 80 else ""}')

    need("arch", _text(raw.get("arch")), "an architecture name (a string)")
    if raw["arch"] not in list_models():
        raise SchemaError(f'"arch" is {raw["arch"][:80]!r}; known: {", ".join(list_models())}')
    args = raw.get("arch_args")
    need("arch_args", isinstance(args, dict), "an object of builder arguments")
    for key, value in args.items():
        if key not in _ARGS or key not in builder_defaults(raw["arch"]):
            raise SchemaError(f'"arch_args" has an unknown argument {key[:80]!r}; known: {", ".join(sorted(_ARGS))}')
        check, what = _ARGS[key]
        if not check(value):
            raise SchemaError(f'"arch_args.{key}" must be {what}; found {repr(value)[:80]}')
    need("dataset", _text(raw.get("dataset")) and raw["dataset"] != "", "a dataset spec (a non-empty string)")
    names = raw.get("class_names")
    need("class_names", isinstance(names, list) and 0 < len(names) <= MAX_CLASSES and all(
        isinstance(n, str) and len(n) <= 200 for n in names), f"a list of 1 to {MAX_CLASSES} class names")
    args = {**builder_defaults(raw["arch"]), **args}
    if args["num_classes"] != len(names):
        raise SchemaError(f'"class_names" has {len(names)} names but the network has {args["num_classes"]} classes')
    shape = raw.get("input_shape")
    need("input_shape", isinstance(shape, list) and len(shape) == 3 and _int_in(shape[0], 1, MAX_CHANNELS_IN)
         and all(_int_in(s, 1, MAX_SIDE) for s in shape[1:]) and math.prod(shape) <= MAX_INPUT_VALUES,
         f"[channels, height, width] with at most {MAX_CHANNELS_IN} channels, sides up to {MAX_SIDE} "
         f"and {MAX_INPUT_VALUES:,} values")
    if args["in_channels"] != shape[0]:
        raise SchemaError(f'"input_shape" has {shape[0]} channels but the network takes {args["in_channels"]}')
    for name in ("mean", "std"):
        v = raw.get(name)
        need(name, isinstance(v, list) and len(v) == shape[0] and all(_finite(x) for x in v),
             f"a list of {shape[0]} finite numbers (one per input channel)")
    need("std", all(s > 0 for s in raw["std"]), "positive")
    for name in ("training", "metrics"):
        need(name, isinstance(raw.get(name, {}), dict), "an object")
    need("version", _text(raw.get("version", "")), "a string")
    sha = raw.get("weights_sha256", "")
    need("weights_sha256", isinstance(sha, str) and (sha == "" or re.fullmatch(r"[0-9a-f]{64}", sha) is not None),
         "empty or 64 lowercase hexadecimal digits")


def declared_state(arch: str, args: dict[str, Any], input_shape: list[int]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """Names, shapes and dtypes of the weights the architecture declares, found by building it
    on the ``meta`` device (no memory is allocated); refuses networks over :data:`MAX_PARAMS`."""
    from .registry import create_model

    try:
        with torch.device("meta"):
            model = create_model(arch, **args, mean=(0.0,) * input_shape[0], std=(1.0,) * input_shape[0])
    except (TypeError, ValueError) as e:
        raise SchemaError(f'"arch_args" do not build {arch!r} ({e})') from None
    state = model.state_dict()
    params = sum(t.numel() for t in state.values())
    if params > MAX_PARAMS:
        raise SchemaError(f"the declared network has {params:,} weights; the limit is {MAX_PARAMS:,} "
                          "(refused before allocating it)")
    return {k: (t.shape, t.dtype) for k, t in state.items()}
