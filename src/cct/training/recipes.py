"""Training recipes: named, typed, printed at the start of every run and saved in its folder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from ..errors import CCTError


@dataclass(frozen=True)
class Recipe:
    """How to train: optimiser, loss, data split and augmentation. Any field can be overridden by a flag."""

    name: str
    epochs: int
    batch_size: int
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    label_smoothing: float
    val_size: int
    crop_padding: int
    hflip: bool
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    tta_flip: bool = False
    seed: int = 0
    eval_batch_size: int = 500
    limit_train: int | None = None
    limit_test: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k == "betas" else v for k, v in data.items() if k in known})


RECIPES: dict[str, Recipe] = {
    # keras.io "Compact Convolutional Transformers": AdamW with constant lr, label smoothing 0.1, 30 epochs of
    # batch 128, the last 5,000 training images for validation, RandomCrop(32, 32) (a no-op) and a random flip.
    # PyTorch's AdamW multiplies the decay by the lr (decoupled: w -= lr * wd * w), as Keras 3 does; the
    # TensorFlow Addons AdamW of the original card applied wd without the lr, i.e. a 1,000x stronger decay.
    "keras-example": Recipe("keras-example", epochs=30, batch_size=128, lr=1e-3, betas=(0.9, 0.999), eps=1e-7,
                            weight_decay=1e-4, label_smoothing=0.1, val_size=5000, crop_padding=0, hflip=True),
    # Ours, for time-to-accuracy on small hardware: a short warmup then cosine decay of a higher peak lr,
    # stronger decoupled weight decay, crop with 4 px padding and flip, and test-time flip averaging.
    "fast": Recipe("fast", epochs=15, batch_size=128, lr=1.5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
                   label_smoothing=0.1, val_size=5000, crop_padding=4, hflip=True, schedule="cosine",
                   warmup_epochs=1.0, min_lr=1e-5, tta_flip=True),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise CCTError(f"unknown recipe '{name}' (choose from {', '.join(RECIPES)})")
    return RECIPES[name]
