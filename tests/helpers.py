"""Small real files for tests: image folders in the layout users give `cct train --dataset FOLDER`."""

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def write_color_dataset(root: Path, per_class: int = 24) -> Path:
    """train/ and test/ with two classes told apart by colour (reddish vs bluish noise), learnable in an epoch."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls, channel in (("blue", 2), ("red", 0)):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                pixels[..., channel] += 120
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root
