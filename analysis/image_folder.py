"""A folder of class folders of images, read as torchvision's ``ImageFolder`` reads it, without
importing torchvision (whose import costs the app about 1.6 s of CPU at each launch).

The same classes (sorted folder names), the same files in the same order (each class folder
walked in sorted order, links followed, the same extensions, case-insensitive) and the same
tensors (``Resize((h, w))`` with PIL's bilinear filter, then ``ToTensor``): a test checks it
against torchvision's.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


class ImageFolder(Dataset):
    """``ROOT/<class name>/**/<image>`` as ``(image tensor in [0, 1], class index)`` pairs.

    ``size`` (height, width) resizes every image; ``mode`` is PIL's ("RGB" or "L"). Without
    them items are the PIL images as they open (what a probe needs). Raises FileNotFoundError
    when ``root`` holds no class folder, or a class folder holds no image."""

    def __init__(self, root: str | Path, *, size: tuple[int, int] | None = None, mode: str | None = None):
        self.root, self.size, self.mode = str(root), size, mode
        self.classes = sorted(entry.name for entry in os.scandir(self.root) if entry.is_dir())
        if not self.classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {self.root}.")
        self.samples: list[tuple[str, int]] = []
        empty = []
        for index, name in enumerate(self.classes):
            found = [os.path.join(folder, file)
                     for folder, _, files in sorted(os.walk(os.path.join(self.root, name), followlinks=True))
                     for file in sorted(files) if file.lower().endswith(IMAGE_EXTENSIONS)]
            self.samples += [(path, index) for path in found]
            empty += [] if found else [name]
        if empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}. "
                                    f"Supported extensions are: {', '.join(IMAGE_EXTENSIONS)}")
        self.targets = [label for _, label in self.samples]

    def formatted(self, size: tuple[int, int], mode: str) -> "ImageFolder":
        """The same files, as tensors of ``size`` in PIL ``mode`` (without listing the folder again)."""
        folder = copy.copy(self)
        folder.size, folder.mode = size, mode
        return folder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        with Image.open(path) as img:
            img = img.convert(self.mode) if self.mode else img.copy()
        if self.size is None:
            return img, label
        if img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8).reshape(img.size[1], img.size[0], -1))
        return pixels.permute(2, 0, 1).to(torch.float32).div(255), label
