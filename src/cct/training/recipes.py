"""Training recipes: named, typed, printed at the start of every run and saved in its folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Literal

from ..data.augment import require_policies
from ..errors import CCTError
from ..validation import (BOOLEAN, FRACTION, NON_NEGATIVE, POSITIVE, PROBABILITY, Rule, all_of, check_fields,
                          did_you_mean, integer, number, one_of, optional, tuple_of)


@dataclass(frozen=True)
class Recipe:
    """How to train: optimiser, schedule, loss, data split and augmentation (see `cct.data.augment`). Any field
    can be overridden with `cct train --recipe-arg FIELD=VALUE`."""

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
    warmup_lr: float = 0.0  # the lr the warmup starts from
    resized_crop_scale: tuple[float, float] | None = None  # RandomResizedCrop area range, instead of crop_padding
    auto_augment: bool = False  # AutoAugment, CIFAR-10 policy
    rand_augment: tuple[int, float, float] | None = None  # RandAugment (num_ops, magnitude of 30, magnitude std)
    random_erasing: float = 0.0  # probability
    # progressive resizing: ((size, epochs), ...): the first epochs train on images resized to `size` x `size`
    # pixels, stage after stage; the rest at the dataset's size
    progressive_resize: tuple[tuple[int, int], ...] = ()
    mixup_alpha: float = 0.0  # 0: off
    cutmix_alpha: float = 0.0  # 0: off
    mix_switch_prob: float = 0.5  # with both on: the probability a batch is CutMix rather than MixUp
    mix_off_epoch: int | None = None  # no MixUp or CutMix after this epoch
    ema_decay: float = 0.0  # 0: off; else an exponential moving average of the weights is validated and saved
    # the model's regularisation, None: the model's own (its config's dropout, attention_dropout, stochastic_depth)
    dropout: float | None = None
    attention_dropout: float | None = None
    stochastic_depth: float | None = None
    tta_flip: bool = False
    seed: int = 0
    eval_batch_size: int = 500
    limit_train: int | None = None
    limit_test: int | None = None

    def __post_init__(self):
        check_fields(self, _FIELD_RULES, "recipe")
        for name, used in (("min_lr", self.schedule == "cosine"), ("warmup_lr", self.warmup_epochs > 0)):
            if used and getattr(self, name) > self.lr:
                raise CCTError(f"recipe field {name}: {getattr(self, name):g} is above lr {self.lr:g}, its peak; give "
                               f"a lower {name} (--recipe-arg {name}=...) or a higher lr")
        staged = sum(epochs for _, epochs in self.progressive_resize)
        if self.progressive_resize and staged >= self.epochs:
            shorter = [[size, epochs * (self.epochs - 1) // staged] for size, epochs in self.progressive_resize]
            shorter = json.dumps([stage for stage in shorter if stage[1]], separators=(",", ":"))
            raise CCTError(f"recipe field progressive_resize: its stages take {staged} epochs of the {self.epochs}, "
                           "so none would train at the dataset's image size (which it is tested at): "
                           + (f"shorten them (--recipe-arg progressive_resize={shorter}) or " if shorter != "[]" else "")
                           + "drop them (--recipe-arg progressive_resize=[])")

    def to_dict(self) -> dict:
        return asdict(self)

    def require_policies(self) -> None:
        """Refuse, naming the field, an AutoAugment or RandAugment that this kornia gets wrong
        (`cct.data.augment.require_policies`)."""
        for policy in ("auto_augment", "rand_augment"):
            if getattr(self, policy):
                require_policies(f"recipe field {policy}")

    def model_overrides(self) -> dict:
        """The model config fields this recipe sets."""
        return {k: getattr(self, k) for k in ("dropout", "attention_dropout", "stochastic_depth")
                if getattr(self, k) is not None}

    def with_overrides(self, overrides: dict) -> "Recipe":
        """A copy with some fields replaced; an unknown field is an error."""
        known = [f.name for f in fields(self)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise CCTError(f"unknown recipe field{'s' * (len(unknown) > 1)} {', '.join(unknown)} (see `cct recipes`)"
                           + did_you_mean(unknown, known))
        return self.from_dict({**self.to_dict(), **overrides})

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_AREA_RANGE = tuple_of(POSITIVE, number(0.0, 1.0, True))
_FIELD_RULES = {  # checked whenever a recipe is made
    "epochs": integer(1),
    "batch_size": integer(1),
    "eval_batch_size": integer(1),
    "lr": POSITIVE,
    "eps": POSITIVE,
    "betas": tuple_of(FRACTION, FRACTION, expects="[beta1, beta2] in [0, 1)"),
    "weight_decay": NON_NEGATIVE,
    "label_smoothing": FRACTION,
    "val_size": integer(0),
    "crop_padding": integer(0),
    "hflip": BOOLEAN,
    "schedule": one_of("constant", "cosine"),
    "warmup_epochs": NON_NEGATIVE,
    "min_lr": NON_NEGATIVE,
    "warmup_lr": NON_NEGATIVE,
    "resized_crop_scale": optional(Rule(lambda v: _AREA_RANGE(v) and v[0] <= v[1],
                                        "[min, max] area fractions, 0 < min <= max <= 1")),
    "auto_augment": BOOLEAN,
    "rand_augment": optional(tuple_of(integer(0), NON_NEGATIVE, NON_NEGATIVE,
                                      expects="[number of ops, magnitude, magnitude std], each at least 0")),
    "random_erasing": PROBABILITY,
    "progressive_resize": all_of(tuple_of(integer(1), integer(1)),
                                 "[[size, epochs], ...] of positive integers"),
    "mixup_alpha": NON_NEGATIVE,
    "cutmix_alpha": NON_NEGATIVE,
    "mix_switch_prob": PROBABILITY,
    "mix_off_epoch": optional(integer(0)),
    "ema_decay": FRACTION,
    "dropout": optional(FRACTION),
    "attention_dropout": optional(FRACTION),
    "stochastic_depth": optional(FRACTION),
    "tta_flip": BOOLEAN,
    "seed": integer(0),
    "limit_train": optional(integer(1)),
    "limit_test": optional(integer(1)),
}

RECIPES: dict[str, Recipe] = {
    # keras.io "Compact Convolutional Transformers": AdamW with constant lr, label smoothing 0.1, 30 epochs of
    # batch 128, the last 5,000 training images for validation, RandomCrop(32, 32) (a no-op) and a random flip.
    # PyTorch's AdamW multiplies the decay by the lr (decoupled: w -= lr * wd * w), as Keras 3 does; the
    # TensorFlow Addons AdamW of the original card applied wd without the lr, i.e. a 1,000x stronger decay.
    "keras-example": Recipe("keras-example", epochs=30, batch_size=128, lr=1e-3, betas=(0.9, 0.999), eps=1e-7,
                            weight_decay=1e-4, label_smoothing=0.1, val_size=5000, crop_padding=0, hflip=True),
    # Ours, for time to accuracy on small hardware (cct_4_3x2_32: 80% in 17-20 minutes on two AVX2 CPU cores): 12
    # epochs on all 50,000 training images (no validation: the last epoch is kept), the first 4 on images resized
    # to 16x16 and the next 5 at 24x24 (progressive resizing: ~0.25x and ~0.5x the time of a 32x32 epoch), a
    # one-epoch warmup then cosine decay of a high peak lr, decoupled weight decay, label smoothing, test-time
    # flip averaging. A run this short underfits, so the model's dropout and stochastic depth are off and the flip
    # is the only augmentation (with crops too, test top-1 was 3 points lower after 8 epochs).
    "fast": Recipe("fast", epochs=12, batch_size=128, lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
                   label_smoothing=0.1, val_size=0, crop_padding=0, hflip=True, schedule="cosine",
                   warmup_epochs=1.0, min_lr=1e-5, progressive_resize=((16, 4), (24, 5)), tta_flip=True,
                   dropout=0.0, attention_dropout=0.0, stochastic_depth=0.0),
    # The CCT paper's CIFAR recipes (../shared/reference.md section 2), on our 45,000/5,000 split. The
    # mean/std normalisation is the model's (the paper variants carry the CIFAR statistics).
    "cct-paper-200": Recipe("cct-paper-200", epochs=200, batch_size=128, lr=5e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=3e-2, label_smoothing=0.1, val_size=5000, crop_padding=4, hflip=True,
                            schedule="cosine", warmup_epochs=5, auto_augment=True),
    # timm's flip (probability 0.5) is on, as in the authors' timm-based training of this recipe.
    "cct-paper-300": Recipe("cct-paper-300", epochs=300, batch_size=128, lr=5.5e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.06, label_smoothing=0.1, val_size=5000, crop_padding=0, hflip=True,
                            schedule="cosine", warmup_epochs=10, warmup_lr=1e-5, min_lr=1e-5,
                            resized_crop_scale=(0.8, 1.0), rand_augment=(2, 9.0, 0.5), mixup_alpha=0.8,
                            cutmix_alpha=1.0, mix_switch_prob=0.5, mix_off_epoch=175),
    # Ours, for the best small model in about 2 hours on two CPU cores (cct_4_3x2_32, ~90 s per epoch): the
    # paper's augmentation (crop, flip, AutoAugment) on a short schedule, so a higher peak lr, a short warmup,
    # and an EMA of the weights; test-time flip averaging.
    "small-cpu": Recipe("small-cpu", epochs=80, batch_size=128, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                        weight_decay=0.05, label_smoothing=0.1, val_size=5000, crop_padding=4, hflip=True,
                        schedule="cosine", warmup_epochs=3, min_lr=1e-5, auto_augment=True, ema_decay=0.9995,
                        tta_flip=True),
}

# what each recipe is for, as `cct recipes` says it
PURPOSES: dict[str, str] = {
    "keras-example": "the seed card's (keras.io's CCT example): 30 epochs at a constant lr, flip only",
    "fast": "ours, time to accuracy for cct_4_3x2_32: 12 epochs, the first 9 on smaller images (80% CIFAR-10 test "
            "top-1 in minutes on a CPU)",
    "cct-paper-200": "the CCT paper's 200-epoch CIFAR recipe: crops, flip, AutoAugment, cosine schedule",
    "cct-paper-300": "the CCT paper's 300-epoch CIFAR recipe: resized crops, RandAugment, MixUp and CutMix, cosine "
                     "schedule",
    "small-cpu": "ours, the best cct_4_3x2_32 in about 2 hours on two CPU cores: 80 epochs of the paper's "
                 "augmentation, an EMA of the weights",
}


# the recipe fields `cct train` takes as options of their own (--epochs, --batch-size...); the rest go by --recipe-arg
OPTION_FIELDS = ("epochs", "batch_size", "lr", "seed", "limit_train", "limit_test", "val_size")


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise CCTError(f"unknown recipe '{name}' (choose from {', '.join(RECIPES)})")
    return RECIPES[name]
