"""Uploaded runs: each bad kind is refused with its reason and leaves nothing in the cache."""

from __future__ import annotations

import io
import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from app import state
from models import RunError, load_run

from conftest import DEFAULT_RUN, fuzz
from hostile import META, REFUSED_BECAUSE, WEIGHTS, bad_runs, meta_json


@pytest.fixture
def uploads(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "UPLOADS", tmp_path / "uploads")
    return tmp_path / "uploads"


@pytest.mark.parametrize("kind", list(REFUSED_BECAUSE))
def test_each_bad_upload_kind_is_refused_with_its_reason_and_leaves_nothing(uploads, tmp_path, kind):
    marker = tmp_path / "payload-ran"
    name, weights, meta = bad_runs(marker)[kind]
    with pytest.raises(RunError, match=REFUSED_BECAUSE[kind]) as e:
        state.store_uploaded_run(name, weights, meta)
    assert str(uploads) not in str(e.value)  # the message names the file, not the server's temporary folder
    assert not marker.exists()
    assert not uploads.exists() or not any(uploads.iterdir())


def test_a_good_upload_joins_the_cache_once(uploads):
    first = state.store_uploaded_run("model.safetensors", WEIGHTS, meta_json())
    assert load_run(first).meta.weights_sha256 == META["weights_sha256"]
    assert state.store_uploaded_run("model.safetensors", WEIGHTS, meta_json()) == first
    assert [p.name for p in uploads.iterdir()] == [first.name]


def test_a_pt_state_dict_upload_becomes_a_safetensors_run(uploads):
    buf = io.BytesIO()
    torch.save({"state_dict": load_run(DEFAULT_RUN).model.state_dict()}, buf)
    folder = state.store_uploaded_run("weights.pt", buf.getvalue(), meta_json(weights_sha256=""))
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(load_run(folder).model(x), load_run(DEFAULT_RUN).model(x), rtol=0, atol=0)


@fuzz(150)
@given(weights=st.binary(max_size=2048), meta=st.binary(max_size=512) | st.builds(
    lambda d: json.dumps(d).encode(), st.dictionaries(st.sampled_from(list(META) + ["x"]), st.none() | st.integers()
                                                      | st.text(max_size=8), max_size=12)),
       name=st.sampled_from(["model.safetensors", "w.pt", "w.pth"]))
def test_generated_uploads_are_refused_and_leave_nothing(weights, meta, name, tried, tmp_path_factory):
    tried("run upload")
    uploads = tmp_path_factory.getbasetemp() / "fuzz-uploads"
    old, state.UPLOADS = state.UPLOADS, uploads
    try:
        with pytest.raises(RunError):
            state.store_uploaded_run(name, weights, meta)
    finally:
        state.UPLOADS = old
    assert not uploads.exists() or not any(uploads.iterdir())
