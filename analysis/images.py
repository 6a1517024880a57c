"""Turning an uploaded image file into a model input, or refusing it with a reason."""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch

MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # the app's default upload cap
MAX_PIXELS = 4096 * 4096  # Pillow refuses larger images (decompression-bomb protection)


class ImageError(Exception):
    """An uploaded file that cannot become a model input; the message says why."""


def image_to_input(data: bytes, input_shape: tuple[int, int, int], *, max_bytes: int = MAX_UPLOAD_BYTES) -> tuple[torch.Tensor, list[str]]:
    """Decode ``data`` into a (1, C, H, W) tensor in [0, 1] for a model expecting ``input_shape``.

    Returns the tensor and the conversions applied (mode, size), to show the user. Refuses
    files over ``max_bytes``, files that are not images, and decompression bombs.
    """
    from PIL import Image

    if len(data) > max_bytes:
        raise ImageError(f"the file has {len(data):,} bytes; the limit is {max_bytes:,}")
    channels, height, width = input_shape
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                mode = "L" if channels == 1 else "RGB"
                if img.mode != mode:
                    notes.append(f"converted from {img.mode} to {mode}")
                    img = img.convert(mode)
                if img.size != (width, height):
                    notes.append(f"resized from {img.size[0]}x{img.size[1]} to {width}x{height}")
                    img = img.resize((width, height), Image.BILINEAR)
                array = np.asarray(img, dtype=np.float32) / 255.0
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"the image has more than {MAX_PIXELS:,} pixels (refused as a possible decompression bomb)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"not a readable image ({e.__class__.__name__}: {e})") from None
    x = torch.from_numpy(array)
    x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
    return x[None].contiguous(), notes
