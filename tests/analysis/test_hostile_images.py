"""The image upload path facing generated files: every upload becomes a valid model input
(finite, in [0, 1], the model's shape) or an ImageError with a reason; none crashes or
decodes a bomb."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from analysis.images import MAX_PIXELS, ImageError, image_to_input

from conftest import fuzz
from hostile import png_header_only

SHAPES = st.sampled_from([(1, 28, 28), (3, 32, 32)])
MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I", "F", "CMYK", "I;16"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def _accepted_or_refused(data: bytes, shape) -> None:
    try:
        x, notes = image_to_input(data, shape)
    except ImageError as e:
        assert str(e)
        return
    assert x.shape == (1, *shape) and x.dtype.is_floating_point
    assert bool(x.isfinite().all()) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert all(isinstance(n, str) for n in notes)


@st.composite
def encoded_images(draw):
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if mode == "F":
        img = Image.fromarray(rng.normal(0, draw(st.sampled_from([1.0, 1e30])), (h, w)).astype(np.float32), mode="F")
    else:
        img = Image.frombytes("RGB", (w, h), rng.integers(0, 256, (h, w, 3), dtype=np.uint8).tobytes()).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # this format cannot hold this mode
    return buf.getvalue()


@fuzz(300)
@given(data=encoded_images(), shape=SHAPES)
def test_generated_images_of_any_mode_size_and_format_become_valid_inputs(data, shape, tried):
    tried("image upload")
    x, _ = image_to_input(data, shape)  # every real image must be accepted
    assert x.shape == (1, *shape) and bool(x.isfinite().all()) and 0 <= float(x.min()) <= float(x.max()) <= 1


@fuzz(300)
@given(data=encoded_images(), shape=SHAPES, cut=st.floats(0, 1), flips=st.lists(
    st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=6))
def test_damaged_images_are_converted_or_refused(data, shape, cut, flips, tried):
    tried("image upload")
    raw = bytearray(data[: max(1, int(len(data) * cut))] if cut < 0.98 else data)
    for where, bits in flips:
        raw[int(where * (len(raw) - 1))] ^= bits
    _accepted_or_refused(bytes(raw), shape)


@fuzz(200)
@given(data=st.binary(max_size=4096), shape=SHAPES)
def test_random_bytes_are_refused_or_converted(data, shape, tried):
    tried("image upload")
    _accepted_or_refused(data, shape)


@pytest.mark.parametrize("side", [MAX_PIXELS ** 0.5 + 1, 100_000, 2**31 - 1])
def test_a_decompression_bomb_is_refused_from_its_header(side):
    data = png_header_only(int(side), int(side))
    assert len(data) < 200
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match="decompression bomb"):
        image_to_input(data, (1, 28, 28))
    assert time.perf_counter() - t0 < 2  # refused before any pixel was decoded


def test_the_upload_cap_is_checked_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (400, 400)).save(buf, format="BMP")  # 160 kB
    with pytest.raises(ImageError, match="the limit is 100,000"):
        image_to_input(buf.getvalue(), (1, 28, 28), max_bytes=100_000)
    x, notes = image_to_input(buf.getvalue(), (1, 28, 28), max_bytes=200_000)
    assert x.shape == (1, 1, 28, 28) and notes == ["resized from 400x400 to 28x28"]
