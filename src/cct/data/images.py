"""Turning any image file into the uint8 tensor a model sees: one code path for training folders,
evaluation and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import CCTError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """Any PIL image -> (3, size, size) uint8: EXIF rotation applied, converted to RGB, the shorter side
    resized to `size` and the centre cropped (a CIFAR image passes through unchanged)."""
    image = ImageOps.exif_transpose(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """An image file -> (3, size, size) uint8; a file that is not a readable image is a CCTError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return image_to_tensor(image, size)
    except FileNotFoundError:
        raise CCTError(f"{path}: no such file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise CCTError(f"{path}: not a readable image ({e})") from e
