"""Turning any image file into the uint8 tensor a model sees: one code path for training folders,
evaluation and prediction."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import CCTError
from ..runtime import available_cpus

# AVIF where this Pillow reads it (its wheels do since 11.2)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                  *({".avif"} & set(Image.registered_extensions()))}
MAX_PIXELS = 50_000_000  # larger images are refused before decoding (decompression bombs)


class ImageTooLarge(CCTError):
    """An image with more pixels than allowed."""


def open_image(source: str | Path | BinaryIO, name: str | None = None, max_pixels: int = MAX_PIXELS,
               size: int | None = None) -> Image.Image:
    """Open and decode an image file (a path or a binary file object), checking its pixel count from the
    header before any pixel is decoded. Every failure is a CCTError starting with `name` (default: the path).
    With `size`, a JPEG is decoded at the smallest of its DCT scales (1/2, 1/4, 1/8) that still covers
    size x size (PIL's draft): a 12-megapixel photo 5x faster, within a few levels of the full decode once
    resized."""
    name = name or str(source)
    try:
        image = Image.open(source)
    except FileNotFoundError:
        fetched = " (web addresses are not fetched: download the image, then give its file)" if "://" in name else ""
        raise CCTError(f"{name}: no such file{fetched}") from None
    except Image.DecompressionBombError:  # PIL's own check, at twice its MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"{name}: the image has over {2 * Image.MAX_IMAGE_PIXELS:,} pixels; the limit is "
                            f"{max_pixels:,}") from None
    except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise CCTError(f"{name}: not a readable image ({type(e).__name__})") from None
    pixels = image.size[0] * image.size[1]
    if pixels > max_pixels:
        image.close()
        raise ImageTooLarge(f"{name}: the image has {pixels:,} pixels; the limit is {max_pixels:,}")
    try:
        if size is not None and image.format == "JPEG":
            image.draft(None, (size, size))
        image.load()
    except (OSError, ValueError, SyntaxError) as e:
        image.close()
        raise CCTError(f"{name}: the image is truncated or corrupt ({e})") from None
    return image


MODE_OF_CHANNELS = {1: "L", 3: "RGB"}  # how images are read for a model's in_chans


def check_channels(channels: int) -> None:
    if channels not in MODE_OF_CHANNELS:
        raise CCTError(f"in_chans {channels}: images are read as 1 (grayscale) or 3 (RGB) channels")


def image_to_tensor(image: Image.Image, size: int, channels: int = 3) -> torch.Tensor:
    """Any PIL image -> (channels, size, size) uint8: EXIF rotation applied, the first frame of an animation,
    16-bit values scaled to 8 bits, converted to RGB (or grayscale for 1 channel), the shorter side resized to
    `size` and the centre cropped (a CIFAR image passes through unchanged)."""
    check_channels(channels)
    if 0 in image.size:
        raise CCTError(f"an empty image ({image.size[0]} x {image.size[1]} pixels): nothing to classify")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        image = Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8))
    if image.mode != MODE_OF_CHANNELS[channels]:
        image = image.convert(MODE_OF_CHANNELS[channels])
    if image.size != (size, size):
        image = ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).view(size, size, channels).permute(2, 0, 1)


def tensor_to_image(image: torch.Tensor) -> Image.Image:
    """(C, H, W) uint8, 1 or 3 channels, as `image_to_tensor` makes them -> a PIL image ("L" or "RGB")."""
    return Image.fromarray(image[0].numpy() if len(image) == 1 else image.permute(1, 2, 0).numpy())


def image_files(folder: Path) -> list[Path]:
    """The image files in `folder` and below, sorted, but for hidden ones and those in hidden folders (such as
    Jupyter's .ipynb_checkpoints or macOS's ._name.jpg)."""
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def load_image(path: str | Path, size: int, channels: int = 3) -> torch.Tensor:
    """An image file -> (channels, size, size) uint8 (`image_to_tensor`); a file that is not a readable image is
    a CCTError naming it."""
    with open_image(path, size=size) as image:
        return image_to_tensor(image, size, channels)


def load_images(paths: Sequence[str | Path], size: int, channels: int = 3) -> Iterator[torch.Tensor | str]:
    """`load_image` of each path, in order, decoded on every core (PIL decodes and resizes without holding the
    GIL); an unreadable file gives its error message instead."""

    def load(path: str | Path) -> torch.Tensor | str:
        try:
            return load_image(path, size, channels)
        except CCTError as e:
            return str(e)

    with ThreadPoolExecutor(available_cpus()) as pool:
        yield from pool.map(load, paths)
