"""Loading untrusted run folders and weight files: refused with a RunError, never a crash,
an allocation the file merely declares, or code run from a pickle."""

from __future__ import annotations

import copy
import io
import json
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

from models import RunError, load_run, read_meta
from models.convert import import_torch_weights, read_torch_weights
from models.files import sha256_bytes
from models.schema import MAX_PARAMS, SchemaError, check_meta, declared_state

from conftest import DEFAULT_RUN, fuzz
from hostile import Payload

VALID = json.loads((DEFAULT_RUN / "model.json").read_text())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
FIELDS = ["arch", "arch_args", "dataset", "class_names", "input_shape", "mean", "std", "training", "metrics",
          "version", "weights_sha256", "arch_args.gated", "arch_args.num_classes", "arch_args.in_channels",
          "arch_args.num_actions", "arch_args.widths", "arch_args.channel_gates", "arch_args.unknown"]
# values that look plausible but are not: the dangerous edge of each range
EDGES = st.sampled_from([0, -1, 1, 10**9, 2**31, 2**63, float("nan"), float("inf"), -0.0, True, "", "vgg16",
                         [10**9] * 5, [8192] * 13, [1] * 13, [0] * 5, [3, 10**6, 10**6], list(range(600))])


def _mutated(field: str, value) -> dict:
    raw = copy.deepcopy(VALID)
    if field.startswith("arch_args."):
        raw["arch_args"][field.split(".", 1)[1]] = value
    else:
        raw[field] = value
    return raw


@fuzz(700)
@given(field=st.sampled_from(FIELDS), value=json_values | EDGES, arch=st.sampled_from(["small_cnn", "vgg16", "resnet56"]))
def test_the_schema_refuses_generated_bad_fields_before_anything_is_built(field, value, arch, tried):
    tried("model.json schema")
    raw = _mutated(field, value)
    if arch != "small_cnn" and field != "arch":
        raw["arch"] = arch
        if isinstance(raw["arch_args"], dict) and field != "arch_args.in_channels":
            raw["arch_args"]["in_channels"] = 1  # keep the shipped 1-channel input consistent
    try:
        check_meta(raw)
    except SchemaError as e:
        assert str(e) and len(str(e)) < 600  # a readable message, not a dump of the value
        return
    # accepted: then the declared network is buildable and small enough, or refused as too big
    try:
        state = declared_state(raw["arch"], raw["arch_args"], raw["input_shape"])
    except SchemaError as e:
        assert "limit" in str(e) or "do not build" in str(e)
        return
    assert sum(shape.numel() for shape, _ in state.values()) <= MAX_PARAMS


@pytest.mark.parametrize("widths, reason", [
    ([10**9, 32, 64, 64, 128], "arch_args.widths"),  # a billion channels: out of range
    ([8192] * 5, "the limit is"),  # each width in range, together about 1.8e9 weights
])
def test_an_absurd_declared_size_is_refused_before_allocation(tmp_path, widths, reason):
    run = tmp_path / "run"
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis"))
    meta = json.loads((run / "model.json").read_text())
    meta["arch_args"]["widths"] = widths
    (run / "model.json").write_text(json.dumps(meta))
    t0 = time.perf_counter()
    with pytest.raises(RunError, match=reason):
        load_run(run)
    assert time.perf_counter() - t0 < 5  # refused from the description; 1.8e9 floats were never made


def test_a_weights_file_far_larger_than_declared_is_refused_unread(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis"))
    with open(run / "model.safetensors", "r+b") as f:
        f.truncate(4 * 2**30)  # 4 GiB, sparse: reading it would take the time and memory
    t0 = time.perf_counter()
    with pytest.raises(RunError, match="far more than"):
        load_run(run)
    assert time.perf_counter() - t0 < 5


def _resave(run: Path, state: dict) -> None:
    data = safetensors.torch.save(state)
    (run / "model.safetensors").write_bytes(data)
    meta = json.loads((run / "model.json").read_text())
    meta["weights_sha256"] = sha256_bytes(data)
    (run / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tiny_run, bad):
    state = safetensors.torch.load((tiny_run / "model.safetensors").read_bytes())
    name = next(k for k in state if k.endswith("conv.weight"))
    state[name].view(-1)[3] = bad
    _resave(tiny_run, state)
    with pytest.raises(RunError, match=f"NaN or infinite values \\(in {name}"):
        load_run(tiny_run)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from models import RunMeta, build_model, save_run

    meta = RunMeta(**{k: VALID[k] for k in ("arch", "arch_args", "dataset", "class_names", "input_shape", "mean", "std")})
    path = tmp_path_factory.mktemp("pristine") / "run"
    save_run(path, build_model(meta), meta)
    return path


mutations = st.lists(st.tuples(st.sampled_from(["flip", "cut", "append", "insert"]), st.integers(0, 2**20),
                               st.binary(min_size=1, max_size=16)), min_size=1, max_size=4)


def _mutate(data: bytes, ops) -> bytes:
    for op, at, chunk in ops:
        at %= max(len(data), 1)
        if op == "flip":
            data = data[:at] + bytes(b ^ c for b, c in zip(data[at:at + len(chunk)], chunk)) + data[at + len(chunk):]
        elif op == "cut":
            data = data[:at]
        elif op == "append":
            data = data + chunk
        else:
            data = data[:at] + chunk + data[at:]
    return data


@fuzz(300)
@given(target=st.sampled_from(["model.safetensors", "model.json", "both"]), ops=mutations,
       near_header=st.booleans(), drop_hash=st.booleans())
def test_mutated_run_folders_load_or_are_refused_with_a_run_error(pristine, target, ops, near_header, drop_hash, tried):
    tried("run folder loader")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(pristine, run)
        if drop_hash:  # without the hash check the safetensors parser and the shape checks face the bytes
            meta = json.loads((run / "model.json").read_text())
            meta["weights_sha256"] = ""
            (run / "model.json").write_text(json.dumps(meta))
        for name in (["model.safetensors", "model.json"] if target == "both" else [target]):
            data = (run / name).read_bytes()
            if near_header:  # the first bytes hold the safetensors header / the JSON's first fields
                ops = [(op, at % 200, chunk) for op, at, chunk in ops]
            (run / name).write_bytes(_mutate(data, ops))
        try:
            loaded = load_run(run)
        except RunError as e:
            assert str(e)
            return
        # accepted: a working network with finite weights
        assert all(torch.isfinite(t).all() for t in loaded.model.state_dict().values() if t.is_floating_point())
        logits = loaded.model(torch.rand(2, *loaded.meta.input_shape))
        assert logits.shape == (2, len(loaded.meta.class_names))


def test_a_pickle_payload_is_refused_and_never_runs(tmp_path, pristine):
    marker = tmp_path / "payload-ran"
    state = {k: v for k, v in load_run(pristine).model.state_dict().items()}
    evil_zip = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "extra": Payload(marker)}, evil_zip)
    evil_raw = tmp_path / "evil.pth"
    evil_raw.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))

    for file in (evil_zip, evil_raw):
        with pytest.raises(RunError, match="refused: not a plain weights file.*posix.system"):
            import_torch_weights(file, read_meta(pristine), tmp_path / "out")
        assert not marker.exists() and not (tmp_path / "out").exists()
    # the payload is real: a full unpickling would have run it
    pickle.loads(evil_raw.read_bytes())
    assert marker.exists()


def test_a_torch_state_dict_imports_to_the_same_network(tmp_path, pristine):
    source = load_run(pristine)
    ddp_style = {"state_dict": {f"module.{k}": v for k, v in source.model.state_dict().items()}, "epoch": 3}
    torch.save(ddp_style, tmp_path / "weights.pth")
    import_torch_weights(tmp_path / "weights.pth", source.meta, tmp_path / "imported")
    imported = load_run(tmp_path / "imported")
    x = torch.rand(4, *source.meta.input_shape)
    torch.testing.assert_close(imported.model(x), source.model(x), rtol=0, atol=0)
    assert imported.meta.training["imported_from"] == "weights.pth"


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("content, reason", [
    (b"", "not a readable torch weights file"),
    (b"PK\x03\x04 truncated zip", "not a readable torch weights file"),
    (_saved([1, 2, 3]), "expected a state dict"),
    (_saved({"w": 1.0}), "expected a state dict"),
])
def test_torch_files_that_are_not_state_dicts_are_refused(tmp_path, content, reason):
    (tmp_path / "w.pt").write_bytes(content)
    with pytest.raises(RunError, match=reason):
        read_torch_weights(tmp_path / "w.pt")


@fuzz(200)
@given(ops=mutations, raw=st.booleans())
def test_mutated_torch_files_are_read_as_tensors_or_refused(pristine, ops, raw, tried):
    tried("torch .pt reader")
    buf = io.BytesIO()
    state = safetensors.torch.load((pristine / "model.safetensors").read_bytes())
    if raw:
        buf.write(pickle.dumps(state))
    else:
        torch.save(state, buf)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "w.pt"
        file.write_bytes(_mutate(buf.getvalue(), ops))
        try:
            result = read_torch_weights(file)
        except RunError:
            return
        assert all(isinstance(v, torch.Tensor) for v in result.values())
