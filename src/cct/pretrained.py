"""Weights trained by this project and shipped inside the package. Each is a model-card folder made by
`cct card` (config.json, model.safetensors, README.md and its figures); the weights file is checked against
the sha256 recorded here before it is loaded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .errors import CCTError

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class PretrainedWeights:
    model: str  # registry name
    dataset: str
    sha256: str  # of model.safetensors
    top1: float  # test top-1 stated in the card, as `cct evaluate --pretrained MODEL` measures it

    @property
    def folder(self) -> Path:
        return WEIGHTS_DIR / f"{self.model}-{self.dataset}"


BUNDLED: list[PretrainedWeights] = [
    # the best model of at most 0.5M parameters from one background run on two CPU cores (small-cpu recipe)
    PretrainedWeights("cct_4_3x2_32", "cifar10",
                      "673058da645b2f8b6f7787e273495fbe76e5be7887d4dfea5530e364cc7f1362", 0.8651),
    # the seed model, keras-example recipe (the README's main command), default runtime (bf16 autocast)
    PretrainedWeights("cct_2_3x2_32_keras", "cifar10",
                      "3fb2eb0c8f7ca706c55987f8d3930569ffb3d0196f509c85fb572cba37defcb1", 0.7730),
]
DEFAULT_MODEL = "cct_4_3x2_32"  # what `cct predict` and the other commands use without --checkpoint


def pretrained_weights(model: str, dataset: str = "cifar10") -> PretrainedWeights:
    """The bundled weights of `model` (a registry name or alias) trained on `dataset`."""
    from .models import model_config

    name = model_config(model).name
    for weights in BUNDLED:
        if (weights.model, weights.dataset) == (name, dataset):
            return weights
    available = ", ".join(f"{w.model} ({w.dataset})" for w in BUNDLED) or "none"
    raise CCTError(f"no pretrained {dataset} weights for {model} (bundled: {available})")


def pretrained_path(model: str, dataset: str = "cifar10") -> Path:
    """The verified model.safetensors of bundled weights; a CCTError if the file is missing or altered."""
    weights = pretrained_weights(model, dataset)
    path = weights.folder / "model.safetensors"
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise CCTError(f"{path}: bundled weights missing ({e.strerror})") from None
    if digest != weights.sha256:
        raise CCTError(f"{path}: sha256 {digest} does not match the recorded {weights.sha256} (altered or damaged)")
    return path


def from_pretrained(source: str | Path, device: str = "cpu"):
    """A model in eval mode from a model-card folder, a run folder, a .safetensors checkpoint, or the name of
    a model with bundled CIFAR-10 weights (see `cct models`)."""
    from .models import list_models
    from .training.checkpoint import load_checkpoint

    path = Path(source)
    if not path.exists():
        if str(source) not in list_models(include_aliases=True):
            raise CCTError(f"{source}: no such checkpoint, run or card folder, and not a model name (`cct models` "
                           "lists them)")
        path = pretrained_path(str(source))
    return load_checkpoint(path, device)[0]
