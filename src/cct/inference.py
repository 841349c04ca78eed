"""Prediction with a trained model on images of any kind, converted exactly as training data was."""

from __future__ import annotations

import io
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from .data.images import image_to_tensor, load_image, open_image
from .errors import CCTError, first_few
from .evaluation import predict_logits
from .models import CCT
from .runtime import Runtime

ImageLike = Union[str, Path, bytes, Image.Image, np.ndarray, torch.Tensor]


@dataclass
class Prediction:
    """The top-k classes of one image, most probable first."""

    labels: list[str]
    probabilities: list[float]


class Classifier:
    """A trained model ready to classify images.

        clf = Classifier.from_pretrained("runs/seed")
        clf.predict("cat.jpg")                      # -> Prediction
        clf.predict(["a.png", pil_image, array])     # -> [Prediction, ...]

    Inputs: file paths, a file's bytes (an upload, a download), PIL images, arrays (H, W, C) or (N, H, W, C),
    tensors (C, H, W) or (N, C, H, W), arrays and tensors uint8 or float in [0, 1] (as matplotlib's imread gives
    PNGs). Every one goes through `image_to_tensor`, as training folders and files do.
    """

    def __init__(self, model: CCT, runtime: Runtime | None = None):
        """`model` runs as it is, or prepared for inference by a resolved `runtime` (`Runtime.prepare`, frozen)."""
        self.model = model.eval()
        self.runtime = runtime
        self.forward = runtime.prepare(model, frozen=True) if runtime else model
        names = list(model.config.class_names)
        self.classes = names if len(names) == model.config.num_classes else [str(i) for i in
                                                                              range(model.config.num_classes)]

    def __repr__(self) -> str:
        where = self.runtime.describe() if self.runtime else "the model as given"
        classes = f"{len(self.classes)} classes: {first_few(self.classes, 10)}"
        return f"Classifier({self.model.config.name}, {classes}; {where})"

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str = "cpu", precision: str = "fp32") -> "Classifier":
        """From anything `cct.from_pretrained` takes: a card folder, a run folder (its best checkpoint), a
        checkpoint file, or the name of a model with bundled weights. fp32 by default, so that the same image
        gets the same probabilities everywhere; "auto" or "bf16" trade that for speed."""
        from .pretrained import from_pretrained

        runtime = Runtime(device=device, precision=precision).resolve()
        return cls(from_pretrained(source, runtime.torch_device), runtime)

    def to_batch(self, inputs: ImageLike | list[ImageLike]) -> tuple[torch.Tensor, bool]:
        """(N, in_chans, size, size) uint8 and whether a single image was given."""
        size, channels = self.model.config.img_size, self.model.config.in_chans
        single = not isinstance(inputs, (list, tuple)) and not _is_batch(inputs)
        items = [inputs] if single else list(inputs)
        return torch.stack([_to_uint8(item, size, channels) for item in items]), single

    def predict(self, inputs: ImageLike | list[ImageLike], top_k: int = 5) -> Prediction | list[Prediction]:
        if not isinstance(top_k, numbers.Integral) or top_k < 1:
            raise CCTError(f"top_k must be an integer of at least 1, got {top_k!r}")
        if (isinstance(inputs, (list, tuple)) or _is_batch(inputs)) and len(inputs) == 0:
            return []
        images, single = self.to_batch(inputs)
        probabilities = predict_logits(self.forward, images, runtime=self.runtime).softmax(dim=1)
        top = probabilities.topk(min(top_k, probabilities.shape[1]), dim=1)
        predictions = [Prediction([self.classes[i] for i in idx.tolist()], p.tolist())
                       for p, idx in zip(top.values, top.indices)]
        return predictions[0] if single else predictions


def _is_batch(x: ImageLike) -> bool:
    return isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 4


def _to_uint8(item: ImageLike, size: int, channels: int) -> torch.Tensor:
    if isinstance(item, (str, Path)):
        return load_image(item, size, channels)
    if isinstance(item, (bytes, bytearray, memoryview)):
        with open_image(io.BytesIO(item), "the image bytes", size=size) as image:
            return image_to_tensor(image, size, channels)
    if isinstance(item, Image.Image):
        return image_to_tensor(item, size, channels)
    if isinstance(item, torch.Tensor):
        if item.ndim != 3 or item.shape[0] not in (1, 3, 4):
            raise CCTError(f"a tensor image must be (C, H, W) with 1, 3 or 4 channels, got {tuple(item.shape)}")
        item = (item.float() if item.is_floating_point() else item).detach().permute(1, 2, 0).cpu().numpy()
    if isinstance(item, np.ndarray):
        if item.dtype.kind == "f":
            if item.size and not 0 <= item.min() <= item.max() <= 1:
                raise CCTError(f"a float image must hold values in [0, 1], got {item.min():g} to {item.max():g} "
                               "(divide 0-255 values by 255, or pass uint8)")
            item = (item * 255).round().astype(np.uint8)
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[-1] not in (1, 3, 4)):
            raise CCTError(f"an image array or tensor must be uint8 or float in [0, 1], (H, W) or (H, W, C) with 1, 3 "
                           f"or 4 channels, got {item.dtype} {item.shape}")
        return image_to_tensor(Image.fromarray(item.squeeze(-1) if item.ndim == 3 and item.shape[-1] == 1
                                               else item), size, channels)
    raise CCTError(f"cannot read an image from {type(item).__name__}")
