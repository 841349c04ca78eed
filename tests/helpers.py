"""Small real files for tests: image folders in the layout users give `cct train --dataset FOLDER`."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cct.data.augment import require_policies
from cct.errors import CCTError


def _policies_refused() -> bool:
    try:
        require_policies("AutoAugment")
    except CCTError:
        return True
    return False


# kornia 0.8.2, the last release for Python 3.10, gets AutoAugment and RandAugment refused (tested under a
# kornia version set to 0.8.2 in tests/data/test_augment.py); the tests that run them need a newer one
needs_kornia_policies = pytest.mark.skipif(_policies_refused(), reason="AutoAugment and RandAugment need kornia >= 0.9")


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
